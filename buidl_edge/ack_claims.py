"""The ack path's claims: a read burst decided within a bound, by the shared store or by local dedup.

No ack waits on the store longer than BUIDL_CLAIM_WAIT_S. Past that bound (a write lock held by
another process, a stalled disk, Redis paused), or when the store fails, the burst is decided by
this process's own dedup (`StoreHealth.fallback`), acked and handled, and the worker is degraded
for the episode. What was decided locally still has to reach the shared store, or a Slack retry
landing on another process afterwards would run the event again:

- a claim the ack stopped waiting for is not cancelled: when the store answers it lands, and
  `_landed` reconciles the store's answer with what this process did meanwhile;
- a claim the store refused (it failed) is kept in `_unwritten` and written back once the
  episode is over (`StoreHealth` calls `_on_health`), or at the drain.

The store's answer is reconciled per envelope:

| decided here | the store said | then |
| --- | --- | --- |
| new (handled here) | new | the row is ours; if the handler already finished, finish it again (on Redis the finish may have overtaken the claim) |
| new | already claimed | another process had it too: counted and said, it may have run twice |
| duplicate (dropped) | new | nobody handles that row: finish it at once, or a sweeper would run it |
| new | failed | written back later |
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import gevent
import gevent.pool

from buidl_edge.protocol import Envelope
from buidl_edge.store.base import EdgeStore
from buidl_edge.store.errors import StoreError, StoreRejected, rejected
from buidl_edge.store_health import StoreHealth

log = logging.getLogger("buidl_edge.dispatch")

# Claims written back per store call (one commit, or one pipeline).
WRITE_BACK_CHUNK = 500

Outcome = bool | StoreError
FailureHook = Callable[[str, StoreError], None]


class AckClaims:
    """Decides each burst's claims for the dispatcher; owns the write-back of local decisions."""

    def __init__(self, store: EdgeStore, health: StoreHealth, owner: str, wait_s: float,
                 on_failure: FailureHook) -> None:
        self.store = store
        self.health = health
        self.owner = owner
        self.wait_s = wait_s
        self._on_failure = on_failure  # counts the failure, and opens the episode
        self._where = store.describe()
        # Store calls the ack stopped waiting for, and write-backs: the drain waits for them.
        self.late = gevent.pool.Group()
        self._pending: dict[str, Envelope] = {}  # decided new here; the store's answer still due
        self._unwritten: dict[str, Envelope] = {}  # decided new here; the store refused the claim
        self._finished: dict[str, str | None] = {}  # of those two, handled here: envelope id -> error
        self.decided_locally = 0
        self.written_back = 0
        self.decided_twice = 0
        self._writing_back = False  # one write-back at a time: a second would see its claims as taken
        health.subscribe(self._on_health)

    # ------------------------------------------------------------ deciding

    def now(self, envelopes: Sequence[Envelope]) -> list[bool] | None:
        """True for each new envelope, if the store can decide without waiting; else None."""
        try:
            outcomes = self.store.claim_many_now(envelopes, self.owner)
        except StoreError as exc:  # the whole commit failed
            outcomes = [exc] * len(envelopes)
        return None if outcomes is None else self._decided(envelopes, outcomes)

    def within_bound(self, envelopes: Sequence[Envelope]) -> list[bool]:
        """True for each new envelope: the store's answer if it comes within the bound, else local
        dedup's (the store's answer is reconciled when it comes)."""
        gave_up: list[list[bool]] = []  # what local dedup decided, once the ack stopped waiting

        def claim_then_reconcile() -> list[Outcome]:
            outcomes = self._claim_many(envelopes)
            if gave_up:  # in this greenlet, so that the drain's wait for `late` covers it
                self._landed(envelopes, gave_up[0], outcomes)
            return outcomes

        call = self.late.spawn(claim_then_reconcile)
        call.join(timeout=self.wait_s)
        if call.ready():
            return self._decided(envelopes, call.value)
        # Nothing here yields before `gave_up` is set: the call cannot land unreconciled.
        decided = [self.health.fallback.claim(envelope, self.owner) for envelope in envelopes]
        for envelope, new in zip(envelopes, decided):
            if new:
                self._pending[envelope.envelope_id] = envelope
        gave_up.append(decided)
        self.decided_locally += len(envelopes)
        self.health.busy("claim", self._where, self.wait_s)
        return decided

    def finished(self, envelope_id: str, error: str | None) -> None:
        """The dispatcher handled this envelope: a claim that lands or is written back later is
        finished with it."""
        if envelope_id in self._pending or envelope_id in self._unwritten:
            self._finished[envelope_id] = error

    def _claim_many(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        try:
            return self.store.claim_many(envelopes, self.owner)
        except StoreError as exc:  # the store failed as a whole
            return [exc] * len(envelopes)
        except Exception as exc:  # a bug: each envelope goes on by local dedup, never a dead greenlet
            return [rejected("claim", exc)] * len(envelopes)

    def _decided(self, envelopes: Sequence[Envelope], outcomes: Sequence[Outcome]) -> list[bool]:
        """The store's outcomes, with local dedup deciding where the store failed."""
        decided: list[bool] = []
        for envelope, outcome in zip(envelopes, outcomes):
            if isinstance(outcome, StoreError):
                decided.append(self._decide_locally(envelope, outcome))
                continue
            if outcome:
                self.health.wrote()
            decided.append(outcome)
        return decided

    def _decide_locally(self, envelope: Envelope, exc: StoreError) -> bool:
        """Ack and handle it on local dedup (this envelope alone if the store rejected it)."""
        self._on_failure("claim", exc)
        new = self.health.fallback.claim(envelope, self.owner)
        self.decided_locally += 1
        if new and not isinstance(exc, StoreRejected):  # a rejected one would be refused again
            self._unwritten[envelope.envelope_id] = envelope
        return new

    # ------------------------------------------------------------ reconciling

    def _landed(self, envelopes: Sequence[Envelope], decided: Sequence[bool], outcomes: Sequence[Outcome]) -> None:
        """The store's late answer to a burst decided locally."""
        to_finish: list[tuple[str, str | None]] = []
        twice = 0
        for envelope, new_here, outcome in zip(envelopes, decided, outcomes):
            eid = envelope.envelope_id
            if not new_here:
                if outcome is True:  # claimed in the store by a delivery we dropped as a duplicate
                    to_finish.append((eid, None))
                continue
            self._pending.pop(eid, None)
            if isinstance(outcome, StoreError):
                self._unwritten[eid] = envelope
                self._on_failure("claim", outcome)
            elif outcome:
                self.health.wrote()
                if eid in self._finished:
                    to_finish.append((eid, self._finished.pop(eid)))
            else:
                self._finished.pop(eid, None)
                twice += 1
        self._said_twice(twice)
        self._finish_all(to_finish)

    def _on_health(self, degraded: bool, cause: str) -> None:
        if not degraded and self._unwritten:
            self.late.spawn(self.write_back)

    def write_back(self) -> int:
        """Claim in the shared store what was decided here while it failed (and finish what was
        handled); returns how many are still unwritten."""
        if self._writing_back:
            return len(self._unwritten)
        self._writing_back = True
        try:
            return self._write_back()
        finally:
            self._writing_back = False

    def _write_back(self) -> int:
        while self._unwritten:
            chunk = list(self._unwritten.values())[:WRITE_BACK_CHUNK]
            outcomes = self._claim_many(chunk)
            to_finish: list[tuple[str, str | None]] = []
            twice = written = 0
            for envelope, outcome in zip(chunk, outcomes):
                eid = envelope.envelope_id
                if isinstance(outcome, StoreError):
                    if isinstance(outcome, StoreRejected):
                        self._unwritten.pop(eid, None)  # refused for what it is: it always would be
                        self._finished.pop(eid, None)
                        continue
                    self._on_failure("write back", outcome)
                    return len(self._unwritten)
                self._unwritten.pop(eid, None)
                if outcome:
                    written += 1
                    if eid in self._finished:
                        to_finish.append((eid, self._finished.pop(eid)))
                else:
                    self._finished.pop(eid, None)
                    twice += 1
            self._finish_all(to_finish)
            self.written_back += written
            self._said_twice(twice)
            if written:
                self.health.wrote()
                log.info("wrote back %d claim(s) decided locally while the store was degraded", written)
        return 0

    def _finish_all(self, finishes: Sequence[tuple[str, str | None]]) -> None:
        """Mark done what this process already handled (its replies went out already)."""
        for eid, error in finishes:
            try:
                self.store.finish(eid, [], error)
            except StoreError as exc:
                self._on_failure("finish", exc)

    def _said_twice(self, count: int) -> None:
        if count:
            self.decided_twice += count
            log.warning("%d envelope(s) decided locally while the store was degraded had been claimed by "
                        "another process too: their handlers may have run twice", count)

    # ------------------------------------------------------------ drain

    def drain(self, timeout: float) -> bool:
        """Let late claims land and write back what is left; False when some could not be."""
        self.late.join(timeout=timeout)
        left = self.write_back() if self._unwritten else 0
        if left:
            log.warning("%d claim(s) decided locally could not be written back before exit: a Slack retry "
                        "of them reaching another process would run them again", left)
        return not left and not self.late

    def stats(self) -> dict[str, Any]:
        return {"claims_decided_locally": self.decided_locally, "claims_written_back": self.written_back,
                "claims_decided_twice": self.decided_twice}
