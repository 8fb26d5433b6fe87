"""Sentry reports from real workers, through the real sentry-sdk, to the simulator's ingestion endpoint."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests

from buidl_edge.config import sentry_options
from buidl_edge.sandbox.demo_app import FAIL_WORD
from buidl_edge.sandbox.harness import StackProcess, WorkerProcess, fake_tokens, wait_until, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from buidl_edge.sandbox.simulator.sentry import parse_envelope
from support import assert_no_secret, secret_fragments

pytestmark = pytest.mark.timeout(60)

DEMO_APP = "buidl_edge.sandbox.demo_app:app"

# A handler that does everything careless code does with a token: logs it, leaves it in a
# local variable, a breadcrumb and the scope's extra, crashes a greenlet with it, and raises with it.
LEAKY_APP = '''
import logging
import os

import gevent
import sentry_sdk

from buidl_edge.api.app import EdgeApp

app = EdgeApp("leaky")


def _crash(token):
    raise RuntimeError("a background greenlet died holding " + token)


@app.event("message")
def careless(event, ctx):
    if event.get("text") != "leak":
        return
    app_token = os.environ["SLACK_APP_TOKEN"]
    bot_token = os.environ["SLACK_BOT_TOKEN"]
    app_body = app_token.split("-", 1)[1]  # a token without its prefix: no pattern can know it
    bot_body = bot_token.removeprefix("xoxb-")
    ctx.logger.info("calling the API with %s", bot_token)
    sentry_sdk.add_breadcrumb(category="leaky", message="auth " + app_token,
                              data={"url": "https://api.example/?token=" + bot_token})
    sentry_sdk.set_extra("settings", {"token": bot_token})
    gevent.spawn(_crash, bot_token).join()
    raise RuntimeError("could not use " + app_token + " or " + bot_token)
'''


def events_of(sim: SimulatorProcess, report: str | None = None) -> list[dict[str, Any]]:
    events = sim.client.sentry()["events"]
    return [e for e in events if report is None or e["tags"].get("report") == report]


def start_worker(sim: SimulatorProcess, tmp_path: Path, tokens: dict[str, str] | None = None,
                 **extra: Any) -> WorkerProcess:
    env = worker_env(sim.api_url, tokens, SENTRY_DSN=sim.sentry_dsn(), BUIDL_STATE_DIR=tmp_path / "state",
                     **extra)
    return WorkerProcess(env, log_path=tmp_path / "worker.log")


def test_a_failing_handler_is_one_event_with_its_tags_however_often_it_runs(
        simulator: SimulatorProcess, tmp_path: Path) -> None:
    sim = simulator.client
    worker = start_worker(simulator, tmp_path, BUIDL_APP=DEMO_APP, BUIDL_CONNECTIONS=2, DYNO="worker.1",
                          SENTRY_ENVIRONMENT="staging", HEROKU_SLUG_COMMIT="c0ffee1")
    with worker:
        sim.wait_for(lambda s: s["open_connections"] == 2, 15, "the worker's connections")
        first = sim.inject("message", channel="C0FAIL1", text=FAIL_WORD)[0]["key"]
        second = sim.inject("message", channel="C0FAIL2", text=FAIL_WORD)[0]["key"]
        sim.wait_for(lambda s: s["sentry_events"] >= 2, 10, "both handler errors")
        # Slack redelivers both (new envelope ids, same event ids) …
        for key in (first, second, first):
            sim.fault("redeliver", key=key)
        expected = {first: 3, second: 2}
        sim.wait_for(lambda s: all(s["events"][k]["deliveries"] == n and s["events"][k]["acked"]
                                   for k, n in expected.items()), 10, "the redeliveries acked", source="state")
        # … and an operator re-runs the first one: the handler fails again, Sentry hears nothing new.
        envelope_id = sim.state()["events"][first]["envelope_ids"][0]
        rerun = subprocess.run([sys.executable, "-m", "buidl_edge", "inbox", "retry", envelope_id],
                               env=worker.env, capture_output=True, text=True, timeout=30)
        assert rerun.returncode == 0, rerun.stderr
        wait_until(lambda: worker.output().count("handler deliberately_failing failed") >= 3, 10,
                   "the re-run to fail again")
        assert worker.stop() == 0
    state = sim.state()
    events = events_of(simulator)
    assert len(events) == 2, [e["tags"] for e in events]
    by_event = {e["tags"]["slack_event_id"]: e for e in events}
    for key in (first, second):
        tracked = state["events"][key]
        event = by_event[tracked["event_id"]]
        assert event["level"] == "error"
        assert event["exception_type"] == "RuntimeError" and "deliberately failing" in event["exception_value"]
        tags = event["tags"]
        assert tags["report"] == "handler_error" and tags["handler"] == "deliberately_failing"
        assert tags["envelope_type"] == "events_api" and tags["event_kind"] == "message"
        assert tags["envelope_id"] == tracked["envelope_ids"][0] and tags["retry_attempt"] == "0"
        assert tags["process"] == "worker.1"
        assert tags["connection"].startswith("c") and "." in tags["connection"]
        assert event["environment"] == "staging" and event["release"] == "c0ffee1"


def test_seeded_tokens_never_reach_sentry_or_the_logs(simulator: SimulatorProcess, tmp_path: Path) -> None:
    (tmp_path / "leaky_app.py").write_text(LEAKY_APP)
    tokens = fake_tokens()
    worker = start_worker(simulator, tmp_path, tokens, BUIDL_APP="leaky_app:app", SENTRY_INCLUDE_LOCALS="1",
                          PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    dsn_key = worker.env["SENTRY_DSN"].split("//", 1)[1].split("@", 1)[0]
    with worker:
        simulator.client.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's connection")
        simulator.client.inject("message", channel="C0LEAK", text="leak")
        simulator.client.wait_for(lambda s: s["sentry_events"] >= 1, 10, "the handler error")
        assert worker.stop() == 0
    recorded = simulator.client.sentry(raw=True)
    raw = "\n".join(recorded["raw"])
    secrets = secret_fragments(tokens) + [dsn_key]
    assert_no_secret(raw, secrets, "the Sentry envelopes")
    (event,) = [e["event"] for e in recorded["events"] if e["tags"].get("report") == "handler_error"]
    # The seeded values did reach the event, masked: this test would see a leak.
    assert "could not use xapp-[redacted] or xoxb-[redacted]" in event["exception"]["values"][-1]["value"]
    frame = next(f for f in event["exception"]["values"][-1]["stacktrace"]["frames"] if f["function"] == "careless")
    assert "[redacted]" in frame["vars"]["app_token"] and "[redacted]" in frame["vars"]["bot_token"]
    assert frame["vars"]["app_body"].strip("'") == "[redacted]" == frame["vars"]["bot_body"].strip("'")
    crumbs = event["breadcrumbs"]["values"]
    assert any(c.get("message") == "auth xapp-[redacted]" and "[redacted]" in c["data"]["url"] for c in crumbs)
    assert any("calling the API with xoxb-[redacted]" in (c.get("message") or "") for c in crumbs)
    assert event["extra"]["settings"] == {"token": "xoxb-[redacted]"}
    output = worker.output()
    assert_no_secret(output, secrets, "the worker's stdout and stderr")
    assert "calling the API with xoxb-[redacted]" in output
    assert "a background greenlet died holding xoxb-[redacted]" in output  # gevent's own stderr report


def test_a_debug_stack_run_with_a_failing_handler_leaks_no_token_from_any_process(
        simulator: SimulatorProcess, tmp_path: Path) -> None:
    """supervisord, its workers and the event listener all write to the stack's stdout/stderr."""
    (tmp_path / "leaky_app.py").write_text(LEAKY_APP)
    tokens = fake_tokens()
    sim = simulator.client
    env = worker_env(simulator.api_url, tokens, BUIDL_APP="leaky_app:app", BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1,
                     WEBSOCKET_DEBUG="1", BUIDL_LOG_LEVEL="DEBUG", SENTRY_DSN=simulator.sentry_dsn(),
                     SENTRY_INCLUDE_LOCALS="1", BUIDL_STATE_DIR=tmp_path / "state",
                     PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    with StackProcess(env, log_path=tmp_path / "stack.log") as stack:
        sim.wait_for(lambda s: s["open_connections"] == 2, 20, "both workers' connections")
        pasted = f"{tokens['SLACK_APP_TOKEN']} {tokens['SLACK_BOT_TOKEN']}"
        keys = [e["key"] for e in sim.inject("message", channel="C0PASTE", text=pasted)]
        keys += [e["key"] for e in sim.inject("message", channel="C0LEAK", text="leak")]
        sim.fault("bad_frame", text="{" + pasted, target="oldest")
        sim.fault("disconnect", reason="warning", target="oldest")  # a new link: a new ticket in the trace
        sim.wait_for(lambda s: all(s["events"][k]["acked"] for k in keys), 15, "the acks", source="state")
        sim.wait_for(lambda s: s["sentry_events"] >= 1, 10, "the handler error")
        wait_until(lambda: "a background greenlet died" in stack.output(), 10, "gevent's stderr report")
        assert stack.stop() == 0
    output = stack.output()
    frames = [line for line in output.splitlines() if "logger=buidl_edge.frames" in line]
    assert any("xapp-[redacted] xoxb-[redacted]" in line for line in frames)  # the trace ran, masked
    assert "ticket=[redacted]" in output and not re.search(r"ticket=(?!\[redacted\])", output)
    assert "could not use xapp-[redacted] or xoxb-[redacted]" in output
    secrets = secret_fragments(tokens)
    assert_no_secret(output, secrets, "the stack's stdout/stderr")
    assert_no_secret("\n".join(sim.sentry(raw=True)["raw"]), secrets, "the Sentry envelopes")


def test_a_flood_of_bad_frames_is_one_event_with_a_count_sent_on_sigterm(
        simulator: SimulatorProcess, tmp_path: Path) -> None:
    sim = simulator.client
    with start_worker(simulator, tmp_path) as worker:
        sim.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's connection")
        for i in range(25):
            sim.fault("bad_frame", text="{not json" if i % 5 else "[1, 2]")
        wait_until(lambda: worker.output().count("bad frame rejected") >= 25, 10, "the worker to reject them")
        assert events_of(simulator) == []  # the 60 s window is still open: nothing sent yet
        assert worker.stop() == 0  # SIGTERM: the drain sends the pending count
    (event,) = events_of(simulator)
    assert event["tags"]["report"] == "protocol_error" and event["tags"]["bad_frames"] == "25"
    assert event["extra"]["protocol_errors"]["count"] == 25
    assert event["extra"]["protocol_errors"]["reasons"] == {"not_json": 20, "not_object": 5}
    assert event["message"].startswith("25 bad Socket Mode frame(s)")


@pytest.mark.parametrize("cause", ["invalid_auth", "link_disabled"])
def test_a_fatal_stop_is_reported_before_the_exit(simulator: SimulatorProcess, tmp_path: Path, cause: str) -> None:
    sim = simulator.client
    if cause == "invalid_auth":
        sim.configure(open_error="invalid_auth")
    with start_worker(simulator, tmp_path) as worker:
        if cause == "link_disabled":
            sim.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's connection")
            sim.fault("disconnect", reason="link_disabled")
        assert worker.wait(timeout=15) == 3
    (event,) = events_of(simulator)  # sent before the exit, not lost with the process
    assert event["level"] == "fatal" and cause in event["message"]
    assert event["tags"]["report"] == "fatal" and event["tags"]["connection"] == "c0"


def test_a_reply_slack_refuses_for_good_is_one_event_without_its_text(
        simulator: SimulatorProcess, tmp_path: Path) -> None:
    from buidl_edge.api.bot import GREETING

    sim = simulator.client
    sim.configure(post_errors={"C0GONE": "channel_not_found"})
    with start_worker(simulator, tmp_path) as worker:
        sim.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's connection")
        [key] = [e["key"] for e in sim.inject("app_mention", channel="C0GONE", text="<@U0BUIDL> hi")]
        sim.wait_for(lambda s: s["sentry_events"] >= 1, 10, "the outbox failure")
        assert worker.stop() == 0
    (event,) = events_of(simulator)
    assert event["tags"]["report"] == "outbox_failure" and event["tags"]["slack_error"] == "channel_not_found"
    assert event["tags"]["channel"] == "C0GONE"
    assert event["tags"]["envelope_id"] in sim.state()["events"][key]["envelope_ids"]
    assert GREETING not in json.dumps(event["event"])


STORE_AND_OUTBOX_SCRIPT = '''
from gevent import monkey
monkey.patch_all()

from buidl_edge.api.app import EdgeApp
from buidl_edge.dispatch.dispatcher import Dispatcher
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.observability.sentry import flush_sentry, init_sentry, report_outbox_failure
from buidl_edge.store.errors import StoreError
from buidl_edge.store.memory import MemoryStore
from buidl_edge.store.health import StoreHealth


class FailingStore(MemoryStore):
    """The real in-memory store, with a switch that makes claims fail like a broken disk."""
    failing = True

    def claim(self, envelope, owner):
        if self.failing:
            raise StoreError("disk I/O error")
        return super().claim(envelope, owner)


assert init_sentry()
store = FailingStore()
clock = [0.0]
health = StoreHealth(clock=lambda: clock[0])  # the worker's one, shared by dispatcher, outbox and chores
dispatcher = Dispatcher(EdgeApp(), store, None, "test-owner", 2.5, None, health=health)
envelope = lambda i: Envelope("events_api", f"env{i}", {"event_id": f"Ev{i}", "event": {"type": "message"}})
for i in range(3):
    dispatcher.claims.within_bound([envelope(i)], lambda e, new: None)  # one episode of failures
assert health.degraded
store.failing = False
clock[0] += 5.0
health.wrote()                          # the worker's heartbeat got through: the episode is over
assert not health.degraded
dispatcher.claims.within_bound([envelope(10)], lambda e, new: None)
store.failing = True
for i in range(20, 23):
    dispatcher.claims.within_bound([envelope(i)], lambda e, new: None)  # a second episode
report_outbox_failure({"id": 7, "channel": "C0GONE", "error": "channel_not_found", "attempts": 1,
                       "envelope_id": "env3", "text": "a private reply", "blocks": None})
flush_sentry()
'''


def test_store_failures_once_per_episode_and_outbox_failures_without_their_text(
        simulator: SimulatorProcess, tmp_path: Path) -> None:
    env = worker_env(simulator.api_url, SENTRY_DSN=simulator.sentry_dsn(), BUIDL_STATE_DIR=tmp_path)
    result = subprocess.run([sys.executable, "-c", STORE_AND_OUTBOX_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    store_events = events_of(simulator, "store_failure")
    assert len(store_events) == 2, [e["message"] for e in store_events]
    assert all(e["tags"]["store_operation"] == "claim" and e["exception_type"] == "StoreError"
               for e in store_events)
    (outbox,) = events_of(simulator, "outbox_failure")
    assert outbox["message"] == "reply to C0GONE failed for good: channel_not_found"
    assert outbox["tags"]["slack_error"] == "channel_not_found" and outbox["tags"]["envelope_id"] == "env3"
    assert "a private reply" not in json.dumps(outbox["event"])


# -- the ingestion endpoint itself ----------------------------------------------------------------


def test_the_endpoint_reads_gzip_envelopes_and_store_posts(simulator: SimulatorProcess) -> None:
    base = f"{simulator.base_url}/api/42"
    auth = {"X-Sentry-Auth": "Sentry sentry_version=7, sentry_key=abc123"}
    event = {"event_id": "a" * 32, "level": "error", "message": "hello", "tags": {"k": "v"}}
    payload = json.dumps(event).encode()
    body = b"\n".join([json.dumps({"event_id": "a" * 32}).encode(),
                       json.dumps({"type": "event", "length": len(payload)}).encode(), payload,
                       json.dumps({"type": "client_report"}).encode(), b"{}"])
    resp = requests.post(f"{base}/envelope/", data=gzip.compress(body),
                         headers={**auth, "Content-Encoding": "gzip"}, timeout=5)
    assert resp.status_code == 200 and resp.json() == {"id": "a" * 32}
    resp = requests.post(f"{base}/store/", data=json.dumps({**event, "event_id": "b" * 32}), headers=auth, timeout=5)
    assert resp.status_code == 200
    assert requests.post(f"{base}/envelope/", data=body, timeout=5).status_code == 401  # no key
    bad = requests.post(f"{base}/envelope/", data=b"\x1f\x8bnot gzip", headers={**auth, "Content-Encoding": "gzip"},
                        timeout=5)
    assert bad.status_code == 400
    listing = simulator.client.sentry()
    assert listing["count"] == 2 and listing["rejected"] == 2
    assert [(e["event_id"], e["project"], e["message"], e["tags"]) for e in listing["events"]] == [
        ("a" * 32, "42", "hello", {"k": "v"}), ("b" * 32, "42", "hello", {"k": "v"})]
    assert simulator.client.summary()["sentry_events"] == 2
    simulator.client.reset()
    assert simulator.client.sentry()["count"] == 0


def test_envelope_items_with_and_without_length() -> None:
    body = b'{"event_id":"x"}\n{"type":"event","length":9}\n{"a":"\n"}\n{"type":"attachment"}\nraw line\n'
    assert parse_envelope(body) == [({"type": "event", "length": 9}, b'{"a":"\n"}'),
                                    ({"type": "attachment"}, b"raw line")]


def test_sentry_settings_from_the_environment() -> None:
    assert sentry_options({}) is None
    options = sentry_options({"SENTRY_DSN": "https://k@o1.ingest.example/5", "SENTRY_SAMPLE_RATE": "0.25",
                              "SOURCE_VERSION": "abc", "SENTRY_ENVIRONMENT": "prod"})
    assert options is not None
    assert (options.sample_rate, options.release, options.environment) == (0.25, "abc", "prod")
    assert options.include_local_variables is False
    options = sentry_options({"SENTRY_DSN": "https://k@o1.ingest.example/5", "SENTRY_RELEASE": "v1",
                              "HEROKU_SLUG_COMMIT": "def", "SENTRY_SAMPLE_RATE": "7", "SENTRY_INCLUDE_LOCALS": "1"})
    assert options is not None
    assert (options.release, options.sample_rate, options.include_local_variables) == ("v1", 1.0, True)
    options = sentry_options({"SENTRY_DSN": "https://k@o1.ingest.example/5", "HEROKU_SLUG_COMMIT": "def"})
    assert options is not None and options.release == "def"


def test_no_dsn_means_no_sentry_at_all(simulator: SimulatorProcess, tmp_path: Path) -> None:
    env = worker_env(simulator.api_url, BUIDL_APP=DEMO_APP, BUIDL_STATE_DIR=tmp_path / "state")
    with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
        simulator.client.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's connection")
        simulator.client.inject("message", channel="C0X", text=FAIL_WORD)
        wait_until(lambda: "handler deliberately_failing failed" in worker.output(), 10, "the handler error")
        # The stop flushes Sentry before the exit: an event the error made would have reached it then.
        assert worker.stop() == 0
    assert simulator.client.sentry()["envelopes"] == 0
    assert "Sentry on" not in worker.output()


def test_sentry_dsn_checked_at_start_without_echoing_it(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        from buidl_edge.observability.logs import setup_logging
        from buidl_edge.observability.sentry import init_sentry
        setup_logging()
        print("enabled:", init_sentry())
    """)
    env = {**os.environ, "SENTRY_DSN": "not a dsn sekrit-value"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert "enabled: False" in result.stdout and "SENTRY_DSN is not a valid DSN" in result.stdout
    assert "sekrit" not in result.stdout + result.stderr
