#!/usr/bin/env python
"""Streamed answers (`ctx.stream`) against the bundled simulator, with Slack's default limits
(appendStream 100 a minute, start/stopStream 20 a minute, as the simulator enforces them).

    .venv/bin/python scripts/bench_streams.py            # also: scripts/bench.py --streams

- appends sent per 1,000 appended pieces: one answer of 1,000 pieces over about 10 s;
- 429s per stream with 6 and with 20 answers streaming at once (200 pieces over about 6 s each);
- the added latency from an `append` to its text reaching the simulator (p50/p99), read from
  the one-stream run: each piece carries the time it was appended, the simulator records when
  each call arrived (one clock: both run on this machine).
"""
from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from buidl_edge.sandbox.harness import WorkerProcess, worker_env  # noqa: E402
from buidl_edge.sandbox.simulator.client import SimulatorProcess  # noqa: E402

# "N GAP": N pieces GAP seconds apart, each "[i@<epoch seconds appended>]".
APP = textwrap.dedent('''
    import time
    from buidl_edge import EdgeApp

    app = EdgeApp("bench-streams")

    @app.event("app_mention")
    def answer(event, ctx):
        count, gap = event["text"].split()
        with ctx.stream() as stream:
            for i in range(int(count)):
                stream.append(f"[{i}@{time.time():.6f}]")
                time.sleep(float(gap))
''')
PIECE = re.compile(r"\[(\d+)@(\d+\.\d+)\]")


def _answers(sim: SimulatorProcess, count: int, timeout: float) -> list[dict[str, Any]]:
    state = sim.client.wait_for(lambda s: sum(st["state"] == "stopped" for st in s["streams"]) >= count,
                                timeout, f"{count} answers", source="state")
    return list(state["streams"])


def _run(concurrent: int, pieces: int, gap: float, timeout: float) -> dict[str, Any]:
    """`concurrent` answers at once on one worker; what the simulator saw."""
    with tempfile.TemporaryDirectory() as app_dir, SimulatorProcess() as sim:
        Path(app_dir, "bench_stream_app.py").write_text(APP)
        env = worker_env(sim.api_url, BUIDL_APP="bench_stream_app:app", BUIDL_LOG_LEVEL="WARNING",
                         PYTHONPATH=os.pathsep.join([app_dir, str(ROOT)]))
        worker = WorkerProcess(env).start()
        try:
            sim.client.wait_for(lambda s: s["open_connections"] >= 1, 20, "the worker's link")
            started = time.monotonic()
            for n in range(concurrent):
                sim.client.inject("app_mention", channel=f"C0BENCH{n}", text=f"{pieces} {gap}")
            streams = _answers(sim, concurrent, timeout)
            elapsed = time.monotonic() - started
            summary = sim.client.summary()
        finally:
            worker.stop()
    latencies = [arrived - float(appended)
                 for stream in streams for text, arrived in zip(stream["pieces"], stream["arrived_at"])
                 for _, appended in PIECE.findall(text)]
    whole = all([int(i) for st in [s for s in streams if s["thread_ts"] == t] for i, _ in PIECE.findall(st["text"])]
                == list(range(pieces)) for t in {s["thread_ts"] for s in streams})
    calls = summary["method_calls"]
    return {"streams": concurrent, "pieces_each": pieces, "elapsed_s": round(elapsed, 1), "whole_and_in_order": whole,
            "append_calls": calls.get("chat.appendStream", 0), "start_calls": calls.get("chat.startStream", 0),
            "stop_calls": calls.get("chat.stopStream", 0), "429s": summary["stream_429s"],
            "429s_per_stream": round(summary["stream_429s"] / concurrent, 2), "latencies": latencies}


def _ms(values: list[float], q: float) -> float:
    cut = statistics.quantiles(values, n=100, method="inclusive")
    return round(cut[int(q * 100) - 1] * 1000, 1)


def measure() -> dict[str, Any]:
    one = _run(1, 1000, 0.01, 120)
    six = _run(6, 200, 0.03, 180)
    twenty = _run(20, 200, 0.03, 300)
    lat = one.pop("latencies")
    six.pop("latencies")
    twenty.pop("latencies")
    return {
        "appends_per_1000_pieces": round(one["append_calls"] * 1000 / one["pieces_each"], 1),
        "append_latency_p50_ms": _ms(lat, 0.50), "append_latency_p99_ms": _ms(lat, 0.99),
        "429s_per_stream_6": six["429s_per_stream"], "429s_per_stream_20": twenty["429s_per_stream"],
        "runs": {"one": one, "six": six, "twenty": twenty},
    }


def table(result: dict[str, Any]) -> str:
    runs = result["runs"]
    return "\n".join([
        "| streamed answers (ctx.stream) | figure |", "| --- | ---: |",
        (f"| appends sent per 1,000 appended pieces (one answer, 1,000 pieces in ~10 s) | "
        f"{result['appends_per_1000_pieces']} |"),
        (f"| added latency append -> simulator, p50 / p99 (ms) | {result['append_latency_p50_ms']} / "
        f"{result['append_latency_p99_ms']} |"),
        (f"| 429s per stream, 6 at once (whole: {runs['six']['whole_and_in_order']}, "
        f"{runs['six']['elapsed_s']} s) | {result['429s_per_stream_6']} |"),
        (f"| 429s per stream, 20 at once (whole: {runs['twenty']['whole_and_in_order']}, "
        f"{runs['twenty']['elapsed_s']} s) | {result['429s_per_stream_20']} |"),
    ])


def main() -> int:
    result = measure()
    print(table(result))
    for name, run in result["runs"].items():
        print(f"  {name}: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
