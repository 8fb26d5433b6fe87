"""The hub watch's thread costs nothing while the hub is idle, and still reports a block at once.

gevent's own monitor thread woke every threshold (0.5 s) for the life of a worker, idle or not:
0.23 ms of CPU a second, a third of what an idle worker spent (issue 26).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import gevent
import pytest

from buidl_edge.runtime.hubwatch import HubWatch


def threads() -> set[str]:
    return {task.name for task in Path(f"/proc/{os.getpid()}/task").iterdir()}


def switches(tasks: set[str]) -> int:
    """Context switches of these threads of this process: each wake of a sleeping thread is one."""
    total = 0
    for tid in tasks:
        try:
            status = Path(f"/proc/{os.getpid()}/task/{tid}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def test_an_idle_hub_does_not_wake_the_watch_thread() -> None:
    before_start = threads()
    watch = HubWatch(0.02, describe=lambda greenlet: None).start()
    try:
        watchers = threads() - before_start  # the watch's thread
        assert watchers, "the watch started no thread"
        gevent.sleep(0.1)  # the thread has started and gone to sleep
        before = switches(watchers)
        gevent.sleep(1.0)  # 50 thresholds of an idle hub
        woke = switches(watchers) - before
    finally:
        watch.stop()
    # gevent's monitor woke 50 times here. Ours wakes on the switches into this greenlet at the
    # window's two ends (and then looks once a threshold later), and a wake that then waits for
    # the GIL is two context switches.
    assert woke < 10, f"the watch's thread woke {woke} times while the hub was idle"
    assert gevent.get_hub().periodic_monitoring_thread is None, "gevent's own monitor (and psutil's) started"


def busy_loop(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_block_right_after_a_long_idle_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="buidl_edge.hubwatch")
    watch = HubWatch(0.2, describe=lambda greenlet: None).start()
    try:
        gevent.sleep(1.0)  # idle for five thresholds: the watch's thread sleeps until a switch
        gevent.spawn(busy_loop, 0.8).join()  # the first switch after the idle runs into a block
        deadline = time.monotonic() + 5
        while not any(r.getMessage().startswith("hub free again") for r in caplog.records):
            assert time.monotonic() < deadline, "the end of the episode was not logged"
            gevent.sleep(0.01)  # the hub runs the episode's end (this process is not patched)
    finally:
        watch.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith("hub blocked for over 0.2s by greenlet busy_loop")], messages
