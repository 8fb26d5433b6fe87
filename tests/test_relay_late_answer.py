"""Relay mode: an answer that comes after the ack reaches the user through the response_url, and
the log's counts of one outage agree (issue 22, part 4).

A real, unmodified Bolt app in HTTP mode (tests/test_relay_bolt.py's) is down when a slash command
arrives: the command is acked plainly on time and queued; when the app comes back it is delivered
and Bolt's `ack("echo: …")` answers it. What the user would see is what the simulator recorded at
the command's response_url.
"""
from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest

import support
from buidl_edge.sandbox.harness import WorkerProcess, wait_until
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from buidl_edge.store.sqlite import SqliteStore
from test_relay_bolt import BoltApp, bolt_dir, relay_env  # noqa: F401 (bolt_dir is a fixture)

pytestmark = pytest.mark.timeout(90)


def deliveries(env: dict[str, str], envelope_id: str) -> int:
    store = SqliteStore(Path(env["BUIDL_STATE_DIR"]) / "edge.sqlite3", create=False, checkpoint_interval_s=None)
    try:
        return int((store.inbox_row(envelope_id) or {}).get("deliveries") or 0)
    finally:
        store.close()


def responses(sim: SimulatorProcess, text: str) -> list[dict[str, Any]]:
    return [post for post in sim.client.state()["responses"] if post["text"] == text]


def command_while_the_app_is_down(sim: SimulatorProcess, worker: WorkerProcess, env: dict[str, str],
                                  text: str) -> dict[str, str]:
    """Inject /echo while nothing listens at the app's URL: a plain ack, then queued retries."""
    (sent,) = sim.client.inject("slash_command", command="/echo", text=text, channel="C0LATE")
    state = sim.client.wait_for(lambda s: s["events"][sent["key"]]["acked"], 10, "the command's ack",
                                source="state")["events"][sent["key"]]
    assert state["ack_payloads"] == [] and state["first_ack_latency_ms"] < 3000
    wait_until(lambda: deliveries(env, sent["envelope_id"]) >= 2, 20, "two queued deliveries to fail", interval=0.2)
    return sent


def test_a_command_delivered_after_its_ack_has_its_answer_posted_to_the_response_url(
        simulator: SimulatorProcess, bolt_dir: Path, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    secret = secrets.token_hex(16)
    bolt = BoltApp(bolt_dir, secret, simulator.api_url)  # not started: the app is down
    env = relay_env(simulator, bolt, secret, tmp_path / "state")
    try:
        with support.linked_worker(simulator, env) as worker:
            command_while_the_app_is_down(simulator, worker, env, "late one")
            bolt.start()
            (post,) = wait_until(lambda: responses(simulator, "echo: late one"), 20, "the answer at response_url")
            assert post["response_type"] == "ephemeral" and post["channel"] == "C0LATE"
            said = wait_until(lambda: support.log_lines(worker, r"posted the app's answer to /echo"), 10,
                              "the line saying so")
            assert len(said) == 1 and "level=info" in said[0] and "echo: late one" not in said[0], said

            # One outage, one envelope: the attempts the log counts agree.
            (back,) = support.log_lines(worker, r"takes deliveries again")
            (delivered,) = support.log_lines(worker, r"delivered /echo to the app after")
            outage = re.search(r"after [\d.]+s down and (\d+) failed attempts", back)
            retried = re.search(r"after (\d+) attempts", delivered)
            assert outage is not None and retried is not None, (back, delivered)
            failed, attempts = int(outage.group(1)), int(retried.group(1))
            assert attempts == failed + 1, (back, delivered)
    finally:
        bolt.stop()


def test_a_late_answer_that_cannot_be_posted_is_a_warning(
        simulator: SimulatorProcess, bolt_dir: Path, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    secret = secrets.token_hex(16)
    simulator.client.configure(response_url_uses=0)  # the user's response_url is used up already
    bolt = BoltApp(bolt_dir, secret, simulator.api_url)
    env = relay_env(simulator, bolt, secret, tmp_path / "state")
    try:
        with support.linked_worker(simulator, env) as worker:
            sent = command_while_the_app_is_down(simulator, worker, env, "too late")
            bolt.start()
            wait_until(lambda: bolt.calls("command"), 20, "the delivery to the app")
            (said,) = wait_until(lambda: support.log_lines(worker, r"could not be posted to its response_url"),
                                 10, "the warning")
            assert "level=warning" in said and "/echo" in said and "expired" in said, said
            assert f'envelope_id={sent["envelope_id"]}' in said
            assert responses(simulator, "echo: too late") == []
    finally:
        bolt.stop()
