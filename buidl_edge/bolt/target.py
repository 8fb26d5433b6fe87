"""A Bolt App as the dispatcher's target: each new envelope goes in through `App.dispatch`.

Dispatch (the app's middleware, listener matching, and for a command or a view submission the wait
for its `ack()`) never runs in the reader. An event, acked at its claim, is one job on the handler
pool: its dispatch, then the listener it started, in the same greenlet (a greenlet spawned per
request and a second hop to the pool were a sixth of the target's CPU: scripts/bench_bolt_target.py).
What may answer on its ack dispatches on a greenlet of its own, and the listeners and lazy listeners
it starts run on the handler pool (listeners.py), so that a listener's `ack()` reaches the waiting
dispatch. The BoltResponse is the ack: for an envelope that takes a payload, the ack path waits for
it up to BUIDL_ACK_DEADLINE; an answer that comes later goes to the payload's response_url, as the
relay's does. The envelope's inbox row is finished when the dispatch and everything it started have
returned, so a worker killed mid-listener leaves it to the sweep, which runs the request again
elsewhere.
"""
from __future__ import annotations

import contextvars
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from buidl_edge.bolt.listeners import BoltRun, ListenerExecutor, Running, current, install
from buidl_edge.bolt.request import ack_payload, bolt_request
from buidl_edge.dispatch.handler_pool import HandlerPool
from buidl_edge.dispatch.handlers import warn_unfinished
from buidl_edge.dispatch.targets import Payload, TargetHooks
from buidl_edge.observability.logs import log_context
from buidl_edge.observability.sentry import report_handler_error
from buidl_edge.relay.late import post_late_answer
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import why_taken_over

if TYPE_CHECKING:
    from slack_bolt import App, BoltRequest

log = logging.getLogger("buidl_edge.bolt")


class BoltAnswer:
    """The dispatch's BoltResponse as the ack's payload, once it comes. When the ack path stops
    waiting (the deadline passed), the run is told, so a later answer goes to the response_url."""

    __slots__ = ("_greenlet", "_run")

    def __init__(self, greenlet: gevent.Greenlet, run: BoltRun) -> None:
        self._greenlet = greenlet
        self._run = run

    def wait(self, timeout: float) -> bool:
        self._greenlet.join(timeout=timeout)
        if not self._greenlet.ready():
            self._run.acked_without = True  # no switch since join returned: the dispatch is still on
        return bool(self._greenlet.ready())

    @property
    def value(self) -> Payload:
        return self._greenlet.value if self._greenlet.successful() else None


