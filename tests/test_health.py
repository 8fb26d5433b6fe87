"""The optional HTTP endpoint (BUIDL_HTTP_PORT): /healthz, /readyz, /metrics, read as Prometheus would.

A real worker (and a real `run` stack) against the real simulator; the metrics text is parsed
with prometheus_client's own parser.
"""
from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from buidl_edge.sandbox.harness import WorkerProcess, wait_until, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> requests.Response | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except requests.ConnectionError:
        return None


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from /metrics."""
    response = get(port, "/metrics")
    assert response is not None and response.status_code == 200
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items()
               if n == name and all(dict(ls).get(k) == v2 for k, v2 in labels.items()))


def test_worker_serves_health_readiness_and_prometheus_metrics(fresh_simulator: SimulatorProcess,
                                                               tmp_path: Path) -> None:
    sim = fresh_simulator.client
    port = free_port()
    env = worker_env(fresh_simulator.api_url, BUIDL_HTTP_PORT=port, BUIDL_HTTP_HOST="127.0.0.1",
                     BUIDL_STATE_DIR=tmp_path / "state")
    with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
        wait_until(lambda: (r := get(port, "/healthz")) is not None and r.status_code == 200, 15, "/healthz")
        sim.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's link")
        wait_until(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 200, 10, "/readyz 200")
        events = sim.inject("message", count=5, text="hello")
        sim.fault("redeliver", key=events[0]["key"])
        sim.wait_for(lambda s: s["acked"] == 5 and s["acks_total"] == 6, 10, "6 acks")
        sim.fault("disconnect", reason="refresh_requested", target="oldest")
        sim.wait_for(lambda s: s["connections_opened"] == 2, 10, "the refreshed link")

        def with_reconnect() -> dict[Any, float] | None:
            found = samples(port)
            return found if total(found, "buidl_reconnects_total") else None

        found = wait_until(with_reconnect, 10, "a reconnect in the metrics")
        assert total(found, "buidl_envelopes_received_total") == 6
        assert total(found, "buidl_envelopes_acked_total") == 6
        assert total(found, "buidl_envelopes_duplicate_total") == 1
        assert total(found, "buidl_ack_latency_seconds_count") == 6
        assert total(found, "buidl_ack_latency_seconds_bucket", le="+Inf") == 6
        assert total(found, "buidl_reconnects_total", reason="refresh") == 1
        assert total(found, "buidl_connection_up") == 1
        assert total(found, "buidl_store_degraded") == 0
        assert ("buidl_outbox_depth", ()) in found
        nope = get(port, "/nope")
        assert nope is not None and nope.status_code == 404

        # No Slack link (every open refused, the link dropped): not ready, and it says why.
        sim.configure(open_error="internal_error")
        sim.fault("drop", target="all")
        def not_ready() -> dict[str, Any] | None:  # (a Response is falsy when not ok: return its body)
            response = get(port, "/readyz")
            return response.json() if response is not None and response.status_code == 503 else None

        assert wait_until(not_ready, 10, "/readyz 503")["reason"] == "no Slack link open"
        assert worker.stop() == 0
    assert get(port, "/healthz") is None  # gone with the worker


def test_worker_on_a_busy_port_cannot_start_and_says_so(fresh_simulator: SimulatorProcess, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = worker_env(fresh_simulator.api_url, BUIDL_HTTP_PORT=port, BUIDL_HTTP_HOST="127.0.0.1",
                         BUIDL_STATE_DIR=tmp_path / "state")
        worker = WorkerProcess(env, log_path=tmp_path / "worker.log")
        worker.start()
        assert worker.wait(timeout=20) == 3
    assert f"cannot listen on BUIDL_HTTP_PORT {port}" in worker.output()
    assert "Traceback" not in worker.output()


def test_run_serves_one_endpoint_for_every_worker_of_the_dyno(stacks: Any,
                                                              fresh_simulator: SimulatorProcess) -> None:
    port = free_port()
    stack = stacks(BUIDL_HTTP_PORT=port, BUIDL_HTTP_HOST="127.0.0.1").start()
    stack.wait_up(processes=2, connections=1)
    wait_until(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 200, 15, "/readyz 200")
    sim = fresh_simulator.client
    sim.inject("message", count=8, text="spread")
    sim.wait_for(lambda s: s["acked"] == 8, 10, "8 acks")

    def both_reported() -> dict[Any, float] | None:
        found = samples(port)
        per_process = {p: total(found, "buidl_envelopes_acked_total", process=p) for p in ("worker_00", "worker_01")}
        return found if sum(per_process.values()) == 8 and all(per_process.values()) else None

    found = wait_until(both_reported, 15, "both workers' acks in the dyno's metrics")
    assert total(found, "buidl_connection_up") == 2
    # Only the parent listens: the workers were not given the port.
    assert "cannot listen" not in stack.logs()
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(timeout=30) == 0
    assert get(port, "/healthz") is None


def test_run_refuses_an_endpoint_it_could_not_fill_with_memory_store(tmp_path: Path) -> None:
    from stack_support import cli, tokens_env

    env = tokens_env(tmp_path / "state", "http://127.0.0.1:9/api/", BUIDL_HTTP_PORT=free_port(),
                     BUIDL_STORE_URL="memory://")
    result = cli(env, "run")
    assert result.returncode == 1
    assert "BUIDL_HTTP_PORT under `run`" in result.stderr and "Traceback" not in result.stderr
