"""Relay mode against a real, unmodified Bolt for Python app in HTTP mode (issue 15).

The Bolt app is its own process, served by Bolt's standard WSGI adapter, with its signing
secret set and its request verification on, and its WebClient aimed at the simulator. Real
worker processes relay the simulator's envelopes to it over loopback. What is asserted is what
the simulator saw (acks, ack payloads, posted messages) and what the Bolt app's listeners
recorded, one JSON line per call.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import support
from buidl_edge.sandbox.harness import WorkerProcess, fake_tokens, wait_until
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from redis_support import free_port

pytestmark = pytest.mark.timeout(120)

BOLT_APP = textwrap.dedent('''
    """An ordinary HTTP-mode Bolt app: nothing in it knows about buidl-edge."""
    import json
    import os
    from wsgiref.simple_server import make_server

    from slack_bolt import App
    from slack_bolt.adapter.wsgi import SlackRequestHandler
    from slack_sdk import WebClient

    RECORD = os.environ["BOLT_RECORD"]
    app = App(client=WebClient(token=os.environ["BOLT_TOKEN"], base_url=os.environ["BOLT_API_URL"]),
              signing_secret=os.environ["SLACK_SIGNING_SECRET"])


    def record(kind, **fields):
        with open(RECORD, "a") as fh:
            fh.write(json.dumps({"kind": kind, "pid": os.getpid(), **fields}) + "\\n")


    @app.event("app_mention")
    def mention(event, say, body):
        record("app_mention", event_id=body["event_id"], text=event["text"])
        say("bolt heard: " + event["text"])


    @app.event("message")
    def message(event, body, request):
        record("message", event_id=body["event_id"], text=event.get("text"),
               retry=request.headers.get("x-slack-retry-num", [None])[0])


    @app.command("/echo")
    def echo(ack, command):
        ack("echo: " + command["text"])
        record("command", text=command["text"])


    @app.action("buidl_action")
    def clicked(ack, body, action):
        ack()
        record("action", value=action["value"], user=body["user"]["id"])


    make_server("127.0.0.1", int(os.environ["BOLT_PORT"]), SlackRequestHandler(app)).serve_forever()
''')


class BoltApp:
    """The Bolt app as a child process on a fixed loopback port (so that it can restart on it)."""

    def __init__(self, folder: Path, secret: str, api_url: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/slack/events"
        self.record = folder / f"record-{self.port}.jsonl"
        self.log = folder / f"bolt-{self.port}.log"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BUIDL_"))},
                    "BOLT_RECORD": str(self.record), "BOLT_TOKEN": fake_tokens()["SLACK_BOT_TOKEN"],
                    "BOLT_API_URL": api_url, "SLACK_SIGNING_SECRET": secret, "BOLT_PORT": str(self.port)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BoltApp:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, str(self.folder / "bolt_app.py")], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.folder)
        wait_until(self._listening, 20, "the Bolt app to listen")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text()
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def answered(self, status: int) -> int:
        """Requests the app has answered with `status`, all of them: its WSGI server is one thread,
        which logs each request before it takes the next, so once a request of ours is answered,
        every request before it is in the log."""
        requests.get(f"http://127.0.0.1:{self.port}/barrier", timeout=10)
        return self.log.read_text().count(f'" {status} ')

    def calls(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        rows = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [row for row in rows if kind is None or row["kind"] == kind]


@pytest.fixture(scope="module")
def bolt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bolt")
    (folder / "bolt_app.py").write_text(BOLT_APP)
    return folder


def relay_env(sim: SimulatorProcess, bolt: BoltApp, secret: str, state_dir: Path, **extra: Any) -> dict[str, str]:
    return support.relay_env(sim, bolt.url, secret, state_dir, BUIDL_RELAY_MAX_ATTEMPTS="200", **extra)


def admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buidl_edge", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def print_logs(*processes: Any) -> None:
    for process in processes:
        path = getattr(process, "log", None) or getattr(process, "log_path", None)
        if path and Path(path).exists():
            print(f"----- {path}\n{Path(path).read_text(errors='replace')[-6000:]}")


class Stack:
    """One simulator, one Bolt app, one relaying worker: shared by the quick tests of this module."""

    def __init__(self, sim: SimulatorProcess, bolt: BoltApp, worker: WorkerProcess, env: dict[str, str]) -> None:
        self.sim, self.bolt, self.worker, self.env = sim, bolt, worker, env


@pytest.fixture(scope="module")
def stack(shared_simulator: SimulatorProcess, bolt_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    secret = secrets.token_hex(16)
    bolt = BoltApp(bolt_dir, secret, shared_simulator.api_url).start()
    env = relay_env(shared_simulator, bolt, secret, tmp_path_factory.mktemp("state"))
    try:
        with support.linked_worker(shared_simulator, env) as worker:
            yield Stack(shared_simulator, bolt, worker, env)
    finally:
        bolt.stop()
        print_logs(bolt)


def event_state(sim: SimulatorProcess, key: str) -> dict[str, Any]:
    return sim.client.state()["events"][key]


# ---------------------------------------------------------------- through a live relay


def test_an_app_mention_reaches_the_bolt_listener_and_its_say_reply_reaches_slack(stack: Stack) -> None:
    (sent,) = stack.sim.client.inject("app_mention", text="<@U0BUIDL> hello relay", channel="C0MENTION")
    wait_until(lambda: [m for m in stack.sim.client.state()["messages"] if m["channel"] == "C0MENTION"], 20,
               "Bolt's say() at chat.postMessage")
    (message,) = [m for m in stack.sim.client.state()["messages"] if m["channel"] == "C0MENTION"]
    assert message["text"] == "bolt heard: <@U0BUIDL> hello relay"
    (call,) = stack.bolt.calls("app_mention")
    assert call["event_id"] == sent["key"]
    state = event_state(stack.sim, sent["key"])
    assert state["acked"] and state["deliveries"] == 1 and state["ack_payloads"] == []


def test_a_slash_command_answer_from_bolt_comes_back_as_the_ack_payload_in_time(stack: Stack) -> None:
    (sent,) = stack.sim.client.inject("slash_command", command="/echo", text="ping 42", channel="C0CMD")
    state = stack.sim.client.wait_for(lambda s: s["events"][sent["key"]]["acked"], 10, "the command's ack",
                                      source="state")["events"][sent["key"]]
    assert state["ack_payloads"] == [{"text": "echo: ping 42"}]
    assert state["first_ack_latency_ms"] < 3000  # Slack's deadline
    assert stack.sim.client.summary()["late_acks"] == 0
    wait_until(lambda: stack.bolt.calls("command"), 10, "Bolt's command listener")


def test_a_block_actions_payload_reaches_the_bolt_action_listener(stack: Stack) -> None:
    stack.sim.client.inject("block_action", text="approve-7", user="U0CLICKER", channel="C0ACT")
    (call,) = wait_until(lambda: stack.bolt.calls("action"), 20, "Bolt's @app.action listener")
    assert (call["value"], call["user"]) == ("approve-7", "U0CLICKER")


def test_status_and_metrics_show_the_relay_deliveries(stack: Stack) -> None:
    stack.sim.client.inject("message", text="counted", channel="C0STATS")
    wait_until(lambda: [c for c in stack.bolt.calls("message") if c["text"] == "counted"], 20, "the delivery")

    def relayed() -> Any:
        report = json.loads(admin(stack.env, "status", "--json").stdout)
        rows = [row for row in report["processes"] if (row.get("relay_sent") or 0) >= 1]
        return rows and report

    report = wait_until(relayed, 20, "status to count the deliveries", interval=0.5)
    (row,) = [row for row in report["processes"] if row["relay_sent"]]
    assert row["relay_failed"] == 0 and row["relay_latency_p50_ms"] > 0
    assert row["relay_latency_p99_ms"] >= row["relay_latency_p50_ms"]
    table = admin(stack.env, "status")
    assert "relayed" in table.stdout and "app_p99_ms" in table.stdout and "relay:" in table.stdout


def test_check_pings_the_app_with_a_signed_request_and_config_masks_the_secret(stack: Stack) -> None:
    secret = stack.env["SLACK_SIGNING_SECRET"]
    ok = admin(stack.env, "check")
    assert ok.returncode == 0, ok.stderr
    assert f"relay ok: the app at {stack.bolt.url} accepted the signature" in ok.stdout
    refused = admin({**stack.env, "SLACK_SIGNING_SECRET": secrets.token_hex(16)}, "check")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "refused the signed request (HTTP 401): SLACK_SIGNING_SECRET is not its Signing Secret" in refused.stderr
    shown = admin(stack.env, "config", "--json")
    config = json.loads(shown.stdout)
    assert config["relay_url"] == stack.bolt.url and config["signing_secret"] == f"…{secret[-4:]}"
    for out in (ok, refused, shown, admin(stack.env, "config"), admin(stack.env, "status", "--json")):
        assert secret not in out.stdout + out.stderr


# ---------------------------------------------------------------- the app down, a worker killed


def test_with_bolt_down_for_20s_every_event_arrives_once_after_it_restarts_and_every_ack_was_on_time(
        simulator: SimulatorProcess, bolt_dir: Path, tmp_path: Path) -> None:
    secret = secrets.token_hex(16)
    bolt = BoltApp(bolt_dir, secret, simulator.api_url).start()
    env = relay_env(simulator, bolt, secret, tmp_path / "state")
    survivor, doomed = WorkerProcess(env), WorkerProcess(env)
    survivor.start()
    doomed.start()
    sent: list[str] = []
    try:
        simulator.client.wait_for(lambda s: s["open_connections"] == 2, 20, "both workers' links")
        sent += [e["key"] for e in simulator.client.inject("message", text="before", channel="C0OUT0")]
        wait_until(lambda: bolt.calls("message"), 20, "the first delivery")
        bolt.stop()
        started = time.monotonic()
        for i in range(20):  # one event a second for 20 s, over three channels, while the app is down
            (event,) = simulator.client.inject("message", text=f"during {i}", channel=f"C0OUT{i % 3}")
            sent.append(event["key"])
            support.wait_acked(simulator.client, [event["key"]], 5)
            if i == 9:  # kill -9 of a worker in the middle: its rows are the survivor's to deliver
                doomed.signal(signal.SIGKILL)
                doomed.wait(10)
                simulator.client.wait_for(lambda s: s["open_connections"] == 1, 10, "the killed link to close")
            time.sleep(max(0.0, started + i + 1 - time.monotonic()))
        assert bolt.calls("message") and len(bolt.calls("message")) == 1  # nothing got through meanwhile
        bolt.start()
        wait_until(lambda: len(bolt.calls("message")) >= len(sent), 30, "every event, once the app is back")
        # Idle (nothing left to deliver, nothing in flight): every delivery the app took is answered,
        # and its listener records it, the duplicate one too, were there one.
        support.wait_idle(simulator.client, survivor, doomed)
        delivered = bolt.answered(200)
        calls = wait_until(lambda: len(got := bolt.calls("message")) >= delivered and got, 10,
                           f"the app's listeners to record its {delivered} deliveries")
        assert sorted(c["event_id"] for c in calls) == sorted(sent)  # each event exactly once
        for channel in ("C0OUT0", "C0OUT1", "C0OUT2"):  # and each channel's events in their order
            texts = [c["text"] for c in calls if c["text"] != "before" and int(c["text"].split()[1]) % 3 ==
                     int(channel[-1])]
            assert texts == sorted(texts, key=lambda t: int(t.split()[1]))
        summary = simulator.client.summary()
        assert summary["acked"] == len(sent) and summary["late_acks"] == 0 and summary["missed_deadlines"] == 0
        assert "lost" not in survivor.output()
    finally:
        survivor.stop()
        doomed.stop()
        bolt.stop()
        print_logs(survivor, doomed, bolt)


# ---------------------------------------------------------------- a signing secret Bolt refuses


def test_a_wrong_signing_secret_is_refused_by_bolt_and_its_rows_fail_once_then_retry_by_hand(
        simulator: SimulatorProcess, bolt_dir: Path, tmp_path: Path) -> None:
    secret = secrets.token_hex(16)
    bolt = BoltApp(bolt_dir, secret, simulator.api_url).start()
    env = relay_env(simulator, bolt, secrets.token_hex(16), tmp_path / "state", SENTRY_DSN=simulator.sentry_dsn())
    worker = WorkerProcess(env)
    worker.start()
    fixed: WorkerProcess | None = None
    try:
        events = [e["key"] for e in simulator.client.inject("message", text="private-plans-9", channel="C0SIG",
                                                            count=2)]
        (command,) = simulator.client.inject("slash_command", command="/echo", text="private-plans-9",
                                             channel="C0SIG")

        def failed() -> list[dict[str, Any]]:
            rows = json.loads(admin(env, "inbox", "list", "--state", "failed", "--json").stdout or "[]")
            return rows if len(rows) == 3 else []

        rows = wait_until(failed, 20, "the refused rows to be failed", interval=0.3)
        assert {row["error"] for row in rows} == {"HTTP 401"}
        assert sorted(row["deliveries"] for row in rows if row["kind"] == "message") == [1, 1]  # no retries
        state = simulator.client.state()["events"]
        assert state[command["key"]]["acked"] and state[command["key"]]["ack_payloads"] == []  # a plain ack
        assert all(state[key]["acked"] for key in events) and simulator.client.summary()["late_acks"] == 0
        support.wait_idle(simulator.client, worker)  # a retry would be in flight or answered by then
        assert bolt.answered(401) == 3  # one refused request each, none retried
        assert bolt.calls() == []  # no listener ran
        out = worker.output()
        assert "failed for good: HTTP 401" in out
        assert "check that SLACK_SIGNING_SECRET is the app's Signing Secret" in out
        assert env["SLACK_SIGNING_SECRET"] not in out

        worker.stop()  # flushes Sentry on its way out
        recorded = simulator.client.sentry(raw=True)
        reports = [e for e in recorded["events"] if e["tags"].get("report") == "relay_failure"]
        assert sorted(e["tags"]["event_kind"] for e in reports) == ["/echo", "message", "message"]
        assert {e["tags"]["relay_error"] for e in reports} == {"HTTP 401"}
        raw = "\n".join(recorded["raw"])
        assert env["SLACK_SIGNING_SECRET"] not in raw and "private-plans-9" not in raw  # nor what users wrote
        fixed = WorkerProcess({**env, "SLACK_SIGNING_SECRET": secret})  # the secret put right, then retried
        fixed.start()
        for row in rows:
            if row["kind"] == "message":
                assert admin(env, "inbox", "retry", row["envelope_id"]).returncode == 0
        delivered = wait_until(lambda: len(bolt.calls("message")) == 2 and bolt.calls("message"), 20,
                               "the retried events")
        assert sorted(c["event_id"] for c in delivered) == sorted(events)
    finally:
        worker.stop()
        if fixed is not None:
            fixed.stop()
        bolt.stop()
        print_logs(worker, bolt)
