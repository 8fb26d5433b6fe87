#!/usr/bin/env python
"""The SQLite WAL under steady load: how large the -wal file gets, end to end and per strategy.

    .venv/bin/python scripts/bench_wal.py --rate 300 --minutes 10            # one worker (~11 min)
    .venv/bin/python scripts/bench_wal.py --rate 1000 --minutes 3 --workers 2
    .venv/bin/python scripts/bench_wal.py --rate 300 --minutes 3 --restart-share 1e6  # PASSIVE only (before c44de58)
    .venv/bin/python scripts/bench_wal.py --compare                         # the store alone (~13 min)

End to end: real `python -m buidl_edge worker` processes (--workers, all on one SQLite file in a
fresh state dir) with `scripts/edge_apps.py:reply`, which replies to every event, so the outbox
writes too (`--app bench`: a handler that does nothing). The simulator sends `--rate` events/s
for `--minutes`, each in a channel of its own (so
the replies are not held by Slack's per-channel limit), and measures every ack. This process reads
the size of edge.sqlite3-wal every 0.25 s, from before the load until the replies are all posted.
Reported: WAL max and p99, a table per minute (acks/s, replies/s, WAL max, the file's size), and
the simulator's counts and ack latency, so the run is shown to be at the rate it claims.
`--restart-share X` sets the workers' WAL_RESTART_SHARE (store/sqlite/checkpoint.py); 1e6 never restarts.
`--trace-checkpoints` logs every checkpoint the workers run (scripts/_bench_wal_hooks.py) and tables them.

--compare: scripts/_bench_wal_store.py (the checkpoint strategies on SqliteStore alone).
--outbox-backlog 1000,30000: how long the outbox's claim holds the store once replies lag.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(SCRIPTS))

import _bench_wal_hooks as hooks  # noqa: E402
import _bench_wal_store as store_bench  # noqa: E402
from bench import _loadavg  # noqa: E402
from buidl_edge.sandbox.harness import WorkerProcess, fake_tokens, worker_env  # noqa: E402
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess  # noqa: E402

SAMPLE_S = 0.25
POLL_S = 1.0
MB = 1024 * 1024
DRAIN_S = 120.0  # after the last event: for the acks and the replies still queued


class WalSampler(threading.Thread):
    """Reads the -wal file's and the database's sizes every SAMPLE_S on a fixed schedule."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.wal = db, Path(f"{db}-wal")
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, wal bytes, db bytes)
        self._stop_event = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        tick = 0
        while not self._stop_event.wait(max(0.0, started + tick * SAMPLE_S - time.monotonic())):
            self.samples.append((time.monotonic(), _size(self.wal), _size(self.db)))
            tick += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def start_workers(sim: SimulatorProcess, cfg: argparse.Namespace, state: Path) -> list[WorkerProcess]:
    extra = hooks.hooks_env(state.parent, [str(ROOT), str(SCRIPTS)], cfg.restart_share, cfg.trace_checkpoints)
    env = worker_env(sim.api_url, fake_tokens(), BUIDL_APP=f"edge_apps:{cfg.app}", BUIDL_LOG_LEVEL="WARNING",
                     BUIDL_STATE_DIR=state, BUIDL_CONNECTIONS=1, **extra)
    if cfg.restart_share is not None:  # the constant the workers will see
        probe = "from buidl_edge.store.sqlite import checkpoint; print(checkpoint.WAL_RESTART_SHARE)"
        seen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
        assert float(seen) == cfg.restart_share, f"workers would run with WAL_RESTART_SHARE {seen}"
    workers = [WorkerProcess(env, log_path=state.parent / f"worker-{i}.log").start() for i in range(cfg.workers)]
    sim.client.wait_for(lambda s: s["open_connections"] >= cfg.workers, 60, f"{cfg.workers} worker(s) to connect")
    return workers


