"""A worker SIGKILLed during a store episode after its handlers finished: nothing runs or posts twice.

During a held write lock or a full disk a handler's finish (the envelope done, its replies queued)
cannot land in the store; during a full disk its replies go out from the process's memory. A kill
-9 then must not make the next worker's sweep run those handlers again (their inbox rows still say
`processing`) nor post their replies a second time. Real worker processes, the real simulator, a
real SQLite file on a real full tmpfs, a real second process holding the write lock.
"""
from __future__ import annotations

import signal
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from buidl_edge.sandbox.harness import WriteLockHolder, fill_disk, wait_until
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from support import Workers, app_folder, keys, log_lines, wait_acked
from test_store_pressure import sqlite_keys

pytestmark = pytest.mark.timeout(90)

# Each handler waits for the test's go-ahead (a file), so that it finishes inside the episode;
# then it records its run (outside the store's disk) and replies.
APP = textwrap.dedent('''
    import os
    import time
    from pathlib import Path

    from buidl_edge import EdgeApp

    app = EdgeApp("episode_kill")

    @app.event("message")
    def on_message(event, ctx):
        go = Path(os.environ["EPISODE_GO"])
        while not go.exists():
            time.sleep(0.02)
        with open(os.environ["EPISODE_RUNS"], "a") as runs:
            runs.write(event["text"] + "\\n")
        ctx.say("seen: " + event["text"])
''')
COUNT = 8


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return app_folder(tmp_path_factory, "episode_kill_app", APP)


@pytest.fixture
def workers(fresh_simulator: SimulatorProcess, tmp_path: Path, app_dir: Path) -> Iterator[Workers]:
    fresh_simulator.client.configure(post_rate=100.0, post_burst=100)
    pool = Workers(fresh_simulator, tmp_path, app_dir, BUIDL_APP="episode_kill_app:app", BUIDL_POST_RATE=100,
                   BUIDL_POST_BURST=100, BUIDL_CLAIM_WAIT_S=0.5, EPISODE_GO=tmp_path / "go",
                   EPISODE_RUNS=tmp_path / "runs.txt")
    yield pool
    pool.stop_all()


def runs(workers: Workers) -> Counter[str]:
    path = workers.tmp_path / "runs.txt"
    return Counter(path.read_text().splitlines() if path.exists() else [])


def replies(sim: SimulatorClient, prefix: str) -> Counter[str]:
    return Counter(m.get("text") or "" for m in sim.state()["messages"]
                   if (m.get("text") or "").startswith(f"seen: {prefix} "))


def inject(sim: SimulatorClient, prefix: str) -> list[str]:
    injected = [key for i in range(COUNT) for key in keys(sim.inject("message", text=f"{prefix} {i}"))]
    wait_acked(sim, injected)
    return injected


def assert_once_each(workers: Workers, prefix: str) -> None:
    """After the next worker took over: idle, each handler run once, each reply posted once."""
    wait_until(lambda: len(replies(workers.client, prefix)) == COUNT, 30, f"{COUNT} replies", interval=0.2)
    workers.wait_idle(30)
    texts = [f"{prefix} {i}" for i in range(COUNT)]
    posted = replies(workers.client, prefix)
    assert posted == Counter(f"seen: {t}" for t in texts), posted
    ran = Counter({text: n for text, n in runs(workers).items() if text.startswith(f"{prefix} ")})
    assert ran == Counter(texts), ran


def test_a_worker_killed_while_its_finishes_wait_on_a_held_lock_has_none_run_again(
        workers: Workers) -> None:
    first = workers.start()
    inject(workers.client, "held")  # claimed: each handler waits for the go-ahead
    holder = WriteLockHolder(workers.state_dir / "edge.sqlite3")
    try:
        (workers.tmp_path / "go").touch()
        wait_until(lambda: sum(runs(workers).values()) == COUNT, 10, "every handler finished")
        # The finishes wait on the lock; a claim past the bound makes the episode known.
        keys(workers.client.inject("message", text="nudge"))
        wait_until(lambda: log_lines(first, "store busy"), 10, "the episode")
        first.signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        holder.release()
    workers.start()
    assert_once_each(workers, "held")


def test_a_worker_killed_after_posting_replies_from_memory_on_a_full_disk_has_none_posted_again(
        workers: Workers, small_disk: Path) -> None:
    state = small_disk / "state"
    first = workers.start(BUIDL_STATE_DIR=state)
    inject(workers.client, "full")  # claimed while the disk had room
    filler = fill_disk(small_disk)
    (workers.tmp_path / "go").touch()
    # Their finishes fail: the replies go out from the worker's memory.
    wait_until(lambda: len(replies(workers.client, "full")) == COUNT, 15, "every reply posted from memory")
    assert log_lines(first, "level=error .*degraded")
    first.signal(signal.SIGKILL)
    first.wait(timeout=10)
    filler.unlink()
    workers.start(BUIDL_STATE_DIR=state)
    assert_once_each(workers, "full")


def test_a_worker_killed_after_deciding_claims_locally_on_a_full_disk_leaves_them_to_be_written_back(
        workers: Workers, small_disk: Path) -> None:
    """Claims the full disk refused for 5 s are decided on the worker's own dedup, handled, and their
    replies posted from memory; until written back they live only in that process. Killed then, the
    next worker must still write their claims (a Slack retry elsewhere is recognised) and neither run
    nor post anything again."""
    state = small_disk / "state"
    (workers.tmp_path / "go").touch()
    first = workers.start(BUIDL_STATE_DIR=state)
    filler = fill_disk(small_disk)
    injected = inject(workers.client, "local")
    wait_until(lambda: len(replies(workers.client, "local")) == COUNT, 20, "every reply posted from memory")
    assert log_lines(first, "handled on this process's own dedup")
    first.signal(signal.SIGKILL)
    first.wait(timeout=10)
    filler.unlink()
    workers.start(BUIDL_STATE_DIR=state)
    assert_once_each(workers, "local")
    wait_until(lambda: {f"evt:{key}" for key in injected} <= sqlite_keys(state / "edge.sqlite3"), 10,
               "every event's claim in the store")
