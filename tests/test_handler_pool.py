"""Handler capacity and the hub: a full pool, CPU-bound handlers, threaded handlers, drains.

Real worker processes against the real simulator, each with a test app written to a
temp dir. Slack's 3 s ack deadline is what these tests hold the worker to.
"""
from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.config import load_settings
from buidl_edge.ops.status import collect_status
from buidl_edge.sandbox.harness import wait_until
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from buidl_edge.store import open_store
from support import Workers, app_folder, keys, log_lines, wait_acked

pytestmark = pytest.mark.timeout(90)

POOL_APP = textwrap.dedent('''
    import logging
    import time
    from buidl_edge import EdgeApp

    app = EdgeApp("pool-test")
    library_log = logging.getLogger("pool_test_app.library")  # what a library would log from a thread

    def spin(seconds):
        """CPU-bound and never yielding, like a tight loop or a blocking C call."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    @app.event("message")
    def on_message(event, ctx):
        words = event.get("text", "").split()
        if words[:1] == ["chatty"]:
            for n in range(3000):
                ctx.logger.info("chatty line %d", n)
                if n % 50 == 0:
                    time.sleep(0)  # lets the other greenlets in (the worker is patched)
        if words[:1] == ["slow"]:
            time.sleep(float(words[1]))  # cooperative: the worker is patched
        elif words[:1] == ["spin"]:
            spin(float(words[1]))
        ctx.say("seen: " + event["text"])

    @app.event("app_mention", threaded=True)
    def on_mention_in_a_thread(event, ctx):
        words = event.get("text", "").split()
        lines = 0
        if words[:1] == ["spin"]:  # CPU-bound: logging as fast as it can, while greenlets log too
            end = time.monotonic() + float(words[1])
            while time.monotonic() < end:
                lines += 1
                library_log.info("threaded line %d", lines)
        key = "mention:" + event["ts"]
        first, again = ctx.once(key), ctx.once(key)
        ctx.logger.info("threaded handler done after %d lines", lines)
        ctx.say(f"threaded: {event['text']} once={first},{again} lines={lines}")

    @app.command("/later")
    def later(payload, ctx):
        ctx.say("later: " + payload["text"])
        return {"text": "in time"}

    @app.command("/threaded", threaded=True)
    def threaded_command(payload, ctx):
        spin(0.2)
        return {"text": "from a thread: " + payload["text"]}
''')
POOL_APP_SPEC = "pool_test_app:app"


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return app_folder(tmp_path_factory, "pool_test_app", POOL_APP)


@pytest.fixture
def workers(fresh_simulator: SimulatorProcess, tmp_path: Path, app_dir: Path) -> Iterator[Workers]:
    pool = Workers(fresh_simulator, tmp_path, app_dir, BUIDL_POST_RATE=100, BUIDL_POST_BURST=100,
                   BUIDL_APP=POOL_APP_SPEC)
    yield pool
    pool.stop_all()


@pytest.fixture
def sim(fresh_simulator: SimulatorProcess) -> SimulatorClient:
    client = fresh_simulator.client
    client.configure(post_rate=100.0, post_burst=100)
    return client


def texts(sim: SimulatorClient) -> list[str]:
    return [m["text"] for m in sim.state()["messages"]]


def worker_status(env: dict[str, str]) -> dict[str, Any] | None:
    """This worker's row of `buidl-edge status` (unsupervised: from its heartbeat), with its raw stats."""
    settings = load_settings(env)
    store = open_store(settings, threaded=False)
    try:
        rows = collect_status(settings, store)["processes"]
        beats = store.workers(max_age_s=15)
    finally:
        store.close()
    if not rows or not beats:
        return None
    return {"row": rows[0], "dispatch": beats[0]["stats"]["dispatch"]}


# -- a full handler pool -----------------------------------------------------------------------


