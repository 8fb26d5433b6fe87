"""What a worker writes to show it is alive, and only when it has to (store/owners.py: the cadence).

An idle worker used to write every second or two (a heartbeat, lease renewals) whether anything had
changed or not; on a dyno that is most of what it pays for all day. Here:

- `LeaseRenewal` pushes out the leases of this worker's envelopes in flight once a turn, and only
  when it may hold some: the last renewal found some, or something was written since (a claim).
- `Heartbeat` publishes the worker's snapshot when what readers must see at once changed (checked
  every HEARTBEAT_CHECK_S: its links, the store's health, what it has left to do), else once a
  renewal turn, with its counters, so that readers see it alive; and every check while the store
  is degraded, since a write that works is what ends the episode. The check reads those few
  figures from the parts themselves (`current_part`), not from a whole snapshot: it is most of an
  idle worker's chores.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from buidl_edge.delivery.loop import TokenReader, read_token_now
from buidl_edge.store.base import EdgeStore
from buidl_edge.store.health import StoreHealth

if TYPE_CHECKING:
    from buidl_edge.delivery.outbox import Outbox
    from buidl_edge.dispatch.dispatcher import Dispatcher
    from buidl_edge.relay.relay import Relay
    from buidl_edge.socketmode.connection import ConnectionSlot
    from buidl_edge.store.slots import SlotGate


class LeaseRenewal:
    def __init__(self, store: EdgeStore, owner: str, turn_s: float, token_of: TokenReader = read_token_now,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._token_of = token_of  # read before the renewal (the chores' read at the round's start is)
        self.owner = owner
        self.turn_s = turn_s
        self._clock = clock
        self._last_at: float | None = None
        self._held = -1  # rows the last renewal extended; -1: not renewed yet
        self._token: Hashable | None = None
        self.renewals = 0

    def renew_if_due(self) -> None:
        now = self._clock()
        if self._last_at is not None and now - self._last_at < self.turn_s:
            return
        token = self._token_of(self.store, False)  # before the renewal: a claim after it moves the token
        if self._held == 0 and token is not None and token == self._token:
            self._last_at = now  # nothing was written since a renewal found nothing of ours
            return
        self._held = self.store.renew(self.owner)
        self.renewals += 1
        self._token, self._last_at = token, now


class Heartbeat:
    def __init__(self, store: EdgeStore, owner: str, snapshot: Callable[[], dict[str, Any]],
                 current: Callable[[], dict[str, Any]], health: StoreHealth, refresh_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`snapshot`: what is published; `current`: its part readers must see within a check."""
        self.store = store
        self.owner = owner
        self.snapshot = snapshot
        self.current = current
        self.health = health
        self.refresh_s = refresh_s
        self._clock = clock
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0
        self.published = 0

    def publish_if_due(self) -> None:
        """Every check: publish when what readers need at once changed (or the store is degraded)."""
        if self.current() == self._last and not self.health.degraded:
            return
        self._publish(self.snapshot())

    def refresh(self) -> None:
        """Every renewal turn, on the tick of the other renewals (one checkpoint copies them all):
        publish the counters, and show the worker alive, unless a change was published lately."""
        if self._clock() - self._last_at < self.refresh_s / 2:
            return
        self._publish(self.snapshot())

    def _publish(self, stats: dict[str, Any]) -> None:
        now = self._clock()
        self.store.heartbeat(self.owner, stats)
        self._last, self._last_at = self.current(), now  # as the snapshot: no switch in between
        self.published += 1
        # A write that worked: with no traffic, the heartbeat is the write that ends a degraded episode.
        self.health.wrote()


def current_part(slots: list[ConnectionSlot], dispatcher: Dispatcher | None, gate: SlotGate,
                 health: StoreHealth, outbox: Outbox | None, relay: Relay | None) -> dict[str, Any]:
    """What a reader must see within a check: whether the worker can serve (its links, the store's
    health, its slots) and what it has left to do (acks the store has not decided, handlers running
    or queued, posts and deliveries in flight: what `status` and the tests' wait for idle read).
    Counters and latencies may be a renewal turn old."""
    handlers = dispatcher.target.stats() if dispatcher else {}
    decided = dispatcher.stats.envelopes_new + dispatcher.stats.duplicates if dispatcher else 0
    return {"connected": [slot.stats.connected for slot in slots],
            "degraded": health.degraded, "degraded_cause": health.cause if health.degraded else "",
            "slots": (sorted(gate.held), sorted(gate.waiting)),
            "undecided": sum(slot.stats.envelopes_acked for slot in slots) - decided,
            "acked_undecided": dispatcher.claims.acked_undecided if dispatcher else None,
            "running": handlers.get("handlers_running"), "queued": handlers.get("handlers_queued"),
            "posting": outbox.stats.in_flight if outbox else None,
            "relaying": relay.stats.in_flight if relay is not None else None}
