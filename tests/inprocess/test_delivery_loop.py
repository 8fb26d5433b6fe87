"""The delivery loop (delivery/loop.py) on its own, driving a third kind of delivery as small as
one gets: outbox rows of a real store, "delivered" into a list. It claims within its budget,
settles with backoff (and keeps an outcome the store refused until it takes it), and drains what
would die with the dyno while leaving Redis's rows to the other dynos.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent.event
import pytest

from buidl_edge.delivery.loop import Delivered, DeliveryLoop, RetryPolicy
from buidl_edge.delivery.ratelimit import PostLimits
from buidl_edge.sandbox.harness import wait_until
from buidl_edge.store.base import Claimed, DeliveryOutcome, Lifespan, OutboxRow, Reply
from buidl_edge.store.errors import StoreError
from buidl_edge.store.failover import Failover
from buidl_edge.store.memory import MemoryStore
from buidl_edge.store.redis import RedisStore
from buidl_edge.store.sqlite import SqliteStore
from buidl_edge.store.threaded import ThreadedStore
from redis_support import RedisServer
from support import ME

FAST = PostLimits(rate=1000.0, burst=1000.0)
LEASE_S = 30.0


@dataclass
class Counters:
    in_flight: int = 0
    store_errors: int = 0


class Chimes:
    """A third kind of delivery: each row's text appended to `delivered`, once the gate is open.
    A text starting with "flaky" fails its first attempt; `refuse_settles` settles of a text
    starting with "refused" fail as a failing store's would."""

    name = "chimes"
    log = logging.getLogger("buidl_edge.test_chimes")

    def __init__(self, retry: RetryPolicy, limits: PostLimits = FAST, refuse_settles: int = 0) -> None:
        self.retry = retry
        self.limits = limits
        self.refuse_settles = refuse_settles
        self.gate = gevent.event.Event()
        self.gate.set()
        self.asked: list[int] = []  # the limit of each claim
        self.started: dict[tuple[str, int], float] = {}  # (text, attempt) -> when its delivery began
        self.at_once = self.most_at_once = 0
        self.delivered: list[str] = []
        self.recorded: list[tuple[str, DeliveryOutcome, bool, float]] = []  # ..., whether still ours, when

    def claim(self, store: Any, limit: int) -> Claimed[OutboxRow]:
        self.asked.append(limit)
        return store.outbox_claim(ME, limit, self.limits, LEASE_S)

    def deliver(self, row: OutboxRow) -> Delivered:
        self.started[(row.text or "", row.attempts)] = time.time()
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            self.gate.wait()
        finally:
            self.at_once -= 1
        if (row.text or "").startswith("flaky") and row.attempts == 1:
            return Delivered(self.retry.retry_or_fail("flaky", row.attempts))
        self.delivered.append(row.text or "")
        return Delivered(DeliveryOutcome("sent"))

    def settle(self, store: Any, row: OutboxRow, outcome: DeliveryOutcome) -> OutboxRow | None:
        if (row.text or "").startswith("refused") and self.refuse_settles > 0:
            self.refuse_settles -= 1
            raise StoreError("store refused the write")
        return store.outbox_settle(row.id, ME, outcome)

    def record(self, row: OutboxRow, outcome: DeliveryOutcome, settled: OutboxRow | None) -> None:
        self.recorded.append((row.text or "", outcome, settled is not None, time.time()))

    def waiting(self, store: Any) -> int:
        return int(store.outbox_stats()["depth"])

    def chores(self) -> None:
        pass


class Loops:
    """Loops made by a test, all stopped at teardown."""

    def __init__(self) -> None:
        self.made: list[tuple[Chimes, DeliveryLoop[OutboxRow]]] = []

    def start(self, chimes: Chimes, store: Any, concurrency: int = 4) -> DeliveryLoop[OutboxRow]:
        loop = DeliveryLoop(chimes, Failover(store), Counters(), concurrency=concurrency, poll_s=0.05)
        loop.start()
        self.made.append((chimes, loop))
        return loop


@pytest.fixture
def loops() -> Iterator[Loops]:
    made = Loops()
    yield made
    for chimes, loop in made.made:
        chimes.gate.set()  # let a held delivery end
        loop.stop(timeout=1)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None)
    yield store
    store.close()


def states(store: Any) -> dict[str, str]:
    return {r.text: r.state for r in store.outbox_list(limit=100)}


def test_it_claims_no_more_rows_than_it_has_free_deliveries(sqlite_store: SqliteStore, loops: Loops) -> None:
    chimes = Chimes(RetryPolicy(3, 0.05, 0.2))
    chimes.gate.clear()  # every delivery holds until the test opens the gate
    loop = loops.start(chimes, sqlite_store, concurrency=2)
    sqlite_store.outbox_enqueue([Reply(f"C{i}", f"r{i}") for i in range(5)])  # five channels: all due now
    loop.wake()
    wait_until(lambda: loop.counters.in_flight == 2, 10, "two deliveries under way")
    assert sorted(states(sqlite_store).values()) == ["pending"] * 3 + ["sending"] * 2  # two claimed, no more
    chimes.gate.set()
    wait_until(lambda: len(chimes.delivered) == 5, 10, "all five delivered")
    assert sorted(chimes.delivered) == [f"r{i}" for i in range(5)]
    assert max(chimes.asked) <= 2 and chimes.most_at_once == 2
    assert set(states(sqlite_store).values()) == {"sent"}
    assert loop.stop(timeout=5).clean


