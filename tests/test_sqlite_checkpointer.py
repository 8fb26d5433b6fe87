"""The SQLite store's checkpointer: paced by what the WAL holds, one per file across processes."""
from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from buidl_edge.sandbox.harness import wait_until
from buidl_edge.store.sqlite import SqliteStore
from support import ME, envelope as env

ROOT = Path(__file__).parent.parent


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "edge.db"


def frames_in_wal(wal: Path) -> int:
    """The WAL's current frames, counted one by one from its headers (the test's own reading of the
    documented format): frames whose salts are the WAL header's."""
    data = wal.read_bytes()
    if len(data) < 32:
        return 0
    frame_bytes = 24 + struct.unpack(">I", data[8:12])[0]
    count = 0
    while 32 + (count + 1) * frame_bytes <= len(data) and \
            data[32 + count * frame_bytes + 8:32 + count * frame_bytes + 16] == data[16:24]:
        count += 1
    return count


def test_a_wal_refilling_below_its_files_largest_size_is_restarted_at_its_share(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart SQLite writes the WAL from its start again and the file keeps its largest
    size, so the file's size says nothing while the WAL refills below it (a checkpointer looking at
    the size let it refill to 61 MB at 300 events/s, between 2 s rounds). Scaled down: a 4 MB limit
    (restart past 1 MB), the file grown to 3.5 MB by one commit, rounds every 30 s (none within the
    test), then commits of 16 claims every 10 ms (about 2.5 MB/s of WAL) until the WAL
    would reach the file's largest size."""
    from buidl_edge.store.sqlite import db as sqlite_db

    limit = 4 * 1024 * 1024
    monkeypatch.setattr(sqlite_db, "WAL_SIZE_LIMIT_BYTES", limit)
    store = SqliteStore(db, checkpoint_interval_s=30.0)
    wal = Path(f"{db}-wal")
    try:
        store.run_batch([store.claim_txn(env(f"B{i}", f"EvB{i}", text="x" * 3500), ME) for i in range(850)])
        grown = wal.stat().st_size
        assert grown > 3 * 1024 * 1024, f"the WAL file only grew to {grown} bytes"
        probe = sqlite3.connect(db, timeout=5)
        wait_until(lambda: probe.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] == 0, 10,
                   "a RESTART checkpoint: the next commit starts the WAL over")
        probe.close()
        largest = written = 0
        before = wal.stat().st_size
        while written < 3_000_000 and wal.stat().st_size <= before:  # below the file's largest size
            store.run_batch([store.claim_txn(env(f"E{written + i}", f"Ev{written + i}", text="x" * 400), ME)
                             for i in range(16)])
            written += 16 * 1_000  # about what 16 claims add to the WAL (rows and index entries)
            largest = max(largest, frames_in_wal(wal))
            time.sleep(0.01)
    finally:
        store.close()
    held_mb = largest * 4096 / 1024 / 1024
    assert held_mb <= 2.0, f"the WAL held {held_mb:.1f} MB (limit 4 MB, restart past 1 MB)"


LEADER = """
import sys, time
from buidl_edge.store.sqlite import SqliteStore
store = SqliteStore(sys.argv[1], checkpoint_interval_s=0.05)
while store.checkpoints.rounds == 0:
    time.sleep(0.01)
print("checkpointing", flush=True)
time.sleep(60)
"""


def test_one_process_at_a_time_checkpoints_a_file_and_another_takes_over_after_a_kill(db: Path) -> None:
    """Two workers' checkpointers on one file fought (each one's RESTART failed at once while the
    other held SQLite's checkpoint lock). The first to open the file checkpoints it; the second
    runs no round while the first lives, and takes over once it is killed (kill -9)."""
    SqliteStore(db, checkpoint_interval_s=None).close()  # the file exists before both open it
    leader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LEADER), str(db)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert leader.stdout is not None and leader.stdout.readline().strip() == "checkpointing"
        follower = SqliteStore(db, checkpoint_interval_s=0.05)
        try:
            for i in range(40):  # writes across many of the leader's rounds
                follower.claim(env(f"E{i}", f"Ev{i}"), ME)
                time.sleep(0.01)
            assert follower.checkpoints.rounds == 0, "both processes ran checkpoints on one file"
            os.kill(leader.pid, signal.SIGKILL)
            leader.wait(10)
            wait_until(lambda: follower.checkpoints.rounds > 0, 10, "the second process to take over")
        finally:
            follower.close()
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait(10)