class BoltTarget:
    def __init__(self, app: App, hooks: TargetHooks, pool_size: int = 200) -> None:
        self.app = app
        self.hooks = hooks
        self.pool = HandlerPool(pool_size)
        self._busy: dict[Any, tuple[str, str]] = {}
        self._runs: dict[str, BoltRun] = {}  # envelope id -> its run, until all of it returned
        self._quiet = gevent.event.Event()
        self._quiet.set()
        self.executor = ListenerExecutor(self.pool, self._busy)
        install(app, self.executor, self._listener_failed)

    # ------------------------------------------------------------ Target

    def answers(self, envelope: Envelope) -> bool:
        return envelope.accepts_response_payload

    def start(self, envelope: Envelope, connection: str | None, received_at: float | None) -> BoltAnswer | None:
        run = BoltRun(envelope, connection, self._done)
        self._runs[envelope.envelope_id] = run
        self._quiet.clear()
        if received_at is None and envelope.type == "events_api":
            # Acked at its claim, so nothing waits for the dispatch: it takes a handler's place on
            # the pool, and its listener runs after it in the same greenlet.
            self.pool.submit(envelope.envelope_id, self._dispatch_then_listen, run)
            return None
        greenlet = gevent.spawn(contextvars.Context().run, self._dispatch, run, received_at)
        if received_at is None:
            return None
        if self.pool.running >= self.pool.size:  # its listener would wait for a place: ack now
            self.hooks.stats.acks_pool_full += 1
            run.acked_without = True
            log.warning("handler pool full (%d running, %d queued): acked without payload; the listener is "
                        "queued, and its answer goes to the response_url", self.pool.running, self.pool.queued,
                        extra={"connection": connection, "envelope_id": envelope.envelope_id})
            return None
        return BoltAnswer(greenlet, run)

    def rerun(self, envelope: Envelope) -> None:
        log.info("re-running %s: %s", envelope.kind, why_taken_over(envelope, socket.gethostname()),
                 extra={"envelope_id": envelope.envelope_id})
        self.start(envelope, None, None)

    def drain(self, timeout: float) -> bool:
        """Let every request's listeners and lazy listeners finish; on timeout, say which were left."""
        if self._quiet.wait(timeout=timeout):
            return True
        queued = list(dict.fromkeys(self.pool.left()[1]))
        running = [envelope_id for envelope_id in self._runs if envelope_id not in queued]
        warn_unfinished(running, queued, self.hooks.lost_with_process)
        return False

    def describe(self, greenlet: Any) -> tuple[str, dict[str, Any]] | None:
        busy = self._busy.get(greenlet)
        if busy is None:
            return None
        name, envelope_id = busy
        what = "the Bolt app's dispatch (its middleware)" if name == "dispatch" else f"Bolt listener {name}"
        return f"{what} (envelope {envelope_id})", {"envelope_id": envelope_id}

    def stats(self) -> dict[str, Any]:
        return self.pool.stats()

    # ------------------------------------------------------------ one request

    def _dispatch(self, run: BoltRun, received_at: float | None) -> Payload:
        """The dispatch on a greenlet of its own, for an envelope whose ack may wait for its answer
        (or whose dispatch may wait for its listener's `ack()`); the listeners run on the pool."""
        with log_context(envelope_id=run.envelope.envelope_id, connection=run.connection):
            try:
                return self._answer(run, bolt_request(run.envelope), received_at)
            finally:
                run.ended()

    def _dispatch_then_listen(self, run: BoltRun) -> None:
        """An event's dispatch on the handler pool, then, in the same greenlet, the listener it
        started (a greenlet and a pool hop less per event)."""
        with log_context(envelope_id=run.envelope.envelope_id, connection=run.connection):
            run.request = bolt_request(run.envelope)
            try:
                self._answer(run, run.request, None)
            finally:
                run.request = None
                run.ended()
            if run.follow_on is not None:
                self.executor.run_job(run, run.follow_on)

    def _answer(self, run: BoltRun, request: BoltRequest, received_at: float | None) -> Payload:
        """`App.dispatch`, named for the hub watch; its BoltResponse as the ack's payload (posted to
        the response_url when the ack went without it)."""
        me = gevent.getcurrent()
        self._busy[me] = ("dispatch", run.envelope.envelope_id)
        current.set(Running(run, "dispatch"))
        try:
            response = self.app.dispatch(request)
        except Exception as exc:  # App.dispatch answers 500 for the app's errors; this is a bug
            log.exception("the Bolt app's dispatch failed", extra={"envelope_id": run.envelope.envelope_id})
            self._listener_failed(run, "dispatch", exc)
            return None
        finally:
            self._busy.pop(me, None)
        payload = ack_payload(response, run.envelope)
        if run.acked_without and payload is not None and received_at is not None:
            post_late_answer(run.envelope, payload, time.monotonic() - received_at)
        return payload

    def _listener_failed(self, run: BoltRun, name: str, exc: BaseException) -> None:
        """A listener or lazy listener raised: counted, the envelope's row marked, Sentry told once
        per event (Bolt logs it itself)."""
        self.hooks.stats.handler_errors += 1
        run.error = run.error or type(exc).__name__
        report_handler_error(exc, run.envelope, name, run.connection, claim=self.hooks.claim_key)

    def _done(self, run: BoltRun) -> None:
        """The dispatch and everything it started returned: the envelope is done."""
        self._runs.pop(run.envelope.envelope_id, None)
        self.hooks.finish(run.envelope.envelope_id, [], run.error)
        self.hooks.stats.handled += 1
        if not self._runs:
            self._quiet.set()
