"""One checkpointer per SQLite file at a time, across processes: an flock on a file beside it.

Every worker opens the store with its own checkpointer. Two of them on one file fight: each one's
PASSIVE pass copies the same pages, and a RESTART fails at once while the other holds SQLite's
checkpoint lock. The process holding this lock runs the checkpoints; the others look again every
round and take over within a round of its exit (the kernel drops an flock when its holder's
descriptor closes, at a kill -9 too). An flock, not a POSIX lock: SQLite's own locks are POSIX
locks, and a process's POSIX locks on a file all go when any of its descriptors of it closes.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from buidl_edge.ops.statefiles import PRIVATE_FILE

LEASE_SUFFIX = "-checkpointer"


class CheckpointLease:
    def __init__(self, db_path: Path) -> None:
        self.path = Path(f"{db_path}{LEASE_SUFFIX}")
        self._fd: int | None = None  # open from the first try on: held or not
        self.held = False

    def take(self) -> bool:
        """True when this process holds the lease now (it may have held it already). The file stays
        open between tries, so a try while another process holds it is one flock call."""
        if self.held:
            return True
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
            except OSError:
                return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process's checkpointer has it
            return False
        self.held = True
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock, if held
            self._fd = None
        self.held = False
