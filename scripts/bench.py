#!/usr/bin/env python
"""Benchmark buidl-edge against slack_sdk, Bolt and a raw floor, on the bundled simulator.

    .venv/bin/pip install -e '.[bench]'          # the peers: slack_sdk, slack_bolt
    .venv/bin/python scripts/bench.py --quick    # 1 run of everything, small N (~2 min)
    .venv/bin/python scripts/bench.py            # full: medians of 3 runs (~17 min on 2 cores)
    .venv/bin/python scripts/bench.py --streams  # ctx.stream's figures only (~90 s)
    .venv/bin/python scripts/bench.py --real-rate  # idle, 1/s and 8/s side by side (~12 min)

Every client runs in its own process against a fresh simulator process, one
client at a time, and the runs are interleaved (run 1 of every client, then
run 2, …). The simulator makes the load and takes every measurement itself
(simulator/load.py), so all clients are timed by the same clock:

- throughput: `--count` events pushed as fast as acks return, at most
  `--window` sent and unacked; acked/s from the first send to the last ack;
- latency: `--rates` events/s for `--seconds` each; ack latency p50/p99/max
  from the frame being queued on the link to its ack being read;
- refresh gap: `--refresh-rate` events/s while `--faults` `warning` and as many
  `refresh_requested` disconnects go, alternately, one due every
  `--fault-spacing` s, each to the oldest link not already told to go (when
  there is none yet, the fault waits for one, up to `--refresh-cap` s); warned
  links close after `--warning-close` s (Slack: ~10 s; 2 s here to fit the
  time). Then the deliveries that missed the 3 s ack deadline and the longest
  time with no open connection. The raw floor skips it: it ignores disconnects;
- memory: VmRSS from /proc, idle (connected, before any load) and the peak
  while serving 1,000/s; for `buidl-edge run` the sum over its whole process
  tree (run + supervisord + workers).

Writes every run and the medians to bench-results.json (see --output) and
prints tables with each client's ratio to the single buidl-edge worker.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from buidl_edge.sandbox.harness import StackProcess, WorkerProcess, fake_tokens, worker_env  # noqa: E402
from buidl_edge.sandbox.simulator.client import SimulatorError, SimulatorProcess  # noqa: E402

MEMORY_RATE = 1000


@dataclass(frozen=True)
class Client:
    key: str
    label: str
    kind: str  # peer | worker | stack
    connections: int
    peer: str | None = None
    store: str | None = None
    needs: str | None = None  # module a peer imports
    no_refresh: str | None = None  # why the refresh scenario does not apply
    app: str = "edge_apps:bench"  # a worker's BUIDL_APP


CLIENTS = (
    Client("raw", "raw websocket-client loop (floor)", "peer", 1, peer="raw",
           no_refresh="the floor only reads and acks; it ignores disconnect frames by definition"),
    Client("sdk_builtin", "slack_sdk SocketModeClient (builtin)", "peer", 1, peer="sdk-builtin", needs="slack_sdk"),
    Client("sdk_wsc", "slack_sdk SocketModeClient (websocket-client)", "peer", 1,
           peer="sdk-websocket-client", needs="slack_sdk"),
    Client("bolt", "slack_bolt SocketModeHandler", "peer", 1, peer="bolt", needs="slack_bolt"),
    Client("edge_sqlite", "buidl-edge worker, SQLite inbox", "worker", 1, store="sqlite"),
    # The bolt peer's own app (scripts/bolt_bench_app.py), unchanged, as BUIDL_APP.
    Client("edge_bolt", "the same Bolt app behind a buidl-edge worker, SQLite inbox", "worker", 1, store="sqlite",
           needs="slack_bolt", app="bolt_bench_app:app"),
    Client("edge_memory", "buidl-edge worker, inbox off (memory://)", "worker", 1, store="memory"),
    Client("edge_redis", "buidl-edge worker, Redis inbox", "worker", 1, store="redis"),
    Client("edge_run", "buidl-edge run, 2 processes x 2 connections", "stack", 4, store="sqlite"),
)
REFERENCE = "edge_sqlite"
# The CPU table compares every client with slack_sdk's builtin client (issue 13's target: <= 1.0x).
CPU_REFERENCE = "sdk_builtin"
CPU_RATE = 200


# -- processes -------------------------------------------------------------


class PeerProcess:
    def __init__(self, peer: str, env: dict[str, str]) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{peer}-", suffix=".log")[1])
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(SCRIPTS / "_bench_peers.py"), peer], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class EdgeProcess:
    """WorkerProcess / StackProcess with the same small interface as PeerProcess."""

    def __init__(self, client: Client, api_url: str, tokens: dict[str, str],
                 pythonpath_first: str | None = None) -> None:
        """`pythonpath_first`: another checkout's root, whose buidl_edge the worker runs instead."""
        extra: dict[str, Any] = {
            "BUIDL_APP": client.app,
            "BUIDL_LOG_LEVEL": "WARNING",  # the peers log at WARNING too
            "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath_first, str(SCRIPTS), str(ROOT),
                                                        os.environ.get("PYTHONPATH")])),
        }
        # `python -m` puts its working directory first on sys.path: another checkout runs from its own.
        cwd = Path(pythonpath_first) if pythonpath_first else None
        if client.store == "memory":
            extra["BUIDL_STORE_URL"] = "memory://"
        if client.store == "redis":
            extra["BUIDL_STORE_URL"] = redis_url()
        if client.kind == "stack":
            extra.update(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=2)
            self.handle: WorkerProcess = StackProcess(worker_env(api_url, tokens, **extra), cwd=cwd)
        else:
            extra.update(BUIDL_CONNECTIONS=client.connections)
            self.handle = WorkerProcess(worker_env(api_url, tokens, **extra), cwd=cwd)
        self.handle.start()

    @property
    def pid(self) -> int:
        return self.handle.pid

    def alive(self) -> bool:
        return self.handle.proc is not None and self.handle.proc.poll() is None

    def stop(self) -> None:
        self.handle.stop(timeout=20)

    def output(self) -> str:
        return self.handle.output()


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_tree_s(root: int) -> float:
    """User + system CPU seconds of a process and its children (live ones, and waited-for ones)."""
    total = 0.0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


