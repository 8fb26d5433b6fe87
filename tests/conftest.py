from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from buidl_edge.sandbox.simulator.client import SimulatorProcess
from stack_support import stacks  # noqa: F401  (the fixture, for every test module)

if TYPE_CHECKING:  # for the annotation only: the fixture imports it when it runs
    from redis_support import RedisServer

IN_PROCESS_DIR = Path(__file__).resolve().parent / "inprocess"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/inprocess/ runs only in a gevent-patched process of its own (test_inprocess.py starts
    it, tests/inprocess/run.py says why): never in an unpatched pytest process like this one."""
    if collection_path == IN_PROCESS_DIR and not gevent_patched():
        return True
    return None


def gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")  # not imported: certainly not patched
    return monkey is not None and bool(monkey.is_module_patched("socket"))


@pytest.fixture
def simulator() -> Iterator[SimulatorProcess]:
    """A real fake-Slack process on a free loopback port, stopped after the test."""
    with SimulatorProcess() as sim:
        yield sim


class SharedSimulator(SimulatorProcess):
    """A simulator that a whole test module shares, and the knobs it started with."""

    default_knobs: dict[str, Any]


@pytest.fixture(scope="module")
def shared_simulator() -> Iterator[SharedSimulator]:
    """One simulator for a whole test module; use `fresh_simulator` to get it clean per test."""
    with SharedSimulator() as started:
        assert isinstance(started, SharedSimulator)
        started.default_knobs = started.client.state()["knobs"]
        yield started


@pytest.fixture
def fresh_simulator(shared_simulator: SharedSimulator) -> Iterator[SimulatorProcess]:
    """The module's simulator with no links left open, counters cleared and knobs at their defaults."""
    sim = shared_simulator
    sim.client.wait_for(lambda s: s["open_connections"] == 0, 10, "links of the previous test to close")
    sim.client.configure(**sim.default_knobs)
    sim.client.reset()
    yield sim


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of our own on a free loopback port (no persistence), stopped at the end.

    Fails (does not skip) without redis-server: scripts/test installs Debian's package.
    """
    from redis_support import RedisServer

    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem of 4 MB (tmpfs), mounted for this test: CI runs as root."""
    from buidl_edge.sandbox.harness import small_filesystem

    with small_filesystem(tmp_path / "disk", "4m") as refused:
        if refused:
            pytest.skip(refused)
        yield tmp_path / "disk"
