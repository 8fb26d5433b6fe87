"""ConnectionSlot in this process against the real simulator: refresh with overlap, expiry,
backoff, rate limits, stale replacement, a lost slot, fatal stops and the drain's first step.

The slot's envelopes go to a real Dispatcher (an EdgeApp, a store, an Outbox); what is asserted
is what the simulator saw and the slot's own state (links, stats, leases, overlaps).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.lock
import pytest

from buidl_edge.api.app import EdgeApp
from buidl_edge.config import OutboxConfig, Settings
from buidl_edge.delivery.outbox import Outbox
from buidl_edge.dispatch.dispatcher import Dispatcher
from buidl_edge.sandbox.harness import wait_until
from buidl_edge.sandbox.simulator.client import SimulatorClient
from buidl_edge.socketmode.connection import ConnectionSlot, FatalStop, SocketModeDisabled
from buidl_edge.socketmode.link_outcomes import LinkOutcome
from buidl_edge.store import open_store
from buidl_edge.store.slots import SlotGate
from buidl_edge.webapi.client import WebApi
from support import ME, CountedSlots, keys, log_args, wait_acked

BASE_S, CAP_S = 0.2, 2.0  # worker_env's backoff: the bounds the delays are checked against


def echo_app() -> EdgeApp:
    app = EdgeApp("slot-test")

    @app.event("message")
    def echo(event: dict[str, Any], ctx: Any) -> None:
        ctx.say("seen: " + event.get("text", ""))

    return app


@dataclass
class Running:
    slot: ConnectionSlot
    runner: gevent.Greenlet


class Slots:
    """Slots of one 'process': one store (SQLite, threaded as in a worker), gate, dispatcher and outbox."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(settings)
        self.webapi = WebApi(settings.api_url, timeout=5)
        self.slot_store = CountedSlots(self.store)  # the gate's tries, counted
        self.gate = SlotGate(self.slot_store, ME, settings.max_app_connections, retry_base=0.05, retry_cap=0.2)
        self.outbox = Outbox(self.store, self.webapi, settings.bot_token, ME, OutboxConfig()).start()
        self.dispatcher = Dispatcher(echo_app(), self.store, self.outbox, ME, settings.ack_payload_deadline, None)
        self.running: list[Running] = []

    def start(self, name: str = "c0", overlap: gevent.lock.Semaphore | None = None) -> Running:
        slot = ConnectionSlot(name, self.settings, self.webapi, self.dispatcher, self.gate, overlap)
        running = Running(slot, gevent.spawn(slot.run))
        self.running.append(running)
        return running

    def stop(self) -> None:
        for running in self.running:
            running.slot.stop_dispatching()
        gevent.joinall([r.runner for r in self.running], timeout=2)
        for running in self.running:
            running.runner.kill(block=False)
            running.slot.close()
        self.dispatcher.finish_handlers(timeout=2)
        self.outbox.stop(timeout=2)
        self.store.close()


@pytest.fixture
def slots(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., Slots]]:
    made: list[Slots] = []

    def make(**env: Any) -> Slots:
        made.append(Slots(settings_for(**env)))
        return made[-1]

    yield make
    for each in made:
        each.stop()


def watch(condition: Callable[[], bool], until: Callable[[], bool]) -> gevent.Greenlet:
    """A greenlet that checks `condition` every millisecond until `until` holds: True if it ever held."""
    def run() -> bool:
        while not until():
            if condition():
                return True
            gevent.sleep(0.001)
        return bool(condition())

    return gevent.spawn(run)


def connected(sim: SimulatorClient, slot: ConnectionSlot, links: int = 1) -> None:
    sim.wait_for(lambda s: s["open_connections"] == links, 10, f"{links} open link(s)")
    wait_until(lambda: slot.stats.connected and len(slot.links) == links, 10, "the slot to see its links")


# ---------------------------------------------------------------- refresh