def end_to_end(cfg: argparse.Namespace) -> dict[str, Any]:
    count = int(cfg.rate * cfg.minutes * 60)
    top = Path(tempfile.mkdtemp(prefix="bench-wal-"))
    state = top / "state"
    with SimulatorProcess() as sim:
        client = sim.client
        workers = start_workers(sim, cfg, state)
        sampler = WalSampler(state / "edge.sqlite3")
        try:
            time.sleep(2.0)  # start-up writes settle
            client.reset()
            sampler.start()
            client.load("rate", rate=cfg.rate, count=count, channel_prefix="CWAL", timeout=cfg.minutes * 60 + DRAIN_S)
            started = time.monotonic()
            polls = poll_until_done(client, started, cfg.minutes * 60 + DRAIN_S, cfg.app == "reply")
            sampler.stop()
            status, summary = client.load_status(), client.summary()
        finally:
            if sampler.is_alive():
                sampler.stop()
            exits = [worker.stop(timeout=30) for worker in workers]
            for worker in workers:
                if worker.proc is not None and worker.proc.returncode:
                    print(f"worker {worker.pid} exited {worker.proc.returncode}:\n{worker.output()[-1500:]}")
            trace = hooks.read_trace(top / "trace") if cfg.trace_checkpoints else []
            if not cfg.keep:
                shutil.rmtree(top, ignore_errors=True)
    status.pop("sample_keys", None)
    return {"rate": cfg.rate, "minutes": cfg.minutes, "workers": cfg.workers, "app": cfg.app,
            "restart_share": cfg.restart_share,
            "started": started, "samples": sampler.samples, "polls": polls, "load": status,
            "summary": {k: summary[k] for k in ("events_injected", "acked", "redeliveries", "missed_deadlines",
                                                "events_missed", "messages_posted", "post_429s", "post_errors")},
            "exit_codes": exits, "state_dir": str(state) if cfg.keep else None, "checkpoints": trace}


def poll_until_done(client: SimulatorClient, started: float, limit_s: float, replies: bool) -> list[dict[str, Any]]:
    """Poll every POLL_S until every event is acked and replied to (or the limit): the per-minute counts."""
    polls: list[dict[str, Any]] = []
    while True:
        time.sleep(POLL_S)
        load, summary = client.load_status(brief=True), client.summary()
        polls.append({"t": time.monotonic() - started, "injected": load["injected"], "acked": load["acked"],
                      "posted": summary["messages_posted"]})
        if load["state"] != "running" and (not replies or summary["messages_posted"] >= load["acked"]):
            return polls
        if time.monotonic() - started > limit_s:
            client.load("stop")
            return polls


