"""Whether the shared store works, for the whole worker: one degraded episode at a time.

The dispatcher, the outbox and the heartbeat share one `StoreHealth`. A failing store
does not stop acking: claims fall back to local dedup and replies to a local queue, both
in `fallback`, and the worker says so once per episode (a log line and one Sentry report),
not once per failed call. Any store call that works again ends the episode.
"""
from __future__ import annotations

import logging

from buidl_edge.sentry import report_store_failure
from buidl_edge.store.errors import StoreError, StoreRejected
from buidl_edge.store.memory import MemoryStore

log = logging.getLogger("buidl_edge.store_health")


class StoreHealth:
    def __init__(self) -> None:
        self.degraded = False
        # This process's own dedup and reply queue while the shared store fails: acking goes on,
        # the process at least never answers twice, and replies go out from here.
        self.fallback = MemoryStore()

    def failed(self, operation: str, exc: StoreError) -> None:
        """A store call failed. A StoreRejected failed alone (the store still works): no episode,
        and only the first of its kind, which the store logged, goes to Sentry."""
        if isinstance(exc, StoreRejected):
            if exc.first:
                report_store_failure(f"{operation}:{exc.kind}", exc)
            return
        if not self.degraded:
            log.error("store %s failed (%s); degraded: acking on with local dedup only", operation, exc)
            report_store_failure(operation, exc)
        self.degraded = True

    def ok(self) -> None:
        """A store call worked (a claim, the outbox's poll, the heartbeat): the episode is over."""
        if self.degraded:
            log.warning("store reachable again; degraded mode over")
        self.degraded = False
