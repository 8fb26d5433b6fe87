"""The store under pressure, as production throws it: a write lock held by another process, a
full disk, Redis paused. Real worker processes (and `run`), the real simulator, real SQLite files
on a real (tmpfs) filesystem, a real redis-server.

What must hold in each: no ack waits on the store past BUIDL_CLAIM_WAIT_S (so none misses Slack's
3 s), every event is handled exactly once, the episode is one log line (and `/readyz` 503 all
through it), and what was decided locally reaches the shared store once it answers again.
"""
from __future__ import annotations

import re
import signal
import sqlite3
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from buidl_edge.sandbox.harness import WriteLockHolder, fill_disk, wait_until
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from redis_support import RedisServer, free_port
from support import Workers, app_folder, keys, log_lines

pytestmark = pytest.mark.timeout(90)

APP = textwrap.dedent('''
    from buidl_edge import EdgeApp

    app = EdgeApp("pressure")

    @app.event("message")
    def on_message(event, ctx):
        ctx.say("seen: " + event.get("text", ""))
''')
# Slack's ack deadline, as the simulator enforces it.
SLACK_DEADLINE_MS = 3000.0


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return app_folder(tmp_path_factory, "pressure_app", APP)


@pytest.fixture
def sim(fresh_simulator: SimulatorProcess) -> SimulatorClient:
    client = fresh_simulator.client
    client.configure(post_rate=100.0, post_burst=100)  # replies are not what these tests measure
    return client


@pytest.fixture
def workers(fresh_simulator: SimulatorProcess, tmp_path: Path, app_dir: Path) -> Iterator[Workers]:
    pool = Workers(fresh_simulator, tmp_path, app_dir, BUIDL_APP="pressure_app:app", BUIDL_POST_RATE=100,
                   BUIDL_POST_BURST=100, BUIDL_CLAIM_WAIT_S=1.0)
    yield pool
    pool.stop_all()


# -- helpers -----------------------------------------------------------------------------------


