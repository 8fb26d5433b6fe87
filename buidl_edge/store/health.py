"""Whether the shared store takes writes, for the whole worker: one degraded episode at a time.

The dispatcher, the outbox, the relay and the chores share one `StoreHealth`. A failing or busy
store does not stop acking: claims fall back to local dedup and replies to a local queue, both in
`fallback`, and the worker says so once per episode (one log line and one Sentry report), not
once per failed call.

An episode starts on a write that failed (`failed`) or on a claim the store could not decide
within BUIDL_CLAIM_WAIT_S (`busy`). It ends only on a write that worked (`wrote`), and only once
writes have stopped failing for `STEADY_S`: on a full disk some writes still fit in the WAL's
free pages, and a read always works, so neither may end it (that made the episode flap).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from buidl_edge.observability.sentry import report_store_failure
from buidl_edge.store.errors import StoreBusy, StoreError, StoreRejected

log = logging.getLogger("buidl_edge.store_health")

# Writes must have worked this long, with none failing, before an episode is over.
STEADY_S = 1.0

Listener = Callable[[bool, str], None]


class StoreHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.degraded = False
        self.cause = ""  # what started the episode, for /readyz and `status`
        self.episodes = 0
        self._clock = clock
        self._started_at = 0.0
        self._last_failure_at = 0.0
        # Called with (degraded, cause) when an episode starts and ends: the write-back of what
        # was decided locally, and the dyno's /readyz under `run`.
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def failed(self, operation: str, exc: StoreError) -> None:
        """A store call failed. A StoreRejected failed alone (the store still works): no episode,
        and only the first of its kind, which the store logged, goes to Sentry."""
        if isinstance(exc, StoreRejected):
            if exc.first:
                report_store_failure(f"{operation}:{exc.kind}", exc)
            return
        self._last_failure_at = self._clock()
        if self.degraded:
            return
        # Degraded first: the Sentry report below can yield to other greenlets, whose failures
        # must find the episode begun (each began one of its own: four error lines in 25 ms).
        self._begin(str(exc))
        if isinstance(exc, StoreBusy):
            log.warning("%s; degraded: acking with local dedup, written back when the store answers", exc)
        else:
            log.error("store %s failed (%s); degraded: acking on with local dedup only", operation, exc)
        report_store_failure(operation, exc)

    def busy(self, operation: str, store: str, waited_s: float) -> None:
        """A claim the store did not decide within the bound: decided locally, an episode."""
        self.failed(operation, StoreBusy(f"store busy: {store} did not decide a claim within {waited_s:g}s "
                                         "(BUIDL_CLAIM_WAIT_S): a write lock held by another process, "
                                         "a stalled disk, or the server not answering"))

    def wrote(self) -> None:
        """A write to the shared store worked: the episode ends once writes have stopped failing."""
        if not self.degraded:
            return
        now = self._clock()
        if now - self._last_failure_at < STEADY_S:
            return
        self.degraded = False
        log.info("store writable again after %.1fs; degraded mode over (it began with: %s)",
                 now - self._started_at, self.cause)
        self._notify(False, self.cause)

    def _begin(self, cause: str) -> None:
        self.degraded = True
        self.cause = cause
        self.episodes += 1
        self._started_at = self._clock()
        self._notify(True, cause)

    def _notify(self, degraded: bool, cause: str) -> None:
        for listener in self._listeners:
            try:
                listener(degraded, cause)
            except Exception:  # a listener's bug must not stop acking
                log.exception("store health listener failed")
