"""The dispatcher: the ack path and a target, over the store with its failover.

`accept` is the links' EnvelopeSink: a burst in, acks out (ack_path.py). New envelopes go to one
target (targets.py): the EdgeApp handlers (handlers.py), the relay to an HTTP-mode app
(relay/target.py), or a Bolt app (bolt/target.py). The store calls the handlers make (finish,
ctx.once's keys) fall back to this process's memory while the store fails, and count into the one
degraded episode (StoreHealth).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from buidl_edge.api.app import EdgeApp
from buidl_edge.config.settings import DEFAULT_CLAIM_WAIT_S
from buidl_edge.dispatch.ack_claims import AckClaims
from buidl_edge.dispatch.ack_path import AckPath
from buidl_edge.dispatch.handlers import HandlerTarget
from buidl_edge.dispatch.spill import Spill
from buidl_edge.dispatch.stats import DispatchStats
from buidl_edge.dispatch.targets import Target, TargetHooks
from buidl_edge.socketmode.link import Ack, LaterAcks
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import EdgeStore, Reply, Swept
from buidl_edge.store.errors import StoreError, StoreRejected
from buidl_edge.store.failover import Failover
from buidl_edge.store.finish_journal import DeadFinishes, JournaledFinish
from buidl_edge.store.health import StoreHealth
from buidl_edge.store.spill_files import DirLook

if TYPE_CHECKING:
    from buidl_edge.delivery.outbox import Outbox
    from buidl_edge.delivery.streams import StreamSender

T = TypeVar("T")

log = logging.getLogger("buidl_edge.dispatch")


class Dispatcher:
    def __init__(self, app: EdgeApp, store: EdgeStore, outbox: Outbox | None, owner: str,
                 ack_payload_deadline: float, bot_user_id: str | None,
                 handler_pool_size: int = 200, handler_threads: int = 8, health: StoreHealth | None = None,
                 target: Target | None = None, claim_wait_s: float = DEFAULT_CLAIM_WAIT_S,
                 failover: Failover | None = None, spill: Spill | None = None,
                 make_target: Callable[[TargetHooks], Target] | None = None,
                 streams: StreamSender | None = None) -> None:
        """`target`: where new envelopes go; by default `app`'s handlers. `make_target`: a target
        built on this dispatcher's store calls (a Bolt app). `failover`: the worker's one, shared
        with the outbox, the relay and the chores (one degraded episode)."""
        self.store = store
        self.owner = owner
        self.bot_user_id = bot_user_id
        self.stats = DispatchStats()
        self.failover = failover or Failover(store, health, owner)
        self.health = self.failover.health
        self.claims = AckClaims(self.failover, owner, claim_wait_s, self._store_failed, spill=spill)
        self.handlers: HandlerTarget | None = None
        lost_with_process = not store.lifespan.outlives_the_process
        if make_target is not None:
            target = make_target(TargetHooks(self._claim_key, self._finish, self.stats, lost_with_process))
        elif target is None:
            target = self.handlers = HandlerTarget(
                app, outbox, self.stats, bot_user_id, self._claim_key, self._finish, handler_pool_size,
                handler_threads, lost_with_process=lost_with_process, streams=streams)
        self.target = target
        self.acks = AckPath(self.claims, target, self.stats, ack_payload_deadline)
        # Rows a sweep took whose owner had journaled their finish: stored instead of run again.
        self._late_finishes: dict[str, JournaledFinish] = {}

    def accept(self, burst: Sequence[tuple[Envelope, float]], later: LaterAcks) -> list[Ack]:
        return self.acks.accept(burst, later)

    def rerun(self, envelope: Envelope) -> None:
        """Handle an envelope the sweep took over (it was acked long ago): its worker died or stopped
        before finishing it, or an operator retried it."""
        self.stats.recovered += 1
        self.target.rerun(envelope)

    def recover(self, sweep_store: bool = True) -> None:
        """The sweep: take over what dead or stalled workers left. What a dead worker of this host had
        finished but could not store (its finish journal) is stored first, so that nothing it
        finished runs again; then what it acked undecided (its spill file) is claimed, and (with
        `sweep_store`: the sweep watch saw a lease that can have run out) the rows the store says
        were left unfinished are run again, unless their owner had journaled them (it died after
        the journals were read). Raises StoreError (the next sweep goes on)."""
        journal = self.failover.finishes
        if self._late_finishes:  # journaled finishes of rows an earlier sweep took: stored first
            DeadFinishes(finishes=self._late_finishes).recover(self.store)
            self._late_finishes.clear()
        look = DirLook()  # one listing of the spill directory for the journals and the spill files
        dead = journal.read_dead(look)
        self.recover_spilled(dead.finishes, look)
        if dead.finishes:
            dead.recover(self.store)
            log.info("stored %d finish(es) a dead worker had journaled while the store was away",
                     len(dead.finishes))
        dead.mark_recovered()
        if not sweep_store:
            return
        journaled: dict[str, dict[str, JournaledFinish]] = {}
        for envelope in self.store.sweep(self.owner):
            eid = envelope.envelope_id
            previous = envelope.taken_from if isinstance(envelope, Swept) else ""
            if previous and previous not in journaled:
                journaled[previous] = journal.finishes_of(previous)
            if eid in dead.finishes:
                continue  # another sweeper took it while this one stored its finish
            if previous and eid in journaled[previous]:
                self._late_finishes[eid] = journaled[previous][eid]
                continue
            self.rerun(envelope)
        if self._late_finishes:
            DeadFinishes(finishes=self._late_finishes).recover(self.store)
            log.info("stored %d finish(es) a worker had journaled before it died", len(self._late_finishes))
            self._late_finishes.clear()

    def recover_spilled(self, finished: Collection[str] = (), look: DirLook | None = None) -> int:
        """Claim what dead workers of this host acked before the store decided it (their spill
        files) and hand on what the store says is new, except what they `finished`; how many were new."""
        spill = self.claims.spill
        if spill is None:
            return 0
        new_ones = 0
        for path, envelopes in spill.take_dead(look):
            try:
                outcomes = self.store.claim_many(envelopes, self.owner) if envelopes else []
            except StoreError:
                spill.give_back(path)  # the next sweep tries again
                raise
            for envelope, outcome in zip(envelopes, outcomes):
                if outcome is True and envelope.envelope_id not in finished:
                    new_ones += 1
                    self.stats.recovered += 1
                    self.target.start(envelope, None, None)
            spill.done(path)
        return new_ones

    def describe(self, greenlet: Any) -> tuple[str, dict[str, Any]] | None:
        """What a greenlet is running, if it is one of our handlers (HubWatch names it)."""
        return self.target.describe(greenlet)

    def stats_dict(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), **self.target.stats(), **self.claims.stats()}

    # ------------------------------------------------------------ the handlers' store calls

    def _claim_key(self, key: str) -> bool:
        return self._write("claim_key", lambda store: store.claim_key(key))[0]

    def _finish(self, envelope_id: str, replies: list[Reply], error: str | None) -> bool:
        """True when the finish (and its replies) landed in the shared store; else the replies are
        queued in the fallback's outbox and go out from this process."""
        return self.failover.finish(envelope_id, replies, error, failed=self._store_failed)

    def _write(self, operation: str, call: Callable[[Any], T]) -> tuple[T, bool]:
        """A handler's write through the failover, its failures counted here too."""
        return self.failover.write(operation, call, failed=self._store_failed)

    def _store_failed(self, operation: str, exc: StoreError) -> None:
        """Counted every time; StoreHealth says it once per episode (or per kind, if rejected)."""
        if isinstance(exc, StoreRejected):  # this call alone failed, not the store
            self.stats.store_rejected += 1
        else:
            self.stats.store_errors += 1
        self.failover.failed(operation, exc)

    # ------------------------------------------------------------ drain

    def finish_acks(self, timeout: float) -> bool:
        """Wait for the claims and acks in flight (never capped, never long); False on timeout."""
        return self.acks.finish(timeout=timeout)

    def close_files(self) -> None:
        """At exit, after the drain: this process's spill file and finish journal, removed if empty."""
        if self.claims.spill is not None:
            self.claims.spill.close()
        if self.failover.finishes.journal is not None:
            self.failover.finishes.journal.close()

    def finish_handlers(self, timeout: float) -> bool:
        """What the target started, then the claims still being decided (and their write-back);
        False, said at warning, when time ran out."""
        deadline = time.monotonic() + timeout
        handled = self.target.drain(timeout=timeout)
        return self.claims.drain(timeout=max(0.1, deadline - time.monotonic())) and handled
