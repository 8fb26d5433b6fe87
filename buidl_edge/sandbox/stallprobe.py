"""A probe for gevent hub stalls, shared by the store benchmark and the store tests.

A greenlet sleeps 1 ms in a loop; the longest gap between its wake-ups is the
longest time the hub was kept from running it (by blocking work, or the CPU).
"""
from __future__ import annotations

import time

import gevent

TICK_S = 0.001


class HubTicker:
    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0  # seconds, the 1 ms sleep included
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> HubTicker:
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()

    def _run(self) -> None:
        last = time.perf_counter()
        while True:
            gevent.sleep(TICK_S)
            now = time.perf_counter()
            self.ticks += 1
            self.max_gap = max(self.max_gap, now - last)
            last = now
