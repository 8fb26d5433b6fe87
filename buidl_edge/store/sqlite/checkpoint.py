"""The SQLite store's background checkpointer: a native thread with its own connection.

Checkpoints copy the WAL back into the database file and fsync it, the most expensive step of a
write, so claims only append to the WAL and this thread does the copying, every interval in which
anything was committed (an idle store costs a wake-up and one read of the WAL index per round).
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
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
# Between rounds the checkpointer looks at the -wal file's size (one stat) this often: a WAL that
# grew past the threshold is restarted now, not at the next round (at 1,000 events/s with replies a
# 2 s round let it reach 87 MB), so it cannot outgrow its size at the last look by more than this
# many seconds of writes.
SIZE_CHECK_S = 0.25
# After a RESTART that could not run (the writers held on, a reader kept an old snapshot), the next
# try comes this soon instead of a round later.
RETRY_AFTER_SKIP_S = 0.05


def checkpoint_loop(db: SqliteDb, interval_s: float, wal_limit_bytes: int) -> None:
    """Until the store closes: PASSIVE checkpoints never block writers; a RESTART, when the WAL has
    grown past its share of the limit, holds them for the few pages left. A round every
    `interval_s`, and at once when the -wal file has grown past the share since the last look."""
    try:
        conn = db._connect()
        conn.execute(f"PRAGMA busy_timeout = {RESTART_BUSY_TIMEOUT_MS}")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.Error:
        db._checkpointer_done.release()
        return
    restart_bytes = int(wal_limit_bytes * WAL_RESTART_SHARE)
    restart_pages = restart_bytes // page_size
    wal = Path(f"{db.path}-wal")
    last_size = _size(wal)
    next_round = time.monotonic() + interval_s
    wait = min(SIZE_CHECK_S, interval_s)
    seen = None  # data_version at the last round: unchanged, nothing was committed since (any process)
    try:
        while not db._stop.acquire(True, wait):
            size = _size(wal)
            grew, last_size = size > last_size, size
            now = time.monotonic()
            wait = min(SIZE_CHECK_S, interval_s)
            if now < next_round and not (grew and size > restart_bytes):
                continue
            next_round = now + interval_s
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version == seen and not db._wal_backlog:
                    continue  # an idle store: no commit since the last round, nothing to copy
                seen = version
                _, pages, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if pages > restart_pages:
                    pages, done, restarted = _restart_wal(db, conn, pages, done)
                    if not restarted:  # try again soon: the WAL keeps growing meanwhile
                        next_round, wait = now, RETRY_AFTER_SKIP_S
                db._wal_backlog = max(0, pages - done)
            except sqlite3.Error:
                pass  # busy or failing disk: the write path reports that; try later
    finally:
        conn.close()
        db._checkpointer_done.release()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _restart_wal(db: SqliteDb, conn: sqlite3.Connection, pages: int, done: int) -> tuple[int, int, bool]:
    """A RESTART checkpoint with this process's writers held off: (WAL pages, pages copied, whether
    it ran to the end; False when the locks were not had in time or a reader held it back)."""
    if not db._lock.acquire(True, RESTART_LOCK_WAIT_S):
        return pages, done, False
    try:
        if not db._hub_lock.acquire(True, RESTART_LOCK_WAIT_S):
            return pages, done, False
        try:
            if db._closed:
                return pages, done, False
            busy, pages, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            return pages, done, not busy
        finally:
            db._hub_lock.release()
    finally:
        db._lock.release()
