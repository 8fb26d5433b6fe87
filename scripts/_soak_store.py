"""The soak's store faults (issue 21): the shared SQLite store under pressure, as production has it.

  write_lock  another process holds the SQLite file's write lock (`BEGIN EXCLUSIVE`) for 5 s, as a
              backup, an operator's sqlite3 shell or a long admin command does
  disk_full   the filesystem under the state dir (a tmpfs the soak mounts; root only) is filled to
              ENOSPC for 3 s, then the filler is deleted

Neither may cost an ack past Slack's 3 s (BUIDL_CLAIM_WAIT_S bounds the store's part of an ack),
an event, or a reply. Without root the disk is not mounted and `disk_full` finds no target (said).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buidl_edge.sandbox.harness import WriteLockHolder, fill_disk

WRITE_LOCK_S = 5.0
DISK_FULL_S = 3.0
# How long after one went off the store is settled again (its claims decided, its handlers run).
STORE_SETTLE_S = {"write_lock": WRITE_LOCK_S + 2.0, "disk_full": DISK_FULL_S + 2.0}
# The state dir's filesystem: room for the soak's inbox and WAL with margin, small enough to fill fast.
DISK_SIZE = "256m"


class StoreFaults:
    """Mixed into the soak's Faults: needs `later` (follow-ups in time order) and the stack."""

    later: list[tuple[float, Callable[[], None]]]
    stack: Any

    def init_store_faults(self, disk: Path | None) -> None:
        self.disk = disk  # the mounted filesystem holding the state dir, or None
        self.store_windows: list[tuple[float, float, str]] = []  # (start, end) unix time, kind
        self._lock_busy_until = 0.0

    def _write_lock(self) -> bool:
        if time.monotonic() < self._lock_busy_until:
            return False
        db = Path(self.stack.state_dir) / "edge.sqlite3"
        if not db.exists():
            return False
        holder = WriteLockHolder(db)
        started = time.time()
        self._lock_busy_until = time.monotonic() + WRITE_LOCK_S + 1.0

        def release() -> None:
            holder.release()
            self.store_windows.append((started, time.time(), "write_lock"))

        self.later.append((time.monotonic() + WRITE_LOCK_S, release))
        return True

    def _disk_full(self) -> bool:
        if self.disk is None or time.monotonic() < self._lock_busy_until:
            return False
        filler = fill_disk(self.disk)
        started = time.time()
        self._lock_busy_until = time.monotonic() + DISK_FULL_S + 1.0

        def free() -> None:
            filler.unlink(missing_ok=True)
            self.store_windows.append((started, time.time(), "disk_full"))

        self.later.append((time.monotonic() + DISK_FULL_S, free))
        return True


def late_acks_outside(acks: list[dict[str, Any]], windows: list[tuple[float, float]], deadline_ms: float,
                      margin_s: float) -> list[dict[str, Any]]:
    """Acks past Slack's deadline whose envelope was sent outside every window (start, end, unix
    time) of a fault that delays acks on purpose, widened by `margin_s` on both sides."""
    late = []
    for ack in acks:
        if ack["latency_ms"] <= deadline_ms:
            continue
        sent = ack["at"] - ack["latency_ms"] / 1000
        if not any(start - margin_s <= sent <= end + margin_s for start, end in windows):
            late.append(ack)
    return late
