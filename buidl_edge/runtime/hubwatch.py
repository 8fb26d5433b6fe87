"""Hub blocking: the monitor thread, and one warning per episode that names the cause.

A greenlet that burns CPU or sits in a blocking C call holds every ack of its
process. The monitor thread (`hub_monitor.py`, on gevent's greenlet tracer) notices
when a greenlet has run for the threshold without a switch; we log that once per
episode (not every check), naming the handler and envelope when it is one of ours,
else the greenlet and the line it is on. The episode ends when the hub runs again, which logs how long it lasted.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import gevent

from buidl_edge.runtime.hub_monitor import HubMonitor

log = logging.getLogger("buidl_edge.hubwatch")

# What a greenlet is busy with, as (what, log extra), e.g. ("handler on_message", {"envelope_id": …}).
Describe = Callable[[Any], "tuple[str, dict[str, Any]] | None"]


class HubWatch:
    def __init__(self, threshold_s: float, describe: Describe) -> None:
        self.threshold_s = threshold_s
        self.describe = describe
        self.episodes = 0
        self._hub: Any = None
        self._episode: tuple[float, str, dict[str, Any]] | None = None
        self._monitor: HubMonitor | None = None

    def start(self) -> HubWatch:
        """Start watching this thread's hub; call once start-up is done (imports and connection
        set-up would look like blocking). A threshold of 0 leaves it off."""
        if self.threshold_s <= 0:
            return self
        self._hub = gevent.get_hub()
        # Our own monitor, not gevent's (`gevent.config.monitor_thread`): it sleeps while the hub
        # is idle, and starts no memory monitor (psutil) beside it.
        self._monitor = HubMonitor(self._hub, self.threshold_s, self._on_blocked)
        return self

    def stop(self) -> None:
        """Stop watching (from the hub's thread): the exit that follows a drain is not a block."""
        if self._monitor is not None:
            self._monitor.stop()

    def _on_blocked(self, greenlet: Any) -> None:
        """Runs on the monitor thread, while the hub is blocked: record, log, and ask the hub to
        say when it is free again."""
        if self._episode is not None:  # already said; the hub has not run since
            return
        described = self.describe(greenlet)
        what, extra = described if described else (greenlet_name(greenlet), {})
        where = self._blocked_line()
        self._episode = (time.monotonic(), what, extra)
        self.episodes += 1
        log.warning("hub blocked for over %.1fs by %s%s; every ack of this process waits until it yields "
                    "(run CPU-bound or blocking work with threaded=True)", self.threshold_s, what,
                    f" at {where}" if where else "", extra=extra)
        self._hub.loop.run_callback_threadsafe(self._episode_over)

    def _episode_over(self) -> None:
        """A hub callback: it runs once the blocking greenlet has yielded."""
        if self._episode is None:
            return
        since, what, extra = self._episode
        self._episode = None
        # The monitor noticed a threshold or more in: "at least" is what we know.
        log.info("hub free again after at least %.1fs; it was held by %s", time.monotonic() - since + self.threshold_s,
                 what, extra=extra)

    def _blocked_line(self) -> str:
        """file:line in function of the innermost frame the hub's thread is running."""
        frame = sys._current_frames().get(self._hub.thread_ident)
        if frame is None:
            return ""
        [entry] = traceback.extract_stack(frame, limit=1)
        return f"{os.path.basename(entry.filename)}:{entry.lineno} in {entry.name}"


def greenlet_name(greenlet: Any) -> str:
    """What a greenlet runs, by function name only: its repr would show its arguments (an
    envelope's text, say), which must not reach the log."""
    if getattr(greenlet, "parent", None) is None:
        return "the main greenlet"
    run = getattr(greenlet, "_run", None) or getattr(greenlet, "run", None)
    name = getattr(run, "__qualname__", None) or getattr(run, "__name__", None) or type(greenlet).__name__
    return f"greenlet {name}"
