"""Connection slots: never more Socket Mode connections than Slack allows the app, across dynos.

Slack lets an app hold 10 connections at once, counted over every process of
every dyno. Each `ConnectionSlot` leases a slot from the shared store before it
calls `apps.connections.open` (holder `host:pid/c0`), and a refresh overlap
leases a temporary one (`host:pid/c0+1`, `c0+2`, …) for the few seconds both links are open.
A slot that cannot be had is waited for, with a growing retry interval, and shows
in the worker's heartbeat (`status`). Leases are renewed by the worker's chores
and lapse `ttl` seconds after a dyno dies (at once for a dead process on this host).

While the store fails, a slot that was held before keeps counting as held (its
link refreshes as usual); one that never had a lease keeps waiting, so an outage
cannot let an extra connection in.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from buidl_edge.store.base import SlotStore
from buidl_edge.store.errors import StoreError
from buidl_edge.store.owners import RENEWAL_TURN_S

log = logging.getLogger("buidl_edge.slots")

# Three renewal turns (store/owners.py): a slot of a dyno that died lapses within 30 s.
SLOT_TTL_S = 3 * RENEWAL_TURN_S
RETRY_BASE_S = 0.5
RETRY_CAP_S = 5.0
OVERLAP_SUFFIX = "+"


class Waitable(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> Any: ...  # the gate always passes a timeout


class SlotGate:
    """The connection slots of one worker process."""

    def __init__(self, store: SlotStore, owner: str, limit: int, ttl: float = SLOT_TTL_S,
                 retry_base: float = RETRY_BASE_S, retry_cap: float = RETRY_CAP_S,
                 on_store_error: Callable[[str, StoreError], None] | None = None) -> None:
        """`on_store_error` hears a release that failed (the worker's StoreHealth: said once per
        episode); without it, each is logged."""
        self.store = store
        self.on_store_error = on_store_error
        self.owner = owner
        self.limit = limit
        self.ttl = ttl
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.held: set[str] = set()  # slot names (c0, c0+1) with a lease
        self.waiting: dict[str, float] = {}  # slot name -> since (time.time())
        self.waits = 0  # episodes of waiting, for status

    def holder(self, name: str) -> str:
        return f"{self.owner}/{name}"

    def acquire(self, name: str, give_up: Waitable) -> bool:
        """Block (cooperatively) until `name` holds a slot; False if `give_up` got set first."""
        attempt = 0
        while not give_up.is_set():
            try:
                if self.store.acquire_slot(self.holder(name), self.limit, self.ttl):
                    self._got(name)
                    return True
                if name not in self.waiting:
                    self.waits += 1
                    self.waiting[name] = time.time()
                    log.warning("all %d connection slots of the app are taken; %s waits for one", self.limit,
                                name, extra={"connection": name})
            except StoreError as exc:
                if name in self.held:
                    # It had a lease when the store went away: it still counts as held.
                    log.warning("slot store failing (%s); %s keeps the slot it held", exc, name,
                                extra={"connection": name})
                    return True
                self.waiting.setdefault(name, time.time())
                log.warning("slot store failing (%s); %s waits", exc, name, extra={"connection": name})
            delay = min(self.retry_cap, self.retry_base * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
            attempt += 1
            give_up.wait(delay)
        self.waiting.pop(name, None)
        return False

    def _got(self, name: str) -> None:
        since = self.waiting.pop(name, None)
        if since is not None:
            log.info("%s got a connection slot after %.1fs", name, time.time() - since, extra={"connection": name})
        self.held.add(name)

    def release(self, name: str) -> None:
        """Give the slot back (after its link closed); a failing store lets the lease lapse."""
        self.waiting.pop(name, None)
        if name not in self.held:
            return
        self.held.discard(name)
        try:
            self.store.release_slot(self.holder(name))
        except StoreError as exc:  # the lease lapses in `ttl`
            if self.on_store_error is not None:
                self.on_store_error("release_slot", exc)
            else:
                log.warning("could not release slot %s (%s); it lapses in %.0fs", name, exc, self.ttl)

    def renew(self) -> list[str]:
        """Extend every lease held; return the names whose slot is gone (others took it meanwhile).

        Raises StoreError (the worker's chore logs it and tries again next round).
        """
        names = sorted(self.held)
        if not names:
            return []
        lost_holders = set(self.store.renew_slots([self.holder(n) for n in names], self.limit, self.ttl))
        lost = [n for n in names if self.holder(n) in lost_holders]
        for name in lost:
            self.held.discard(name)
            log.error("connection slot of %s was lost (the store forgot it and others took it); "
                      "closing its link", name, extra={"connection": name})
        return lost

    def status(self) -> dict[str, Any]:
        """For the heartbeat: the app-wide limit, what this process holds and waits for."""
        now = time.time()
        return {"limit": self.limit, "held": sorted(self.held), "waits": self.waits,
                "waiting": {name: round(now - since, 1) for name, since in sorted(self.waiting.items())}}
