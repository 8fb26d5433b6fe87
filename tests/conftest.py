from __future__ import annotations

from typing import Iterator

import pytest

from buidl_edge.simulator.client import SimulatorProcess


@pytest.fixture
def simulator() -> Iterator[SimulatorProcess]:
    """A real fake-Slack process on a free loopback port, stopped after the test."""
    with SimulatorProcess() as sim:
        yield sim
