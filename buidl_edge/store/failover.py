"""The shared store with this process's fallback: the one place a failing store is handled.

Every part of a worker that writes (the ack path, the handlers' finish, the outbox, the relay,
the chores) writes through one `Failover`. It owns:

- the degraded episode (`StoreHealth`): a failed write starts it, a write that works once writes
  have stopped failing ends it; one log line and one Sentry event for the whole of it;
- the fallback, a MemoryStore: while the shared store fails, a write lands there instead, so
  acking goes on on local dedup and replies go out from this process (`stores()` gives a
  delivery loop both, shared first);
- the write-back: a claim decided on local dedup is written to the shared store once the episode
  ends (or at the drain), so that a Slack retry reaching another process afterwards is still
  recognised; so is a handler's finish that fell back (finishes.py);
- the handlers' finishes on their way (`finish`): journaled outside the store until it has them
  (finishes.py), so that a kill -9 neither runs their handlers again nor posts their replies twice.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import gevent.pool

from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import EdgeStore, Reply
from buidl_edge.store.errors import StoreError, StoreRejected
from buidl_edge.store.finish_journal import FinishJournal
from buidl_edge.store.finishes import PendingFinishes
from buidl_edge.store.health import StoreHealth
from buidl_edge.store.memory import MemoryStore

log = logging.getLogger("buidl_edge.dispatch")

T = TypeVar("T")

# Claims written back per store call (one commit, or one pipeline).
WRITE_BACK_CHUNK = 500


class Failover:
    def __init__(self, store: EdgeStore, health: StoreHealth | None = None, owner: str = "",
                 journal: FinishJournal | None = None) -> None:
        """`journal`: where finishes that cannot land are kept (none: a kill -9 then re-runs them)."""
        self.store = store
        self.health = health or StoreHealth()
        self.owner = owner
        self.fallback = MemoryStore()
        self.finishes = PendingFinishes(journal)
        # Called when no claim decided locally is left unwritten (the ack path's spill empties then).
        self.on_written_back: Callable[[], None] | None = None
        self._unwritten: dict[str, Envelope] = {}  # claimed on local dedup; not in the shared store
        self._finished: dict[str, str | None] = {}  # of those, handled here: envelope id -> error
        self._writing_back = False  # one write-back at a time: a second would see its claims as taken
        self.written_back = 0
        self.decided_twice = 0
        # Write-backs under way: the drain waits for them.
        self.late = gevent.pool.Group()
        self.health.subscribe(self._on_health)

    # ------------------------------------------------------------ writes

    def stores(self) -> tuple[EdgeStore, EdgeStore]:
        """Where rows wait, in the order a delivery claims them: the shared store, then the fallback
        (what was queued here while the shared store failed)."""
        return (self.store, self.fallback)

    def write(self, operation: str, call: Callable[[EdgeStore], T],
              on_fallback: Callable[[MemoryStore], T] | None = None,
              failed: Callable[[str, StoreError], None] | None = None) -> tuple[T, bool]:
        """`call(shared store)`; when the store fails, `on_fallback(fallback)` (by default the same
        call on the fallback) instead. The result, and whether it landed in the shared store.
        `failed` hears a failure instead of `self.failed` (a caller that counts them, then calls it)."""
        try:
            result = call(self.store)
        except StoreError as exc:
            (failed or self.failed)(operation, exc)
            return (on_fallback or call)(self.fallback), False
        self.wrote()
        return result, True

    def finish(self, envelope_id: str, replies: list[Reply], error: str | None,
               failed: Callable[[str, StoreError], None] | None = None) -> bool:
        """A handler's finish: the envelope done and its replies queued, in the shared store, else
        in the fallback (the replies go out from this process). Journaled first (finishes.py).
        True when it landed in the shared store."""
        self.finished(envelope_id, error)
        self.finishes.begin(envelope_id, replies, error)

        def on_fallback(fallback: MemoryStore) -> None:
            self.finishes.fell_back(envelope_id, replies, error)
            fallback.finish(envelope_id, replies, error)

        _, landed = self.write("finish", lambda store: store.finish(envelope_id, replies, error),
                               on_fallback=on_fallback, failed=failed)
        if landed:
            self.finishes.landed(envelope_id)
        return landed

    def reply_settled(self, key: str) -> None:
        """A reply was posted, or failed for good (`key`: its idempotency key)."""
        self.finishes.reply_settled(key)

    def failed(self, operation: str, exc: StoreError) -> None:
        self.health.failed(operation, exc)

    def wrote(self) -> None:
        self.health.wrote()

    # ------------------------------------------------------------ local dedup and the write-back

    def decide_locally(self, envelope: Envelope) -> bool:
        """Claim on this process's own dedup (the store cannot decide); True when new here. A new one
        is written back to the shared store when it answers again."""
        new = self.fallback.claim(envelope, self.owner)
        if new:
            self._unwritten[envelope.envelope_id] = envelope
        return new

    def finished(self, envelope_id: str, error: str | None) -> None:
        """A handler finished this envelope: if its claim is written back later, finish it there too."""
        if envelope_id in self._unwritten:
            self._finished[envelope_id] = error

    def _on_health(self, degraded: bool, cause: str) -> None:
        if not degraded and (self._unwritten or self.finishes.unwritten()):
            self.late.spawn(self.write_back)

    @property
    def claims_unwritten(self) -> int:
        return len(self._unwritten)

    def unwritten(self) -> int:
        """Claims decided locally and finishes that fell back, not yet in the shared store."""
        return len(self._unwritten) + self.finishes.unwritten()

    def write_back(self) -> int:
        """Claim in the shared store what local dedup decided while it failed (and finish what was
        handled); returns how many are still unwritten."""
        if self._writing_back:
            return self.unwritten()
        self._writing_back = True
        try:
            if self._write_back():
                return self.unwritten()
            self.finishes.write_back(self.store)
        except StoreError as exc:
            self.failed("write back", exc)
        finally:
            self._writing_back = False
        return self.unwritten()

    def _write_back(self) -> int:
        while self._unwritten:
            chunk = list(self._unwritten.values())[:WRITE_BACK_CHUNK]
            try:
                outcomes: Sequence[bool | StoreError] = self.store.claim_many(chunk, self.owner)
            except StoreError as exc:
                self.failed("write back", exc)
                return len(self._unwritten)
            finishes: list[tuple[str, str | None]] = []
            twice = written = 0
            for envelope, outcome in zip(chunk, outcomes):
                eid = envelope.envelope_id
                if isinstance(outcome, StoreError) and not isinstance(outcome, StoreRejected):
                    self.failed("write back", outcome)
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
            for eid, error in finishes:
                self.write("finish", _finisher(eid, error), on_fallback=lambda fallback: None)
            self.written_back += written
            if twice:
                self.decided_twice += twice
                log.warning("%d envelope(s) handled on local dedup while the store failed had been claimed by "
                            "another process too: their handlers may have run twice", twice)
            if written:
                self.wrote()
                log.info("wrote back %d claim(s) decided on local dedup while the store failed", written)
        if self.on_written_back is not None:
            self.on_written_back()
        return 0

    def drain(self, timeout: float) -> bool:
        """Let write-backs under way finish, and try once more; False (said) when some are left."""
        self.late.join(timeout=timeout)
        left = self.write_back() if self.unwritten() else 0
        if left:
            log.warning("%d claim(s) decided on local dedup or finish(es) could not be written back before exit: "
                        "a Slack retry of them reaching another process, or a sweep, would run them again", left)
        return not left and not self.late


def _finisher(envelope_id: str, error: str | None) -> Callable[[EdgeStore], None]:
    """Mark one envelope done (its replies went out already), for `Failover.write`."""
    return lambda store: store.finish(envelope_id, [], error)
