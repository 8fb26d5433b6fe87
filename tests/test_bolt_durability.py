"""A stock Bolt app (tests/bolt_app.py) keeps buidl-edge's guarantees (issue 24): a worker killed
mid-listener has the request re-run once elsewhere, slow listeners run side by side and hold no
acks, the SIGTERM drain waits for listeners, and an ack() past the deadline reaches the user.
Real worker processes (and `run`'s supervisord) against the simulator."""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import requests

from buidl_edge.sandbox.harness import wait_until
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from support import METRICS_LINE, Workers, log_lines, wait_idle

pytestmark = pytest.mark.timeout(120)

TESTS_DIR = Path(__file__).resolve().parent


def texts(sim: SimulatorProcess, channel: str) -> list[str]:
    return [m["text"] for m in sim.client.state()["messages"] if m["channel"] == channel]


def slow_ones(sim: SimulatorProcess) -> list[str]:
    """What the slow listeners posted, in the order the simulator took it."""
    return [m["text"] for m in sim.client.state()["messages"] if m["channel"].startswith("C0SLOW")]


def test_under_run_a_worker_killed_mid_listener_has_it_re_run_once_by_the_other(stacks, fresh_simulator) -> None:
    sim = fresh_simulator
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1, BUIDL_APP="bolt_app:app").start()
    pids = {p.pid for p in stack.wait_up(processes=2, connections=1)}
    (event,) = sim.client.inject("message", channel="C0KILL", text="slow 4")
    (started,) = wait_until(lambda: texts(sim, "C0KILL"), 20, "the listener to start")
    victim = int(started.rsplit(" ", 1)[1])  # `started slow 4 in PID`
    assert victim in pids
    os.kill(victim, signal.SIGKILL)

    wait_until(lambda: "done slow 4" in texts(sim, "C0KILL"), 30, "the re-run listener to finish")
    wait_idle(sim.client, stack.env)  # a third run, were there one, would have started by then
    runs = texts(sim, "C0KILL")
    assert [t for t in runs if t.startswith("done")] == ["done slow 4"]
    second = [t for t in runs if t.startswith("started")]
    # Re-run by another worker: the survivor's sweep, at once (or supervisord's restart of the victim).
    assert len(second) == 2 and int(second[1].rsplit(" ", 1)[1]) != victim
    row = wait_until(lambda: (r := stack.inbox_row(event["envelope_id"])) and r["state"] == "done" and r, 10,
                     "the inbox row to be done")
    assert row["attempts"] == 2 and not str(row["owner"]).endswith(f":{victim}")
    assert sim.client.summary()["envelopes_sent"] == 1  # re-run from the inbox, not redelivered


def test_8_slow_listeners_run_at_once_and_hold_none_of_40_other_acks(fresh_simulator, tmp_path: Path) -> None:
    sim = fresh_simulator
    workers = Workers(sim, tmp_path, app_dir=TESTS_DIR)
    workers.start("bolt_app:app", BUIDL_HTTP_PORT=0)
    try:
        for i in range(8):  # a channel each: the simulator posts 1 message/s per channel, as Slack
            sim.client.inject("message", channel=f"C0SLOW{i}", text=f"slow 4 #{i}")
        commands = [e["key"] for e in sim.client.inject("slash_command", command="/echo", text="quick", count=40)]
        state = sim.client.wait_for(lambda s: all(s["events"][k]["acked"] for k in commands), 10,
                                    "the 40 commands' acks", source="state")
        for key in commands:
            event = state["events"][key]
            assert event["ack_payloads"] == [{"text": "echo: quick"}]
            assert event["first_ack_latency_ms"] < 3000  # Slack's deadline
        # Bolt's own executor runs 5 listeners at a time: a 6th would start only once one is done.
        wait_until(lambda: len(slow_ones(sim)) >= 8, 10, "8 listeners started")
        assert all(t.startswith("started") for t in slow_ones(sim)[:8])
        # ... and /metrics counts them as handlers (they sleep on, with nothing else running).
        metrics_url = METRICS_LINE.search(workers.output())
        assert metrics_url is not None
        metrics = requests.get(metrics_url.group(1) + "/metrics", timeout=10).text
        assert re.search(r"^buidl_handlers_running\{[^}]*\} 8\.0$", metrics, re.M), metrics
        wait_until(lambda: sum(t.startswith("done") for t in slow_ones(sim)) == 8, 20, "8 listeners done")
        summary = sim.client.summary()
        assert summary["late_acks"] == 0 and summary["missed_deadlines"] == 0
        wait_idle(sim.client, *workers.started)
    finally:
        workers.stop_all()


def test_sigterm_drains_a_running_listener_before_the_worker_exits(fresh_simulator, tmp_path: Path) -> None:
    sim = fresh_simulator
    workers = Workers(sim, tmp_path, app_dir=TESTS_DIR)
    worker = workers.start("bolt_app:app")
    (event,) = sim.client.inject("message", channel="C0DRAIN", text="slow 2")
    wait_until(lambda: texts(sim, "C0DRAIN"), 10, "the listener to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert texts(sim, "C0DRAIN")[1:] == ["done slow 2"]
    assert log_lines(worker, 'msg="worker stopped"') and not log_lines(worker, "drain timed out")
    assert wait_idle(sim.client, worker.env)["events"][event["key"]]["acked"]


def test_an_ack_past_the_deadline_is_posted_to_the_response_url(fresh_simulator, tmp_path: Path) -> None:
    sim = fresh_simulator
    workers = Workers(sim, tmp_path, app_dir=TESTS_DIR)
    worker = workers.start("bolt_app:app", BUIDL_ACK_DEADLINE="0.5")
    try:
        (sent,) = sim.client.inject("slash_command", command="/late", text="1.2", channel="C0LATE")
        responses = wait_until(lambda: sim.client.state()["responses"], 10, "the late answer at the response_url")
        assert [r["text"] for r in responses] == ["late answer after 1.2s"]
        assert sim.client.state()["events"][sent["key"]]["ack_payloads"] == []  # the ack went plain, on time
        assert log_lines(worker, "posted the app's answer to /late to its response_url")
    finally:
        workers.stop_all()