def test_full_pool_acks_a_slash_command_at_once_and_queues_its_handler(
        sim: SimulatorClient, workers: Workers) -> None:
    worker = workers.start()
    env = worker.env
    busy = keys(sim.inject("message", channel="C0BUSY", text="slow 10", count=200))
    wait_acked(sim, busy)
    full = wait_until(lambda: (s := worker_status(env)) and s["dispatch"].get("handlers_running") == 200 and s,
                      10, "200 handlers running in the heartbeat")
    assert full["dispatch"]["handlers_queued"] == 0
    [command] = sim.inject("slash_command", command="/later", text="queued", channel="C0CMD")
    after = keys(sim.inject("message", channel="C0AFTER", text="after", count=5))
    events = wait_acked(sim, [command["key"]] + after, timeout=5)["events"]
    # Acked at once, without the payload its handler would have returned: it waited for no answer
    # (that wait ends in a "missed the ack deadline" warning before its ack), and no ack was late.
    assert events[command["key"]]["ack_payloads"] == []
    assert not log_lines(worker, r"missed the .*ack deadline")
    summary = sim.summary()
    assert summary["late_acks"] == 0 and summary["missed_deadlines"] == 0
    [warned] = log_lines(worker, r"handler pool full")
    assert "level=warning" in warned and f"envelope_id={command['envelope_id']}" in warned
    # The backlog shows in the heartbeat and in `status`.
    # (`status` and the raw heartbeat are two reads: a heartbeat can land between them.)
    backlog = wait_until(lambda: (s := worker_status(env)) and s["dispatch"].get("handlers_queued") == 6
                         and s["row"]["queued"] == 6 and s, 10, "6 handlers queued in the heartbeat and in status")
    assert backlog["dispatch"]["handlers_running"] == 200
    assert backlog["dispatch"]["handlers_queued_max"] == 6 and backlog["dispatch"]["acks_pool_full"] == 1
    assert backlog["row"]["running"] == 200 and backlog["row"]["queued"] == 6
    # Once the slow ones finish, the queued handlers run, in arrival order.
    sim.wait_for(lambda s: len(s["messages"]) == 206, 30, "every handler's reply", source="state")
    posted = texts(sim)
    assert posted.count("seen: slow 10") == 200 and posted.count("later: queued") == 1
    assert posted.count("seen: after") == 5


# -- a handler that blocks the hub ---------------------------------------------------------------


def test_cpu_bound_handler_is_reported_once_by_name_and_envelope(sim: SimulatorClient, workers: Workers) -> None:
    worker = workers.start(BUIDL_STORE_URL="memory://")
    [spinner] = sim.inject("message", channel="C0SPIN", text="spin 3")
    sim.wait_for(lambda s: "seen: spin 3" in [m["text"] for m in s["messages"]], 15, "the spinner's reply",
                 source="state")
    [warned] = log_lines(worker, r"hub blocked.*handler on_message")  # one line for the whole episode
    assert "level=warning" in warned
    assert f"envelope_id={spinner['envelope_id']}" in warned


def test_threaded_handler_leaves_the_hub_free_to_ack(sim: SimulatorClient, workers: Workers) -> None:
    worker = workers.start()
    [spinner] = sim.inject("app_mention", channel="C0THREAD", text="spin 4")
    meanwhile: list[str] = []
    for n in range(8):  # over the 4 s the handler holds its thread
        meanwhile += keys(sim.inject("message", channel="C0MEANWHILE", text=f"chatty {n}"))
        time.sleep(0.4)
    command = keys(sim.inject("slash_command", command="/threaded", text="hi", channel="C0CMD"))
    events = wait_acked(sim, [spinner["key"]] + meanwhile + command)["events"]
    summary = sim.summary()
    assert summary["late_acks"] == 0 and summary["missed_deadlines"] == 0
    assert all(events[k]["first_ack_latency_ms"] < 3000 for k in meanwhile)
    # A threaded command's result still rides on the ack when it comes in time.
    assert events[command[0]]["ack_payloads"] == [{"text": "from a thread: hi"}]
    # ctx.once from the thread went to the shared (SQLite) store through the hub.
    sim.wait_for(lambda s: any(m["channel"] == "C0THREAD" for m in s["messages"]), 15, "the threaded reply",
                 source="state")
    [reply] = [t for t in texts(sim) if t.startswith("threaded:")]
    lines = int(reply.rpartition("lines=")[2])
    assert reply == f"threaded: spin 4 once=True,False lines={lines}" and lines > 100
    sim.wait_for(lambda s: sum(1 for m in s["messages"] if m["channel"] == "C0MEANWHILE") == 8, 15,
                 "the chatty replies", source="state")
    assert len(log_lines(worker, r"threaded line \d+")) == lines
    [done] = log_lines(worker, r"threaded handler done")
    assert f"envelope_id={spinner['envelope_id']}" in done and f"after {lines} lines" in done
    assert len(log_lines(worker, r"chatty line \d+")) == 8 * 3000
    assert not log_lines(worker, r"hub blocked|Traceback|level=error")