def test_a_failed_delivery_is_settled_with_backoff_and_tried_again_after_it(
        sqlite_store: SqliteStore, loops: Loops) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_base=0.2, backoff_cap=0.5)
    chimes = Chimes(policy)
    loop = loops.start(chimes, sqlite_store)
    sqlite_store.outbox_enqueue([Reply("C1", "flaky one")])
    loop.wake()
    wait_until(lambda: chimes.delivered, 10, "the second attempt to go through")
    [(_, first, first_settled, first_recorded_at), (_, second, _, _)] = chimes.recorded
    assert first.kind == "retry" and first.error == "flaky" and first_settled
    # Its backoff after a first attempt: at most backoff_base (full jitter), from when it failed.
    assert chimes.started[("flaky one", 1)] <= first.retry_at <= first_recorded_at + policy.backoff_base
    assert chimes.started[("flaky one", 2)] >= first.retry_at  # not tried again before its backoff ran out
    [row] = sqlite_store.outbox_list(limit=10)
    assert (row.state, row.attempts, second.kind) == ("sent", 2, "sent")


def test_an_outcome_the_store_refuses_is_kept_and_settled_when_it_takes_it(
        sqlite_store: SqliteStore, loops: Loops) -> None:
    chimes = Chimes(RetryPolicy(3, 0.05, 0.2), refuse_settles=4)  # the three tries, and one chore round
    loop = loops.start(chimes, sqlite_store)
    sqlite_store.outbox_enqueue([Reply("C1", "refused once")])
    loop.wake()
    wait_until(lambda: loop.unsettled == 1, 10, "the outcome kept to settle later")
    assert states(sqlite_store) == {"refused once": "sending"}  # still ours: nobody else takes it
    assert loop.counters.store_errors == 3 and loop.health.degraded
    wait_until(lambda: chimes.recorded, 10, "the outcome settled by a chore round")
    assert loop.unsettled == 0 and loop.counters.store_errors == 3  # a kept write's retries are not counted
    assert states(sqlite_store) == {"refused once": "sent"} and chimes.delivered == ["refused once"]


def test_stop_delivers_what_dies_with_the_dyno_first(sqlite_store: SqliteStore, loops: Loops) -> None:
    chimes = Chimes(RetryPolicy(3, 0.05, 0.2), limits=PostLimits(rate=20.0, burst=1))  # paced: one channel
    loop = loops.start(chimes, sqlite_store)
    # Rows another process queued (this loop is never woken for them), and rows only memory holds.
    sqlite_store.outbox_enqueue([Reply("C1", f"file{i}") for i in range(4)])
    loop.failover.fallback.outbox_enqueue([Reply("C2", f"memory{i}") for i in range(3)])
    drained = loop.stop(timeout=10)
    assert drained.clean, drained
    assert [t for t in chimes.delivered if t.startswith("file")] == [f"file{i}" for i in range(4)]
    assert [t for t in chimes.delivered if t.startswith("memory")] == [f"memory{i}" for i in range(3)]
    assert sqlite_store.outbox_stats()["depth"] == 0 and loop.failover.fallback.outbox_stats()["depth"] == 0


def test_stop_leaves_the_rows_of_a_store_that_outlives_the_dyno(loops: Loops) -> None:
    server = RedisServer().start()
    store = RedisStore(server.url + "?prefix=loop:")
    try:
        chimes = Chimes(RetryPolicy(3, 0.05, 0.2), limits=PostLimits(rate=0.2, burst=1))  # the next in 5 s
        loop = loops.start(chimes, store)
        store.outbox_enqueue([Reply("C1", f"r{i}") for i in range(4)])
        loop.wake()
        wait_until(lambda: chimes.delivered, 10, "the first delivery")
        drained = loop.stop(timeout=10)
        assert drained.clean and chimes.delivered == ["r0"]
        assert states(store) == {"r0": "sent", "r1": "pending", "r2": "pending", "r3": "pending"}
    finally:
        store.close()
        server.cleanup()


def test_every_store_and_the_threaded_wrapper_say_how_long_their_rows_last(tmp_path: Path) -> None:
    sqlite = SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None)
    threaded = ThreadedStore(SqliteStore(tmp_path / "other.db", checkpoint_interval_s=None))
    try:
        assert MemoryStore().lifespan is Lifespan.PROCESS
        assert sqlite.lifespan is threaded.lifespan is Lifespan.DYNO
        assert RedisStore.lifespan is Lifespan.BEYOND_THE_DYNO
        assert [s.outlives_the_process for s in Lifespan] == [False, True, True]
        assert [s.outlives_the_dyno for s in Lifespan] == [False, False, True]
    finally:
        sqlite.close()
        threaded.close()


class CountedChimes(Chimes):
    """Chimes that count the loop's chore rounds (it calls `chores` once a round)."""

    rounds = 0

    def chores(self) -> None:
        self.rounds += 1


def test_an_idle_loop_asks_its_store_again_only_once_another_process_wrote(tmp_path: Path, loops: Loops) -> None:
    # The worker's store: SQLite behind its thread, with the hub connection that reads the change token.
    store = ThreadedStore(SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None, hub_writes=True))
    other = SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None)  # another process's connection
    chimes = CountedChimes(RetryPolicy(3, 0.05, 0.2))
    loop = loops.start(chimes, store)  # polls every 0.05 s while it has anything to look for
    try:
        wait_until(lambda: chimes.rounds >= 2, 10, "two chore rounds of an idle loop")
        asked_while_idle = len(chimes.asked)
        other.outbox_enqueue([Reply("C1", "queued elsewhere")])  # no wake: only the store knows
        wait_until(lambda: chimes.delivered == ["queued elsewhere"], 10, "the row another process queued")
        assert asked_while_idle <= 2, f"an idle loop asked its unchanged store {asked_while_idle} times"
    finally:
        loop.stop(timeout=1)
        other.close()
        store.close()
