"""`status` after a worker was killed, restarted by supervisord, and the whole stack then stopped
cleanly: the real `run`, the real store; nothing of the killed worker is left behind (issue 22)."""
from __future__ import annotations

import json
import os
import signal

import pytest

from buidl_edge.sandbox.harness import wait_until

pytestmark = pytest.mark.timeout(90)


def test_a_killed_and_restarted_worker_leaves_no_dead_row_after_a_clean_stop(
        stacks, fresh_simulator) -> None:
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1).start()
    before = {p.name: p.pid for p in stack.wait_up(processes=2, connections=1)}
    killed = before["worker_00"]
    wait_until(lambda: {row["pid"] for row in stack.status_json()["processes"] if row["acked"] is not None}
               == set(before.values()), 15, "both workers' heartbeats", interval=0.3)

    os.kill(killed, signal.SIGKILL)

    def restarted() -> int | None:
        now = {p.name: p.pid for p in stack.processes() if p.state == "RUNNING"}
        return now.get("worker_00") if now.get("worker_00") not in (None, killed) else None

    successor = wait_until(restarted, 20, "supervisord to restart worker_00", interval=0.1)
    # The successor is up and publishing before the stack is stopped.
    wait_until(lambda: any(row["pid"] == successor and row["acked"] is not None
                           for row in stack.status_json()["processes"]), 15, "the successor's heartbeat",
               interval=0.3)
    fresh_simulator.client.wait_for(lambda s: s["open_connections"] == 2, 20, "the successor's link")

    stack.signal_every_process(signal.SIGTERM)
    assert stack.proc is not None and stack.proc.wait(timeout=30) == 0, stack.logs()

    after = stack.cli("status", "--json")
    rows = json.loads(after.stdout)["processes"]
    assert rows == [], f"rows left after a clean stop (the killed worker was pid {killed}): {rows}"