def test_ctx_once_from_a_threaded_handler_with_redis(sim: SimulatorClient, workers: Workers,
                                                     redis_server: Any) -> None:
    worker = workers.start(BUIDL_STORE_URL=redis_server.url + "?prefix=threaded-once:")
    sim.inject("app_mention", channel="C0REDIS", text="hello")
    sim.wait_for(lambda s: any(m["channel"] == "C0REDIS" for m in s["messages"]), 15, "the threaded reply",
                 source="state")
    assert [t for t in texts(sim) if t.startswith("threaded:")] == ["threaded: hello once=True,False lines=0"]
    assert not log_lines(worker, r"Traceback|level=error")


# -- drain and unknown commands ------------------------------------------------------------------


def test_drain_that_times_out_names_the_envelopes_left_and_the_next_start_reruns_them(
        sim: SimulatorClient, workers: Workers) -> None:
    worker = workers.start(BUIDL_HANDLER_CONCURRENCY=2, BUIDL_DRAIN_TIMEOUT=1)
    # 6 s each: longer than the heartbeat's age (up to 2 s) plus the 1 s drain, so the first two are
    # still running when the drain gives up.
    injected = sim.inject("message", channel="C0LEFT", text="slow 6", count=4)
    wait_acked(sim, keys(injected))
    # The first two handlers sleeping, the other two queued behind them (acked: both submitted).
    wait_until(lambda: (s := worker_status(worker.env)) and s["dispatch"].get("handlers_running") == 2
               and s["dispatch"].get("handlers_queued") == 2, 10, "2 handlers running and 2 queued in the heartbeat")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    [left] = log_lines(worker, r"drain timed out with")
    assert "level=warning" in left and "2 running, 2 queued" in left and "re-run" in left
    assert all(e["envelope_id"] in left for e in injected)
    assert log_lines(worker, r"level=warning.*worker stopped \(drain timed out\)")
    assert texts(sim) == []
    # The next start (same host, same SQLite store) takes them over from the dead pid.
    workers.start()
    sim.wait_for(lambda s: len(s["messages"]) >= 4, 20, "the 4 envelopes re-run", source="state")
    workers.wait_idle()  # a fifth run's reply would be in by then
    assert texts(sim) == ["seen: slow 6"] * 4


def test_unknown_slash_command_is_logged_once_per_name(sim: SimulatorClient, workers: Workers) -> None:
    worker = workers.start(BUIDL_STORE_URL="memory://")
    injected = keys(sim.inject("slash_command", command="/nope", text="a", count=2))
    injected += keys(sim.inject("slash_command", command="/other", text="b"))
    injected += keys(sim.inject("slash_command", command="/later", text="known"))
    wait_acked(sim, injected)
    sim.wait_for(lambda s: len(s["messages"]) == 1, 10, "the known command's reply", source="state")
    unknown = log_lines(worker, r"no handler for slash command")
    assert len(unknown) == 2 and all("level=warning" in line for line in unknown)
    assert [line for line in unknown if "/nope" in line] and [line for line in unknown if "/other" in line]


# -- the parts, in process -------------------------------------------------------------------


def test_pool_queues_past_its_size_and_starts_the_queue_in_arrival_order() -> None:
    import gevent
    import gevent.event

    from buidl_edge.dispatch.handler_pool import HandlerPool

    pool = HandlerPool(2)
    release = gevent.event.Event()
    order: list[str] = []

    def handler(name: str) -> str:
        order.append(name)
        release.wait()
        return name.upper()

    jobs = [pool.submit(f"env-{n}", handler, f"h{n}") for n in range(5)]
    assert [job.started for job in jobs] == [True, True, False, False, False]
    gevent.sleep(0)
    assert (pool.running, pool.queued, pool.max_queued) == (2, 3, 3)
    assert pool.left() == (["env-0", "env-1"], ["env-2", "env-3", "env-4"])
    assert pool.join(timeout=0.05) is False
    release.set()
    assert pool.join(timeout=5) is True
    assert order == ["h0", "h1", "h2", "h3", "h4"]
    assert [job.value for job in jobs] == ["H0", "H1", "H2", "H3", "H4"]
    assert pool.stats() == {"handlers_running": 0, "handlers_queued": 0, "handlers_queued_max": 3}


def test_pool_reuses_its_greenlets_and_each_job_starts_with_a_fresh_context() -> None:
    import contextvars

    import gevent

    from buidl_edge.dispatch.handler_pool import HandlerPool

    pool = HandlerPool(3)
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    seen: list[tuple[object, str]] = []

    def handler(name: str) -> None:
        seen.append((gevent.getcurrent(), marker.get()))
        marker.set(name)  # never reset: the next job on this greenlet must not see it
        gevent.sleep(0.001)
        if name == "h2":
            raise RuntimeError("a bug below the dispatcher")  # the pool goes on

    for round_ in range(4):
        for n in range(3):
            pool.submit(f"env-{round_}-{n}", handler, f"h{n}")
        assert pool.join(timeout=5) is True
    assert [value for _, value in seen] == ["unset"] * 12
    assert len({id(g) for g, _ in seen}) == 3  # 12 jobs, the same 3 greenlets
    assert pool.stats()["handlers_running"] == 0