def test_a_warning_opens_the_replacement_first_and_the_old_link_acks_until_closed(
        sim: SimulatorClient, slots: Callable[..., Slots]) -> None:
    sim.configure(warning_close_delay=1.5)
    edge = slots()
    slot = edge.start().slot
    connected(sim, slot)
    sim.reset()  # count links and gaps from here
    [old] = slot.links
    sim.fault("disconnect", reason="warning", target="oldest")
    sim.wait_for(lambda s: s["open_connections"] == 2, 5, "the replacement next to the warned link")
    assert edge.gate.held == {"c0", "c0+1"}  # the overlap leases a slot of its own
    assert slot.overlap.locked()  # and holds this process's only overlap
    during = keys(sim.inject("message", channel="C0WARN", text="during", count=3))
    wait_acked(sim, during)
    sim.fault("redeliver", key=during[0], target="c1")  # Slack may still send on the warned link
    sim.wait_for(lambda s: s["open_connections"] == 1 and s["acks_total"] == 4, 10, "the old link closed by Slack")
    wait_until(lambda: len(slot.links) == 1 and slot.links[0] is not old and not slot.overlap.locked(), 5,
         "the old link retired")
    assert old.closed.is_set() and old.ending == LinkOutcome.REFRESH
    assert [a["connection"] for a in sim.state()["acks"]].count("c1") >= 1  # the warned link acked on
    assert edge.gate.held == {"c0"}  # the overlap's slot went back
    assert slot.stats.link_ends == {"refresh": 1} and slot.stats.reconnect_count == 1
    assert slot.stats.disconnects == {"warning": 1}
    summary = sim.summary()
    assert summary["longest_no_connection_gap_s"] == 0.0 and summary["connections_open_calls"] == 1
    assert summary["max_open_connections_seen"] == 2 and summary["missed_deadlines"] == 0


def test_a_link_near_the_end_of_its_life_is_refreshed_without_a_disconnect_frame(
        sim: SimulatorClient, slots: Callable[..., Slots]) -> None:
    sim.configure(connection_time=2)  # hello says 2 s: refreshed 1 s in (half the life, at least 1 s)
    slot = slots().start().slot
    connected(sim, slot)
    [old] = slot.links
    sim.reset()
    wait_until(lambda: slot.stats.link_ends.get("refresh", 0) >= 1, 10, "the expiry refresh")
    # The replacement opens next to the old link, which reads on until Slack ends it.
    sim.wait_for(lambda s: s["connections_opened"] == 1 and s["open_connections"] == 2, 10, "the replacement")
    assert old.ending == LinkOutcome.REFRESH and not old.closed.is_set()
    assert slot.stats.disconnects == {}  # our own timer, not Slack's frame
    assert sim.summary()["longest_no_connection_gap_s"] == 0.0


# ---------------------------------------------------------------- backoff


def test_failed_opens_back_off_with_full_jitter_under_a_doubling_cap_then_connect(
        sim: SimulatorClient, slots: Callable[..., Slots], records: Callable[[str], list[logging.LogRecord]]) -> None:
    sim.configure(open_error="internal_error")
    slot = slots().start().slot
    wait_until(lambda: len(records("connect failed")) >= 4, 15, "four failed opens")
    sim.configure(open_error=None)
    connected(sim, slot)
    failures = records("connect failed")
    for attempt, record in enumerate(failures):
        reason, delay = log_args(record)
        assert reason == "internal_error"
        assert 0.0 <= delay <= min(CAP_S, BASE_S * 2 ** attempt), (attempt, delay)
    assert sim.summary()["connections_open_calls"] == len(failures) + 1
    assert slot.stats.reconnect_count == 0  # the first link that opened


def test_a_link_that_dies_young_continues_the_streak_one_that_outlived_the_cap_starts_over(
        sim: SimulatorClient, slots: Callable[..., Slots], records: Callable[[str], list[logging.LogRecord]]) -> None:
    slot = slots().start().slot
    connected(sim, slot)
    sim.fault("drop", target="oldest")  # at once: attempt 0, then the next drop is attempt 1
    wait_until(lambda: len(records("link %s %s; reconnecting")) == 1, 10, "the first reconnect")
    connected(sim, slot)
    sim.fault("drop", target="oldest")
    wait_until(lambda: len(records("link %s %s; reconnecting")) == 2, 10, "the second reconnect")
    connected(sim, slot)
    [link] = slot.links
    wait_until(lambda: time.monotonic() - link.opened_at > CAP_S, 10, "the link to outlive the longest wait")
    sim.fault("drop", target="oldest")
    wait_until(lambda: len(records("link %s %s; reconnecting")) == 3, 10, "the third reconnect")
    connected(sim, slot)
    attempts = [(log_args(r)[1], log_args(r)[3]) for r in records("link %s %s; reconnecting")]
    assert attempts == [("closed", 1), ("closed", 2), ("closed", 1)]
    assert slot.stats.link_ends == {"closed": 3} and slot.stats.reconnect_count == 3


def test_a_rate_limited_open_waits_at_least_retry_after(
        sim: SimulatorClient, slots: Callable[..., Slots], records: Callable[[str], list[logging.LogRecord]]) -> None:
    sim.configure(open_ratelimit={"count": 1, "retry_after": 1})
    slot = slots().start().slot
    connected(sim, slot)
    [limited] = records("apps.connections.open rate limited")
    assert log_args(limited)[0] >= 1.0
    summary = sim.summary()
    assert summary["open_429s"] == 1 and summary["connections_open_calls"] == 2


