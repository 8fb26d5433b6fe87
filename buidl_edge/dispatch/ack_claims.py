"""The ack path's claims: a read burst decided by the shared store, with no ack waiting on it long.

No ack waits on the store longer than BUIDL_CLAIM_WAIT_S. Past that bound (a write lock held by
another process, a stalled disk, Redis paused), or at once when the store fails (a full disk,
Redis down), the burst is acked without waiting and the worker is degraded for the episode. The
envelopes are not handled on local dedup at once, though: this process's dedup knows nothing of
the others', so a Slack retry that lands on another process meanwhile would run a second time
(the soak showed 16 such doubles in one 5 s write lock). Handling waits for the store's decision:

- a claim the ack stopped waiting for is not cancelled: when the store answers, each envelope it
  says is new is handled, and each it says another delivery had is dropped;
- a claim the store refused is tried again every RETRY_S, for up to DECIDE_LOCALLY_AFTER_S;
- past that, an outage is no longer a blip: local dedup decides, the new ones are handled, and
  their claims are written back when the episode ends, or at the drain (store/failover.py), so
  that a later retry on another process is still recognised.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.pool

from buidl_edge.dispatch.spill import Spill
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.errors import StoreError, StoreRejected, rejected
from buidl_edge.store.failover import Failover

log = logging.getLogger("buidl_edge.dispatch")

# How often a claim the store refused is tried again, and for how long before local dedup decides.
RETRY_S = 0.5
DECIDE_LOCALLY_AFTER_S = 5.0
Outcome = bool | StoreError
FailureHook = Callable[[str, StoreError], None]
# Called once per envelope of a burst acked before it was decided: (envelope, new).
DecidedLater = Callable[[Envelope, bool], None]


def _failed_whole(outcomes: Sequence[Outcome]) -> bool:
    """The store failed (not one item it could not take): worth trying again."""
    return any(isinstance(o, StoreError) and not isinstance(o, StoreRejected) for o in outcomes)


class AckClaims:
    """Decides each burst's claims for the dispatcher."""

    def __init__(self, failover: Failover, owner: str, wait_s: float, on_failure: FailureHook,
                 decide_locally_after_s: float = DECIDE_LOCALLY_AFTER_S, spill: Spill | None = None) -> None:
        """`spill`: where envelopes acked undecided are kept until decided (safe from kill -9)."""
        self.failover = failover
        self.store = failover.store
        self.health = failover.health
        self.owner = owner
        self.wait_s = wait_s
        self.decide_locally_after_s = decide_locally_after_s
        self._on_failure = on_failure  # counts the failure, and opens the episode
        self._where = self.store.describe()
        # Claims still being decided after their ack: the drain waits for them.
        self.late = gevent.pool.Group()
        self.acked_undecided = 0
        self.decided_locally = 0
        self.spill = spill
        # Acked and not yet decided: while any, or any decided locally is not written back yet, the
        # spill file holds them (a kill -9 before the write-back would otherwise lose them).
        self._undecided = 0
        failover.on_written_back = self._empty_spill_if_settled

    # ------------------------------------------------------------ deciding

    def now(self, envelopes: Sequence[Envelope]) -> list[bool] | None:
        """True for each new envelope, if the store decided without waiting; else None."""
        try:
            outcomes = self.store.claim_many_now(envelopes, self.owner)
        except StoreError:  # the whole commit failed: `within_bound` tries again and says so
            return None
        if outcomes is None or _failed_whole(outcomes):
            return None
        return self._decided(envelopes, outcomes)

    def within_bound(self, envelopes: Sequence[Envelope], later: DecidedLater) -> list[bool] | None:
        """True for each new envelope if the store decides within the bound; else None: ack them
        all now, and `later(envelope, new)` hears each one's decision when it is made."""
        acked: list[bool] = []  # set once the ack stopped waiting: the call then decides `later`

        decided_later = self._counting(later)

        def claim() -> list[Outcome]:
            outcomes = self._claim_many(envelopes)
            if acked:  # in this greenlet, so that the drain's wait for `late` covers it
                self._settle(envelopes, outcomes, decided_later, time.monotonic() + self.decide_locally_after_s)
            return outcomes

        call = self.late.spawn(claim)
        call.join(timeout=self.wait_s)
        outcomes = call.value if call.ready() else None
        if call.ready() and outcomes is None:  # only when the greenlet was killed (the drain)
            outcomes = [rejected("claim", RuntimeError("claim killed"))] * len(envelopes)
        if outcomes is not None and not _failed_whole(outcomes):
            return self._decided(envelopes, outcomes)
        # Acked undecided. Counted and spilled before anything here can yield to the hub: a burst
        # decided meanwhile must not empty the spill file under this one.
        self.acked_undecided += len(envelopes)
        self._undecided += len(envelopes)
        if self.spill is not None:  # before the ack: a kill -9 from here on must not lose them
            self.spill.write(envelopes)
        if outcomes is None:
            acked.append(True)
            self.health.busy("claim", self._where, self.wait_s)
        else:
            deadline = time.monotonic() + self.decide_locally_after_s
            self.late.spawn(self._retry, envelopes, decided_later, deadline)
            self._on_failure("claim", next(o for o in outcomes if isinstance(o, StoreError)))
        return None

    def _counting(self, later: DecidedLater) -> DecidedLater:
        """`later`, counting down what is undecided; the spill file is emptied when nothing is."""
        def decided(envelope: Envelope, new: bool) -> None:
            self._undecided -= 1
            self._empty_spill_if_settled()
            later(envelope, new)

        return decided

    def _empty_spill_if_settled(self) -> None:
        if self._undecided == 0 and not self.failover.claims_unwritten and self.spill is not None:
            self.spill.empty()

    def _claim_many(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        try:
            return self.store.claim_many(envelopes, self.owner)
        except StoreError as exc:  # the store failed as a whole
            return [exc] * len(envelopes)
        except Exception as exc:  # a bug: each envelope goes on by local dedup, never a dead greenlet
            return [rejected("claim", exc)] * len(envelopes)

    def _decided(self, envelopes: Sequence[Envelope], outcomes: Sequence[Outcome]) -> list[bool]:
        """The store's outcomes; an envelope it could not take alone (StoreRejected) goes by local dedup."""
        decided: list[bool] = []
        for envelope, outcome in zip(envelopes, outcomes):
            if isinstance(outcome, StoreError):
                self._on_failure("claim", outcome)  # this one alone: local dedup, never written back
                decided.append(self.failover.fallback.claim(envelope, self.owner))
                continue
            if outcome:
                self.health.wrote()
            decided.append(outcome)
        return decided

    # ------------------------------------------------------------ after the ack

    def _retry(self, envelopes: Sequence[Envelope], later: DecidedLater, deadline: float) -> None:
        gevent.sleep(RETRY_S)
        self._settle(envelopes, self._claim_many(envelopes), later, deadline)

    def _settle(self, envelopes: Sequence[Envelope], outcomes: Sequence[Outcome], later: DecidedLater,
                deadline: float) -> None:
        """Hand each envelope on once decided; retry what the store refused until the deadline."""
        while True:
            retry: list[Envelope] = []
            error: StoreError | None = None
            for envelope, outcome in zip(envelopes, outcomes):
                if isinstance(outcome, StoreError) and not isinstance(outcome, StoreRejected):
                    retry.append(envelope)
                    error = outcome
                    continue
                later(envelope, self._decided([envelope], [outcome])[0])
            if not retry:
                return
            assert error is not None
            self._on_failure("claim", error)
            if time.monotonic() >= deadline:
                self._decide_locally(retry, later)
                return
            gevent.sleep(RETRY_S)
            envelopes, outcomes = retry, self._claim_many(retry)

    def _decide_locally(self, envelopes: Sequence[Envelope], later: DecidedLater) -> None:
        """The store stayed away: local dedup decides, and what it took is written back later."""
        log.warning("store still failing after %.0fs: %d envelope(s) handled on this process's own dedup "
                    "(a Slack retry of one on another process meanwhile would run it again); their claims are "
                    "written back when the store answers", self.decide_locally_after_s, len(envelopes))
        for envelope in envelopes:
            self.decided_locally += 1
            later(envelope, self.failover.decide_locally(envelope))

    # ------------------------------------------------------------ drain

    def drain(self, timeout: float) -> bool:
        """Let claims still being decided land, then the write-back; False when some could not be."""
        deadline = time.monotonic() + timeout
        landed = bool(self.late.join(timeout=timeout))
        return self.failover.drain(max(0.1, deadline - time.monotonic())) and landed

    def stats(self) -> dict[str, Any]:
        return {"acked_undecided": self.acked_undecided, "claims_decided_locally": self.decided_locally,
                "claims_written_back": self.failover.written_back, "claims_decided_twice": self.failover.decided_twice}
