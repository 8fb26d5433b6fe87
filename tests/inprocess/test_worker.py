"""Worker in this process against the real simulator, given its parts as supervisor's injected
`options` are (`Worker(settings, app, store=, webapi=)`): drain on SIGTERM, start-up backoff,
fatal stops, and refreshes within this process's overlap budget.
"""
from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from buidl_edge.api.app import EdgeApp
from buidl_edge.config import OutboxConfig, Settings
from buidl_edge.delivery.ratelimit import PostLimits
from buidl_edge.runtime.exitcodes import EXIT_FATAL, EXIT_OK
from buidl_edge.runtime.worker import Worker
from buidl_edge.sandbox.harness import wait_until
from buidl_edge.sandbox.simulator.client import SimulatorClient
from buidl_edge.socketmode.connection import SocketModeDisabled
from buidl_edge.store.memory import MemoryStore
from buidl_edge.webapi.client import WebApi
from support import keys, log_args, wait_acked

FAST_POSTS = OutboxConfig(limits=PostLimits(rate=100, burst=100))


def slow_echo_app() -> EdgeApp:
    app = EdgeApp("worker-test")

    @app.event("message")
    def on_message(event: dict[str, Any], ctx: Any) -> None:
        words = event.get("text", "").split()
        if words[:1] == ["slow"]:
            gevent.sleep(float(words[1]))  # cooperative, as in a patched worker
        ctx.say("seen: " + event["text"])

    return app


class Running:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.runner = gevent.spawn(worker.run)


@pytest.fixture
def workers(settings_for: Callable[..., Settings], sim: SimulatorClient) -> Iterator[Callable[..., Running]]:
    sim.configure(post_rate=100.0, post_burst=100)  # replies are not what these tests pace
    made: list[Running] = []

    def start(**env: Any) -> Running:
        settings = settings_for(**env)
        worker = Worker(settings, slow_echo_app(), store=MemoryStore(),
                        webapi=WebApi(settings.api_url, timeout=5), outbox_config=FAST_POSTS)
        made.append(Running(worker))
        return made[-1]

    yield start
    for running in made:
        running.worker.request_stop()
    gevent.joinall([r.runner for r in made], timeout=15)


def up(sim: SimulatorClient, running: Running, links: int = 1) -> None:
    sim.wait_for(lambda s: s["open_connections"] == links, 10, f"the worker's {links} link(s)")
    wait_until(lambda: running.worker.up, 10, "the worker to say it is up")


def replies(sim: SimulatorClient) -> list[str]:
    return sorted(m["text"] for m in sim.state()["messages"])


# ---------------------------------------------------------------- drain