class ReadySampler:
    """GET /readyz every 50 ms on a thread: (monotonic time, status or None) for each sample."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                status: int | None = requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code
            except requests.RequestException:
                status = None
            self.samples.append((time.monotonic(), status))

    def between(self, start: float, end: float) -> list[int | None]:
        return [status for at, status in self.samples if start <= at <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def inject_spread(sim: SimulatorClient, count: int, seconds: float, prefix: str) -> list[str]:
    """`count` messages over `seconds`, one by one, as Slack delivers them (not one burst)."""
    injected: list[str] = []
    for i in range(count):
        injected += keys(sim.inject("message", text=f"{prefix} {i}"))
        time.sleep(seconds / count)
    return injected


def ack_latencies(sim: SimulatorClient, wanted: list[str]) -> list[float]:
    acks = sim.state()["acks"]
    return [ack["latency_ms"] for ack in acks if ack["key"] in set(wanted)]


def reply_counts(sim: SimulatorClient, prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in sim.state()["messages"]:
        text = message.get("text") or ""
        if text.startswith(f"seen: {prefix} "):
            counts[text] = counts.get(text, 0) + 1
    return counts


def wait_handled_once(workers: Workers, prefix: str, count: int, timeout: float = 30) -> None:
    """Every event answered; then, the workers idle (no reply still queued), none answered twice."""
    wait_until(lambda: len(reply_counts(workers.client, prefix)) == count, timeout,
               f"{count} replies to {prefix!r}", interval=0.2)
    workers.wait_idle(timeout)
    counts = reply_counts(workers.client, prefix)
    assert sorted(counts.values()) == [1] * count, counts


def sqlite_keys(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT key FROM keys")}
    finally:
        conn.close()


def assert_every_line_is_one_log_line(output: str) -> None:
    """No raw traceback (gevent's threadpool printed one per failed chore): every line is logfmt."""
    stray = [line for line in output.splitlines() if line.strip() and not line.startswith("ts=")]
    assert not stray, stray[:10]


# -- 1. a write lock held by another process ----------------------------------------------------


def test_a_write_lock_held_for_seconds_holds_no_ack_and_what_was_decided_meanwhile_is_written_back(
        sim: SimulatorClient, workers: Workers, tmp_path: Path) -> None:
    port = free_port()
    first = workers.start(BUIDL_HTTP_PORT=port, BUIDL_HTTP_HOST="127.0.0.1")
    db = workers.state_dir / "edge.sqlite3"
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, 15,
               "/readyz 200")
    ready = ReadySampler(port)
    holder = WriteLockHolder(db)
    held_at = time.monotonic()
    try:
        injected = inject_spread(sim, 24, 4.0, "locked")
        sim.wait_for(lambda s: all(s["events"][k]["acked"] for k in injected), 10, "every event acked",
                     source="state")
        # Still held: the episode is on, and /readyz says so.
        wait_until(lambda: ready.samples and ready.samples[-1][1] == 503, 5, "/readyz 503 while the lock is held")
        while time.monotonic() < held_at + 6.0:  # the lock is held 6 s in all, past Slack's deadline
            time.sleep(0.1)
    finally:
        released_at = time.monotonic()
        holder.release()
    wait_handled_once(workers, "locked", len(injected))
    wait_until(lambda: log_lines(first, "store writable again"), 15, "the episode's end")
    ready.stop()

    latencies = ack_latencies(sim, injected)
    assert len(latencies) == len(injected)
    assert max(latencies) < SLACK_DEADLINE_MS, sorted(latencies)[-5:]
    assert sim.summary()["missed_deadlines"] == 0
    # One episode: one warning naming the cause, one line at its end.
    busy = log_lines(first, r"msg=\"store busy")
    assert len(busy) == 1 and "level=warning" in busy[0], busy
    assert len(log_lines(first, "store writable again")) == 1
    # /readyz said 503 from the first answer the store could not give in time to the release.
    first_ack = held_at + 1.5
    during = ready.between(first_ack, released_at)
    assert during and set(during) == {503}, during
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, 10,
               "/readyz 200 again")

    # Written back: a Slack retry landing on another process afterwards is recognised.
    wait_until(lambda: {f"evt:{key}" for key in injected} <= sqlite_keys(db), 10, "every event's key in the file")
    workers.stop_all()
    second = workers.start()
    for key in injected:
        sim.fault("redeliver", key=key)
    wait_until(lambda: len(log_lines(second, "duplicate .* acked and dropped")) == len(injected), 15,
               "every redelivery dropped as a duplicate")
    assert sorted(reply_counts(sim, "locked").values()) == [1] * len(injected)


def test_a_worker_killed_while_the_lock_is_held_loses_none_of_what_it_acked_undecided(
        sim: SimulatorClient, workers: Workers) -> None:
    """Acked before the store decided them, the envelopes live in the worker until it does: a
    kill -9 then must not lose them (Slack will not send them again). The next worker on the host
    takes the dead one's spill file, claims them, and handles the new ones, once each."""
    first = workers.start()
    db = workers.state_dir / "edge.sqlite3"
    holder = WriteLockHolder(db)
    try:
        injected = inject_spread(sim, 12, 2.0, "killed")
        sim.wait_for(lambda s: all(s["events"][k]["acked"] for k in injected), 10, "every event acked",
                     source="state")
        first.signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        holder.release()
    workers.start()  # its sweep finds the dead worker's spill file
    wait_handled_once(workers, "killed", len(injected))


# -- 2. a full disk -----------------------------------------------------------------------------


