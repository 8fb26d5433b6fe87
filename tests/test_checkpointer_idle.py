"""What the SQLite checkpointer costs a quiet store: a WAL far below its limit is not checkpointed
after every small commit (an idle worker's lease renewal, every 10 s, cost a checkpoint with two
fdatasyncs each time), and is checkpointed once it holds enough to be worth one (issue 26)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from buidl_edge.sandbox.harness import wait_until
from buidl_edge.store.sqlite import SqliteStore
from support import ME, envelope as env


def threads() -> set[str]:
    return {task.name for task in Path(f"/proc/{os.getpid()}/task").iterdir()}


def runs(tid: str) -> int:
    """How many times the thread has run (been woken): schedstat's third field."""
    return int(Path(f"/proc/{os.getpid()}/task/{tid}/schedstat").read_text().split()[2])


def ran_again(tid: str, times: int) -> Callable[[], bool]:
    since = runs(tid)
    return lambda: runs(tid) >= since + times


def test_small_commits_on_a_quiet_store_cost_no_checkpoint(tmp_path: Path) -> None:
    before = threads()
    store = SqliteStore(tmp_path / "state" / "edge.db", checkpoint_interval_s=0.05)
    try:
        [checkpointer] = threads() - before
        wait_until(lambda: store.checkpoints.rounds >= 1, 10, "the round at start")
        first = store.checkpoints.rounds
        for i in range(10):  # a commit of a few pages, then rounds of the checkpointer after it
            store.claim(env(f"E{i}", f"Ev{i}"), ME)
            wait_until(ran_again(checkpointer, 3), 10, "the checkpointer's rounds after a commit")
        rounds = store.checkpoints.rounds - first
    finally:
        store.close()
    assert rounds == 0, f"{rounds} checkpoints for 10 commits of a few pages each"


def test_a_quiet_store_still_checkpoints_a_wal_past_its_small_share(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state" / "edge.db", checkpoint_interval_s=0.05)
    try:
        wait_until(lambda: store.checkpoints.rounds >= 1, 10, "the round at start")
        first = store.checkpoints.rounds
        store.run_batch([store.claim_txn(env(f"B{i}", f"EvB{i}", text="x" * 3500), ME) for i in range(400)])
        wait_until(lambda: store.checkpoints.rounds > first, 10, "a checkpoint of a WAL of over 1 MB")
    finally:
        store.close()
