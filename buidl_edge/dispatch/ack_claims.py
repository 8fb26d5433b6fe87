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
  their claims are written back when the episode ends (`StoreHealth` calls `_on_health`), or at
  the drain, so that a later retry on another process is still recognised.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.pool

from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import EdgeStore
from buidl_edge.store.errors import StoreError, StoreRejected, rejected
from buidl_edge.store.health import StoreHealth

log = logging.getLogger("buidl_edge.dispatch")

# How often a claim the store refused is tried again, and for how long before local dedup decides.
RETRY_S = 0.5
DECIDE_LOCALLY_AFTER_S = 5.0
# Claims written back per store call (one commit, or one pipeline).
WRITE_BACK_CHUNK = 500

Outcome = bool | StoreError
FailureHook = Callable[[str, StoreError], None]
# Called once per envelope of a burst acked before it was decided: (envelope, new).
DecidedLater = Callable[[Envelope, bool], None]


def _failed_whole(outcomes: Sequence[Outcome]) -> bool:
    """The store failed (not one item it could not take): worth trying again."""
    return any(isinstance(o, StoreError) and not isinstance(o, StoreRejected) for o in outcomes)


class AckClaims:
    """Decides each burst's claims for the dispatcher; owns the write-back of local decisions."""

    def __init__(self, store: EdgeStore, health: StoreHealth, owner: str, wait_s: float,
                 on_failure: FailureHook, decide_locally_after_s: float = DECIDE_LOCALLY_AFTER_S) -> None:
        self.store = store
        self.health = health
        self.owner = owner
        self.wait_s = wait_s
        self.decide_locally_after_s = decide_locally_after_s
        self._on_failure = on_failure  # counts the failure, and opens the episode
        self._where = store.describe()
        # Claims still being decided after their ack, and write-backs: the drain waits for them.
        self.late = gevent.pool.Group()
        self._unwritten: dict[str, Envelope] = {}  # decided here, on local dedup; not in the store
        self._finished: dict[str, str | None] = {}  # of those, handled here: envelope id -> error
        self.acked_undecided = 0
        self.decided_locally = 0
        self.written_back = 0
        self.decided_twice = 0
        self._writing_back = False  # one write-back at a time: a second would see its claims as taken
        health.subscribe(self._on_health)

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

        def claim() -> list[Outcome]:
            outcomes = self._claim_many(envelopes)
            if acked:  # in this greenlet, so that the drain's wait for `late` covers it
                self._settle(envelopes, outcomes, later, time.monotonic() + self.decide_locally_after_s)
            return outcomes

        call = self.late.spawn(claim)
        call.join(timeout=self.wait_s)
        if call.ready():
            outcomes = call.value
            if not _failed_whole(outcomes):
                return self._decided(envelopes, outcomes)
            self._on_failure("claim", next(o for o in outcomes if isinstance(o, StoreError)))
            deadline = time.monotonic() + self.decide_locally_after_s
            self.late.spawn(self._retry, envelopes, later, deadline)
        else:
            acked.append(True)
            self.health.busy("claim", self._where, self.wait_s)
        self.acked_undecided += len(envelopes)
        return None

    def finished(self, envelope_id: str, error: str | None) -> None:
        """The dispatcher handled this envelope: if its claim is written back later, it is
        finished with it."""
        if envelope_id in self._unwritten:
            self._finished[envelope_id] = error

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
                self._on_failure("claim", outcome)
                decided.append(self.health.fallback.claim(envelope, self.owner))
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
            new = self.health.fallback.claim(envelope, self.owner)
            self.decided_locally += 1
            if new:
                self._unwritten[envelope.envelope_id] = envelope
            later(envelope, new)

    # ------------------------------------------------------------ write-back

    def _on_health(self, degraded: bool, cause: str) -> None:
        if not degraded and self._unwritten:
            self.late.spawn(self.write_back)

    def write_back(self) -> int:
        """Claim in the shared store what local dedup decided while it failed (and finish what was
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
            finishes: list[tuple[str, str | None]] = []
            twice = written = 0
            for envelope, outcome in zip(chunk, outcomes):
                eid = envelope.envelope_id
                if isinstance(outcome, StoreError) and not isinstance(outcome, StoreRejected):
                    self._on_failure("write back", outcome)
                    return len(self._unwritten)
                self._unwritten.pop(eid, None)
                handled = eid in self._finished
                error = self._finished.pop(eid, None)
                if outcome is True:
                    written += 1
                    if handled:  # done here already (its replies went out): done in the store too
                        finishes.append((eid, error))
                elif outcome is False:
                    twice += 1
            self._finish_all(finishes)
            self.written_back += written
            if twice:
                self.decided_twice += twice
                log.warning("%d envelope(s) handled on local dedup while the store failed had been claimed by "
                            "another process too: their handlers may have run twice", twice)
            if written:
                self.health.wrote()
                log.info("wrote back %d claim(s) decided on local dedup while the store failed", written)
        return 0

    def _finish_all(self, finishes: Sequence[tuple[str, str | None]]) -> None:
        for eid, error in finishes:
            try:
                self.store.finish(eid, [], error)
            except StoreError as exc:
                self._on_failure("finish", exc)

    # ------------------------------------------------------------ drain

    def drain(self, timeout: float) -> bool:
        """Let claims still being decided land and write back what is left; False when some could
        not be."""
        self.late.join(timeout=timeout)
        left = self.write_back() if self._unwritten else 0
        if left:
            log.warning("%d claim(s) decided on local dedup could not be written back before exit: a Slack "
                        "retry of them reaching another process would run them again", left)
        return not left and not self.late

    def stats(self) -> dict[str, Any]:
        return {"acked_undecided": self.acked_undecided, "claims_decided_locally": self.decided_locally,
                "claims_written_back": self.written_back, "claims_decided_twice": self.decided_twice}