def test_a_full_disk_is_one_episode_with_readyz_503_throughout_and_writes_resume_when_space_returns(
        sim: SimulatorClient, workers: Workers, small_disk: Path, fresh_simulator: SimulatorProcess) -> None:
    port = free_port()
    state = small_disk / "state"
    # With Sentry on, as in production: its report can yield to other greenlets mid-episode start.
    worker = workers.start(BUIDL_STATE_DIR=state, BUIDL_HTTP_PORT=port, BUIDL_HTTP_HOST="127.0.0.1",
                           SENTRY_DSN=fresh_simulator.sentry_dsn())
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, 15,
               "/readyz 200")
    ready = ReadySampler(port)
    filler = fill_disk(small_disk)
    full_at = time.monotonic()
    injected = [key for i in range(40) for key in keys(sim.inject("message", text=f"full b{i}"))]  # at once
    injected += inject_spread(sim, 30, 3.0, "full")
    sim.wait_for(lambda s: all(s["events"][k]["acked"] for k in injected), 10, "every event acked", source="state")
    wait_handled_once(workers, "full", len(injected))
    wait_until(lambda: log_lines(worker, "level=error .*degraded"), 10, "the episode's start")
    episode_start = time.monotonic()
    while time.monotonic() < episode_start + 3.0:  # the heartbeat writes (and fails) every 2 s meanwhile
        time.sleep(0.1)
    freed_at = time.monotonic()
    filler.unlink()
    wait_until(lambda: log_lines(worker, "store writable again"), 20, "the episode's end")
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, 10,
               "/readyz 200 again")
    ready.stop()

    assert len(log_lines(worker, "level=error .*degraded")) == 1, log_lines(worker, "degraded")
    assert len(log_lines(worker, "store writable again")) == 1
    first_failure = full_at + 1.0  # a write that would grow a file fails at once; give the first claim time
    during = ready.between(max(first_failure, episode_start), freed_at)
    assert during and set(during) == {503}, during
    assert_every_line_is_one_log_line(worker.output())
    stored = [e for e in sim.sentry()["events"] if e["tags"].get("report") == "store_failure"]
    assert len(stored) == 1, [e["message"] for e in stored]  # one Sentry event for the episode
    # Written back once space returned: every event's key is in the file.
    db = state / "edge.sqlite3"
    wait_until(lambda: {f"evt:{key}" for key in injected} <= sqlite_keys(db), 10, "every event's key in the file")


# -- 3. Redis paused ----------------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_redis_paused_for_writes_holds_no_ack_and_the_claims_land_when_it_answers(
        sim: SimulatorClient, workers: Workers, own_redis: RedisServer) -> None:
    worker = workers.start(BUIDL_STORE_URL=own_redis.url)
    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("CLIENT", "PAUSE", 6000, "WRITE")
    injected = inject_spread(sim, 20, 3.0, "paused")
    sim.wait_for(lambda s: all(s["events"][k]["acked"] for k in injected), 10, "every event acked", source="state")
    wait_handled_once(workers, "paused", len(injected), timeout=30)
    wait_until(lambda: log_lines(worker, "store writable again"), 20, "the episode's end")

    latencies = ack_latencies(sim, injected)
    assert len(latencies) == len(injected) and max(latencies) < SLACK_DEADLINE_MS, sorted(latencies)[-5:]
    # The pause was met: claims waited past BUIDL_CLAIM_WAIT_S for it (one episode), and no ack did.
    busy = log_lines(worker, r"msg=\"store busy")
    assert len(busy) == 1 and "level=warning" in busy[0], busy
    assert len(log_lines(worker, "store writable again")) == 1
    stored = {key.decode() for key in admin.scan_iter(match="*evt:*")}
    for key in injected:
        assert any(re.search(re.escape(f"evt:{key}"), name) for name in stored), key


# -- under `run`: the dyno's one endpoint -------------------------------------------------------


def test_under_run_the_dynos_readyz_is_503_while_a_worker_is_degraded_though_its_heartbeat_cannot_land(
        stacks: Any, sim: SimulatorClient) -> None:
    """The dyno's /readyz reads the workers' heartbeats from the store, which is what a held lock
    keeps from landing: the worker tells supervisord instead (process communication events)."""
    port = free_port()
    stack = stacks(BUIDL_PROCESSES=1, BUIDL_HTTP_PORT=port, BUIDL_HTTP_HOST="127.0.0.1",
                   BUIDL_CLAIM_WAIT_S=0.5).start()
    stack.wait_up(processes=1, connections=1)
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, 20,
               "/readyz 200")
    holder = WriteLockHolder(stack.state_dir / "edge.sqlite3")
    try:
        injected = keys(sim.inject("message", count=3, text="held"))
        sim.wait_for(lambda s: all(s["events"][k]["acked"] for k in injected), 10, "every event acked",
                     source="state")
        answer = wait_until(lambda: (r := requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).status_code
                            == 503 and r.text, 5, "/readyz 503 while the lock is held")
        assert "store busy" in answer
    finally:
        holder.release()
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, 20,
               "/readyz 200 once the store is writable again")
    output = stack.out_path.read_text(errors="replace")
    assert "XSUPERVISOR" not in output and "buidl-store degraded" not in output