def report_end_to_end(result: dict[str, Any]) -> str:
    started, samples, polls = result["started"], result["samples"], result["polls"]
    wal = [s[1] / MB for s in samples]
    load, summary = result["load"], result["summary"]
    latency = load["latency_ms"]
    who = f"{result['workers']} worker(s), app edge_apps:{result['app']}" + (
        f", WAL_RESTART_SHARE {result['restart_share']:g}" if result.get("restart_share") is not None else "")
    lines = [(f"End to end, {who}, {result['rate']:,.0f} events/s for {result['minutes']:g} min: "
              f"{len(samples):,} WAL samples, every {SAMPLE_S} s."), "",
             (f"- WAL max {max(wal, default=0):.1f} MB, p99 {_pct(wal, 0.99):.1f} MB, p50 {_pct(wal, 0.5):.1f} MB; "
              f"at the end {wal[-1] if wal else 0:.1f} MB; database file at the end "
              f"{samples[-1][2] / MB if samples else 0:.1f} MB."),
             (f"- simulator: {load['injected']:,} events sent ({load['offered_per_s']} /s offered), "
              f"{load['acked']:,} acked ({load['acked_per_s']} /s), {summary['messages_posted']:,} replies posted, "
              f"{summary['redeliveries']} redeliveries, {summary['missed_deadlines']} deadlines missed, "
              f"{summary['events_missed']} events never acked; run state {load['state']}."),
             (f"- ack latency ms: p50 {latency['p50']}, p99 {latency['p99']}, max {latency['max']} "
              f"({latency['count']:,} acks); workers' exit codes {result['exit_codes']}."), "",
             "| minute | acks/s | replies/s | WAL max MB | WAL p99 MB | database MB at its end |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    last = max(polls[-1]["t"] if polls else 0.0, samples[-1][0] - started if samples else 0.0)
    minute = 0
    while minute * 60 < last:
        lo, hi = minute * 60, (minute + 1) * 60
        in_minute = [s for s in samples if lo <= s[0] - started < hi]
        if not in_minute:  # the polls outlast the last sample by a second at most
            break
        sizes = [s[1] / MB for s in in_minute]
        acks, posted, span = _delta(polls, lo, hi)
        lines.append(f"| {minute + 1}{'' if hi <= last else ' (part)'} | {acks / span:,.0f} | {posted / span:,.0f} "
                     f"| {max(sizes):.1f} | {_pct(sizes, 0.99):.1f} | {in_minute[-1][2] / MB:.1f} |")
        minute += 1
    if result.get("checkpoints"):
        lines += ["", "Every checkpoint the workers ran (--trace-checkpoints):", "",
                  hooks.trace_table(result["checkpoints"])]
    return "\n".join(lines)


def _delta(polls: list[dict[str, Any]], lo: float, hi: float) -> tuple[int, int, float]:
    """Acks and replies counted between the polls nearest `lo` and `hi` (and the seconds between them)."""
    first = max((p for p in polls if p["t"] <= lo), key=lambda p: p["t"], default={"t": 0.0, "acked": 0, "posted": 0})
    inside = [p for p in polls if p["t"] <= hi] or [first]
    end = inside[-1]
    return end["acked"] - first["acked"], end["posted"] - first["posted"], max(1e-9, end["t"] - first["t"])


def _pct(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="events/s (end to end)")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (end to end)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on the one SQLite file")
    parser.add_argument("--restart-share", type=float, default=None,
                        help="the workers' WAL_RESTART_SHARE (default: the store's; 1e6: PASSIVE only)")
    parser.add_argument("--trace-checkpoints", action="store_true",
                        help="log every checkpoint the workers run (process, mode, WAL before, SQLite's answer)")
    parser.add_argument("--app", default="reply", choices=("reply", "bench"),
                        help="edge_apps:reply answers every event (the outbox writes); bench does nothing")
    parser.add_argument("--keep", action="store_true", help="keep the state dir (the SQLite file, worker logs)")
    parser.add_argument("--compare", action="store_true", help="the checkpoint strategies, on the store alone")
    parser.add_argument("--compare-rate", type=float, default=1000.0, help="claims/s for --compare")
    parser.add_argument("--compare-seconds", type=float, default=60.0, help="seconds per --compare run")
    parser.add_argument("--runs", type=int, default=3, help="--compare: interleaved runs of every strategy")
    parser.add_argument("--strategies", default=",".join(store_bench.DEFAULT_STRATEGIES),
                        help="--compare: a subset of " + ", ".join(s.key for s in store_bench.STRATEGIES))
    parser.add_argument("--outbox-backlog", default=None, metavar="N,N,…",
                        help="time one outbox claim with N replies pending, each in its own channel")
    parser.add_argument("--output", default=None, help="also write the results as JSON to this file")
    cfg = parser.parse_args()
    print(f"load average before: {_loadavg()}", flush=True)
    t0 = time.monotonic()
    results: Any
    if cfg.outbox_backlog:
        results = store_bench.outbox_claim_ms([int(n) for n in cfg.outbox_backlog.split(",")])
        text = store_bench.outbox_table(results)
    elif cfg.compare:
        keys = [key for key in cfg.strategies.split(",") if key]
        results = store_bench.compare(cfg.runs, cfg.compare_seconds, cfg.compare_rate, keys)
        text = store_bench.compare_table(results, cfg.compare_seconds, cfg.compare_rate)
    else:
        results = end_to_end(cfg)
        text = report_end_to_end(results)
    print()
    print(text)
    print(f"\nload average after: {_loadavg()}; took {time.monotonic() - t0:.0f} s")
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
