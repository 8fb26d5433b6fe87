"""The SQLite store's admin side: the workers' heartbeats and the reads and repairs behind
`status`, `inbox` and `outbox`."""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from buidl_edge.store.base import CANCELLED, OutboxRow, check_purgeable
from buidl_edge.store.owners import Owner
from buidl_edge.store.sqlite.binding import bind, row_dict
from buidl_edge.store.sqlite.db import SqliteDb
from buidl_edge.store.sqlite.outbox import OUTBOX_COLS, to_outbox_row


class SqliteAdmin(SqliteDb):
    # ------------------------------------------------------------ workers

    def heartbeat(self, owner: str, stats: dict[str, Any]) -> None:
        parsed = Owner.parse(owner)
        row = (owner, parsed.pid or 0, parsed.host, time.time(),
               json.dumps(stats, separators=(",", ":"), default=str), int(bool(stats.get("degraded"))))

        def txn(cur: sqlite3.Cursor) -> None:
            cur.execute("INSERT INTO workers(owner, pid, host, updated_at, stats, degraded) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(owner) DO UPDATE SET "
                        "pid = excluded.pid, host = excluded.host, updated_at = excluded.updated_at, "
                        "stats = excluded.stats, degraded = excluded.degraded", row)

        self._run(txn, write=True)

    def forget_worker(self, owner: str) -> None:
        """A worker that stopped cleanly takes its heartbeat out of `status`."""
        self._run(lambda cur: cur.execute("DELETE FROM workers WHERE owner = ?", (owner,)), write=True)

    def workers(self, max_age_s: float | None = None) -> list[dict[str, Any]]:
        """Workers that reported, newest first; `max_age_s` hides ones gone quiet."""
        since = -1.0 if max_age_s is None else time.time() - max_age_s

        def read(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
            rows = cur.execute("SELECT owner, pid, host, updated_at, stats, degraded FROM workers "
                               "WHERE updated_at >= ? ORDER BY updated_at DESC", (since,)).fetchall()
            return [{"owner": o, "pid": p, "host": h, "updated_at": u, "stats": json.loads(s),
                     "degraded": bool(d)} for o, p, h, u, s, d in rows]

        return self._run(read, write=False)

    def slots(self) -> list[dict[str, Any]]:
        """Leases held now, for `status`: holder and seconds left."""

        def read(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
            now = time.time()
            rows = cur.execute("SELECT holder, expires_at FROM slots WHERE expires_at >= ? ORDER BY holder",
                               (now,)).fetchall()
            return [{"holder": h, "expires_in": round(e - now, 3)} for h, e in rows]

        return self._run(read, write=False)

    # ------------------------------------------------------------ inbox

    def inbox_stats(self) -> dict[str, Any]:
        """Counts for `inbox stats` and `status`: inbox rows per state, oldest in-flight age, keys."""

        def read(cur: sqlite3.Cursor) -> dict[str, Any]:
            stats: dict[str, Any] = {"processing": 0, "pending": 0, "done": 0, "failed": 0}
            stats.update(cur.execute("SELECT state, COUNT(*) FROM inbox GROUP BY state").fetchall())
            for state in ("processing", "pending"):
                oldest = cur.execute("SELECT MIN(received_at) FROM inbox WHERE state = ?", (state,)).fetchone()[0]
                stats[f"oldest_{state}_age_s"] = None if oldest is None else max(0.0, time.time() - oldest)
            stats["keys"] = cur.execute("SELECT COUNT(*) FROM keys").fetchone()[0]
            return stats

        return self._run(read, write=False)

    def inbox_list(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent inbox rows, optionally of one state."""
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())

        def read(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
            cols = ("envelope_id", "kind", "state", "owner", "attempts", "deliveries", "received_at", "error")
            rows = cur.execute(f"SELECT {', '.join(cols)} FROM inbox {where} "
                               "ORDER BY received_at DESC LIMIT ?", (*args, limit)).fetchall()
            return [row_dict(cols, row) for row in rows]

        return self._run(read, write=False)

    def inbox_row(self, envelope_id: str) -> dict[str, Any] | None:
        """One inbox row (tests and `status --envelope`): the newest with that envelope id. No index
        holds envelope ids (inbox_rows.py), so this reads the table: a command's cost, not a claim's."""

        def read(cur: sqlite3.Cursor) -> dict[str, Any] | None:
            cur.execute("SELECT envelope_id, kind, state, owner, lease_until, attempts, deliveries, "
                        "next_attempt_at, order_key, received_at, updated_at, error FROM inbox "
                        "WHERE envelope_id = ? ORDER BY id DESC LIMIT 1", (bind(envelope_id),))
            row = cur.fetchone()
            return None if row is None else row_dict([d[0] for d in cur.description], row)

        return self._run(read, write=False)

    def retry(self, envelope_id: str) -> bool:
        """Hand a done/failed row back to the sweepers (expired lease, no owner).

        Replies already queued keep their idempotency keys, so a re-run does not
        queue them twice. A relayed row starts a fresh delivery budget.
        """
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> bool:
            cur.execute("UPDATE inbox SET state = 'processing', owner = '', lease_until = 0, "
                        "error = NULL, deliveries = 0, updated_at = ? "
                        "WHERE id = (SELECT MAX(id) FROM inbox WHERE envelope_id = ?) "
                        "AND state IN ('done', 'failed')", (now, bind(envelope_id)))
            return cur.rowcount == 1

        return self._run(txn, write=True)

    # ------------------------------------------------------------ outbox

    def outbox_list(self, state: str | None = None, channel: str | None = None,
                    limit: int = 50) -> list[OutboxRow]:
        clauses, args = [], []
        if state:
            clauses.append("state = ?")
            args.append(state)
        if channel:
            clauses.append("channel = ?")
            args.append(bind(channel))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def read(cur: sqlite3.Cursor) -> list[OutboxRow]:
            rows = cur.execute(f"SELECT {OUTBOX_COLS} FROM outbox {where} ORDER BY id DESC LIMIT ?",
                               (*args, limit)).fetchall()
            return [to_outbox_row(r) for r in rows]

        return self._run(read, write=False)

    def outbox_row(self, row_id: int) -> OutboxRow | None:
        def read(cur: sqlite3.Cursor) -> OutboxRow | None:
            found = cur.execute(f"SELECT {OUTBOX_COLS} FROM outbox WHERE id = ?", (row_id,)).fetchone()
            return None if found is None else to_outbox_row(found)

        return self._run(read, write=False)

    def outbox_retry(self, row_id: int) -> bool:
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> bool:
            cur.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, lease_owner = NULL, "
                        "lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'failed'", (now, now, row_id))
            return cur.rowcount == 1

        return self._run(txn, write=True)

    def outbox_cancel(self, row_id: int) -> bool:
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> bool:
            cur.execute("UPDATE outbox SET state = 'failed', error = ?, updated_at = ? "
                        "WHERE id = ? AND state = 'pending'", (CANCELLED, now, row_id))
            return cur.rowcount == 1

        return self._run(txn, write=True)

    def outbox_purge(self, state: str = "failed") -> int:
        check_purgeable(state)

        def txn(cur: sqlite3.Cursor) -> int:
            cur.execute("DELETE FROM outbox WHERE state = ?", (state,))
            return cur.rowcount

        return self._run(txn, write=True)
