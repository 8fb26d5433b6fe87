"""Outbox in this process against the simulator's chat.postMessage: retries with backoff, the
failure hook, and the drain (`stop`): what it flushes, what it leaves for others, what it reports.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.config import OutboxConfig, Secret
from buidl_edge.delivery.outbox import Outbox
from buidl_edge.delivery.ratelimit import PostLimits
from buidl_edge.sandbox.harness import fake_tokens, wait_until
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from buidl_edge.store.base import OutboxRow, Reply
from buidl_edge.store.memory import MemoryStore
from buidl_edge.store.redis import RedisStore
from buidl_edge.store.sqlite import SqliteStore
from buidl_edge.webapi.client import WebApi
from redis_support import RedisServer
from support import HOST, ME, log_args

BASE_S, CAP_S = 0.05, 0.2
FAST = PostLimits(rate=100, burst=100)


class Outboxes:
    """Outboxes on the simulator, each with its failed rows collected; all stopped at teardown."""

    def __init__(self, sim: SimulatorProcess) -> None:
        self.sim = sim
        self.bot_token = Secret(fake_tokens()["SLACK_BOT_TOKEN"])
        self.failed: list[OutboxRow] = []
        self.made: list[Outbox] = []

    def start(self, store: Any, owner: str = ME, **config: Any) -> Outbox:
        outbox = Outbox(store, WebApi(self.sim.api_url, timeout=5), self.bot_token, owner,
                        OutboxConfig(**{"limits": FAST, "poll_interval": 0.05, **config}),
                        backoff_base=BASE_S, backoff_cap=CAP_S, on_failed=self.failed.append).start()
        self.made.append(outbox)
        return outbox


@pytest.fixture
def outboxes(fresh_simulator: SimulatorProcess) -> Iterator[Outboxes]:
    made = Outboxes(fresh_simulator)
    yield made
    for outbox in made.made:
        outbox.stop(timeout=1)


def texts(sim: SimulatorClient, channel: str) -> list[str]:
    return [m["text"] for m in sim.state()["messages"] if m["channel"] == channel]


def rows(store: Any) -> dict[str, OutboxRow]:
    return {r.text: r for r in store.outbox_list(limit=1000)}


# ---------------------------------------------------------------- retries and failures


def test_a_transient_error_is_retried_with_growing_backoff_then_failed_once_to_the_hook(
        sim: SimulatorClient, outboxes: Outboxes, records: Callable[[str], list[logging.LogRecord]]) -> None:
    sim.configure(post_errors={"C0FLAKY": "service_unavailable", "C0GONE": "channel_not_found"})
    store = MemoryStore()
    outbox = outboxes.start(store, max_attempts=4)
    outbox.enqueue([Reply("C0FLAKY", "flaky"), Reply("C0GONE", "gone"), Reply("C0FINE", "fine")])
    wait_until(lambda: len(outboxes.failed) == 2, 10, "both bad rows failed for good")
    by_text = rows(store)
    assert (by_text["flaky"].state, by_text["flaky"].attempts) == ("failed", 4)
    assert by_text["flaky"].error == "service_unavailable (after 4 attempts)"
    assert (by_text["gone"].state, by_text["gone"].attempts, by_text["gone"].error) == ("failed", 1,
                                                                                         "channel_not_found")
    assert by_text["fine"].state == "sent" and texts(sim, "C0FINE") == ["fine"]
    assert sorted(r.channel for r in outboxes.failed) == ["C0FLAKY", "C0GONE"]  # each reported once
    retries = records("chat.postMessage to %s failed (%s); attempt")
    assert [log_args(r)[2] for r in retries] == [1, 2, 3]
    for record in retries:
        attempt, delay = log_args(record)[2], log_args(record)[4]
        assert delay <= min(CAP_S, BASE_S * 2 ** (attempt - 1)), (attempt, delay)
    assert (outbox.stats.retried, outbox.stats.failed, outbox.stats.sent) == (3, 2, 1)
    assert sim.summary()["post_errors"] == 4 + 1


def test_a_429_waits_retry_after_on_that_channel_and_spends_no_attempt(
        sim: SimulatorClient, outboxes: Outboxes) -> None:
    sim.configure(post_rate=1.0, post_burst=1)  # the simulator is stricter than the outbox
    store = MemoryStore()
    outbox = outboxes.start(store)
    outbox.enqueue([Reply("C0SLOW", "a"), Reply("C0SLOW", "b")])
    wait_until(lambda: len(texts(sim, "C0SLOW")) == 2, 10, "both posted")
    assert texts(sim, "C0SLOW") == ["a", "b"]
    by_text = rows(store)
    assert [by_text[t].attempts for t in "ab"] == [1, 1] and by_text["b"].rate_limited == 1
    assert outbox.stats.rate_limited == 1 and sim.summary()["post_429s"] == 1


# ---------------------------------------------------------------- the drain


def test_stop_sends_what_only_memory_holds_before_it_returns(sim: SimulatorClient, outboxes: Outboxes) -> None:
    sim.configure(post_rate=100.0, post_burst=100)
    store = MemoryStore()
    outbox = outboxes.start(store, limits=PostLimits(rate=4.0, burst=1))  # paced by our own bucket
    outbox.enqueue([Reply("C0MEM", f"m{i}") for i in range(5)])
    assert outbox.stop(timeout=10) is True
    assert texts(sim, "C0MEM") == [f"m{i}" for i in range(5)]
    assert store.outbox_stats()["depth"] == 0 and sim.summary()["post_429s"] == 0


def test_a_stop_that_runs_out_of_time_says_so_and_drops_no_row(sim: SimulatorClient, outboxes: Outboxes) -> None:
    store = MemoryStore()
    outbox = outboxes.start(store, limits=PostLimits(rate=0.4, burst=1))  # the second post is 2.5 s away
    outbox.enqueue([Reply("C0LATE", f"l{i}") for i in range(10)])
    assert outbox.stop(timeout=1.0) is False
    assert texts(sim, "C0LATE") == ["l0"]
    left = sorted((r for r in store.outbox_list(limit=100) if r.state == "pending"), key=lambda r: r.id)
    assert [r.text for r in left] == [f"l{i}" for i in range(1, 10)]


def test_stop_sends_the_rows_of_the_local_sqlite_file_before_it_returns(
        sim: SimulatorClient, outboxes: Outboxes, tmp_path: Path) -> None:
    """The SQLite file is on this dyno's disk, and a restarted Heroku dyno starts with a fresh one:
    a row left in it at exit would be a reply lost, so the drain sends them (here, rows another
    process queued that this outbox was never woken for)."""
    sim.configure(post_rate=100.0, post_burst=100)
    mine, other_process = (SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None) for _ in range(2))
    try:
        outbox = outboxes.start(mine, limits=PostLimits(rate=4.0, burst=1))  # paced by our own bucket
        other_process.outbox_enqueue([Reply("C0LOCAL", f"f{i}") for i in range(4)], "E-other")
        assert outbox.stop(timeout=10) is True
        assert texts(sim, "C0LOCAL") == [f"f{i}" for i in range(4)]
        assert mine.outbox_stats()["depth"] == 0
    finally:
        mine.close()
        other_process.close()


def test_stop_leaves_rows_of_redis_to_the_workers_of_the_other_dynos(
        sim: SimulatorClient, outboxes: Outboxes) -> None:
    server = RedisServer().start()
    leaving, staying = (RedisStore(server.url + "?prefix=shared:") for _ in range(2))
    try:
        outbox = outboxes.start(leaving, limits=PostLimits(rate=0.2, burst=1))  # the second post is 5 s away
        outbox.enqueue([Reply("C0SHARED", f"s{i}") for i in range(4)])
        wait_until(lambda: texts(sim, "C0SHARED"), 5, "the first post")
        assert outbox.stop(timeout=10) is True  # nothing of it dies with this dyno
        assert texts(sim, "C0SHARED") == ["s0"]
        assert {r.state for r in staying.outbox_list(limit=100) if r.text != "s0"} == {"pending"}
        outboxes.start(staying, owner=f"{HOST}:1", limits=PostLimits(rate=10.0, burst=3))
        wait_until(lambda: len(texts(sim, "C0SHARED")) == 4, 10, "the other worker to send the rest")
        assert texts(sim, "C0SHARED") == [f"s{i}" for i in range(4)]
    finally:
        for outbox in outboxes.made:
            outbox.stop(timeout=1)
        leaving.close()
        staying.close()
        server.cleanup()


def test_replies_queued_while_redis_is_down_go_out_from_memory_and_are_flushed_by_stop(
        sim: SimulatorClient, outboxes: Outboxes) -> None:
    server = RedisServer().start()
    store = RedisStore(server.url + "?prefix=outbox:", socket_timeout=0.5, connect_timeout=0.5)
    try:
        outbox = outboxes.start(store)
        server.stop()  # a real outage: connections refused
        outbox.enqueue([Reply("C0DOWN", "while down")])
        assert outbox.health.degraded
        wait_until(lambda: texts(sim, "C0DOWN"), 10, "the reply sent from this process's memory")
        assert outbox.stop(timeout=5) is True
        assert texts(sim, "C0DOWN") == ["while down"] and outbox.stats.store_errors >= 1
    finally:
        store.close()
        server.cleanup()
