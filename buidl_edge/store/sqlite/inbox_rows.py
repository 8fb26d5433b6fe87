"""Finding an inbox row by its envelope id, with no index on envelope ids.

The inbox is keyed by its rowid (schema v7, issue 26): envelope ids are random, and an index on
them would be a second random-key b-tree insert on every claim. So a row is found:
- by the rowid this process's claim, sweep or relay take got, kept by envelope id until the row
  leaves its hands; the statement checks the envelope id too, so a stale rowid (a claim rolled
  back, a row pruned and its rowid reused) only misses;
- else among the rows in flight (the partial index `inbox_processing` holds only those), which is
  where a finish, a relay enqueue and a relay settle look: another process's or store object's
  claim, a finish journal recovered after a kill -9;
- an admin read or `inbox retry` of any row scans the table: a command, never the hot path.
"""
from __future__ import annotations

import sqlite3
from typing import Any

from buidl_edge.store.sqlite.binding import bind
from buidl_edge.store.sqlite.db import SqliteDb

# Rowids kept at most; past it they are dropped at once (the lookup among rows in flight still
# finds each row): only claims never finished by this process leave theirs behind.
MAX_KEPT = 65_536

_IN_FLIGHT = ("SELECT id FROM inbox INDEXED BY inbox_processing "
              "WHERE state = 'processing' AND envelope_id = ? ORDER BY id DESC LIMIT 1")


class SqliteInboxRows(SqliteDb):
    """What SqliteInbox and SqliteRelay share: the rowids of this process's rows in flight."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._row_ids: dict[str, int] = {}
        super().__init__(*args, **kwargs)

    def _keep_row_id(self, envelope_id: str, row_id: int | None) -> None:
        """Called inside a write: a rollback leaves a stale rowid, which `update_in_flight` misses."""
        if row_id is None:
            return
        if len(self._row_ids) >= MAX_KEPT:
            self._row_ids.clear()  # (not one at a time: the hub and the store's thread both write it)
        self._row_ids[envelope_id] = row_id

    def _update_in_flight(self, cur: sqlite3.Cursor, envelope_id: str, changes: str, params: dict[str, Any],
                          also: str = "", release: bool = False) -> int:
        """`UPDATE inbox SET {changes}` of the envelope's row while it is processing (and `also`
        holds); rows changed (0 or 1). `release`: the row leaves this process's hands with it."""
        sql = (f"UPDATE inbox SET {changes} WHERE id = :row_id AND envelope_id = :eid "
               f"AND state = 'processing'{also}")
        eid = bind(envelope_id)
        kept = self._row_ids.pop(envelope_id, None) if release else self._row_ids.get(envelope_id)
        if kept is not None:
            cur.execute(sql, {**params, "row_id": kept, "eid": eid})
            if cur.rowcount:
                return cur.rowcount
        found = cur.execute(_IN_FLIGHT, (eid,)).fetchone()
        if found is None:
            return 0
        cur.execute(sql, {**params, "row_id": found[0], "eid": eid})
        return cur.rowcount
