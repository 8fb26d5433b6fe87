"""`buidl-edge demo` as a new user runs it: a subprocess, exit code and summary table."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

SUMMARY_KEYS = ("events sent", "events acked", "answers due", "replies due", "handled once",
                "duplicates suppressed", "replies posted", "unexpected replies", "mentions",
                "reactions via ctx.client", "answers via ctx.respond", "reconnects",
                "ack latency p50 ms", "ack latency p99 ms", "worker exit code")


def parse_summary(output: str) -> dict[str, str]:
    lines = output.splitlines()
    start = lines.index("summary")
    table: dict[str, str] = {}
    for line in lines[start + 1:]:
        match = re.match(r"^  (\S.*?)\s{2,}(\S.*)$", line)
        if not match:
            break
        table[match.group(1)] = match.group(2)
    return table


def test_demo_exits_0_with_every_event_acked_and_handled_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BUIDL_", "SENTRY_"))}
    env["BUIDL_STATE_DIR"] = str(tmp_path / "state")  # never the repository's own .buidl
    # (a demo that hangs fails on the timeout)
    result = subprocess.run([sys.executable, "-m", "buidl_edge", "demo"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # It shows progress as it goes, numbered steps covering the script.
    steps = re.findall(r"^  \[\d+\] (.*)$", result.stdout, re.M)
    script = " ".join(steps)
    for topic in ("mention", "shares", "/buidl", "response_url", "ctx.client", "redelivers", "warns", "drops"):
        assert topic in script, steps
    summary = parse_summary(result.stdout)
    assert set(SUMMARY_KEYS) <= summary.keys(), summary
    n = summary
    assert int(n["events sent"]) > 0 and n["events acked"] == n["events sent"]
    assert n["handled once"] == n["answers due"] and int(n["answers due"]) > 0
    assert n["replies posted"] == n["replies due"]
    assert int(n["duplicates suppressed"]) >= 1
    assert int(n["mentions"]) > 0 and n["reactions via ctx.client"] == n["mentions"]  # one :eyes: per mention
    assert n["answers via ctx.respond"] == "1"
    assert int(n["reconnects"]) >= 2  # the warning refresh and the abrupt drop
    assert n["unexpected replies"] == "0" and n["worker exit code"] == "0"
    assert float(n["ack latency p50 ms"]) <= float(n["ack latency p99 ms"]) < 3000
    assert result.stdout.rstrip().endswith("PASS: every event acked and handled exactly once")
    assert "Traceback" not in output
