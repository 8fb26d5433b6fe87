"""The ack path's claims (ack_claims.py) and the degraded episode (store_health.py), in-process.

The store is the real MemoryStore; only its timing is held back (a claim that waits for a gate, as a
held write lock or a paused Redis holds it) or made to fail, so every reconciliation rule of
AckClaims runs with real dedup underneath. Clocks are injected: nothing here is timed.
"""
from __future__ import annotations

import logging

import gevent
import gevent.event
import pytest

from buidl_edge.dispatch.ack_claims import AckClaims
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.errors import StoreUnavailable
from buidl_edge.store.failover import Failover
from buidl_edge.store.health import STEADY_S, StoreHealth
from held_store import HeldStore
from support import envelope, inbox_state

OWNER = "host:1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> StoreHealth:
    return StoreHealth(clock=clock)


@pytest.fixture
def store() -> HeldStore:
    return HeldStore()


def claims_for(store: HeldStore, health: StoreHealth, decide_locally_after_s: float = 5.0) -> AckClaims:
    return AckClaims(Failover(store, health, OWNER), OWNER, wait_s=0.05, on_failure=health.failed,
                     decide_locally_after_s=decide_locally_after_s)


# -- the episode ------------------------------------------------------------------------------------


def test_an_episode_ends_only_on_a_write_once_writes_have_stopped_failing(
        health: StoreHealth, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="buidl_edge")
    for _ in range(5):  # a full disk: writes fail, now and then one fits in the WAL's free pages
        health.failed("claim", StoreUnavailable("disk full"))
        clock.now += 0.2
        health.wrote()
    assert health.degraded and health.episodes == 1
    clock.now += STEADY_S
    health.wrote()
    assert not health.degraded
    lines = [r.getMessage() for r in caplog.records if r.name == "buidl_edge.store_health"]
    assert len([line for line in lines if "degraded" in line and "failed" in line]) == 1
    assert len([line for line in lines if "writable again" in line]) == 1


def test_a_busy_store_opens_one_episode_with_a_warning_that_names_the_cause(
        health: StoreHealth, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="buidl_edge")
    health.busy("claim", "sqlite /tmp/x", 1.0)
    health.busy("claim", "sqlite /tmp/x", 1.0)
    health.failed("claim", StoreUnavailable("locked"))
    assert health.degraded and health.episodes == 1 and health.cause.startswith("store busy")
    [line] = [r for r in caplog.records if r.name == "buidl_edge.store_health"]
    assert line.levelno == logging.WARNING and "store busy" in line.getMessage()


# -- deciding within the bound ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import buidl_edge.dispatch.ack_claims as ack_claims

    monkeypatch.setattr(ack_claims, "RETRY_S", 0.01)


class Decisions:
    """What `later` heard: (envelope id, new) in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, bool]] = []

    def __call__(self, envelope: Envelope, new: bool) -> None:
        self.heard.append((envelope.envelope_id, new))


def test_a_burst_the_store_decides_in_time_is_decided_by_the_store(store: HeldStore, health: StoreHealth) -> None:
    claims = claims_for(store, health)
    assert claims.within_bound([envelope("E1", "Ev1")], Decisions()) == [True]
    assert claims.within_bound([envelope("E2", "Ev1")], Decisions()) == [False]
    assert not health.degraded


def test_past_the_bound_the_burst_is_acked_undecided_and_handed_on_when_the_store_answers(
        store: HeldStore, health: StoreHealth) -> None:
    claims = claims_for(store, health)
    later = Decisions()
    store.gate.clear()  # the write lock is held
    assert claims.within_bound([envelope("E1", "Ev1"), envelope("E2", "Ev2")], later) is None
    assert claims.within_bound([envelope("E1b", "Ev1")], later) is None  # Slack's retry, meanwhile
    assert health.degraded and later.heard == []  # nothing handled on guesswork
    store.gate.set()
    claims.late.join(timeout=5)
    assert later.heard == [("E1", True), ("E2", True), ("E1b", False)]  # the store's word: E1 runs once


def test_a_store_that_fails_is_tried_again_and_decides_once_it_answers(
        store: HeldStore, health: StoreHealth) -> None:
    claims = claims_for(store, health)
    later = Decisions()
    store.failing = True
    assert claims.within_bound([envelope("E1", "Ev1")], later) is None
    refused = store.refused
    assert store.claim(envelope("X1", "Ev1"), "other:2")  # another process, whose writes work, takes the retry
    with gevent.Timeout(5):
        while store.refused == refused:  # tried again, and refused again, meanwhile
            gevent.sleep(0.01)
    assert later.heard == []
    store.failing = False
    claims.late.join(timeout=5)
    assert later.heard == [("E1", False)]  # another process claimed Ev1 meanwhile: not run here
    assert claims.decided_locally == 0


def test_a_store_still_failing_past_the_deadline_leaves_it_to_local_dedup_then_is_written_back(
        store: HeldStore, health: StoreHealth, clock: Clock) -> None:
    claims = claims_for(store, health, decide_locally_after_s=0.05)
    later = Decisions()
    store.failing = True
    claims.within_bound([envelope("E1", "Ev1"), envelope("E2", "Ev2")], later)
    claims.late.join(timeout=5)
    assert later.heard == [("E1", True), ("E2", True)] and claims.decided_locally == 2
    claims.failover.finished("E1", "RuntimeError")
    store.failing = False
    clock.now += STEADY_S
    health.wrote()  # the heartbeat got through: over, and the write-back runs
    claims.failover.late.join(timeout=5)
    assert claims.failover.written_back == 2
    assert inbox_state(store, "E1") == "failed"  # finished with the error it had here
    assert inbox_state(store, "E2") == "processing"  # its handler's own finish comes later
    assert not store.claim(envelope("E9", "Ev1"), OWNER)  # a retry on another process is recognised


def test_a_write_back_that_finds_the_claim_taken_says_it_may_have_run_twice(
        store: HeldStore, health: StoreHealth, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    claims = claims_for(store, health, decide_locally_after_s=0.05)
    store.failing = True
    claims.within_bound([envelope("E1", "Ev1")], Decisions())
    claims.late.join(timeout=5)
    store.failing = False
    assert store.claim(envelope("X1", "Ev1"), "other:2")  # another process got Slack's retry
    clock.now += STEADY_S
    health.wrote()
    claims.failover.late.join(timeout=5)
    assert claims.failover.decided_twice == 1 and claims.failover.written_back == 0
    assert any("may have run twice" in r.getMessage() for r in caplog.records)


def test_the_drain_writes_back_what_is_left_and_says_what_it_could_not(
        store: HeldStore, health: StoreHealth, caplog: pytest.LogCaptureFixture) -> None:
    claims = claims_for(store, health, decide_locally_after_s=0.05)
    store.failing = True
    claims.within_bound([envelope("E1", "Ev1")], Decisions())
    assert not claims.drain(timeout=5)
    assert any("could not be written back" in r.getMessage() for r in caplog.records)
    store.failing = False
    assert claims.drain(timeout=1) and store.inbox_row("E1") is not None