def test_hub_call_runs_a_native_threads_call_on_the_hub(tmp_path: Path) -> None:
    import threading

    import gevent

    from buidl_edge.dispatch.handler_threads import HubCall
    from buidl_edge.store.sqlite import SqliteStore
    from buidl_edge.store.threaded import ThreadedStore

    store = ThreadedStore(SqliteStore(tmp_path / "edge.sqlite3"))
    hub_call = HubCall()
    seen: dict[str, Any] = {}

    def on_hub(key: str) -> bool:
        seen.setdefault("on_hub", []).append(hub_call.on_hub_thread())
        gevent.sleep(0.01)  # it may yield: it runs in a greenlet of its own
        return store.claim_key(key)

    def fails() -> None:
        raise LookupError("raised on the hub")

    def in_thread() -> None:
        seen["first"], seen["again"] = hub_call(on_hub, "k"), hub_call(on_hub, "k")
        try:
            hub_call(fails)
        except LookupError as exc:
            seen["error"] = str(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    while thread.is_alive():  # the hub must run for the thread's calls to be served
        gevent.sleep(0.01)
    store.close()
    assert seen == {"on_hub": [True, True], "first": True, "again": False, "error": "raised on the hub"}


def test_threaded_handler_runs_off_the_hub_thread_in_the_callers_log_context() -> None:
    from buidl_edge.dispatch.handler_threads import HandlerThreads, HubCall
    from buidl_edge.observability.logs import _log_context, log_context

    threads, hub_call = HandlerThreads(2), HubCall()

    def handler() -> tuple[bool, Any]:
        return hub_call.on_hub_thread(), _log_context.get().get("envelope_id")

    with log_context(envelope_id="env-threaded"):
        assert threads.run(handler) == (False, "env-threaded")
    threads.close()


def test_hub_watch_names_a_blocking_greenlet_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    import gevent

    from buidl_edge.runtime.hubwatch import HubWatch

    def busy_loop(seconds: float, secret: str) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    watch = HubWatch(0.2, describe=lambda greenlet: None)
    caplog.set_level("INFO", logger="buidl_edge.hubwatch")
    watch.start()
    try:
        gevent.sleep(0.3)  # a quiet hub: nothing to say
        assert not caplog.records
        gevent.spawn(busy_loop, 1.0, "an envelope's text").join()
        gevent.sleep(0.5)  # the hub runs again: the episode ends
        gevent.spawn(busy_loop, 0.7, "an envelope's text").join()
        gevent.sleep(0.5)
    finally:
        watch.stop()
    # Only the busy loops count: on a loaded machine the OS may also stall this process in between.
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for m in messages if m.startswith("hub blocked") and "busy_loop" in m]
    assert len(warnings) == 2, messages
    assert all("hub blocked for over 0.2s by greenlet " in w and "in busy_loop" in w for w in warnings)
    assert not any("an envelope's text" in m for m in messages)  # a greenlet's arguments stay out of the log
    assert len([m for m in messages if m.startswith("hub free again") and "busy_loop" in m]) == 2


@pytest.mark.parametrize("name,value,problem", [
    ("BUIDL_HANDLER_CONCURRENCY", "0", "BUIDL_HANDLER_CONCURRENCY must be at least 1"),
    ("BUIDL_HANDLER_THREADS", "0", "BUIDL_HANDLER_THREADS must be at least 1"),
    ("BUIDL_HUB_BLOCK_WARN_S", "-1", "BUIDL_HUB_BLOCK_WARN_S must be 0 \\(off\\) or more"),
    ("BUIDL_HANDLER_THREADS", "many", "BUIDL_HANDLER_THREADS must be a number"),
])
def test_handler_settings_are_checked(name: str, value: str, problem: str) -> None:
    from buidl_edge.config import ConfigError
    from buidl_edge.sandbox.harness import fake_tokens

    env = {**fake_tokens(), name: value}
    with pytest.raises(ConfigError, match=problem):
        load_settings(env)
    settings = load_settings(fake_tokens())
    assert (settings.handler_concurrency, settings.handler_threads, settings.hub_block_warn_s) == (200, 8, 0.5)
