"""Fixtures of the in-process tests: Worker, ConnectionSlot, Outbox, SlotGate and GroupCommit built
from their real parts, in this (gevent-patched) process, against the real simulator process.

Only run.py may collect this folder (tests/conftest.py keeps the suite's own processes out).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import monkey

from buidl_edge.config import Settings, load_settings
from buidl_edge.sandbox.harness import worker_env
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess

if not monkey.is_module_patched("socket"):
    raise pytest.UsageError("tests/inprocess/ runs only gevent-patched: python tests/inprocess/run.py "
                            "(tests/test_inprocess.py starts it)")

# Longer than any test here should take: the failure names where the test was stuck.
HANG_LIMIT_S = 60.0
# Test-sized timings, as the subprocess tests give their workers.
QUICK = {"BUIDL_PING_INTERVAL": 1, "BUIDL_STALE_TIMEOUT": 3, "BUIDL_DRAIN_TIMEOUT": 5}


@pytest.fixture(autouse=True)
def hang_limit() -> Iterator[None]:
    """A hang fails the test where it waits, with a traceback (raised in this greenlet)."""
    with gevent.Timeout(HANG_LIMIT_S, AssertionError(f"test still running after {HANG_LIMIT_S:.0f}s")):
        yield


@pytest.fixture
def sim(fresh_simulator: SimulatorProcess) -> SimulatorClient:
    return fresh_simulator.client


@pytest.fixture
def settings_for(fresh_simulator: SimulatorProcess, tmp_path: Path) -> Callable[..., Settings]:
    """Settings as a worker started with `worker_env(...)` would load them, aimed at the simulator."""

    def make(**env: Any) -> Settings:
        return load_settings(worker_env(fresh_simulator.api_url, BUIDL_STATE_DIR=tmp_path / "state",
                                        **{**QUICK, **env}))

    return make


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[logging.LogRecord]]:
    """Our log records (INFO and up) whose message template starts with `prefix`, in order: their
    `args` are the figures a test checks (a backoff's delay, an attempt's number)."""
    caplog.set_level(logging.INFO, logger="buidl_edge")
    return lambda prefix: [r for r in caplog.records if str(r.msg).startswith(prefix)]
