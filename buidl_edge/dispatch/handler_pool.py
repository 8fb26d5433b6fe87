"""The handler pool: at most N handlers at once, a queue behind them, and a submit that never waits.

An ack must never wait for handler capacity (Slack redelivers events and drops slash
commands that are not acked within 3 s), so `submit` always returns at once: the
job starts now if a place is free, else it joins the queue and starts, in arrival
order, as running handlers finish.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import greenlet

log = logging.getLogger("buidl_edge.handler_pool")  # the name it has always logged under


class HandlerJob:
    """One envelope's handlers: whether they started, and when done what they returned."""

    __slots__ = ("_call", "done", "envelope_id", "started", "value")

    def __init__(self, envelope_id: str, call: Callable[[], Any]) -> None:
        self.envelope_id = envelope_id
        self._call = call
        self.started = False
        self.done = gevent.event.Event()
        self.value: Any = None  # set when the call returned; None if it raised

    def run(self) -> None:
        try:
            self.value = self._call()
        finally:
            self.done.set()

    def wait(self, timeout: float) -> bool:
        """True once the handlers returned (an `Answer` for the ack path)."""
        return bool(self.done.wait(timeout=timeout))


class HandlerPool:
    """Up to `size` handler greenlets, kept and reused: a new greenlet per envelope (and its
    group bookkeeping) cost about 12 µs, a parked one woken with its next job under 1 µs."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.queue: deque[HandlerJob] = deque()
        self.max_queued = 0
        self._running: dict[HandlerJob, None] = {}  # insertion-ordered: oldest first
        self._idle: list[greenlet.greenlet] = []  # runners parked in the hub, waiting for a job
        self._quiet = gevent.event.Event()  # nothing running or queued
        self._quiet.set()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self.queue)

    def submit(self, envelope_id: str, fn: Callable[..., Any], *args: Any) -> HandlerJob:
        """Start `fn(*args)` now if there is room, else queue it; never blocks."""
        job = HandlerJob(envelope_id, lambda: fn(*args))
        if len(self._running) < self.size and not self.queue:
            self._start(job)
        else:
            self.queue.append(job)
            self.max_queued = max(self.max_queued, len(self.queue))
        return job

    def _start(self, job: HandlerJob) -> None:
        self._mark_running(job)
        if self._idle:
            gevent.get_hub().loop.run_callback(self._idle.pop().switch, job)
        else:
            gevent.spawn(self._runner, job)

    def _mark_running(self, job: HandlerJob) -> None:
        job.started = True
        self._running[job] = None
        self._quiet.clear()

    def _runner(self, job: HandlerJob) -> None:
        hub = gevent.get_hub()
        try:
            while True:
                try:
                    # A fresh context per job, as a new greenlet would have: nothing a handler
                    # sets in a contextvar is seen by the next one.
                    contextvars.Context().run(job.run)
                except Exception:  # the dispatcher catches a handler's errors; this is a bug
                    log.exception("handler job for %s failed", job.envelope_id)
                finally:
                    del self._running[job]
                if self.queue:
                    job = self.queue.popleft()
                    self._mark_running(job)
                    continue
                if not self._running:
                    self._quiet.set()
                self._idle.append(greenlet.getcurrent())
                job = hub.switch()  # parked until `_start` hands over the next job
        finally:  # killed: never handed a job again
            with contextlib.suppress(ValueError):
                self._idle.remove(greenlet.getcurrent())

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing runs or waits; False on timeout."""
        return bool(self._quiet.wait(timeout=timeout))

    def left(self) -> tuple[list[str], list[str]]:
        """Envelope ids of the handlers running and of those still queued, oldest first."""
        return [job.envelope_id for job in self._running], [job.envelope_id for job in self.queue]

    def stats(self) -> dict[str, int]:
        return {"handlers_running": self.running, "handlers_queued": self.queued,
                "handlers_queued_max": self.max_queued}
