"""Relay mode's delivery rules, end to end: real worker processes relay the simulator's envelopes
to an HTTP backend on loopback that answers as told by the text of each event or command
(5xx, 429, 404, a redirect, slowly, or hanging), and records every request it got.

The Bolt app's own behaviour is tests/test_relay_bolt.py; this backend is a plain HTTP server,
so that each way an app can answer is there on purpose.
"""
from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from slack_sdk.signature import SignatureVerifier

import support
from buidl_edge.sandbox.harness import WorkerProcess, wait_until
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from http_support import write_answer
from redis_support import free_port

pytestmark = pytest.mark.timeout(90)

SECRET = "relay-e2e-" + "5" * 22


class Backend:
    """An HTTP-mode app stand-in. An event's or command's text says how to answer:
    `fail500 N tag` (500 N times, then 200), `ratelimit tag` (one 429 with Retry-After: 1),
    `gone tag` (404), `redirect tag` (302 to /elsewhere), `hang S tag` (the first request waits
    S seconds), `slow S` (a command answered after S seconds), `json` (a JSON answer)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = backend.answer(self.path, dict(self.headers.items()), body)
                try:
                    write_answer(self, answer)
                except OSError:  # the worker was killed while we waited
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slack/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        text = body.decode()
        if headers.get("Content-Type") == "application/json":
            words = str(json.loads(text)["event"].get("text", "")).split()
        else:
            form = {k: v[0] for k, v in parse_qs(text).items()}
            words = str(form.get("text") or json.loads(form.get("payload", "{}")).get("actions", [{}])[0]
                        .get("value", "")).split()
        with self.lock:
            key = " ".join(words)
            self.seen[key] += 1
            nth = self.seen[key]
            self.requests.append({"at": time.time(), "path": path, "words": words, "headers": headers,
                                  "body": body, "nth": nth})
        verb = words[0] if words else ""
        if path != "/slack/events":
            return 200, {}, b"elsewhere"
        if verb == "fail500" and nth <= int(words[1]):
            return 500, {}, b"down"
        if verb == "ratelimit" and nth == 1:
            return 429, {"Retry-After": "1"}, b""
        if verb == "gone":
            return 404, {}, b"no such route"
        if verb == "redirect":
            return 302, {"Location": "/elsewhere"}, b""
        if verb == "hang" and nth == 1:
            time.sleep(float(words[1]))
        if verb == "slow":
            time.sleep(float(words[1]))
            return 200, {"Content-Type": "text/plain"}, b"slow answer"
        if verb == "json":
            return 200, {"Content-Type": "application/json"}, b'{"response_type":"in_channel","text":"json answer"}'
        return 200, {}, b""

    def got(self, tag: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["words"] and r["words"][-1] == tag]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    server = Backend()
    yield server
    server.close()


def relay_env(sim: SimulatorProcess, url: str, state_dir: Path, **extra: Any) -> dict[str, str]:
    return support.relay_env(sim, url, SECRET, state_dir, BUIDL_RELAY_MAX_ATTEMPTS="10", **extra)


class Relaying:
    def __init__(self, sim: SimulatorProcess, worker: WorkerProcess, env: dict[str, str], http_port: int) -> None:
        self.sim, self.worker, self.env, self.http_port = sim, worker, env, http_port

    def inbox(self, envelope_id: str) -> dict[str, Any]:
        from buidl_edge.store.sqlite import SqliteStore

        store = SqliteStore(Path(self.env["BUIDL_STATE_DIR"]) / "edge.sqlite3", create=False,
                            checkpoint_interval_s=None)
        try:
            return store.inbox_row(envelope_id) or {}
        finally:
            store.close()


@pytest.fixture(scope="module")
def relaying(shared_simulator: SimulatorProcess, backend: Backend,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relaying]:
    port = free_port()
    env = relay_env(shared_simulator, backend.url, tmp_path_factory.mktemp("state"), BUIDL_HTTP_PORT=str(port),
                    BUIDL_HTTP_HOST="127.0.0.1")
    with support.linked_worker(shared_simulator, env) as worker:
        yield Relaying(shared_simulator, worker, env, port)


def message(relay: Relaying, text: str, channel: str) -> dict[str, str]:
    (sent,) = relay.sim.client.inject("message", text=text, channel=channel)
    return sent


def settled(relay: Relaying, envelope_id: str, state: str) -> dict[str, Any]:
    return wait_until(lambda: (row := relay.inbox(envelope_id)).get("state") == state and row, 20,
                      f"{envelope_id} to be {state}", interval=0.1)


# ---------------------------------------------------------------- retries and verdicts


def test_5xx_is_retried_until_delivered_and_every_attempt_is_freshly_signed(relaying: Relaying,
                                                                             backend: Backend) -> None:
    sent = message(relaying, "fail500 2 t-5xx", "C0RETRY")
    row = settled(relaying, sent["envelope_id"], "done")
    attempts = backend.got("t-5xx")
    assert [r["nth"] for r in attempts] == [1, 2, 3] and row["deliveries"] == 3
    for attempt in attempts:  # each one passes the app's own signature check
        assert SignatureVerifier(SECRET).is_valid_request(attempt["body"], attempt["headers"])
        assert "X-Slack-Retry-Num" not in attempt["headers"]  # our redeliveries are no Slack retries
    assert relaying.sim.client.state()["events"][sent["key"]]["deliveries"] == 1  # Slack was acked once, at once


def test_a_429_is_waited_out_for_its_retry_after_and_not_counted(relaying: Relaying, backend: Backend) -> None:
    sent = message(relaying, "ratelimit t-429", "C0LIMIT")
    row = settled(relaying, sent["envelope_id"], "done")
    first, second = backend.got("t-429")
    assert second["at"] - first["at"] >= 0.9  # Retry-After: 1
    assert row["deliveries"] == 1


def test_a_4xx_is_the_apps_verdict_and_is_not_retried(relaying: Relaying, backend: Backend) -> None:
    sent = message(relaying, "gone t-404", "C0GONE")
    row = settled(relaying, sent["envelope_id"], "failed")
    assert row["error"] == "HTTP 404" and row["deliveries"] == 1
    support.wait_idle(relaying.sim.client, relaying.worker)  # a retry would be in flight or in by then
    assert len(backend.got("t-404")) == 1
    assert "failed for good: HTTP 404" in relaying.worker.output()


def test_a_redirect_is_not_followed(relaying: Relaying, backend: Backend) -> None:
    sent = message(relaying, "redirect t-302", "C0MOVED")
    row = settled(relaying, sent["envelope_id"], "failed")
    assert row["error"].startswith("HTTP 302 redirect to /elsewhere not followed")
    assert [r["path"] for r in backend.got("t-302")] == ["/slack/events"]  # /elsewhere never asked


def test_a_channels_events_reach_the_app_in_arrival_order_even_when_one_is_retried(relaying: Relaying,
                                                                                    backend: Backend) -> None:
    texts = ["fail500 1 o-1", "plain o-2", "plain o-3", "plain o-4"]
    sent = [message(relaying, text, "C0ORDER") for text in texts]
    for one in sent:
        settled(relaying, one["envelope_id"], "done")
    with backend.lock:
        order = [r["words"][-1] for r in backend.requests if r["words"][-1].startswith("o-")]
    assert order == ["o-1", "o-1", "o-2", "o-3", "o-4"]  # o-1's retry came before o-2


# ---------------------------------------------------------------- answers within the ack deadline


def test_a_json_answer_to_a_command_is_the_ack_payload_as_it_is(relaying: Relaying) -> None:
    (sent,) = relaying.sim.client.inject("slash_command", command="/ask", text="json", channel="C0JSON")
    state = relaying.sim.client.wait_for(lambda s: s["events"][sent["key"]]["acked"], 10, "the ack",
                                         source="state")["events"][sent["key"]]
    assert state["ack_payloads"] == [{"response_type": "in_channel", "text": "json answer"}]


def test_a_slow_app_gets_a_plain_ack_on_time_and_its_late_answer_goes_to_the_response_url(
        relaying: Relaying, backend: Backend) -> None:
    (sent,) = relaying.sim.client.inject("slash_command", command="/slow", text="slow 3.5", channel="C0SLOW")
    state = relaying.sim.client.wait_for(lambda s: s["events"][sent["key"]]["acked"], 10, "the ack",
                                         source="state")["events"][sent["key"]]
    assert state["ack_payloads"] == [] and state["first_ack_latency_ms"] < 3000
    settled(relaying, sent["envelope_id"], "done")
    (post,) = wait_until(lambda: [r for r in relaying.sim.client.state()["responses"] if r["channel"] == "C0SLOW"],
                         10, "the late answer at the response_url")
    assert (post["text"], post["response_type"]) == ("slow answer", "ephemeral")
    said = support.log_lines(relaying.worker, "posted the app's answer to /slow to its response_url")
    assert len(said) == 1 and "level=info" in said[0] and "slow answer" not in said[0], said
    assert len([r for r in backend.requests if r["words"][:1] == ["slow"]]) == 1  # not sent again


def test_metrics_show_the_relay_families(relaying: Relaying, backend: Backend) -> None:
    sent = message(relaying, "plain t-metrics", "C0METRICS")
    settled(relaying, sent["envelope_id"], "done")

    def scraped() -> str:
        text = requests.get(f"http://127.0.0.1:{relaying.http_port}/metrics", timeout=5).text
        return text if "buidl_relay_sent_total" in text else ""

    text = wait_until(scraped, 10, "relay metrics")
    sent_total = [line for line in text.splitlines() if line.startswith("buidl_relay_sent_total")]
    assert sent_total and float(sent_total[0].rsplit(" ", 1)[1]) >= 1
    assert "buidl_relay_backend_latency_seconds_bucket" in text
    assert 'buidl_relay_backend_latency_recent_seconds{process=' in text and 'quantile="0.99"' in text


# ---------------------------------------------------------------- a worker killed mid-delivery


def test_a_delivery_in_flight_when_its_worker_is_killed_is_made_by_another_worker(
        simulator: SimulatorProcess, backend: Backend, tmp_path: Path) -> None:
    env = relay_env(simulator, backend.url, tmp_path / "state")
    doomed, survivor = WorkerProcess(env), WorkerProcess(env)
    doomed.start()
    try:
        simulator.client.wait_for(lambda s: s["open_connections"] == 1, 20, "the first worker's link")
        (sent,) = simulator.client.inject("message", text="hang 8 t-kill", channel="C0KILL")
        wait_until(lambda: backend.got("t-kill"), 10, "the delivery to be in flight")
        survivor.start()
        simulator.client.wait_for(lambda s: s["open_connections"] == 2, 20, "the second worker's link")
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
        wait_until(lambda: len(backend.got("t-kill")) >= 2, 20, "the survivor's delivery")
        row = wait_until(lambda: (r := Relaying(simulator, survivor, env, 0).inbox(sent["envelope_id"]))
                         .get("state") == "done" and r, 20, "the row done")
        assert row["deliveries"] == 2 and row["owner"] != f"{doomed.pid}"
        assert "delivering message again" in survivor.output()
    finally:
        doomed.stop()
        survivor.stop()
        print(doomed.output()[-4000:], survivor.output()[-4000:])


# ---------------------------------------------------------------- the drain


def test_sigterm_delivers_what_waits_in_the_sqlite_inbox_before_the_worker_exits(
        simulator: SimulatorProcess, backend: Backend, tmp_path: Path) -> None:
    """Acked envelopes waiting in the SQLite file for their delivery (here behind a head that the
    app fails twice) reach the app during the drain: the file is on the dyno's disk, and a
    restarted Heroku dyno starts with a fresh one."""
    env = relay_env(simulator, backend.url, tmp_path / "state")
    worker = WorkerProcess(env).start()
    try:
        simulator.client.wait_for(lambda s: s["open_connections"] == 1, 20, "the worker's link")
        texts = ["fail500 2 dr-1"] + [f"plain dr-{i}" for i in range(2, 6)]
        sent = [simulator.client.inject("message", text=text, channel="C0RELAYDRAIN")[0] for text in texts]
        support.wait_acked(simulator.client, [one["key"] for one in sent])
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        # the head answered 200 on its third try; every other one on its first
        assert [len(backend.got(f"dr-{i}")) for i in range(1, 6)] == [3, 1, 1, 1, 1], worker.output()[-3000:]
        assert "not yet delivered" not in worker.output()
    finally:
        worker.stop()


# ---------------------------------------------------------------- the deployable


def test_run_with_relay_makes_every_supervised_worker_a_relay(simulator: SimulatorProcess, backend: Backend) -> None:
    import shutil
    import tempfile

    from buidl_edge.sandbox.harness import StackProcess

    state = Path(tempfile.mkdtemp(prefix="br-"))  # short: supervisord's control socket lives there
    env = relay_env(simulator, backend.url, state)
    del env["BUIDL_RELAY_URL"]  # from the flag alone
    stack = StackProcess(env, ("--relay", backend.url, "-n", "2"))
    stack.start()
    try:
        simulator.client.wait_for(lambda s: s["open_connections"] == 2, 30, "both supervised workers' links")
        sent = simulator.client.inject("message", text="plain t-run", channel="C0RUN", count=4)
        wait_until(lambda: len(backend.got("t-run")) == 4, 20, "every event at the app")
        assert simulator.client.summary()["acked"] == 4
        stack.signal(signal.SIGTERM)
        assert stack.wait(30) == 0
        out = stack.output()
        assert out.count("relaying to " + backend.url) == 2 and len(sent) == 4
    finally:
        stack.stop()
        print(stack.output()[-6000:])
        shutil.rmtree(state, ignore_errors=True)
