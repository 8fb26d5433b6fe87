"""The EdgeApp target: runs an envelope's handlers with a Context, finishes it with its replies.

Handlers run on the handler pool (at most BUIDL_HANDLER_CONCURRENCY at once, a queue behind, a
submit that never waits) or, for `threaded=True`, on native threads. An envelope's replies are
stored with its finish, so the outbox posts them; while the store fails they go out from memory.
"""
from __future__ import annotations

import logging
import socket
from typing import Any

import gevent

from buidl_edge.api.app import Context, EdgeApp
from buidl_edge.delivery.outbox import Outbox
from buidl_edge.delivery.streams import StreamSender
from buidl_edge.dispatch.handler_pool import HandlerJob, HandlerPool
from buidl_edge.dispatch.handler_threads import HandlerThreads, HubCall, HubLogger
from buidl_edge.dispatch.stats import DispatchStats
from buidl_edge.dispatch.targets import ClaimKey, Finish
from buidl_edge.observability.logs import log_context
from buidl_edge.observability.sentry import report_handler_error
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import why_taken_over

log = logging.getLogger("buidl_edge.dispatch")
# ctx.logger's logger (looked up once: getLogger takes a lock on every call).
handler_log = logging.getLogger("buidl_edge.handler")

# Distinct unknown slash command names warned about; Slack only sends the app's own commands.
MAX_UNKNOWN_COMMANDS = 1000
# Envelope ids named in one "drain timed out" line.
MAX_IDS_LOGGED = 100
# How long a re-run waits for the streams its dead worker left open to be stopped.
ORPHAN_STOP_WAIT_S = 30.0



def warn_unfinished(running: list[str], queued: list[str], lost_with_process: bool) -> None:
    """The drain timed out: say at WARNING which envelopes' handlers were left, and their fate."""
    ids = running + queued
    shown = " ".join(ids[:MAX_IDS_LOGGED]) + (f" … and {len(ids) - MAX_IDS_LOGGED} more"
                                               if len(ids) > MAX_IDS_LOGGED else "")
    fate = ("lost with this process (memory store)" if lost_with_process else
            "stay processing in the inbox; a live worker's sweeper, or the next start, re-runs them")
    log.warning("drain timed out with %d handler(s) unfinished (%d running, %d queued): %s; envelopes %s",
                len(ids), len(running), len(queued), fate, shown)


class HandlerTarget:
    """EdgeApp handlers as the dispatcher's target."""

    def __init__(self, app: EdgeApp, outbox: Outbox | None, stats: DispatchStats, bot_user_id: str | None,
                 claim_key: ClaimKey, finish: Finish, pool_size: int = 200, threads: int = 8,
                 lost_with_process: bool = False, streams: StreamSender | None = None) -> None:
        """`claim_key` and `finish` reach the store (with its failover); `lost_with_process`: the
        store dies with this process (memory), as the drain's warning says; `streams`: ctx.stream's."""
        self.app = app
        self.outbox = outbox
        self.streams = streams
        self._stats = stats
        self.bot_user_id = bot_user_id
        self.pool = HandlerPool(pool_size)
        self.threads = HandlerThreads(threads)
        self._finish = finish
        self._claim_key = claim_key
        self._lost_with_process = lost_with_process
        # ctx.once and ctx.logger from a threaded handler: the store and logging's hooks are
        # called on the hub, never from the thread.
        self.hub_call = HubCall()
        self._claim_key_any_thread = self.hub_call.wrap(claim_key)
        # Which handler each handler greenlet is in, and for which envelope (for HubWatch).
        self._busy: dict[Any, tuple[str, str]] = {}
        self._unknown_commands: set[str] = set()

    # ------------------------------------------------------------ Target

    def answers(self, envelope: Envelope) -> bool:
        return envelope.accepts_response_payload and bool(self.app.handlers_for(envelope))

    def start(self, envelope: Envelope, connection: str | None, received_at: float | None) -> HandlerJob | None:
        job = self.pool.submit(envelope.envelope_id, self.handle, envelope, connection)
        if received_at is None:
            return None
        if not job.started:  # waiting for a place could take minutes: ack now, answer later
            self._stats.acks_pool_full += 1
            log.warning("handler pool full (%d running, %d queued): acked without payload; the handler "
                        "is queued and must answer through response_url", self.pool.running,
                        self.pool.queued, extra={"connection": connection, "envelope_id": envelope.envelope_id})
            return None
        return job

    def rerun(self, envelope: Envelope) -> None:
        log.info("re-running %s: %s", envelope.kind, why_taken_over(envelope, socket.gethostname()),
                 extra={"envelope_id": envelope.envelope_id})
        self.pool.submit(envelope.envelope_id, self.handle_again, envelope)

    def handle_again(self, envelope: Envelope) -> dict[str, Any] | None:
        """A re-run: first stop what the dead worker left streaming, then run the handlers in full."""
        if self.streams is not None:
            with log_context(envelope_id=envelope.envelope_id):
                self.streams.stop_orphans(envelope.envelope_id, ORPHAN_STOP_WAIT_S)
        return self.handle(envelope)

    def drain(self, timeout: float) -> bool:
        """Let running and queued handlers finish; on timeout, say at WARNING which were left."""
        if self.pool.join(timeout=timeout):
            return True
        running, queued = self.pool.left()
        warn_unfinished(running, queued, self._lost_with_process)
        return False

    def describe(self, greenlet: Any) -> tuple[str, dict[str, Any]] | None:
        busy = self._busy.get(greenlet)
        if busy is None:
            return None
        name, envelope_id = busy
        return f"handler {name} (envelope {envelope_id})", {"envelope_id": envelope_id}

    def stats(self) -> dict[str, Any]:
        return self.pool.stats()

    # ------------------------------------------------------------ one envelope

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
                      app=self.app, hub_call=self.hub_call, stream_sink=self.streams)
        registrations = self.app.registrations_for(envelope)
        if not registrations:
            self._stats.unhandled_kinds += 1
            if envelope.type == "slash_commands":
                self._warn_unknown_command(envelope.kind)
        payload: dict[str, Any] | None = None
        error: str | None = None
        failures: list[tuple[Exception, str]] = []  # reported once the envelope is finished
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
                self._stats.handler_errors += 1
                error = type(exc).__name__
                log.exception("handler %s failed", registration.name, extra={"envelope_id": envelope.envelope_id})
                failures.append((exc, registration.name))
                ctx.stop_streams(failed=True)
                continue
            finally:
                self._busy.pop(me, None)
            ctx.stop_streams(failed=False)
            if payload is None and isinstance(result, dict):
                payload = result
        self._finish(envelope.envelope_id, ctx.replies, error)
        self._stats.handled += 1
        # After the finish: the report's dedup key is a store write, which a held lock can hold for
        # seconds; a kill -9 meanwhile must find the envelope finished, not run it again.
        for failure, name in failures:
            report_handler_error(failure, envelope, name, connection, claim=self._claim_key)
        if ctx.replies and self.outbox is not None:
            # In the shared outbox, or (the store failing) in the fallback's: the sender posts them.
            self.outbox.wake()
        return payload

    def _warn_unknown_command(self, command: str) -> None:
        """Slack shows the user nothing for a command acked with no answer: say so, once per name."""
        command = command[:100]
        if command in self._unknown_commands or len(self._unknown_commands) >= MAX_UNKNOWN_COMMANDS:
            return
        self._unknown_commands.add(command)
        log.warning("no handler for slash command %s: acked with no answer (register @app.command(%r)); "
                    "said once per command", command, command)
