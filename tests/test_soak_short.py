"""The short fault soak: the real stack (supervisord, 2 workers x 2 connections) under fire.

scripts/soak.py is the full version (10,000 events); these run it at 1,000 and
600 events. Every fault kind goes off at least once in the first test, except
SIGKILL, which has a test of its own: a SIGKILL can land between a handler's
effect and its inbox row being marked done, and then the handler runs again.
That window is asserted to be the *only* way to a second run; a reply posted
just before a kill is found in the channel and not posted again.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import soak  # noqa: E402

pytestmark = pytest.mark.timeout(150)


def _run(cfg: soak.SoakConfig) -> dict[str, Any]:
    lines: list[str] = []
    report = soak.run_soak(cfg, echo=lines.append)
    soak.print_report(report, echo=lines.append)
    print("\n".join(lines))  # shown by pytest when an assertion fails
    return report


def _cleanup(report: dict[str, Any]) -> None:
    shutil.rmtree(report["work_dir"], ignore_errors=True)


def test_every_fault_but_sigkill_loses_doubles_and_leaks_nothing() -> None:
    cfg = soak.SoakConfig(events=1000, rate=100, scale=0.1, seed=7, counts={"kill": 0}, drain_timeout=60)
    report = _run(cfg)
    assert report["events_sent"] == 1000
    assert report["events_handled"] == 1000
    assert report["lost"] == 0
    assert report["handled_twice"] == 0
    assert report["acks_missed"] == 0
    assert report["replies_lost"] == 0
    assert report["replies_doubled"] == 0
    assert report["replies_with_wrong_text"] == 0
    assert report["tokens_leaked"] == 0
    assert report["stack_exit_code"] == 0
    injected = report["faults_injected"]
    for kind in ("drop", "silence", "disconnect", "redeliver", "ack_delay", "bad_frame", "post_storm", "open_storm"):
        assert injected.get(kind, 0) >= 1, f"{kind} never went off: {injected}"
    sim = report["simulator"]
    assert sim["bad_frames"] == 0  # the workers never sent the simulator a bad frame back
    assert sim["post_429s"] > 0 and sim["open_429s"] > 0  # the storms really hit
    assert report["ok"], report["failures"]
    _cleanup(report)


def test_sigkill_is_the_only_way_to_a_second_run_or_post() -> None:
    cfg = soak.SoakConfig(events=600, rate=60, seed=11, tolerate_kill_window=True, drain_timeout=60,
                          counts={k: 0 for k in soak.FAULT_COUNTS} | {"kill": 2})
    report = _run(cfg)
    assert report["faults_injected"].get("kill", 0) >= 1
    assert report["events_handled"] == report["events_sent"] == 600
    assert report["lost"] == 0
    assert report["acks_missed"] == 0
    assert report["replies_lost"] == 0
    assert report["handled_twice_unexplained"] == 0
    assert report["replies_doubled"] == 0
    assert report["tokens_leaked"] == 0
    assert report["ok"], report["failures"]
    _cleanup(report)