# ---------------------------------------------------------------- stale links and lost slots


def test_a_half_open_link_is_replaced_first_then_shut_down_without_waiting_on_slack(
        sim: SimulatorClient, slots: Callable[..., Slots]) -> None:
    slot = slots().start().slot
    connected(sim, slot)
    [old] = slot.links
    # Replacement first: the overlap (its own slot lease) is taken while the stale socket is still up.
    both = watch(lambda: "c0+1" in slot.gate.held and old.ws.sock is not None, until=old.closed.is_set)
    sim.fault("blackhole", target="oldest")  # silent forever, TCP up: only we can end it
    wait_until(lambda: old.closed.is_set() and len(slot.links) == 1 and slot.links[0] is not old, 15,
         "the stale link replaced and shut down")
    assert both.get(timeout=1), "the stale link was torn down before its replacement was opened"
    assert old.ending == LinkOutcome.STALE and old.ws.sock is None
    assert slot.stats.link_ends == {"stale": 1}
    [key] = keys(sim.inject("message", channel="C0STALE", text="after"))
    wait_acked(sim, [key])
    assert sim.state()["acks"][-1]["connection"] != "c1"
    assert not slot.overlap.locked()


def test_a_lost_slot_closes_the_link_and_backs_off_before_taking_a_slot_again(
        sim: SimulatorClient, slots: Callable[..., Slots]) -> None:
    slot = slots().start().slot
    connected(sim, slot)
    [old] = slot.links
    slot.slot_lost()
    wait_until(lambda: slot.links and slot.links[0] is not old, 10, "a new link")
    connected(sim, slot)
    assert old.closed.is_set() and slot.stats.link_ends == {"slot_lost": 1}
    assert sim.summary()["connections_opened"] == 2


def test_the_app_wide_limit_holds_a_second_slot_until_the_first_lets_go(
        sim: SimulatorClient, slots: Callable[..., Slots]) -> None:
    edge = slots(BUIDL_MAX_APP_CONNECTIONS=1)
    first = edge.start("c0")
    connected(sim, first.slot)
    second = edge.start("c1")
    wait_until(lambda: "c1" in edge.gate.waiting, 5, "the second slot waiting")
    wait_until(lambda: edge.slot_store.asked[edge.gate.holder("c1")] >= 4, 5, "several refused tries of the gate")
    assert sim.summary()["connections_open_calls"] == 1 and second.slot.links == []
    first.slot.stop_dispatching()
    first.runner.join(timeout=5)
    first.slot.close()  # its links closed: the slot goes to c1
    connected(sim, second.slot)
    assert edge.gate.held == {"c1"} and edge.gate.status()["waits"] == 1


# ---------------------------------------------------------------- fatal stops


@pytest.mark.parametrize("how, reason", [
    ("open_error", "Slack refused the app token: invalid_auth"),
    ("link_disabled", SocketModeDisabled.message),
])
def test_a_refused_token_or_socket_mode_off_ends_the_slot_with_fatal_stop(
        sim: SimulatorClient, slots: Callable[..., Slots], how: str, reason: str) -> None:
    if how == "open_error":
        sim.configure(open_error="invalid_auth")
    running = slots().start()
    if how == "link_disabled":
        connected(sim, running.slot)
        sim.fault("disconnect", reason="link_disabled", target="oldest")
    running.runner.join(timeout=10)
    assert isinstance(running.runner.exception, FatalStop)
    assert (running.runner.exception.reason, running.runner.exception.connection) == (reason, "c0")
    assert sim.summary()["connections_open_calls"] == 1  # never tried again


# ---------------------------------------------------------------- the drain's first step


def test_stop_dispatching_reads_on_but_acks_nothing_new_and_ends_the_loop(
        sim: SimulatorClient, slots: Callable[..., Slots]) -> None:
    running = slots().start()
    slot = running.slot
    connected(sim, slot)
    [link] = slot.links
    slot.stop_dispatching()
    running.runner.join(timeout=5)
    assert running.runner.successful()  # run() returned: no new link, no error
    [key] = keys(sim.inject("message", channel="C0DRAIN", text="left for another connection"))
    wait_until(lambda: slot.stats.envelopes_received == 1, 5, "the envelope read on the retiring link")
    # The reader is done with the frame once it counted it: an ack of it would have been written then.
    assert slot.stats.envelopes_acked == 0
    assert not sim.state()["events"][key]["acked"]  # Slack redelivers it to a connection that stays
    assert not link.closed.is_set() and link.ending == LinkOutcome.STOP
    slot.close()
    sim.wait_for(lambda s: s["open_connections"] == 0, 5, "the link closed by the drain")
    assert slot.gate.held == set()
