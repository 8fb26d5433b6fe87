"""From a read envelope to an ack and a handled event: claim, ack, run handlers, finish."""
from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import gevent
import gevent.pool

from buidl_edge.dispatch.ack_claims import AckClaims
from buidl_edge.api.app import Context, EdgeApp
from buidl_edge.config.settings import DEFAULT_CLAIM_WAIT_S
from buidl_edge.dispatch.handler_pool import HandlerPool
from buidl_edge.dispatch.handler_threads import HandlerThreads, HubCall, HubLogger
from buidl_edge.socketmode.link import Link
from buidl_edge.observability.logs import log_context
from buidl_edge.delivery.outbox import Outbox
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.observability.sentry import report_handler_error
from buidl_edge.store.base import EdgeStore, Reply, why_taken_over
from buidl_edge.store.errors import StoreError, StoreRejected
from buidl_edge.store.memory import MemoryStore
from buidl_edge.store.health import StoreHealth

if TYPE_CHECKING:
    from buidl_edge.relay.relay import Relay

log = logging.getLogger("buidl_edge.dispatch")
# ctx.logger's logger (looked up once: getLogger takes a lock on every call).
handler_log = logging.getLogger("buidl_edge.handler")

# Distinct unknown slash command names warned about; Slack only sends the app's own commands.
MAX_UNKNOWN_COMMANDS = 1000
# Envelope ids named in one "drain timed out" line.
MAX_IDS_LOGGED = 100


