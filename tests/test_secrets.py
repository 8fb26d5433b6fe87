"""Tokens never reach a log line, the frame trace, the simulator's log or `config` output."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from buidl_edge.sandbox.harness import WorkerProcess, fake_tokens, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from support import assert_no_secret

pytestmark = pytest.mark.timeout(60)


def test_debug_run_logs_frames_but_no_token(simulator: SimulatorProcess, tmp_path: Path) -> None:
    sim = simulator.client
    tokens = fake_tokens()
    sim.configure(open_ratelimit={"count": 1, "retry_after": 1}, post_errors={"C0GONE": "channel_not_found"},
                  warning_close_delay=0.5, post_rate=100.0, post_burst=100)
    env = worker_env(simulator.api_url, tokens, WEBSOCKET_DEBUG="1", BUIDL_LOG_LEVEL="DEBUG",
                     BUIDL_STATE_DIR=tmp_path / "state", BUIDL_CONNECTIONS=2)
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log")
    with worker:
        sim.wait_for(lambda s: s["open_connections"] == 2, 15, "the worker's connections")
        injected = sim.inject("app_mention", channel="C0SEC", text="<@U0BUIDL> hi")
        injected += sim.inject("app_mention", channel="C0GONE", text="<@U0BUIDL> hi")  # reply refused
        injected += sim.inject("slash_command", command="/buidl", text="help")
        injected += sim.inject("file_shared", channel="C0SEC", file_name="keys.txt")
        # Someone pastes both tokens into a channel: the trace shows that frame, masked.
        pasted = f"oops: {tokens['SLACK_APP_TOKEN']} and {tokens['SLACK_BOT_TOKEN']}"
        injected += sim.inject("message", channel="C0PASTE", text=pasted)
        # Acked before the drop: Slack does not redeliver a slash command lost with its link.
        sim.wait_for(lambda s: all(s["events"][e["key"]]["acked"] for e in injected), 15, "events acked",
                     source="state")
        sim.fault("bad_frame", text="{not json", target="oldest")
        sim.fault("disconnect", reason="warning", target="oldest")  # a new link: a new ticket URL
        sim.fault("drop", target="newest")
        injected += sim.inject("message", channel="C0SEC", text="after the drop")
        sim.wait_for(lambda s: all(s["events"][e["key"]]["acked"] for e in injected), 15, "every event acked",
                     source="state")
        sim.wait_for(lambda s: s["messages_posted"] >= 2 and s["post_errors"] >= 1, 10, "replies attempted")
        assert worker.stop() == 0
    output = worker.output()
    # The trace really ran: frames in and acks out, with their payloads.
    frames = [line for line in output.splitlines() if "logger=buidl_edge.frames" in line]
    assert any('msg="in {' in line and "envelope_id" in line for line in frames), output[-3000:]
    assert any('msg="out {' in line and "envelope_id" in line for line in frames)
    assert any("not json" in line for line in frames)
    assert any("oops: xapp-[redacted] and xoxb-[redacted]" in line for line in frames)
    assert "rate limited" in output and "channel_not_found" in output
    assert_no_secret(output, tokens, "the worker log")
    assert not re.search(r"ticket=(?!\[redacted\])", output)
    assert_no_secret(simulator.log_tail(10**7), tokens, "the simulator log")


def test_fatal_run_says_why_without_the_token(simulator: SimulatorProcess, tmp_path: Path) -> None:
    tokens = fake_tokens()
    simulator.client.configure(open_error="invalid_auth")
    env = worker_env(simulator.api_url, tokens, WEBSOCKET_DEBUG="1", BUIDL_LOG_LEVEL="DEBUG",
                     BUIDL_STATE_DIR=tmp_path / "state")
    with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
        assert worker.wait(timeout=15) == 3
    output = worker.output()
    assert "invalid_auth" in output
    assert_no_secret(output, tokens, "the worker log")
    assert_no_secret(simulator.log_tail(10**7), tokens, "the simulator log")


@pytest.mark.parametrize("as_json", [False, True])
def test_config_command_masks_tokens(tmp_path: Path, as_json: bool) -> None:
    tokens = fake_tokens()
    env = worker_env("http://127.0.0.1:9/api/", tokens, BUIDL_STATE_DIR=tmp_path / "state")
    args = [sys.executable, "-m", "buidl_edge", "config"] + (["--json"] if as_json else [])
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert_no_secret(output, tokens, "config output")
    app_tail, bot_tail = tokens["SLACK_APP_TOKEN"][-4:], tokens["SLACK_BOT_TOKEN"][-4:]
    if as_json:
        values = json.loads(result.stdout)
        assert values["app_token"] == f"xapp-…{app_tail}" and values["bot_token"] == f"xoxb-…{bot_tail}"
        assert values["api_url"] == "http://127.0.0.1:9/api/"
    else:
        assert re.search(rf"^app_token\s+xapp-…{app_tail}$", result.stdout, re.M), result.stdout
        assert re.search(rf"^bot_token\s+xoxb-…{bot_tail}$", result.stdout, re.M), result.stdout