_REDIS: list[Any] = []


def redis_url() -> str:
    """One throwaway redis-server for the whole bench (scripts/bench_store.py's), flushed per client."""
    if not _REDIS:
        from bench_store import LocalRedis

        _REDIS.append(LocalRedis())
    import redis

    redis.Redis.from_url(_REDIS[0].url).flushall()
    return _REDIS[0].url


def rss_tree_kb(root: int) -> dict[str, Any]:
    per = {pid: rss_kb(pid) for pid in process_tree(root)}
    per = {pid: kb for pid, kb in per.items() if kb}
    return {"total_kb": sum(per.values()), "processes": len(per), "per_pid_kb": per}


# -- scenarios -------------------------------------------------------------


def run_load(sim: SimulatorProcess, mode: str, params: dict[str, Any], timeout: float,
             during: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Start a load run, poll it (calling `during(elapsed)`), return its full status and the summary."""
    client = sim.client
    client.reset()
    client.load(mode, timeout=timeout, **params)
    started = time.monotonic()
    while client.load_status(brief=True)["state"] == "running":
        if during is not None:
            during(time.monotonic() - started)
        time.sleep(0.1)
    time.sleep(0.2)  # expiries of the last deadlines land in the summary
    status = client.load_status()
    status.pop("sample_keys", None)
    summary = client.summary()
    return {"load": status, "summary": summary}


def settle(sim: SimulatorProcess, limit_s: float = 45.0) -> float:
    """Wait until the client answers promptly again (a backlog from an overload is worked off).

    Probes with 10 events one at a time until their worst ack takes under 50 ms;
    returns the seconds it took. Keeps one scenario's backlog out of the next one's figures.
    """
    client = sim.client
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        client.reset()
        client.load("window", count=10, window=1, timeout=10)
        while client.load_status(brief=True)["state"] == "running":
            time.sleep(0.05)
        status = client.load_status()
        if status["state"] == "done" and (status["latency_ms"]["max"] or 0) < 50:
            break
        time.sleep(0.5)
    return round(time.monotonic() - started, 2)


def throughput(sim: SimulatorProcess, cfg: argparse.Namespace) -> dict[str, Any]:
    out = run_load(sim, "window", {"count": cfg.count, "window": cfg.window}, timeout=cfg.throughput_timeout)
    load = out["load"]
    return {"state": load["state"], "acked": load["acked"], "count": load["count"],
            "acked_per_s": load["acked_per_s"], "elapsed_s": load["elapsed_s"],
            "latency_ms": load["latency_ms"], "redeliveries": out["summary"]["redeliveries"]}


def latency(sim: SimulatorProcess, rate: int, cfg: argparse.Namespace, pid: int,
            during: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Ack latency at a fixed rate, and the client's CPU for it (its whole process tree)."""
    cpu_before = cpu_tree_s(pid)
    out = run_load(sim, "rate", {"rate": rate, "duration": cfg.seconds}, timeout=cfg.seconds + 6, during=during)
    cpu_s = cpu_tree_s(pid) - cpu_before
    load, summary = out["load"], out["summary"]
    acked = load["acked"] or 0
    return {"state": load["state"], "injected": load["injected"], "acked": load["acked"],
            "cpu_ms_per_1000": round(cpu_s * 1e6 / acked, 1) if acked else None,
            "offered_per_s": load["offered_per_s"], "acked_per_s": load["acked_per_s"],
            "latency_ms": load["latency_ms"], "missed_deadlines": summary["missed_deadlines"],
            "redeliveries": summary["redeliveries"]}


def refresh_gap(sim: SimulatorProcess, cfg: argparse.Namespace) -> dict[str, Any]:
    """Steady load; each disconnect goes to the oldest link not yet told to go, as Slack would.

    A fault is due every `fault_spacing` s; when no link is open and un-warned (the client
    has not replaced the last one yet) it waits for one, up to `refresh_cap` s in all.
    """
    client = sim.client
    reasons = ["warning", "refresh_requested"] * cfg.faults
    client.reset()
    client.configure(warning_close_delay=cfg.warning_close, refresh_close_delay=cfg.refresh_close)
    lead, tail = 1.0, 3.0
    client.load("rate", rate=cfg.refresh_rate, count=int(cfg.refresh_rate * (cfg.refresh_cap + lead + tail)),
                timeout=cfg.refresh_cap + lead + tail + 20)
    started = time.monotonic()
    fired = {"warning": 0, "refresh_requested": 0}
    waited = 0.0
    first_at = last_at = None
    i = 0
    while i < len(reasons):
        elapsed = time.monotonic() - started
        if elapsed > lead + cfg.refresh_cap:
            break
        if elapsed >= lead + i * cfg.fault_spacing:
            try:
                client.fault("disconnect", reason=reasons[i], target="oldest_open")
            except SimulatorError:  # every open link is already told to go: wait for a fresh one
                waited += 0.02
            else:
                fired[reasons[i]] += 1
                last_at = time.monotonic() - started
                first_at = last_at if first_at is None else first_at
                i += 1
                continue
        time.sleep(0.02)
    time.sleep(tail)
    client.load("finish")
    while client.load_status(brief=True)["state"] == "running":
        time.sleep(0.1)
    time.sleep(0.2)
    load, s = client.load_status(), client.summary()
    return {"state": load["state"], "injected": load["injected"], "acked": load["acked"],
            "faults_fired": fired, "faults_planned": len(reasons),
            "fault_span_s": round((last_at or 0) - (first_at or 0), 2),
            "waited_for_open_link_s": round(waited, 2),
            "missed_deadlines": s["missed_deadlines"], "redeliveries": s["redeliveries"],
            "events_missed": s["events_missed"], "late_acks": s["late_acks"],
            "longest_no_connection_gap_s": s["longest_no_connection_gap_s"],
            "connections_opened": s["connections_opened"],
            "max_open_connections_seen": s["max_open_connections_seen"],
            "too_many_websockets": s["too_many_websockets"], "latency_ms": load["latency_ms"]}


def bench_client(client: Client, cfg: argparse.Namespace, run: int) -> dict[str, Any]:
    result: dict[str, Any] = {"client": client.key, "run": run}
    with SimulatorProcess() as sim:
        tokens = fake_tokens()
        if client.kind == "peer":
            env = dict(os.environ, SLACK_API_URL=sim.api_url, **tokens)
            proc: PeerProcess | EdgeProcess = PeerProcess(client.peer or "", env)
        else:
            proc = EdgeProcess(client, sim.api_url, tokens)
        try:
            sim.client.wait_for(lambda s: s["open_connections"] >= client.connections, 40,
                                f"{client.label} to connect")
            time.sleep(1.5)  # let start-up settle before measuring idle memory
            result["rss_idle"] = rss_tree_kb(proc.pid)
            run_load(sim, "window", {"count": cfg.warmup, "window": cfg.window}, timeout=30)
            result["throughput"] = throughput(sim, cfg)
            result["latency"] = {}
            peak: dict[str, Any] = {"total_kb": 0}

            def sample(elapsed: float) -> None:
                if elapsed > 0.5:
                    now = rss_tree_kb(proc.pid)
                    if now["total_kb"] > peak["total_kb"]:
                        peak.clear()
                        peak.update(now)

            result["settle_s"] = {"throughput": settle(sim)}
            for rate in cfg.rates:
                result["latency"][str(rate)] = latency(sim, rate, cfg, proc.pid,
                                                       sample if rate == MEMORY_RATE else None)
                result["settle_s"][str(rate)] = settle(sim)
            if MEMORY_RATE not in cfg.rates:
                latency(sim, MEMORY_RATE, cfg, proc.pid, sample)
                settle(sim)
            result["rss_1000"] = peak
            if client.no_refresh:
                result["refresh"] = {"skipped": client.no_refresh}
            else:
                result["refresh"] = refresh_gap(sim, cfg)
            if not proc.alive():
                result["error"] = "client exited during the run"
        except (AssertionError, SimulatorError, OSError) as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            proc.stop()
            if "error" in result:
                result["log_tail"] = proc.output()[-1500:]
    return result


# -- reporting -------------------------------------------------------------


def _get(run: dict[str, Any], path: str) -> Any:
    value: Any = run
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def median_of(runs: list[dict[str, Any]], path: str) -> float | None:
    values = [v for v in (_get(r, path) for r in runs) if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


METRICS: list[tuple[str, str]] = [
    ("throughput_acked_per_s", "throughput.acked_per_s"),
    ("throughput_acked", "throughput.acked"),
    ("refresh_missed_deadlines", "refresh.missed_deadlines"),
    ("refresh_redeliveries", "refresh.redeliveries"),
    ("refresh_events_missed", "refresh.events_missed"),
    ("refresh_longest_gap_s", "refresh.longest_no_connection_gap_s"),
    ("refresh_faults_fired", "refresh.faults_fired_total"),
    ("refresh_fault_span_s", "refresh.fault_span_s"),
    ("rss_idle_mb", "rss_idle.total_mb"),
    ("rss_1000_mb", "rss_1000.total_mb"),
    ("processes", "rss_idle.processes"),
]


def medians(runs: list[dict[str, Any]], rates: list[int]) -> dict[str, Any]:
    for r in runs:  # derived fields, so the medians can be taken like the others
        for key in ("rss_idle", "rss_1000"):
            if isinstance(r.get(key), dict) and r[key].get("total_kb"):
                r[key]["total_mb"] = round(r[key]["total_kb"] / 1024, 1)
        if isinstance(r.get("refresh"), dict) and "faults_fired" in r["refresh"]:
            r["refresh"]["faults_fired_total"] = sum(r["refresh"]["faults_fired"].values())
    out: dict[str, Any] = {name: median_of(runs, path) for name, path in METRICS}
    for rate in rates:
        for stat in ("p50", "p99", "max"):
            out[f"latency_{rate}_{stat}_ms"] = median_of(runs, f"latency.{rate}.latency_ms.{stat}")
        out[f"latency_{rate}_acked_per_s"] = median_of(runs, f"latency.{rate}.acked_per_s")
        out[f"latency_{rate}_missed_deadlines"] = median_of(runs, f"latency.{rate}.missed_deadlines")
        out[f"cpu_{rate}_ms_per_1000"] = median_of(runs, f"latency.{rate}.cpu_ms_per_1000")
    out["runs_ok"] = sum(1 for r in runs if "error" not in r)
    out["errors"] = [r["error"] for r in runs if "error" in r]
    return out


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def ratio(value: Any, ref: Any) -> str:
    if not isinstance(value, (int, float)) or not isinstance(ref, (int, float)) or not ref:
        return "n/a"
    return f"{value / ref:.2f}x"


def tables(meds: dict[str, dict[str, Any]], cfg: argparse.Namespace) -> str:
    ref = meds.get(REFERENCE, {})
    names = {c.key: c.label for c in CLIENTS}
    lines = [f"Medians of {cfg.runs} run(s); ratio = client / `{names[REFERENCE]}`.", ""]
    lines += [f"### Throughput (window of {cfg.window} unacked, {cfg.count:,} events)", "",
              "| client | acked/s | ratio |", "| --- | ---: | ---: |"]
    for key, m in meds.items():
        lines.append(f"| {names[key]} | {fmt(m['throughput_acked_per_s'], 0)} | "
                     f"{ratio(m['throughput_acked_per_s'], ref.get('throughput_acked_per_s'))} |")
    lines += ["", f"### Ack latency, ms (p50 / p99 / max) at fixed rates, {cfg.seconds:g} s each", ""]
    head = "| client | " + " | ".join(f"{r:,}/s" for r in cfg.rates) + f" | p99 ratio at {cfg.rates[-1]:,}/s |"
    lines += [head, "| --- |" + " ---: |" * (len(cfg.rates) + 1)]
    last = cfg.rates[-1]
    for key, m in meds.items():
        cells = []
        for rate in cfg.rates:
            cell = " / ".join(fmt(m[f"latency_{rate}_{s}_ms"]) for s in ("p50", "p99", "max"))
            got = m[f"latency_{rate}_acked_per_s"]
            if isinstance(got, (int, float)) and got < 0.95 * rate:
                cell += f" (kept up with {got:,.0f}/s)"
            cells.append(cell)
        lines.append(f"| {names[key]} | " + " | ".join(cells) + f" | "
                     f"{ratio(m[f'latency_{last}_p99_ms'], ref.get(f'latency_{last}_p99_ms'))} |")
    cpu_ref = meds.get(CPU_REFERENCE, {})
    lines += ["", "### CPU per 1,000 envelopes (ms, the client's process tree: user + system)", "",
              "| client | " + " | ".join(f"{r:,}/s" for r in cfg.rates)
              + f" | ratio to {names[CPU_REFERENCE]} at {CPU_RATE}/s |",
              "| --- |" + " ---: |" * (len(cfg.rates) + 1)]
    for key, m in meds.items():
        cpu_ratio = ratio(m.get(f"cpu_{CPU_RATE}_ms_per_1000"), cpu_ref.get(f"cpu_{CPU_RATE}_ms_per_1000"))
        lines.append(f"| {names[key]} | " + " | ".join(fmt(m.get(f"cpu_{r}_ms_per_1000"), 0) for r in cfg.rates)
                     + f" | {cpu_ratio} |")
    lines += ["", (f"### Refresh gap at {cfg.refresh_rate}/s: {cfg.faults} warning + {cfg.faults} "
                   f"refresh_requested, one due every {cfg.fault_spacing:g} s to a link not yet told to go "
                   f"(warned links close after {cfg.warning_close:g} s, refreshed ones after {cfg.refresh_close:g} s)"),
              "",
              ("| client | faults fired | seconds to fire them | deliveries past 3 s | redeliveries "
               "| events never acked | longest gap, no open connection (s) |"),
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    skipped = {c.key: c.no_refresh for c in CLIENTS if c.no_refresh}
    for key, m in meds.items():
        if key in skipped:
            lines.append(f"| {names[key]} | not run: {skipped[key]} | | | | | |")
            continue
        lines.append(f"| {names[key]} | {fmt(m['refresh_faults_fired'], 0)} | {fmt(m['refresh_fault_span_s'])} | "
                     f"{fmt(m['refresh_missed_deadlines'], 0)} | {fmt(m['refresh_redeliveries'], 0)} | "
                     f"{fmt(m['refresh_events_missed'], 0)} | {fmt(m['refresh_longest_gap_s'], 3)} |")
    lines += ["", "### Memory (VmRSS, MB; a stack is the sum of its processes)", "",
              "| client | processes | idle | at 1,000/s (peak) | ratio at 1,000/s |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for key, m in meds.items():
        lines.append(f"| {names[key]} | {fmt(m['processes'], 0)} | {fmt(m['rss_idle_mb'])} | "
                     f"{fmt(m['rss_1000_mb'])} | {ratio(m['rss_1000_mb'], ref.get('rss_1000_mb'))} |")
    errors = {names[k]: m["errors"] for k, m in meds.items() if m["errors"]}
    if errors:
        lines += ["", "### Errors", ""] + [f"- {k}: {e}" for k, es in errors.items() for e in es]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in ("buidl-edge", "slack_sdk", "slack_bolt", "websocket-client", "gevent", "gevent-websocket",
                 "requests"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"cores": os.cpu_count(), "cpu": model, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 run, small counts: a smoke test of the bench")
    parser.add_argument("--runs", type=int, default=None, help="runs per client (default 3, quick 1)")
    parser.add_argument("--count", type=int, default=None, help="throughput events (default 8000, quick 3000)")
    parser.add_argument("--window", type=int, default=100, help="unacked envelopes in flight for throughput")
    parser.add_argument("--rates", default=f"{CPU_RATE},1000,3000", help="fixed rates for latency and CPU, events/s")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per fixed rate (default 3, quick 2)")
    parser.add_argument("--refresh-rate", type=int, default=200)
    parser.add_argument("--faults", type=int, default=None, help="warnings (and as many refresh_requested); "
                                                                 "default 20, quick 5")
    parser.add_argument("--fault-spacing", type=float, default=0.3, help="seconds between two disconnects")
    parser.add_argument("--warning-close", type=float, default=2.0,
                        help="seconds from a warning to the server closing that link (Slack: about 10)")
    parser.add_argument("--refresh-close", type=float, default=1.0,
                        help="seconds from refresh_requested to the server closing that link")
    parser.add_argument("--refresh-cap", type=float, default=None,
                        help="give up firing faults after this long (default 30, quick 15)")
    parser.add_argument("--clients", default=",".join(c.key for c in CLIENTS),
                        help="comma-separated subset of: " + ", ".join(c.key for c in CLIENTS))
    parser.add_argument("--output", default="bench-results.json")
    parser.add_argument("--streams", action="store_true",
                        help="only the streamed answers' figures (ctx.stream; scripts/bench_streams.py, ~90 s)")
    real = parser.add_argument_group("--real-rate: idle, 1/s and 8/s, side by side (scripts/_bench_real_rate.py)")
    real.add_argument("--real-rate", action="store_true", help="run that case instead of the ones above")
    real.add_argument("--idle-seconds", type=float, default=45.0)
    real.add_argument("--rate-seconds", type=float, default=45.0, help="seconds at 1/s, then at 8/s")
    real.add_argument("--burst-seconds", type=float, default=10.0, help="seconds at 200/s (CPU per 1k, peak RSS)")
    real.add_argument("--settle-seconds", type=float, default=5.0, help="after connecting, before the idle window")
    real.add_argument("--baseline", default=None, help="another checkout: its buidl-edge runs beside this one")
    cfg = parser.parse_args()
    if cfg.streams:
        return streams_only(cfg.output)
    if cfg.real_rate:
        import _bench_real_rate

        cfg.runs = cfg.runs or (1 if cfg.quick else 3)
        if cfg.output == "bench-results.json":
            cfg.output = "bench-real-rate.json"
        if cfg.clients == parser.get_default("clients"):
            cfg.clients = ",".join(_bench_real_rate.KEYS)
        return _bench_real_rate.main(sys.modules[__name__], cfg)
    cfg.runs = cfg.runs or (1 if cfg.quick else 3)
    cfg.count = cfg.count or (3000 if cfg.quick else 8000)
    cfg.seconds = cfg.seconds or (3.0 if cfg.quick else 5.0)
    cfg.faults = cfg.faults if cfg.faults is not None else (5 if cfg.quick else 20)
    cfg.refresh_cap = cfg.refresh_cap or (15.0 if cfg.quick else 30.0)
    cfg.rates = [int(r) for r in cfg.rates.split(",") if r]
    cfg.warmup = 500
    cfg.throughput_timeout = 90.0
    wanted = set(cfg.clients.split(","))
    clients = [c for c in CLIENTS if c.key in wanted]
    if REFERENCE not in wanted:
        print(f"note: ratios need {REFERENCE}; they will read n/a", file=sys.stderr)

    info = machine()
    info["loadavg_before"] = _loadavg()
    print(f"machine: {info['cores']} cores, {info['cpu'] or 'unknown CPU'}, {info['platform']}, "
          f"Python {info['python']}")
    print("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["versions"].items()))
    print(f"plan: {cfg.runs} run(s) x {len(clients)} clients; throughput {cfg.count} events (window "
          f"{cfg.window}); rates {cfg.rates} x {cfg.seconds:g}s; refresh {cfg.faults}+{cfg.faults} faults at "
          f"{cfg.refresh_rate}/s", flush=True)

    unavailable: dict[str, str] = {}
    for c in clients:
        if c.needs:
            try:
                __import__(c.needs)
            except ImportError:
                unavailable[c.key] = f"{c.needs} is not installed (pip install -e '.[bench]')"
    runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in clients}
    started = time.monotonic()
    for run in range(1, cfg.runs + 1):
        for c in clients:
            if c.key in unavailable:
                continue
            t0 = time.monotonic()
            result = bench_client(c, cfg, run)
            runs[c.key].append(result)
            tp = _get(result, "throughput.acked_per_s")
            print(f"  run {run} {c.label}: {fmt(tp, 0)} acked/s, refresh missed "
                  f"{_get(result, 'refresh.missed_deadlines')}, "
                  f"gap {_get(result, 'refresh.longest_no_connection_gap_s')}s"
                  f"{', ERROR ' + result['error'] if 'error' in result else ''} ({time.monotonic() - t0:.0f}s)",
                  flush=True)
    for server in _REDIS:
        server.stop()
    meds = {key: medians(rs, cfg.rates) for key, rs in runs.items() if rs}
    text = tables(meds, cfg)
    print()
    print(text)
    for key, why in unavailable.items():
        print(f"- {key}: not run: {why}")
    elapsed = round(time.monotonic() - started, 1)
    info["loadavg_after"] = _loadavg()
    print(f"load average before {info['loadavg_before']}, after {info['loadavg_after']} "
          "(anything else running on the machine skews every figure)")
    print(f"\nbench took {elapsed}s; results in {cfg.output}")
    Path(cfg.output).write_text(json.dumps({
        "machine": info, "config": dict(vars(cfg)), "elapsed_s": elapsed,
        "clients": {c.key: c.label for c in clients}, "reference": REFERENCE,
        "medians": meds, "runs": runs, "unavailable": unavailable, "tables_markdown": text,
    }, indent=2, default=str))
    return 0


def streams_only(output: str) -> int:
    """ctx.stream's figures: appends per 1,000 pieces, 429s per stream (6 and 20 at once), the
    latency an append adds (scripts/bench_streams.py says how each is taken)."""
    sys.path.insert(0, str(SCRIPTS))
    from bench_streams import measure, table

    info = machine()
    result = measure()
    text = table(result)
    print(text)
    Path(output).write_text(json.dumps({"machine": info, "streams": result, "tables_markdown": text}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
