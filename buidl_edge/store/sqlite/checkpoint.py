"""The SQLite store's background checkpointer: a native thread with its own connection.

Checkpoints copy the WAL back into the database file and fsync it, the most expensive step of a
write, so claims only append to the WAL and this thread does the copying, every interval in which
anything was committed, once the WAL holds enough to be worth it. An idle store costs one stat of
the -wal file per look, the looks backing off to one a round while nothing (or little) is written.
"""
from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from buidl_edge.store.sqlite.checkpoint_lease import CheckpointLease
from buidl_edge.store.sqlite.wal_file import wal_frames

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
# Between rounds the checkpointer counts the WAL's frames this often (about 15 reads of 24 bytes of the
# -wal file): a WAL that holds more than its share of the limit is restarted now, not at the next
# round. The count, not the file's size: the file keeps its largest size after a restart, and a
# WAL refilling below that went unseen until the next round (2 s: 61 MB at 300 events/s with
# replies, 64-79 MB at 1,000/s on two workers; see BENCHMARKS.md).
WAL_CHECK_S = 0.1
# A WAL holding fewer frames than this (1 MB at 4 KB pages, a 64th of the limit) waits for later
# commits before its round: an idle worker's lease renewal (a few pages every 10 s) cost a
# checkpoint with two fdatasyncs each time, for pages that the next renewal changes again. Its
# frames stay in the WAL, as durable as after a checkpoint (the checkpoint only copies them).
SMALL_WAL_SHARE = 1 / 64
# A look that finds fewer new frames than this does not speed the looks up (an idle renewal is
# 2): a WAL filling that slowly is rounds away from its share.
SMALL_CHANGE_FRAMES = 64
# After a RESTART that could not run (the writers held on, a reader kept an old snapshot), the next
# try comes this soon instead of a round later.
RETRY_AFTER_SKIP_S = 0.05


@dataclass
class CheckpointCounts:
    """What this process's checkpointer did: rounds run (a PASSIVE pass each) and RESTARTs that ran
    to their end. Both stay 0 while another process's checkpointer holds the file's lease."""

    rounds: int = 0
    restarts: int = 0


def checkpoint_loop(db: SqliteDb, interval_s: float, wal_limit_bytes: int) -> None:
    """Until the store closes, while this process holds the file's checkpoint lease: PASSIVE
    checkpoints never block writers; a RESTART, when the WAL holds more than its share of the
    limit, holds them for the few pages left. A round every `interval_s`, and at once when the WAL
    holds more than its share. Without the lease, it tries to take it every `interval_s`."""
    try:
        conn = db._connect()
        conn.execute(f"PRAGMA busy_timeout = {RESTART_BUSY_TIMEOUT_MS}")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.Error:
        db._checkpointer_done.release()
        return
    restart_pages = int(wal_limit_bytes * WAL_RESTART_SHARE) // page_size
    small_pages = int(wal_limit_bytes * SMALL_WAL_SHARE) // page_size
    wal = Path(f"{db.path}-wal")
    lease = CheckpointLease(db.path)
    lease.take()
    next_round = time.monotonic() + interval_s
    restarted_at = -1  # the WAL's frames when a RESTART last ran: they stay until a writer starts it over
    wait = min(WAL_CHECK_S, interval_s)
    stamp: tuple[int, int] | None = None  # the -wal file's (mtime, size) at the last look
    round_stamp: tuple[int, int] | None = None  # and at the last round
    frames = 0
    seen = None  # data_version at the last round: unchanged, nothing was committed since (any process)
    try:
        while not db._stop.acquire(True, wait):
            now = time.monotonic()
            look = _stamp(wal)
            if look != stamp:  # written since the last look: count the frames
                stamp, before = look, frames
                frames = wal_frames(wal)
                grown = frames - before if frames >= before else frames  # (a smaller count: a new WAL)
            else:
                grown = 0
            if grown >= SMALL_CHANGE_FRAMES:  # filling: look again soon
                wait = min(WAL_CHECK_S, interval_s)
            else:  # an idle store (no read of the file) or a trickle: the looks back off to one a round
                wait = min(interval_s, wait * 2)
            due = now >= next_round
            if not lease.held:
                db._wal_backlog = frames  # for the hub's writes: the WAL is due for a checkpoint
                if due:
                    next_round = now + interval_s
                    lease.take()
                continue
            if not due and (frames <= restart_pages or frames == restarted_at):
                continue
            next_round = now + interval_s
            if look == round_stamp and not db._wal_backlog:
                continue  # the file unchanged since the last round: nothing committed, one stat spent
            round_stamp = look
            if seen is not None and frames < small_pages and not db._wal_backlog:
                continue  # a small WAL waits for more (the first round runs: the file's WAL at open)
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version == seen and not db._wal_backlog:
                    continue  # no commit since the last round, nothing to copy
                seen = version
                _, pages, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                db.checkpoints.rounds += 1
                if pages > restart_pages:
                    pages, done, restarted = _restart_wal(db, conn, pages, done)
                    if restarted:
                        db.checkpoints.restarts += 1
                        restarted_at = pages
                    else:  # try again soon: the WAL keeps growing meanwhile
                        next_round, wait = now, RETRY_AFTER_SKIP_S
                db._wal_backlog = max(0, pages - done)
            except sqlite3.Error:
                pass  # busy or failing disk: the write path reports that; try later
    finally:
        lease.release()
        conn.close()
        db._checkpointer_done.release()


def _stamp(path: Path) -> tuple[int, int]:
    """The file's (mtime, size): any write to the WAL changes one of them."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


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
