"""Issue 26: a handler's finish may wait up to BUIDL_FINISH_DELAY_MS to ride a later commit. Real
worker processes, the real simulator and a real SQLite file: a SIGTERM drain writes the waiting
finishes (the file says done), and a SIGKILL right after the handlers finished posts no reply twice
(a finish journaled before the kill is stored by the next worker's sweep, not run again)."""
from __future__ import annotations

import signal
from collections import Counter

import pytest

from buidl_edge.sandbox.harness import wait_until
from buidl_edge.store.sqlite import SqliteStore
from support import Workers
from test_kill_in_store_episode import COUNT, app_dir, inject, replies, runs, workers  # noqa: F401

pytestmark = pytest.mark.timeout(90)

LONGEST_DELAY_MS = 100  # the ceiling: the widest window a kill can fall in


def test_a_sigterm_drain_writes_the_finishes_that_wait_for_a_later_commit(workers: Workers) -> None:  # noqa: F811
    worker = workers.start(BUIDL_FINISH_DELAY_MS=LONGEST_DELAY_MS)
    inject(workers.client, "drain")  # claimed: each handler waits for the go-ahead
    worker.signal(signal.SIGTERM)
    (workers.tmp_path / "go").touch()  # they finish during the drain: no claim comes after them
    assert worker.wait(timeout=20) == 0
    assert replies(workers.client, "drain") == Counter(f"seen: drain {i}" for i in range(COUNT))
    store = SqliteStore(workers.state_dir / "edge.sqlite3", checkpoint_interval_s=None)
    try:
        assert Counter(row["state"] for row in store.inbox_list(limit=100)) == {"done": COUNT}
    finally:
        store.close()


def test_a_sigkill_right_after_the_handlers_finished_posts_no_reply_twice(workers: Workers) -> None:  # noqa: F811
    first = workers.start(BUIDL_FINISH_DELAY_MS=LONGEST_DELAY_MS)
    inject(workers.client, "kill")
    (workers.tmp_path / "go").touch()
    wait_until(lambda: sum(runs(workers).values()) == COUNT, 10, "every handler finished", interval=0.01)
    first.signal(signal.SIGKILL)  # within (or just past) the bound their finishes may wait
    first.wait(timeout=10)
    workers.start(BUIDL_FINISH_DELAY_MS=LONGEST_DELAY_MS)
    wait_until(lambda: len(replies(workers.client, "kill")) == COUNT, 30, f"{COUNT} replies", interval=0.2)
    workers.wait_idle(30)
    assert replies(workers.client, "kill") == Counter(f"seen: kill {i}" for i in range(COUNT))
    ran = Counter({text: n for text, n in runs(workers).items() if text.startswith("kill ")})
    assert set(ran) == {f"kill {i}" for i in range(COUNT)}  # at least once each; a re-run posts only its own
