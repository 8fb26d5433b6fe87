"""Bolt's listeners and lazy listeners on buidl-edge's handler pool, each counted against the
request that started it.

Bolt runs a listener (after `ack()`) and each lazy listener by `submit`ting it to the App's
listener executor, from inside `App.dispatch`. Put in its place (`install`), `ListenerExecutor`
runs them on the handler pool instead of Bolt's 5 threads: as many at once as
BUIDL_HANDLER_CONCURRENCY, and counted in `status` and `/metrics` as handlers. A submit happens in
the greenlet that is dispatching a request, so it knows its request (`current`), and the request's
`BoltRun` counts what is still running: the inbox row is finished only once all of it returned. An
event's listener, submitted once Bolt acked it, waits for the dispatch to return and then runs in
the same greenlet (`BoltRun.follow_on`): the dispatch waits for nothing after the ack.

Bolt catches a listener's exception and hands it to its error handler, and logs a lazy listener's;
the wrappers here report it (to Sentry, once per event) before Bolt's own handling goes on.
"""
from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent

from buidl_edge.dispatch.handler_pool import HandlerPool
from buidl_edge.observability.logs import log_context
from buidl_edge.socketmode.protocol import Envelope

if TYPE_CHECKING:
    from slack_bolt import App, BoltRequest, BoltResponse

log = logging.getLogger("buidl_edge.bolt")

ListenerFailed = Callable[["BoltRun", str, BaseException], None]


class BoltRun:
    """One request's work: its dispatch, then every listener and lazy listener that started."""

    __slots__ = ("acked_without", "connection", "envelope", "error", "follow_on", "on_done", "pending", "request")

    def __init__(self, envelope: Envelope, connection: str | None, on_done: Callable[[BoltRun], None]) -> None:
        self.envelope = envelope
        self.connection = connection
        self.on_done = on_done
        self.pending = 1  # the dispatch itself
        self.error: str | None = None  # the first listener exception's type, for the inbox row
        self.acked_without = False  # its ack went out plain: a late answer goes to the response_url
        # Set while a dispatch that nothing waits for runs on the handler pool (an event, acked at its
        # claim): its request, whose `ack` tells whether the dispatch waits for a listener.
        self.request: BoltRequest | None = None
        # The job the dispatch started that its own greenlet runs once the dispatch returned.
        self.follow_on: Job | None = None

    def started(self) -> None:
        self.pending += 1

    def may_follow_on(self) -> bool:
        """Whether a job submitted now can wait for the dispatch to return and then run in its
        greenlet, instead of taking a greenlet of its own: only the first one (the listener; a lazy
        listener still runs beside it, as under Bolt), and only once the request is acked, since
        Bolt's dispatch waits for nothing after its `ack()`."""
        if self.request is None or self.follow_on is not None:
            return False
        ack = self.request.context.get("ack")
        return ack is not None and ack.response is not None

    def ended(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.on_done(self)


@dataclass(frozen=True)
class Job:
    """A listener or lazy listener Bolt submitted, with the future its submit returned."""

    future: Future[Any]
    call: Callable[[], Any]
    name: str


@dataclass(frozen=True)
class Running:
    """What the current greenlet runs for Bolt: which request, in which function."""

    run: BoltRun
    name: str


current: contextvars.ContextVar[Running | None] = contextvars.ContextVar("buidl_bolt_running", default=None)


class ListenerExecutor(Executor):
    """The App's listener executor: each submit a job on the handler pool, counted on its request."""

    def __init__(self, pool: HandlerPool, busy: dict[Any, tuple[str, str]]) -> None:
        self.pool = pool
        self.busy = busy  # greenlet -> (listener, envelope id), for the hub watch

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        here = current.get()
        if here is None:  # not from a request's dispatch (the app's own use of the executor)
            gevent.spawn(self._call, future, functools.partial(fn, *args, **kwargs))
            return future
        run = here.run
        run.started()
        job = Job(future, functools.partial(fn, *args, **kwargs), listener_name(fn))
        if run.may_follow_on():
            run.follow_on = job  # the dispatch's greenlet runs it next: no greenlet, no pool hop
        else:
            self.pool.submit(run.envelope.envelope_id, self._job, run, job)
        return future

    def _job(self, run: BoltRun, job: Job) -> None:
        with log_context(envelope_id=run.envelope.envelope_id, connection=run.connection):
            self.run_job(run, job)

    def run_job(self, run: BoltRun, job: Job) -> None:
        """Run `job` of `run` in this greenlet (named for the hub watch), then count it done."""
        me = gevent.getcurrent()
        self.busy[me] = (job.name, run.envelope.envelope_id)
        try:
            current.set(Running(run, job.name))
            self._call(job.future, job.call)
        finally:
            self.busy.pop(me, None)
            run.ended()

    @staticmethod
    def _call(future: Future[Any], call: Callable[[], Any]) -> None:
        try:
            result = call()
        except Exception as exc:  # Bolt's own wrappers catch the app's; this would be Bolt's bug
            log.exception("a Bolt listener job failed")
            future.set_exception(exc)
        else:
            future.set_result(result)


def listener_name(fn: Callable[..., Any]) -> str:
    """The app's function a submitted job runs. A lazy listener comes wrapped (functools.wraps) under
    its own name; a listener comes as Bolt's closure over its `listener`, whose ack function is the
    app's. Anything else by its own name."""
    code = getattr(fn, "__code__", None)
    closure = getattr(fn, "__closure__", None)
    if code is not None and closure and "listener" in code.co_freevars:
        listener = closure[code.co_freevars.index("listener")].cell_contents
        function = getattr(listener, "ack_function", None)
        if function is not None:
            return str(getattr(function, "__name__", "listener"))
    return str(getattr(fn, "__name__", type(fn).__name__))


def install(app: App, executor: ListenerExecutor, failed: ListenerFailed) -> None:
    """Run `app`'s listeners and lazy listeners on `executor` and report their exceptions through
    `failed`; Bolt's own error handling (its logging, the app's `@app.error`) still follows."""
    from slack_bolt.lazy_listener.internals import build_runnable_function
    from slack_bolt.lazy_listener.runner import LazyListenerRunner
    from slack_bolt.listener.listener_error_handler import ListenerErrorHandler

    runner = app.listener_runner

    class ReportingErrorHandler(ListenerErrorHandler):
        def __init__(self, inner: ListenerErrorHandler) -> None:
            self.inner = inner

        def handle(self, error: Exception, request: BoltRequest, response: BoltResponse | None) -> None:
            here = current.get()
            if here is not None:
                failed(here.run, here.name, error)
            self.inner.handle(error=error, request=request, response=response)

    class ReportingLazyRunner(LazyListenerRunner):
        def __init__(self, logger: logging.Logger) -> None:
            self.logger = logger

        def start(self, function: Callable[..., None], request: BoltRequest) -> None:
            executor.submit(build_runnable_function(func=reporting(function), logger=self.logger, request=request))

    def reporting(function: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(function)  # Bolt reads the wrapped function's arguments through it
        def lazy(*args: Any, **kwargs: Any) -> None:
            try:
                function(*args, **kwargs)
            except Exception as exc:
                here = current.get()
                if here is not None:
                    failed(here.run, here.name, exc)
                raise  # Bolt logs it, as it would have
        return lazy

    runner.listener_executor = executor
    runner.lazy_listener_runner = ReportingLazyRunner(runner.logger)
    runner.listener_error_handler = ReportingErrorHandler(runner.listener_error_handler)
