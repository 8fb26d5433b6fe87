"""A stock Bolt for Python app (tests/bolt_app.py) run unchanged as BUIDL_APP by a real worker
against the simulator (issue 24).

Ported from bolt-python's own tests as scenarios through a transport: its Socket Mode adapter's
(tests/adapter_tests/socket_mode/: a shortcut, a slash command with accepts_response_payload, a
message event with retry_attempt=1, a lazy listener) and its scenario tests for Socket Mode and the
Assistant (middleware and a middleware skip, self events ignored, assistant thread started, a user
message, message_changed ignored). What is asserted is what the simulator saw: acks, ack payloads
and what the app's listeners posted.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from buidl_edge.sandbox.harness import wait_until
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from buidl_edge.store.sqlite import SqliteStore
from support import Workers, log_lines, wait_acked, wait_idle

pytestmark = pytest.mark.timeout(120)

TESTS_DIR = Path(__file__).resolve().parent
BOT_USER = "U0BUIDL"  # the simulator's bot user: what auth.test tells Bolt it is


@pytest.fixture(scope="module")
def bolt(shared_simulator: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    workers = Workers(shared_simulator, tmp_path_factory.mktemp("bolt"), app_dir=TESTS_DIR,
                      SENTRY_DSN=shared_simulator.sentry_dsn(), BUIDL_HUB_BLOCK_WARN_S="0.3")
    workers.start("bolt_app:app")
    try:
        yield workers
    finally:
        workers.stop_all()


def posted(bolt: Workers, channel: str) -> list[str]:
    return [m["text"] for m in bolt.client.state()["messages"] if m["channel"] == channel]


def wait_posted(bolt: Workers, channel: str, count: int = 1) -> list[str]:
    return wait_until(lambda: len(got := posted(bolt, channel)) >= count and got, 20,
                      f"{count} message(s) in {channel}")


def acked(bolt: Workers, key: str) -> dict[str, Any]:
    return wait_acked(bolt.client, [key])["events"][key]


def acks_of(bolt: Workers, key: str) -> int:
    return sum(1 for ack in bolt.client.state()["acks"] if ack["key"] == key)


def test_the_worker_says_it_runs_a_bolt_app(bolt: Workers) -> None:
    (worker,) = bolt.started
    assert log_lines(worker, r"worker up: 1 connection, Bolt App 'bolt_app.py' \(slack_bolt [\d.]+\)")


def test_check_recognises_the_bolt_app_and_says_what_run_will_run(bolt: Workers) -> None:
    env = {**bolt.env(BUIDL_APP="bolt_app:app"), "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)])}
    result = subprocess.run([sys.executable, "-m", "buidl_edge", "check"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"app ok: bolt_app:app imports \(Bolt App 'bolt_app.py' \(slack_bolt [\d.]+\), "
                     r"\d+ listener\(s\)\); `run` runs it in-process behind buidl-edge's links", result.stdout), \
        result.stdout


# ---------------------------------------------------------------- Bolt's Socket Mode adapter tests


def test_a_shortcut_reaches_its_listener(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("shortcut", callback_id="do-something", user="U0SHORT")
    assert acked(bolt, sent["key"])["ack_payloads"] == []
    assert wait_posted(bolt, "C0SHORTCUT") == ["shortcut by U0SHORT"]


def test_a_slash_command_that_accepts_a_payload_and_acks_plainly_runs_its_listener(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("slash_command", command="/hello-socket-mode", channel="C0HELLO")
    assert acked(bolt, sent["key"])["ack_payloads"] == []
    assert wait_posted(bolt, "C0HELLO") == ["hello from a slash command"]


def test_a_message_delivered_as_retry_1_shows_slacks_retry_headers_to_the_listener(bolt: Workers) -> None:
    bolt.client.inject("message", text="retry-check", channel="C0RETRY", retry_attempt=1, retry_reason="timeout")
    assert wait_posted(bolt, "C0RETRY") == ["retry-num ['1'] reason ['timeout']"]


def test_respond_posts_to_the_commands_response_url(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("slash_command", command="/private", text="secret plans", channel="C0RESPOND")
    assert acked(bolt, sent["key"])["ack_payloads"] == []
    responses = wait_until(lambda: [r for r in bolt.client.state()["responses"] if r["channel"] == "C0RESPOND"], 20,
                           "the response_url post")
    assert [(r["text"], r["response_type"]) for r in responses] == [("only you see: secret plans", "ephemeral")]


def test_a_lazy_listener_runs_after_a_plain_ack(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("slash_command", command="/lazy", channel="C0LAZY")
    assert acked(bolt, sent["key"])["ack_payloads"] == []
    assert wait_posted(bolt, "C0LAZY") == ["lazy listener ran for /lazy"]


# ---------------------------------------------------------------- ack payloads


def test_a_commands_ack_text_rides_on_the_ack(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("slash_command", command="/echo", text="ping 42")
    state = acked(bolt, sent["key"])
    assert state["ack_payloads"] == [{"text": "echo: ping 42"}]
    assert state["first_ack_latency_ms"] < 3000  # Slack's deadline


def test_a_view_submissions_response_action_errors_rides_on_the_ack(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("view_submission", callback_id="survey")
    assert acked(bolt, sent["key"])["ack_payloads"] == [
        {"response_action": "errors", "errors": {"answer": "Say a little more"}}]


def test_an_options_requests_options_ride_on_the_ack(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("block_suggestion", action_id="pick-one", text="abc")
    assert acked(bolt, sent["key"])["ack_payloads"] == [
        {"options": [{"text": {"type": "plain_text", "text": "ABC"}, "value": "v1"}]}]


def test_a_request_no_listener_matches_is_acked_plainly(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("view_submission", callback_id="nobody-listens")
    assert acked(bolt, sent["key"])["ack_payloads"] == []


# ---------------------------------------------------------------- Bolt's scenario tests


def test_global_middleware_runs_before_the_listener(bolt: Workers) -> None:
    bolt.client.inject("app_mention", text="<@U0BUIDL> hello", channel="C0MIDDLE")
    assert wait_posted(bolt, "C0MIDDLE") == ["bolt heard: <@U0BUIDL> hello (tagged yes)"]


def test_a_listener_middleware_that_skips_keeps_the_listener_from_running(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("message", text="skip-me", channel="C0SKIP")
    bolt.client.inject("message", text="retry-check", channel="C0SKIP")  # after it, on the same link
    wait_posted(bolt, "C0SKIP")
    wait_idle(bolt.client, *bolt.started)
    assert acked(bolt, sent["key"])["acked"] and posted(bolt, "C0SKIP") == ["retry-num ['0'] reason ['']"]


def test_the_bots_own_messages_are_ignored(bolt: Workers) -> None:
    bolt.client.inject("message", text="self-check", user=BOT_USER, channel="C0SELF")
    bolt.client.inject("message", text="retry-check", channel="C0SELF")
    wait_posted(bolt, "C0SELF")
    wait_idle(bolt.client, *bolt.started)
    assert posted(bolt, "C0SELF") == ["retry-num ['0'] reason ['']"]


def test_the_assistant_answers_thread_started_and_a_user_message_and_ignores_message_changed(
        bolt: Workers) -> None:
    thread = {"channel": "D0BOLTASSIST", "thread_ts": "1726133698.626339"}
    bolt.client.inject("assistant_thread_started", **thread)
    wait_posted(bolt, thread["channel"])
    assistant = bolt.client.state()["assistant"]
    assert [p["prompts"] for p in assistant["prompts"] if p["channel_id"] == thread["channel"]] == [
        [{"title": "Review", "message": "Review my branch"}]]
    bolt.client.inject("message", text="what now", channel_type="im", **thread)
    bolt.client.inject("message", subtype="message_changed", text="what now?", channel_type="im", **thread)
    wait_posted(bolt, thread["channel"], 2)
    wait_idle(bolt.client, *bolt.started)
    assert posted(bolt, thread["channel"]) == ["How can I help?", "You asked: what now"]
    statuses = [s["status"] for s in bolt.client.state()["assistant"]["statuses"]
                if s["channel_id"] == thread["channel"] and s["by"] == "set_status"]
    assert statuses == ["is thinking…"]


def test_say_stream_streams_an_answer_through_the_apps_own_client(bolt: Workers) -> None:
    probe = requests.post(bolt.sim.api_url + "chat.startStream", timeout=10).json()
    if probe.get("error") == "unknown_method":
        pytest.skip("this simulator has no chat.startStream yet (it comes with streamed answers, issue 25)")
    bolt.client.inject("message", text="stream-me", channel="C0STREAM", thread_ts="1726133698.1")

    def stopped() -> list[dict[str, Any]]:
        return [s for s in bolt.client.state()["streams"] if s["channel"] == "C0STREAM" and s["state"] != "streaming"]

    (stream,) = wait_until(stopped, 20, "the listener's stream to stop")
    assert stream["text"] == "Streaming an answer." and stream["thread_ts"] == "1726133698.1"


# ---------------------------------------------------------------- buidl-edge's guarantees


def test_a_retry_of_a_handled_event_never_reaches_the_app_and_is_acked(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("app_mention", text="<@U0BUIDL> once", channel="C0ONCE")
    wait_posted(bolt, "C0ONCE")
    bolt.client.fault("redeliver", key=sent["key"])
    wait_until(lambda: acks_of(bolt, sent["key"]) >= 2, 10, "the retry's ack")
    wait_idle(bolt.client, *bolt.started)
    assert posted(bolt, "C0ONCE") == ["bolt heard: <@U0BUIDL> once (tagged yes)"]


def test_a_listener_exception_reaches_sentry_once_and_marks_the_inbox_row(bolt: Workers) -> None:
    (sent,) = bolt.client.inject("message", text="boom", channel="C0BOOM")
    bolt.client.fault("redeliver", key=sent["key"])  # a retry of the same event adds no report

    def reports() -> list[dict[str, Any]]:
        return [e for e in bolt.client.sentry()["events"] if e["tags"].get("slack_event_id") == sent["key"]]

    (report,) = wait_until(reports, 20, "the listener's Sentry report")
    assert report["tags"]["handler"] == "boom" and report["exception_type"] == "RuntimeError"
    wait_idle(bolt.client, *bolt.started)
    assert len(reports()) == 1
    store = SqliteStore(bolt.state_dir / "edge.sqlite3", checkpoint_interval_s=None)
    try:
        row = store.inbox_row(sent["envelope_id"])
    finally:
        store.close()
    assert row is not None and (row["state"], row["error"]) == ("failed", "RuntimeError")  # as an EdgeApp handler's


def test_a_listener_holding_the_hub_is_named(bolt: Workers) -> None:
    # 4 thresholds: a block is reported one to two thresholds in, and on a loaded machine the
    # watch's thread can be scheduled late; at 2 thresholds the report was missed 2 runs in 5.
    bolt.client.inject("message", text="spin 1.2", channel="C0SPIN")
    wait_posted(bolt, "C0SPIN")
    (worker,) = bolt.started
    assert wait_until(lambda: log_lines(worker, r"hub blocked for over 0.3s by Bolt listener spin \(envelope "), 10,
                      "the hub watch's warning")
