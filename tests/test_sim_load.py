"""The simulator's load generator (simulator/load.py), driven by a bare acking client."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket

from buidl_edge.sandbox.harness import fake_tokens
from buidl_edge.sandbox.simulator.client import SimulatorError, SimulatorProcess

pytestmark = pytest.mark.timeout(60)


class Acker:
    """One link that acks every envelope it reads, on a thread of its own."""

    def __init__(self, sim: SimulatorProcess) -> None:
        token = fake_tokens()["SLACK_APP_TOKEN"]
        url = requests.post(sim.api_url + "apps.connections.open", headers={"Authorization": f"Bearer {token}"},
                            timeout=5).json()["url"]
        self.ws = websocket.create_connection(url, timeout=5)
        self.envelopes: list[dict] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        try:
            while True:
                text = self.ws.recv()
                frame = json.loads(text)
                if "envelope_id" in frame:
                    self.envelopes.append(frame)
                    self.ws.send(json.dumps({"envelope_id": frame["envelope_id"]}))
        except (websocket.WebSocketException, OSError, ValueError):
            pass

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def acked(simulator: SimulatorProcess) -> Iterator[tuple[SimulatorProcess, Acker]]:
    acker = Acker(simulator)
    simulator.client.wait_for(lambda s: s["open_connections"] == 1, 5, "the link")
    yield simulator, acker
    acker.close()


def wait_done(sim: SimulatorProcess, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while sim.client.load_status(brief=True)["state"] == "running":
        assert time.monotonic() < deadline, "load run did not finish"
        time.sleep(0.05)
    return sim.client.load_status()


def test_window_mode_sends_each_event_once_and_measures_acks(acked: tuple[SimulatorProcess, Acker]) -> None:
    sim, acker = acked
    started = sim.client.load("window", count=500, window=20)
    assert started["state"] == "running" and started["injected"] == 20  # never more than the window at once
    status = wait_done(sim)
    assert status["state"] == "done"
    assert status["injected"] == status["acked"] == 500
    assert status["acked_per_s"] > 0 and status["latency_ms"]["count"] == 500
    assert len(acker.envelopes) == 500
    event = acker.envelopes[0]["payload"]["event"]
    assert event["type"] == "message" and "<@" not in event["text"]  # no mention: no Web API work
    assert sim.client.summary()["acked"] == 500


def test_rate_mode_paces_and_channel_prefix_gives_each_event_a_channel(
        acked: tuple[SimulatorProcess, Acker]) -> None:
    sim, acker = acked
    t0 = time.monotonic()
    sim.client.load("rate", rate=200, duration=1.0, channel_prefix="CLOAD")
    status = wait_done(sim)
    assert status["state"] == "done" and status["acked"] == 200
    assert time.monotonic() - t0 >= 0.8  # paced over the 1 s asked for, not sent at once
    assert 150 <= status["offered_per_s"] <= 260
    channels = {e["payload"]["event"]["channel"] for e in acker.envelopes}
    assert channels == {f"CLOAD{i:06d}" for i in range(1, 201)}
    keys = sim.client.load_status(keys=True)["keys"]
    assert len(keys) == 200 and set(status["sample_keys"]) <= set(keys)


def test_finish_stops_injecting_and_reset_stops_a_run(acked: tuple[SimulatorProcess, Acker]) -> None:
    sim, _ = acked
    sim.client.load("rate", rate=100, count=100_000)
    time.sleep(0.3)
    sim.client.load("finish")
    status = wait_done(sim, timeout=10)
    assert status["state"] == "done" and status["acked"] == status["injected"] < 100
    sim.client.load("rate", rate=100, count=100_000)
    sim.client.reset()
    assert sim.client.load_status()["state"] == "stopped"


def test_a_run_without_acks_times_out(simulator: SimulatorProcess) -> None:
    simulator.client.load("window", count=10, window=5, timeout=0.5)  # no client: nothing is ever acked
    status = wait_done(simulator, timeout=5)
    assert status["state"] == "timeout" and status["acked"] == 0


def test_bad_load_requests_are_refused(simulator: SimulatorProcess) -> None:
    refused: list[dict[str, Any]] = [
        {"mode": "burst"}, {"mode": "window", "count": 10}, {"mode": "rate", "count": 5},
        {"mode": "window", "count": 0, "window": 1}, {"mode": "rate", "rate": "fast", "count": 1}]
    for params in refused:
        mode = params.pop("mode")
        with pytest.raises(SimulatorError):
            simulator.client.load(mode, **params)


def test_oldest_open_target_skips_links_already_warned(acked: tuple[SimulatorProcess, Acker]) -> None:
    sim, _ = acked
    sim.client.configure(warning_close_delay=5.0)
    assert sim.client.fault("disconnect", reason="warning", target="oldest_open")["connections"]
    with pytest.raises(SimulatorError, match="HTTP 400"):  # the only link is warned: nothing to refresh
        sim.client.fault("disconnect", reason="warning", target="oldest_open")
