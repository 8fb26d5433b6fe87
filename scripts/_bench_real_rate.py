"""scripts/bench.py --real-rate: what a dyno pays at the rates bots really see.

Slack sends a workspace at most about 8 events/s, and most bots see far fewer; a bot is idle most
of the day. So, per client, its process tree's CPU:

- idle: connected, no events, for --idle-seconds;
- at 1 event/s and at 8 events/s, for --rate-seconds each: ms of CPU per second, and per hour;
- at 200/s for --burst-seconds: CPU per 1,000 envelopes and the peak RSS (the memory target).

Every client of a round runs at once, each against its own simulator, so the idle and low-rate
windows are the same seconds of the machine for all of them (what else runs skews them alike);
the 200/s stretch runs one client at a time. Medians of --runs rounds.

CPU is the sum of /proc/PID/task/TID/schedstat (nanoseconds on the CPU) over every thread of the
client's process tree, read before and after each window: at these rates /proc's utime ticks
(10 ms) are too coarse. A thread that ends inside a window takes its time with it (gevent's
thread pool retires idle threads after 5 s): those figures can only be low, never high.

`--baseline DIR` adds the buidl-edge clients once more, run from another checkout (DIR first on
their PYTHONPATH): before/after figures from one run, on the same seconds of the machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buidl_edge.sandbox.harness import fake_tokens
from buidl_edge.sandbox.simulator.client import SimulatorProcess

LOW_RATES = (1, 8)
BURST_RATE = 200
KEYS = ("sdk_builtin", "bolt", "edge_sqlite", "edge_run")


def cpu_ns(root: int, process_tree: Callable[[int], list[int]]) -> int:
    """Nanoseconds on the CPU of every live thread of the tree under `root`."""
    total = 0
    for pid in process_tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def links_open(wanted: int) -> Callable[[dict[str, Any]], bool]:
    return lambda state: bool(state["open_connections"] >= wanted)


def run_round(bench: Any, clients: list[Any], cfg: argparse.Namespace, baseline: str | None) -> dict[str, Any]:
    """One round: every client started at once on its own simulator, measured in the same windows."""
    sims: dict[str, SimulatorProcess] = {}
    procs: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    try:
        for label, client, tree in clients:
            sim = sims[label] = SimulatorProcess().start()
            tokens = fake_tokens()
            if client.kind == "peer":
                env = dict(os.environ, SLACK_API_URL=sim.api_url, **tokens)
                procs[label] = bench.PeerProcess(client.peer or "", env)
            else:
                procs[label] = bench.EdgeProcess(client, sim.api_url, tokens, pythonpath_first=tree)
            out[label] = {}
        for label, client, _ in clients:
            sims[label].client.wait_for(links_open(client.connections), 60, f"{label} to connect")
        time.sleep(cfg.settle_seconds)  # start-up's own work (imports, first heartbeats) out of the window
        tree = bench.process_tree

        def window(seconds: float, start: Callable[[str], None] | None) -> dict[str, float]:
            before = {label: cpu_ns(procs[label].pid, tree) for label in procs}
            if start is not None:
                for label in procs:
                    start(label)
            time.sleep(seconds)
            return {label: (cpu_ns(procs[label].pid, tree) - before[label]) / 1e6 / seconds for label in procs}

        for label, ms in window(cfg.idle_seconds, None).items():
            out[label]["idle_cpu_ms_per_s"] = round(ms, 3)
            out[label]["rss_idle_mb"] = round(bench.rss_tree_kb(procs[label].pid)["total_kb"] / 1024, 1)
        for rate in LOW_RATES:
            def start(label: str, rate: int = rate) -> None:
                sims[label].client.reset()
                sims[label].client.load("rate", rate=rate, duration=cfg.rate_seconds, timeout=cfg.rate_seconds + 30)

            for label, ms in window(cfg.rate_seconds, start).items():
                acked = sims[label].client.load_status(brief=True).get("acked")
                out[label][f"cpu_{rate}_ms_per_s"] = round(ms, 3)
                out[label][f"acked_{rate}"] = acked
        for label in procs:  # one at a time: 200/s of every client at once would be a different machine
            peak = 0
            before = cpu_ns(procs[label].pid, tree)
            driver = sims[label].client
            driver.reset()
            driver.load("rate", rate=BURST_RATE, duration=cfg.burst_seconds, timeout=cfg.burst_seconds + 30)
            while driver.load_status(brief=True)["state"] == "running":
                peak = max(peak, bench.rss_tree_kb(procs[label].pid)["total_kb"])
                time.sleep(0.1)
            acked = driver.load_status(brief=True).get("acked") or 0
            used_ms = (cpu_ns(procs[label].pid, tree) - before) / 1e6
            out[label]["cpu_200_ms_per_1000"] = round(used_ms * 1000 / acked, 1) if acked else None
            out[label]["rss_200_mb"] = round(peak / 1024, 1)
            if not procs[label].alive():
                out[label]["error"] = "exited during the round"
    finally:
        for proc in procs.values():
            proc.stop()
        for sim in sims.values():
            sim.stop()
    return out


FIGURES = ("idle_cpu_ms_per_s", "cpu_1_ms_per_s", "cpu_8_ms_per_s", "cpu_200_ms_per_1000", "rss_idle_mb",
           "rss_200_mb")


def table(rounds: list[dict[str, Any]], labels: list[str], names: dict[str, str]) -> str:
    med: dict[str, dict[str, float | None]] = {}
    for label in labels:
        med[label] = {}
        for fig in FIGURES:
            values = [r[label][fig] for r in rounds if isinstance(r.get(label, {}).get(fig), (int, float))]
            med[label][fig] = statistics.median(values) if values else None
    ref = med.get("sdk_builtin", {})

    def cell(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    def hour(ms_per_s: float | None) -> str:
        return "n/a" if ms_per_s is None else f"{ms_per_s * 3.6:,.1f}"

    def times(value: float | None, of: float | None) -> str:
        return "n/a" if value is None or not of else f"{value / of:.2f}x"

    lines = [(f"Medians of {len(rounds)} round(s); every client of a round measured in the same seconds. "
              "CPU: the client's process tree, ms per second (and s per hour); x: ratio to slack_sdk builtin."), "",
             ("| client | idle CPU ms/s | at 1/s ms/s (s/hour) | at 8/s ms/s (s/hour) | CPU ms / 1k at 200/s "
              "| RSS idle MB | RSS at 200/s MB |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label in labels:
        m = med[label]

        def rate(fig: str, per_hour: bool = True, m: dict[str, float | None] = m) -> str:
            shown = f"{hour(m[fig])}; " if per_hour else ""
            return f"{cell(m[fig])} ({shown}{times(m[fig], ref.get(fig))})"

        lines.append(f"| {names[label]} | {rate('idle_cpu_ms_per_s', per_hour=False)} | {rate('cpu_1_ms_per_s')} "
                     f"| {rate('cpu_8_ms_per_s')} | {cell(m['cpu_200_ms_per_1000'], 0)} | {cell(m['rss_idle_mb'], 1)} "
                     f"| {cell(m['rss_200_mb'], 1)} |")
    return "\n".join(lines)


def main(bench: Any, cfg: argparse.Namespace) -> int:
    by_key = {c.key: c for c in bench.CLIENTS}
    clients: list[tuple[str, Any, str | None]] = [(key, by_key[key], None) for key in KEYS
                                                  if key in set(cfg.clients.split(","))]
    names = {key: by_key[key].label for key, _, _ in clients}
    if cfg.baseline:
        base = str(Path(cfg.baseline).resolve())
        for key in ("edge_sqlite", "edge_run"):
            clients.append((f"{key}@baseline", by_key[key], base))
            names[f"{key}@baseline"] = f"{by_key[key].label} (baseline: {cfg.baseline})"
    labels = [label for label, _, _ in clients]
    print(f"real-rate plan: {cfg.runs} round(s) of {', '.join(labels)}; idle {cfg.idle_seconds:g} s, "
          f"1/s and 8/s {cfg.rate_seconds:g} s each, {BURST_RATE}/s {cfg.burst_seconds:g} s", flush=True)
    rounds = []
    for n in range(1, cfg.runs + 1):
        t0 = time.monotonic()
        result = run_round(bench, clients, cfg, cfg.baseline)
        rounds.append(result)
        print(f"  round {n} ({time.monotonic() - t0:.0f}s): "
              + "; ".join(f"{label} idle {r.get('idle_cpu_ms_per_s')} 1/s {r.get('cpu_1_ms_per_s')} "
                          f"8/s {r.get('cpu_8_ms_per_s')}" for label, r in result.items()), flush=True)
    text = table(rounds, labels, names)
    print()
    print(text)
    Path(cfg.output).write_text(__import__("json").dumps({"config": dict(vars(cfg)), "rounds": rounds,
                                                          "tables_markdown": text}, indent=2, default=str))
    print(f"\nresults in {cfg.output}")
    return 0
