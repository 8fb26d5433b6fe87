"""From a read envelope to an ack and a handled event: claim, ack, run handlers, finish."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.pool

from buidl_edge.app import Context, EdgeApp
from buidl_edge.connection import Link
from buidl_edge.observability import log_context, report_handler_error, report_store_failure
from buidl_edge.outbox import Outbox
from buidl_edge.protocol import Envelope
from buidl_edge.store.base import EdgeStore, Reply
from buidl_edge.store.errors import StoreError, StoreRejected
from buidl_edge.store.memory import MemoryStore

log = logging.getLogger("buidl_edge.dispatch")


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
    degraded: bool = False

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Dispatcher:
    """Acks go through `inflight` (never capped, so a busy handler pool cannot delay an ack)."""

    def __init__(self, app: EdgeApp, store: EdgeStore, outbox: Outbox, owner: str,
                 ack_payload_deadline: float, bot_user_id: str | None,
                 handler_pool_size: int = 200) -> None:
        self.app = app
        self.store = store
        self.outbox = outbox
        self.owner = owner
        self.ack_payload_deadline = ack_payload_deadline
        self.bot_user_id = bot_user_id
        self.stats = DispatchStats()
        # Local dedup while the shared store is failing: acking goes on, and this process
        # at least never answers twice.
        self.fallback = MemoryStore()
        self.inflight = gevent.pool.Group()
        self.handlers = gevent.pool.Pool(handler_pool_size)

    def accept(self, envelope: Envelope, link: Link, received_at: float) -> None:
        self.inflight.spawn(self._process, envelope, link, received_at)

    def _process(self, envelope: Envelope, link: Link, received_at: float) -> None:
        extra = {"connection": link.id, "envelope_id": envelope.envelope_id}
        if not self._claim(envelope):
            self.stats.duplicates += 1
            log.info("duplicate %s (retry %d) acked and dropped", envelope.kind, envelope.retry_attempt, extra=extra)
            link.ack(envelope.envelope_id, None, received_at)
            return
        self.stats.envelopes_new += 1
        if envelope.accepts_response_payload and self.app.handlers_for(envelope):
            job = self.handlers.spawn(self.handle, envelope, link.id)
            remaining = self.ack_payload_deadline - (time.monotonic() - received_at)
            job.join(timeout=max(0.0, remaining))
            payload = job.value if job.successful() else None
            if not job.ready():
                log.warning("handler missed the %.1fs ack deadline; acked without payload",
                            self.ack_payload_deadline, extra=extra)
            link.ack(envelope.envelope_id, payload, received_at)
            return
        link.ack(envelope.envelope_id, None, received_at)
        self.handlers.spawn(self.handle, envelope, link.id)

    def handle(self, envelope: Envelope, connection: str | None = None) -> dict[str, Any] | None:
        """Run every matching handler; return the first dict one returned (the ack payload)."""
        # Every line logged while handling (ours, the handler's, its libraries') names the envelope.
        with log_context(envelope_id=envelope.envelope_id, connection=connection):
            return self._handle(envelope, connection)

    def _handle(self, envelope: Envelope, connection: str | None) -> dict[str, Any] | None:
        ctx = Context(envelope=envelope,
                      logger=logging.LoggerAdapter(logging.getLogger("buidl_edge.handler"),
                                                   {"envelope_id": envelope.envelope_id,
                                                    "connection": connection}),
                      bot_user_id=self.bot_user_id, claim_once=self._claim_key)
        handlers = self.app.handlers_for(envelope)
        if not handlers:
            self.stats.unhandled_kinds += 1
        payload: dict[str, Any] | None = None
        error: str | None = None
        argument = self.app.handler_argument(envelope)
        for handler in handlers:
            try:
                result = handler(argument, ctx)
            except Exception as exc:  # a handler bug must not take the connection down
                self.stats.handler_errors += 1
                error = type(exc).__name__
                name = getattr(handler, "__name__", repr(handler))
                log.exception("handler %s failed", name, extra={"envelope_id": envelope.envelope_id})
                report_handler_error(exc, envelope, name, connection, claim=self._claim_key)
                continue
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
        """Handle an envelope taken over from a dead worker (it was acked long ago)."""
        self.stats.recovered += 1
        log.info("re-running %s left by a dead worker", envelope.kind, extra={"envelope_id": envelope.envelope_id})
        self.handlers.spawn(self.handle, envelope)

    def _claim(self, envelope: Envelope) -> bool:
        try:
            new = self.store.claim(envelope, self.owner)
        except StoreRejected as exc:  # this envelope alone: ack and handle it on local dedup
            self._store_rejected("claim", exc)
            return self.fallback.claim(envelope, self.owner)
        except StoreError as exc:
            self._store_failed("claim", exc)
            return self.fallback.claim(envelope, self.owner)
        self.store_ok()
        return new

    def _claim_key(self, key: str) -> bool:
        try:
            return self.store.claim_key(key)
        except StoreRejected as exc:
            self._store_rejected("claim_key", exc)
            return self.fallback.claim_key(key)
        except StoreError as exc:
            self._store_failed("claim_key", exc)
            return self.fallback.claim_key(key)

    def _finish(self, envelope_id: str, replies: list[Reply], error: str | None) -> bool:
        try:
            self.store.finish(envelope_id, replies, error)
        except StoreRejected as exc:  # the replies go out from this process instead
            self._store_rejected("finish", exc)
            return False
        except StoreError as exc:
            self._store_failed("finish", exc)
            return False
        return True

    def _store_rejected(self, operation: str, exc: StoreRejected) -> None:
        """Counted every time; the store logged the first of its kind, which also goes to Sentry."""
        self.stats.store_rejected += 1
        if exc.first:
            report_store_failure(f"{operation}:{exc.kind}", exc)

    def store_ok(self) -> None:
        """A store call worked (a claim, or the worker's heartbeat): a degraded episode is over."""
        if self.stats.degraded:
            log.warning("store works again; degraded mode over")
        self.stats.degraded = False

    def _store_failed(self, operation: str, exc: StoreError) -> None:
        self.stats.store_errors += 1
        if not self.stats.degraded:
            log.error("store %s failed (%s); degraded: acking on with local dedup only", operation, exc)
            report_store_failure(operation, exc)  # once per episode, like the log line
        self.stats.degraded = True

    def drain(self, timeout: float) -> bool:
        """Wait for acks in flight, then handlers; False if something was still running."""
        deadline = time.monotonic() + timeout
        acks_done = self.inflight.join(timeout=timeout)
        handlers_done = self.handlers.join(timeout=max(0.0, deadline - time.monotonic()))
        return bool(acks_done) and bool(handlers_done)

