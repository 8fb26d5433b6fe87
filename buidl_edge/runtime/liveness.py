"""What a worker writes to show it is alive, and only when it has to (store/owners.py: the cadence).

An idle worker used to write every second or two (a heartbeat, lease renewals) whether anything had
changed or not; on a dyno that is most of what it pays for all day. Here:

- `LeaseRenewal` pushes out the leases of this worker's envelopes in flight once a turn, and only
  when it may hold some: the last renewal found some, or something was written since (a claim).
- `Heartbeat` publishes the worker's snapshot when what it reports changed (checked every
  HEARTBEAT_CHECK_S), else once a renewal turn so that readers see it alive; and every check while
  the store is degraded, since a write that works is what ends the episode.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from buidl_edge.store.base import EdgeStore
from buidl_edge.store.health import StoreHealth

# Figures that move with the clock or with keepalives alone (and the chores' own counters, under
# "chores"): not a change worth a write.
_CLOCK_FIELDS = ("uptime", "last_ping", "messages_sent")


class LeaseRenewal:
    def __init__(self, store: EdgeStore, owner: str, turn_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
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
        token = self.store.change_token()  # before the renewal: a claim after it moves the token
        if self._held == 0 and token is not None and token == self._token:
            self._last_at = now  # nothing was written since a renewal found nothing of ours
            return
        self._held = self.store.renew(self.owner)
        self.renewals += 1
        self._token, self._last_at = token, now


class Heartbeat:
    def __init__(self, store: EdgeStore, owner: str, snapshot: Callable[[], dict[str, Any]],
                 health: StoreHealth, refresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.owner = owner
        self.snapshot = snapshot
        self.health = health
        self.refresh_s = refresh_s
        self._clock = clock
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0
        self.published = 0

    def publish_if_due(self) -> None:
        stats = self.snapshot()
        steady = steady_part(stats)
        now = self._clock()
        if (steady == self._last and now - self._last_at < self.refresh_s
                and not self.health.degraded):
            return
        self.store.heartbeat(self.owner, stats)
        self._last, self._last_at = steady, now
        self.published += 1
        # A write that worked: with no traffic, the heartbeat is the write that ends a degraded episode.
        self.health.wrote()


def steady_part(stats: dict[str, Any]) -> dict[str, Any]:
    """The snapshot without the figures that change with time alone."""
    connections = [{k: v for k, v in c.items() if k not in _CLOCK_FIELDS} for c in stats.get("connections") or []]
    return {**{k: v for k, v in stats.items() if k != "chores"}, "connections": connections}
