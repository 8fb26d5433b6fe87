"""What gevent's hub monitor costs a worker: throughput with BUIDL_HUB_BLOCK_WARN_S on and off.

    .venv/bin/python scripts/bench_hubwatch.py            # 3 interleaved runs each, 8,000 events
    .venv/bin/python scripts/bench_hubwatch.py --runs 1 --count 3000
    .venv/bin/python scripts/bench_hubwatch.py --switches   # the tracer's cost per greenlet switch, in process

One worker (memory:// store, so the store does not dominate; no-op handler) against
a fresh simulator per run; the simulator pushes `--count` events, at most
`--window` unacked, and reports acked/s. Prints each run and the medians.
The monitor's steady cost is gevent's trace function, called on every greenlet
switch: `--switches` times 400,000 `gevent.sleep(0)` round trips without and with it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(ROOT))

from buidl_edge.sandbox.harness import WorkerProcess, worker_env  # noqa: E402
from buidl_edge.sandbox.simulator.client import SimulatorProcess  # noqa: E402


def one_run(threshold: str, count: int, window: int) -> float:
    with SimulatorProcess() as sim:
        env = worker_env(sim.api_url, BUIDL_APP="edge_apps:bench", BUIDL_LOG_LEVEL="WARNING",
                         BUIDL_STORE_URL="memory://", BUIDL_HUB_BLOCK_WARN_S=threshold,
                         PYTHONPATH=os.pathsep.join(filter(None, [str(SCRIPTS), str(ROOT),
                                                                  os.environ.get("PYTHONPATH")])))
        with WorkerProcess(env) as worker:
            sim.client.wait_for(lambda s: s["open_connections"] == 1, 20, "the worker's connection")
            sim.client.load("window", count=count, window=window, timeout=120)
            while sim.client.load_status(brief=True)["state"] == "running":
                time.sleep(0.1)
            status = sim.client.load_status()
            if "hub blocked" in worker.output():
                print(f"  (threshold {threshold}: the worker reported hub blocking)")
        if status["state"] != "done":
            raise SystemExit(f"load did not finish: {status['state']}")
        return float(status["acked_per_s"])


def switch_cost(rounds: int = 5) -> None:
    import gevent

    from buidl_edge.runtime.hubwatch import HubWatch

    def measure() -> float:
        def spinner() -> None:
            for _ in range(100_000):
                gevent.sleep(0)
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(spinner) for _ in range(4)])
        return time.perf_counter() - started

    off = statistics.median(measure() for _ in range(rounds))
    watch = HubWatch(0.5, lambda greenlet: None).start()
    on = statistics.median(measure() for _ in range(rounds))
    watch.stop()
    per_switch_us = (on - off) / 800_000 * 1e6  # each sleep(0) is two switches (to the hub and back)
    print(f"400,000 sleep(0): {off:.3f}s without the monitor, {on:.3f}s with it ({per_switch_us:.2f} µs a switch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=8000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--switches", action="store_true", help="only the per-switch cost, in process")
    args = parser.parse_args()
    if args.switches:
        switch_cost()
        return
    results: dict[str, list[float]] = {"0.5": [], "0": []}
    for run in range(args.runs):
        for threshold in results:  # interleaved, so drift on the machine hits both alike
            rate = one_run(threshold, args.count, args.window)
            results[threshold].append(rate)
            print(f"run {run + 1}: BUIDL_HUB_BLOCK_WARN_S={threshold:<3}  {rate:,.0f} acked/s")
    on, off = statistics.median(results["0.5"]), statistics.median(results["0"])
    print(f"median: monitor on {on:,.0f} acked/s, off {off:,.0f} acked/s ({(on / off - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
