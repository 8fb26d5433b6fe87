"""The thread that notices a blocked hub, and sleeps while the hub has nothing to run.

gevent's own monitor thread (`PeriodicMonitoringThread`) wakes every `max_blocking_time` (0.5 s)
for the life of the process, about 0.23 ms of CPU a second in an idle worker, and its hub also
starts a memory monitor that imports psutil. This one uses gevent's greenlet tracer the same way
(a greenlet other than the hub that ran a whole threshold without a switch is blocking), but
while the hub itself is the active greenlet (waiting for I/O or a timer) nothing can block it
until the next switch: the thread then sleeps on a lock that the first switch releases. The
tracer calls that waker on every switch; it reads one flag.

A greenlet that blocks right after a long idle is reported a threshold after its switch; one that
starts blocking while the thread is in the middle of a check, one to two thresholds in, as with
gevent's own monitor.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import greenlet

# The tracer gevent's own monitor uses (compiled); types-gevent leaves gevent's private modules out.
from gevent._tracer import GreenletTracer  # type: ignore[import-not-found]
from gevent.monkey import get_original

_sleep: Callable[[float], None] = get_original("time", "sleep")
_new_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")
_start_thread: Callable[..., Any] = get_original("_thread", "start_new_thread")

# An idle hub's switch wakes the thread; this is only a backstop, should another trace function
# ever replace gevent's tracer (and our waker behind it) on the hub's thread.
IDLE_BACKSTOP_S = 60.0


class _Waker:
    """Called by gevent's tracer after each switch on the hub's thread: releases the monitor's
    lock on the first switch after the monitor went to sleep."""

    __slots__ = ("armed", "lock")

    def __init__(self) -> None:
        self.armed = False
        self.lock = _new_lock()
        self.lock.acquire()  # held while nobody wakes the monitor; a release wakes it

    def on_switch(self, event: str, args: Any) -> None:
        if self.armed:
            self.armed = False
            try:
                self.lock.release()
            except RuntimeError:  # pragma: no cover - released already (a wake raced the backstop)
                pass


class HubMonitor:
    """Calls `on_blocked(greenlet)` on its own thread while `greenlet` holds the hub's thread for
    over `threshold_s` without a switch. Start and stop it on the hub's thread (the greenlet trace
    function is per thread)."""

    def __init__(self, hub: Any, threshold_s: float, on_blocked: Callable[[Any], None]) -> None:
        self.hub = hub
        self.threshold_s = threshold_s
        self.on_blocked = on_blocked
        self._running = True
        self._waker = _Waker()
        self._before = greenlet.settrace(self._waker.on_switch)
        self._tracer = GreenletTracer()  # chains to the waker, after it updates its own state
        _start_thread(self._run, ())

    def stop(self) -> None:
        """Stop the thread and restore the hub thread's trace function (call on the hub's thread)."""
        if not self._running:
            return
        self._running = False
        self._tracer.kill()  # puts the waker back as the trace function
        greenlet.settrace(self._before)
        self._waker.armed = True
        self._waker.on_switch("stop", None)  # wake the thread if it sleeps, so it ends

    def _idle(self) -> bool:
        """The hub is the active greenlet (or gevent's tracer saw a switch it does not follow, which
        gevent never reports either): nothing can block it before the next switch."""
        active = self._tracer.active_greenlet
        return active is None or active is self.hub

    def _run(self) -> None:
        while self._running:
            if self._idle():
                self._sleep_until_switch()
                continue
            self._tracer.did_block_hub(self.hub)  # counts the switches from now
            _sleep(self.threshold_s)
            if not self._running:
                return
            blocked = self._tracer.did_block_hub(self.hub)
            if blocked:
                self.on_blocked(blocked[1])

    def _sleep_until_switch(self) -> None:
        waker = self._waker
        waker.armed = True
        # Armed first, then looked at: a switch before the arming shows here, one after wakes us.
        if self._running and self._idle():
            waker.lock.acquire(True, IDLE_BACKSTOP_S)
        waker.armed = False