@dataclass
class DispatchStats:
    envelopes_new: int = 0
    duplicates: int = 0
    handled: int = 0
    handler_errors: int = 0
    unhandled_kinds: int = 0
    recovered: int = 0
    store_errors: int = 0
    # Calls the store failed alone (StoreRejected): acked and handled on local dedup, not degraded.
    store_rejected: int = 0
    # Acks sent at once, without the payload the handler might have returned, as the pool was full.
    acks_pool_full: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Dispatcher:
    """Acks go through `inflight`, never capped; handlers through `pool`, whose submit never
    waits: no ack ever waits for handler capacity."""

    def __init__(self, app: EdgeApp, store: EdgeStore, outbox: Outbox, owner: str,
                 ack_payload_deadline: float, bot_user_id: str | None,
                 handler_pool_size: int = 200, handler_threads: int = 8, health: StoreHealth | None = None,
                 relay: Relay | None = None, claim_wait_s: float = DEFAULT_CLAIM_WAIT_S) -> None:
        self.app = app
        self.relay = relay  # relay mode: envelopes go to the HTTP-mode app behind it, not to `app`
        self.store = store
        self.outbox = outbox
        self.owner = owner
        self.ack_payload_deadline = ack_payload_deadline
        self.bot_user_id = bot_user_id
        self.stats = DispatchStats()
        # Shared with the outbox and the heartbeat; while the store fails, claims use its fallback.
        self.health = health or StoreHealth()
        self.claims = AckClaims(store, self.health, owner, claim_wait_s, self._store_failed)
        self.inflight = gevent.pool.Group()
        self.pool = HandlerPool(handler_pool_size)
        self.threads = HandlerThreads(handler_threads)
        # ctx.once and ctx.logger from a threaded handler: the store and logging's hooks are
        # called on the hub, never from the thread.
        self.hub_call = HubCall()
        self._claim_key_any_thread = self.hub_call.wrap(self._claim_key)
        # Which handler each handler greenlet is in, and for which envelope (for HubWatch).
        self._busy: dict[Any, tuple[str, str]] = {}
        self._unknown_commands: set[str] = set()

    def accept(self, burst: Sequence[tuple[Envelope, float]], link: Link) -> None:
        """Called by the link's reader with the envelopes of one read (and when each was read);
        returns at once.

        When the store can decide the claims without waiting (the common case: SQLite's write
        lock is free, or the memory store), the whole burst is claimed in one commit and acked
        right here, in the reader, with no greenlet of its own; else one greenlet of `inflight`
        claims the whole burst in one commit or round trip (Redis) and acks, waiting at most
        BUIDL_CLAIM_WAIT_S: past it, or with the store failing, the burst is acked at once and
        each envelope handed on when the store has decided it (ack_claims.py).
        """
        envelopes = [envelope for envelope, _ in burst]
        new = self.claims.now(envelopes)
        if new is None:
            self.inflight.spawn(self._process_burst, burst, link)
            return
        self._ack_burst(burst, new, link)

    def _process_burst(self, burst: Sequence[tuple[Envelope, float]], link: Link) -> None:
        new = self.claims.within_bound([envelope for envelope, _ in burst],
                                       lambda envelope, is_new: self._decided_later(envelope, is_new, link))
        if new is None:  # acked undecided: each is handed on by _decided_later
            for envelope, received_at in burst:
                link.ack(envelope.envelope_id, None, received_at)
            return
        self._ack_burst(burst, new, link)

    def _decided_later(self, envelope: Envelope, new: bool, link: Link) -> None:
        """The store decided an envelope acked before it could (a handler's payload is too late for
        the ack by now: a command answers through response_url)."""
        if not new:
            self.stats.duplicates += 1
            log.info("duplicate %s (retry %d) dropped; it was acked while the store decided",
                     envelope.kind, envelope.retry_attempt, extra=_log_fields(envelope, link))
            return
        self.stats.envelopes_new += 1
        if self.relay is not None:
            self.relay.enqueue(envelope)
        else:
            self.pool.submit(envelope.envelope_id, self.handle, envelope, link.id)

    def _ack_burst(self, burst: Sequence[tuple[Envelope, float]], new: Sequence[bool], link: Link) -> None:
        for (envelope, received_at), is_new in zip(burst, new):
            self._claimed(is_new, envelope, link, received_at)

    def _claimed(self, new: bool, envelope: Envelope, link: Link, received_at: float) -> None:
        """Ack and hand on one envelope of a burst. What waits (a handler's answer, the relay's
        backend) goes to a greenlet of `inflight`: the burst's next acks must not wait behind it."""
        if not new:
            self.stats.duplicates += 1
            log.info("duplicate %s (retry %d) acked and dropped", envelope.kind, envelope.retry_attempt,
                     extra=_log_fields(envelope, link))
            link.ack(envelope.envelope_id, None, received_at)
            return
        self.stats.envelopes_new += 1
        if self.relay is not None:  # the app's answer, or the inbox's delivery: both wait on I/O
            self.inflight.spawn(self._relay, envelope, link, received_at)
            return
        if envelope.accepts_response_payload and self.app.handlers_for(envelope):
            job = self.pool.submit(envelope.envelope_id, self.handle, envelope, link.id)
            if not job.started:  # waiting for a place could take minutes: ack now, answer later
                self.stats.acks_pool_full += 1
                log.warning("handler pool full (%d running, %d queued): acked without payload; the handler "
                            "is queued and must answer through response_url", self.pool.running,
                            self.pool.queued, extra=_log_fields(envelope, link))
                link.ack(envelope.envelope_id, None, received_at)
                return
            self.inflight.spawn(self._ack_with_payload, job, envelope, link, received_at)
            return
        link.ack(envelope.envelope_id, None, received_at)
        self.pool.submit(envelope.envelope_id, self.handle, envelope, link.id)

    def _ack_with_payload(self, job: Any, envelope: Envelope, link: Link, received_at: float) -> None:
        """Wait for the handler's answer up to the ack deadline, then ack with it (or without)."""
        remaining = self.ack_payload_deadline - (time.monotonic() - received_at)
        finished = job.done.wait(timeout=max(0.0, remaining))
        if not finished:
            log.warning("handler missed the %.1fs ack deadline; acked without payload",
                        self.ack_payload_deadline, extra=_log_fields(envelope, link))
        link.ack(envelope.envelope_id, job.value if finished else None, received_at)

    def _relay(self, envelope: Envelope, link: Link, received_at: float) -> None:
        """The app's answer within the ack deadline when the envelope takes one; otherwise ack at
        once and let the relay deliver it from the inbox."""
        assert self.relay is not None
        if envelope.accepts_response_payload:
            link.ack(envelope.envelope_id, self.relay.answer(envelope, received_at), received_at)
            return
        link.ack(envelope.envelope_id, None, received_at)
        self.relay.enqueue(envelope)

    def handle(self, envelope: Envelope, connection: str | None = None) -> dict[str, Any] | None:
        """Run every matching handler; return the first dict one returned (the ack payload)."""
        # Every line logged while handling (ours, the handler's, its libraries') names the envelope.
        with log_context(envelope_id=envelope.envelope_id, connection=connection):
            return self._handle(envelope, connection)

    def _handle(self, envelope: Envelope, connection: str | None) -> dict[str, Any] | None:
        ctx = Context(envelope=envelope,
                      logger=HubLogger(handler_log,
                                       {"envelope_id": envelope.envelope_id, "connection": connection},
                                       self.hub_call),
                      bot_user_id=self.bot_user_id, claim_once=self._claim_key_any_thread,
                      app=self.app, hub_call=self.hub_call)
        registrations = self.app.registrations_for(envelope)
        if not registrations:
            self.stats.unhandled_kinds += 1
            if envelope.type == "slash_commands":
                self._warn_unknown_command(envelope.kind)
        payload: dict[str, Any] | None = None
        error: str | None = None
        argument = self.app.handler_argument(envelope)
        me = gevent.getcurrent()
        for registration in registrations:
            self._busy[me] = (registration.name, envelope.envelope_id)
            try:
                if registration.threaded:
                    result = self.threads.run(registration.fn, argument, ctx)
                else:
                    result = registration.fn(argument, ctx)
            except Exception as exc:  # a handler bug must not take the connection down
                self.stats.handler_errors += 1
                error = type(exc).__name__
                log.exception("handler %s failed", registration.name, extra={"envelope_id": envelope.envelope_id})
                report_handler_error(exc, envelope, registration.name, connection, claim=self._claim_key)
                continue
            finally:
                self._busy.pop(me, None)
            if payload is None and isinstance(result, dict):
                payload = result
        finished = self._finish(envelope.envelope_id, ctx.replies, error)
        self.stats.handled += 1
        if ctx.replies:
            if finished:  # the replies are in the shared outbox now: the sender posts them
                self.outbox.wake()
            else:  # the store is failing: send them from this process rather than drop them
                self.outbox.enqueue_local(envelope.envelope_id, ctx.replies)
        return payload

    def rerun(self, envelope: Envelope) -> None:
        """Handle an envelope the sweep took over (it was acked long ago): its worker died or stopped
        before finishing it, or an operator retried it."""
        self.stats.recovered += 1
        if self.relay is not None:
            self.relay.recover(envelope)
            return
        log.info("re-running %s: %s", envelope.kind, why_taken_over(envelope, socket.gethostname()),
                 extra={"envelope_id": envelope.envelope_id})
        self.pool.submit(envelope.envelope_id, self.handle, envelope)

    def _warn_unknown_command(self, command: str) -> None:
        """Slack shows the user nothing for a command acked with no answer: say so, once per name."""
        command = command[:100]
        if command in self._unknown_commands or len(self._unknown_commands) >= MAX_UNKNOWN_COMMANDS:
            return
        self._unknown_commands.add(command)
        log.warning("no handler for slash command %s: acked with no answer (register @app.command(%r)); "
                    "said once per command", command, command)

    def describe(self, greenlet: Any) -> tuple[str, dict[str, Any]] | None:
        """What a greenlet is running, if it is one of our handlers (HubWatch names it)."""
        busy = self._busy.get(greenlet)
        if busy is None:
            return None
        name, envelope_id = busy
        return f"handler {name} (envelope {envelope_id})", {"envelope_id": envelope_id}

    def stats_dict(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), **self.pool.stats(), **self.claims.stats()}

    def _claim_key(self, key: str) -> bool:
        try:
            return self.store.claim_key(key)
        except StoreError as exc:
            self._store_failed("claim_key", exc)
            return self.health.fallback.claim_key(key)

    def _finish(self, envelope_id: str, replies: list[Reply], error: str | None) -> bool:
        self.claims.finished(envelope_id, error)
        try:
            self.store.finish(envelope_id, replies, error)
        except StoreError as exc:  # the replies go out from this process instead
            self._store_failed("finish", exc)
            return False
        self.health.wrote()
        return True

    def _store_failed(self, operation: str, exc: StoreError) -> None:
        """Counted every time; StoreHealth says it once per episode (or per kind, if rejected)."""
        if isinstance(exc, StoreRejected):  # this call alone failed, not the store
            self.stats.store_rejected += 1
        else:
            self.stats.store_errors += 1
        self.health.failed(operation, exc)

    def finish_acks(self, timeout: float) -> bool:
        """Wait for the claims and acks in flight (never capped, never long); False on timeout."""
        return bool(self.inflight.join(timeout=timeout))

    def finish_handlers(self, timeout: float) -> bool:
        """Let running and queued handlers finish; on timeout, say at WARNING which were left."""
        if self.pool.join(timeout=timeout):
            return True
        running, queued = self.pool.left()
        ids = running + queued
        shown = " ".join(ids[:MAX_IDS_LOGGED]) + (f" … and {len(ids) - MAX_IDS_LOGGED} more"
                                                   if len(ids) > MAX_IDS_LOGGED else "")
        fate = ("lost with this process (memory store)" if isinstance(self.store, MemoryStore) else
                "stay processing in the inbox; a live worker's sweeper, or the next start, re-runs them")
        log.warning("drain timed out with %d handler(s) unfinished (%d running, %d queued): %s; envelopes %s",
                    len(ids), len(running), len(queued), fate, shown)
        return False


def _log_fields(envelope: Envelope, link: Link) -> dict[str, str]:
    """The fields a log line about one envelope on one link carries (built only when logging)."""
    return {"connection": link.id, "envelope_id": envelope.envelope_id}
