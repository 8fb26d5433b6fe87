"""The SQLite store's background checkpointer: a native thread with its own connection.

Checkpoints copy the WAL back into the database file and fsync it, the most expensive step of a
write, so claims only append to the WAL and this thread does the copying, every interval in which
anything was committed (an idle store costs a wake-up and one read of the WAL index per round).
"""
from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buidl_edge.store.sqlite.db import SqliteDb

# A PASSIVE checkpoint never resets the WAL while commits keep coming (each one lands during the
# checkpoint, so the WAL is never wholly copied back when the next writer looks), and the file only
# grows: 426 MB at 300 envelopes/s. Past this share of the size limit, the checkpointer follows
# its PASSIVE pass (which copies nearly all) with a RESTART, which copies the rest under the write
# lock and makes the next commit start the WAL over: the file stays within the limit.
WAL_RESTART_SHARE = 0.25
# How long the RESTART may wait for another process's writer (and readers); this process's own
# writers wait for it (a writer committing back to back would never let it in). A database busy
# longer than that just waits for the next round.
RESTART_BUSY_TIMEOUT_MS = 200
# How long the checkpointer waits for this process's writers to let go before it skips a round.
RESTART_LOCK_WAIT_S = 1.0


def checkpoint_loop(db: SqliteDb, interval_s: float, wal_limit_bytes: int) -> None:
    """Until the store closes: PASSIVE checkpoints never block writers; a RESTART, when the WAL has
    grown past its share of the limit, holds them for the few pages left."""
    try:
        conn = db._connect()
        conn.execute(f"PRAGMA busy_timeout = {RESTART_BUSY_TIMEOUT_MS}")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.Error:
        db._checkpointer_done.release()
        return
    restart_pages = int(wal_limit_bytes * WAL_RESTART_SHARE) // page_size
    seen = None  # data_version at the last round: unchanged, nothing was committed since (any process)
    try:
        while not db._stop.acquire(True, interval_s):
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version == seen and not db._wal_backlog:
                    continue  # an idle store: no commit since the last round, nothing to copy
                seen = version
                _, pages, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if pages > restart_pages:
                    pages, done = _restart_wal(db, conn, pages, done)
                db._wal_backlog = max(0, pages - done)
            except sqlite3.Error:
                pass  # busy or failing disk: the write path reports that; try later
    finally:
        conn.close()
        db._checkpointer_done.release()


def _restart_wal(db: SqliteDb, conn: sqlite3.Connection, pages: int, done: int) -> tuple[int, int]:
    """A RESTART checkpoint with this process's writers held off; (WAL pages, pages copied)."""
    if not db._lock.acquire(True, RESTART_LOCK_WAIT_S):
        return pages, done
    try:
        if not db._hub_lock.acquire(True, RESTART_LOCK_WAIT_S):
            return pages, done
        try:
            if db._closed:
                return pages, done
            _, pages, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            return pages, done
        finally:
            db._hub_lock.release()
    finally:
        db._lock.release()