def test_sigterm_drains_handlers_in_flight_sends_their_replies_and_exits_ok(
        sim: SimulatorClient, workers: Callable[..., Running], records: Callable[[str], list[logging.LogRecord]]
) -> None:
    running = workers()
    up(sim, running)
    injected = keys(sim.inject("message", channel="C0DRAIN", text="slow 1", count=3))
    wait_acked(sim, injected)
    os.kill(os.getpid(), signal.SIGTERM)  # what Heroku sends every process of the dyno, maybe twice
    gevent.sleep(0.1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert running.runner.get(timeout=15) == EXIT_OK
    assert replies(sim) == ["seen: slow 1"] * 3  # memory-only replies went out before the exit
    assert sim.summary()["open_connections"] == 0
    assert [slot.links for slot in running.worker.slots] == [[]]
    assert records("worker stopped") and not records("worker stopped (drain timed out)")
    assert running.worker.stop_reason is None


def test_a_drain_that_runs_out_of_time_exits_ok_and_names_what_it_left(
        sim: SimulatorClient, workers: Callable[..., Running], records: Callable[[str], list[logging.LogRecord]]
) -> None:
    running = workers(BUIDL_DRAIN_TIMEOUT=1)
    up(sim, running)
    injected = sim.inject("message", channel="C0LEFT", text="slow 30", count=2)
    wait_acked(sim, keys(injected))
    running.worker.request_stop()
    assert running.runner.get(timeout=10) == EXIT_OK
    [left] = records("drain timed out with")
    assert all(e["envelope_id"] in left.getMessage() for e in injected)
    assert "lost with this process (memory store)" in left.getMessage()
    assert records("worker stopped (drain timed out)") and replies(sim) == []


# ---------------------------------------------------------------- start-up and fatal stops


def test_auth_test_failures_back_off_then_the_worker_goes_on_without_the_bot_id(
        sim: SimulatorClient, workers: Callable[..., Running], records: Callable[[str], list[logging.LogRecord]]
) -> None:
    sim.configure(auth_error="internal_error")
    running = workers(BUIDL_BACKOFF_BASE=0.05, BUIDL_BACKOFF_CAP=0.4)
    up(sim, running)
    failures = records("auth.test failed")
    assert len(failures) == 5
    for attempt, record in enumerate(failures):
        error, delay = log_args(record)
        assert error == "internal_error" and delay <= min(0.4, 0.05 * 2 ** attempt), (attempt, delay)
    assert records("auth.test kept failing")
    assert running.worker.dispatcher is not None and running.worker.dispatcher.bot_user_id is None


def test_a_refused_bot_token_stops_for_good_before_any_link(
        sim: SimulatorClient, workers: Callable[..., Running], capsys: pytest.CaptureFixture[str]) -> None:
    sim.configure(auth_error="token_revoked")
    running = workers()
    assert running.runner.get(timeout=10) == EXIT_FATAL
    assert capsys.readouterr().err.splitlines() == [
        "buidl-edge worker: fatal: Slack refused the bot token: token_revoked"]
    assert sim.summary()["connections_open_calls"] == 0


def test_socket_mode_turned_off_stops_the_worker_for_good_naming_the_connection(
        sim: SimulatorClient, workers: Callable[..., Running], capsys: pytest.CaptureFixture[str]) -> None:
    running = workers(BUIDL_CONNECTIONS=2)
    up(sim, running, links=2)
    sim.fault("disconnect", reason="link_disabled", target="oldest")
    assert running.runner.get(timeout=10) == EXIT_FATAL
    stop = running.worker.stop_reason
    assert stop is not None and stop.fatal and stop.reason == SocketModeDisabled.message
    assert stop.connection in ("c0", "c1")
    assert f"buidl-edge worker: fatal: {SocketModeDisabled.message}" in capsys.readouterr().err
    sim.wait_for(lambda s: s["open_connections"] == 0, 5, "the other link closed too")


# ---------------------------------------------------------------- refresh


def test_a_warning_on_every_link_refreshes_them_within_the_processs_overlap_budget(
        sim: SimulatorClient, workers: Callable[..., Running]) -> None:
    # 3 processes x 2 links leave 4 of Slack's 10 for overlaps: one per process.
    sim.configure(warning_close_delay=1.0)
    running = workers(BUIDL_PROCESSES=3, BUIDL_CONNECTIONS=2)
    up(sim, running, links=2)
    sim.reset()
    sim.fault("disconnect", reason="warning", target="all")
    during = keys(sim.inject("message", channel="C0REFRESH", text="during", count=6))
    sim.wait_for(lambda s: s["connections_opened"] == 2 and s["open_connections"] == 2, 15, "both links replaced")
    wait_acked(sim, during)
    summary = sim.summary()
    assert summary["max_open_connections_seen"] == 3  # 2 links + this process's one overlap, never 4
    assert summary["longest_no_connection_gap_s"] == 0.0 and summary["missed_deadlines"] == 0
    assert sorted(slot.stats.link_ends.get("refresh", 0) for slot in running.worker.slots) == [1, 1]


# ---------------------------------------------------------------- the collector


def test_once_up_the_start_up_heap_is_frozen_and_a_burst_does_not_trip_young_collections(
        sim: SimulatorClient, workers: Callable[..., Running]) -> None:
    """A full collection would walk the start-up heap on every go (a stall of every ack); once the
    worker is up it is frozen, and the young generation holds more than a burst's objects."""
    import gc

    threshold = gc.get_threshold()
    try:
        running = workers()
        up(sim, running)
        assert gc.get_freeze_count() > 10_000  # modules, gevent, the app: frozen, not walked again
        young_before = gc.get_stats()[0]["collections"]
        wait_acked(sim, keys(sim.inject("message", channel="C0GC", text="burst", count=500)))
        young = gc.get_stats()[0]["collections"] - young_before
        assert young <= 6, f"{young} young collections for a burst of 500"  # CPython's 700: 18 here
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
