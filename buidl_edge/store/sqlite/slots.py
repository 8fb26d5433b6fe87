"""The SQLite connection slots: one leased row per open Socket Mode link of the app (see
store/slots.py for the gate that holds them)."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from buidl_edge.store.owners import holder_owner
from buidl_edge.store.sqlite.db import SqliteDb


class SqliteSlots(SqliteDb):
    def acquire_slot(self, holder: str, limit: int, ttl: float) -> bool:
        """Lease one of `limit` connection slots to `holder` (renewed if it holds one already).

        Expired leases and those of dead processes on this host are freed first.
        """

        def txn(cur: sqlite3.Cursor) -> bool:
            now = time.time()
            cur.execute("DELETE FROM slots WHERE expires_at < ?", (now,))
            cur.execute("UPDATE slots SET expires_at = ? WHERE holder = ?", (now + ttl, holder))
            if cur.rowcount == 1:
                return True
            held = [h for (h,) in cur.execute("SELECT holder FROM slots")]
            if len(held) >= limit:
                dead = [h for h in held if self._is_dead_local(holder_owner(h))]
                cur.executemany("DELETE FROM slots WHERE holder = ?", [(h,) for h in dead])
                if len(held) - len(dead) >= limit:
                    return False
            cur.execute("INSERT INTO slots(holder, expires_at) VALUES (?, ?)", (holder, now + ttl))
            return True

        return self._run(txn, write=True)

    def renew_slots(self, holders: Sequence[str], limit: int, ttl: float) -> list[str]:
        """Extend these leases (taking back a lapsed one if there is room); return the ones lost."""

        def txn(cur: sqlite3.Cursor) -> list[str]:
            now = time.time()
            cur.execute("DELETE FROM slots WHERE expires_at < ?", (now,))
            lost = []
            for holder in holders:
                cur.execute("UPDATE slots SET expires_at = ? WHERE holder = ?", (now + ttl, holder))
                if cur.rowcount == 1:
                    continue
                if cur.execute("SELECT COUNT(*) FROM slots").fetchone()[0] < limit:
                    cur.execute("INSERT INTO slots(holder, expires_at) VALUES (?, ?)", (holder, now + ttl))
                else:
                    lost.append(holder)
            return lost

        return self._run(txn, write=True)

    def release_slot(self, holder: str) -> None:
        self._run(lambda cur: cur.execute("DELETE FROM slots WHERE holder = ?", (holder,)), write=True)
