#!/usr/bin/env python
"""Benchmark the SQLite store (and the Redis one): claim throughput and gevent hub stalls.

    .venv/bin/python scripts/bench_store.py [--claims 6000] [--runs 3] [--json]
    .venv/bin/python scripts/bench_store.py --store both   # SQLite and Redis side by side

Modes, each run in fresh child processes on a fresh database file:
  raw       SqliteStore called directly (no gevent), the ceiling;
  threaded  gevent-patched process, ThreadedStore, 8 greenlets claiming at once
            (as the worker's connection greenlets do) while a ticker greenlet
            loops on sleep(0.001) and records the largest gap: the hub stall.
With 4 processes, each claims its own distinct envelopes, all racing for the
one write lock; throughput is total claims / wall time from a common start.

With --store redis (or both) the same runs go to a Redis store:
  redis-raw    RedisStore called directly (no gevent): one claim script per round trip;
  redis-gevent gevent-patched process, RedisStore directly (no thread pool: its sockets
               are cooperative), 8 greenlets claiming at once, ticker as above.
Redis is a redis-server started here on a free loopback port without persistence
(--redis-url to use another; keys go under a fresh prefix and are deleted after each run).
"""
import sys

if len(sys.argv) > 2 and sys.argv[1] == "--child" and sys.argv[2] in ("threaded", "redis-gevent"):
    from gevent import monkey  # must precede every other import in this child

    monkey.patch_all()

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.sqlite import SqliteStore

TARGET_CLAIMS_PER_S = 10_000
TARGET_STALL_MS = 10.0
# Envelopes in flight at once in a worker under load (each connection spawns one per frame).
CONCURRENCY = int(os.environ.get("BENCH_STORE_CONCURRENCY", "8"))


def make_payload(size: int) -> dict[str, Any]:
    """An events_api payload shaped like a Slack message event, padded to ~size bytes of JSON."""
    base: dict[str, Any] = {"token": "x" * 24, "team_id": "T0123", "api_app_id": "A0123",
                            "type": "event_callback", "event_time": 1_700_000_000,
                            "event": {"type": "message", "channel": "C0123", "user": "U0123",
                                      "ts": "1700000000.000100", "text": ""}}
    base["event"]["text"] = "a" * max(0, size - len(json.dumps(base)))
    return base


def child(mode: str, db: str, count: int, offset: int, start_at: float, payload_size: int) -> None:
    payload = make_payload(payload_size)
    envelopes = [Envelope("events_api", f"E{offset + i}", {**payload, "event_id": f"Ev{offset + i}"})
                 for i in range(count)]
    owner = f"bench:{os.getpid()}"
    if mode in ("raw", "redis-raw"):
        store = open_bench_store(mode, db)
        while time.time() < start_at:
            time.sleep(0.0005)
        t0 = time.time()
        wins = sum(store.claim(e, owner) for e in envelopes)
        t1 = time.time()
        store.close()
        print(json.dumps({"wins": wins, "t0": t0, "t1": t1, "stall_ms": None}))
        return

    import gevent
    from gevent.pool import Pool

    from buidl_edge.sandbox.stallprobe import TICK_S, HubTicker
    from buidl_edge.store.threaded import ThreadedStore

    store = open_bench_store(mode, db) if mode.startswith("redis") else ThreadedStore(SqliteStore(db, hub_writes=True))
    store.claim_key(f"warmup:{owner}")  # pool thread (or first connection) up before timing
    if mode.startswith("redis"):  # the pool's connections open and the script loads before timing
        Pool(8).map(lambda i: store.claim(Envelope("events_api", f"warm{owner}-{i}", {"event": {}}), owner),
                    range(16))
    while time.time() < start_at:
        gevent.sleep(0.0005)
    probe = HubTicker().start()
    t0 = time.time()
    wins = sum(Pool(CONCURRENCY).imap_unordered(lambda e: store.claim(e, owner), envelopes))
    t1 = time.time()
    probe.stop()
    store.close()
    # The 1 ms sleep itself is not a stall: report the gap beyond it.
    print(json.dumps({"wins": wins, "t0": t0, "t1": t1, "stall_ms": (probe.max_gap - TICK_S) * 1000}))


def open_bench_store(mode: str, target: str) -> Any:
    if mode.startswith("redis"):
        from buidl_edge.store.redis import RedisStore

        return RedisStore(target)
    return SqliteStore(target)


class LocalRedis:
    """A throwaway redis-server on a free loopback port, no persistence (as the tests run it)."""

    def __init__(self) -> None:
        import shutil
        import socket

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found (apt-get install redis-server, or pass --redis-url)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        self.version = client.info("server")["redis_version"]
        client.close()

    def stop(self) -> None:
        import shutil

        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def one_run(mode: str, procs: int, claims: int, payload_size: int, redis_url: str = "") -> dict[str, Any]:
    if mode.startswith("redis"):
        import uuid

        import redis

        prefix = f"bench{uuid.uuid4().hex[:8]}:"
        try:
            return _race(mode, procs, claims, payload_size, f"{redis_url}?prefix={prefix}")
        finally:
            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
            for i in range(0, len(keys), 1000):
                client.unlink(*keys[i:i + 1000])
            client.close()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        db = str(Path(tmp) / "edge.db")
        SqliteStore(db, checkpoint_interval_s=None).close()  # schema outside the timing
        return _race(mode, procs, claims, payload_size, db)


def _race(mode: str, procs: int, claims: int, payload_size: int, db: str) -> dict[str, Any]:
    per = claims // procs
    start_at = time.time() + 1.5  # imports and envelope building happen before this
    children = [subprocess.Popen([sys.executable, __file__, "--child", mode, db, str(per), str(i * per),
                                  str(start_at), str(payload_size)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(procs)]
    outs = []
    for c in children:
        out, err = c.communicate(timeout=300)
        if c.returncode != 0:
            raise SystemExit(f"child failed: {err.strip()}")
        outs.append(json.loads(out))
    wins = sum(o["wins"] for o in outs)
    if wins != per * procs:
        raise SystemExit(f"expected {per * procs} new claims, got {wins}")
    wall = max(o["t1"] for o in outs) - min(o["t0"] for o in outs)
    stalls = [o["stall_ms"] for o in outs if o["stall_ms"] is not None]
    return {"claims_per_s": wins / wall, "stall_ms": max(stalls) if stalls else None}


def environment() -> dict[str, Any]:
    import gevent

    return {"cores": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "gevent": gevent.__version__, "platform": platform.platform()}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        mode, db, count, offset, start_at, size = sys.argv[2:8]
        child(mode, db, int(count), int(offset), float(start_at), int(size))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=6000, help="claims per run (split across processes)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--payload-bytes", type=int, default=1000, help="JSON size of each envelope payload")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--store", choices=("sqlite", "redis", "both"), default="sqlite")
    parser.add_argument("--redis-url", default="", help="a Redis to use (default: start a local redis-server)")
    args = parser.parse_args()

    modes = {"sqlite": ("raw", "threaded"), "redis": ("redis-raw", "redis-gevent"),
             "both": ("raw", "threaded", "redis-raw", "redis-gevent")}[args.store]
    local = LocalRedis() if args.store != "sqlite" and not args.redis_url else None
    redis_url = args.redis_url or (local.url if local else "")
    try:
        rows = bench_rows(modes, args, redis_url)
    finally:
        if local is not None:
            local.stop()
    report = {"environment": environment(), "claims_per_run": args.claims,
              "payload_bytes": args.payload_bytes,
              "targets": {"claims_per_s_one_process": TARGET_CLAIMS_PER_S, "stall_ms": TARGET_STALL_MS},
              "results": rows}
    if local is not None:
        report["environment"]["redis"] = local.version
    print_report(report, args)


def bench_rows(modes: tuple[str, ...], args: argparse.Namespace, redis_url: str) -> list[dict[str, Any]]:
    rows = []
    for mode in modes:
        for procs in (1, 4):
            runs = [one_run(mode, procs, args.claims, args.payload_bytes, redis_url) for _ in range(args.runs)]
            stalls = [r["stall_ms"] for r in runs if r["stall_ms"] is not None]
            rows.append({"mode": mode, "procs": procs, "runs": len(runs),
                         "claims_per_s_median": statistics.median(r["claims_per_s"] for r in runs),
                         "claims_per_s_all": [round(r["claims_per_s"]) for r in runs],
                         "stall_ms_median": statistics.median(stalls) if stalls else None,
                         "stall_ms_max": max(stalls) if stalls else None})
    return rows


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    rows = report["results"]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    env = report["environment"]
    redis_version = f", Redis {env['redis']}" if env.get("redis") else ""
    print(f"{env['cores']} cores, Python {env['python']}, SQLite {env['sqlite']}{redis_version}, "
          f"gevent {env['gevent']}, {env['platform']}")
    print(f"{args.claims} claims/run, payload ~{args.payload_bytes} B, medians of {args.runs} runs\n")
    print(f"{'mode':<12} {'procs':>5} {'claims/s':>10} {'stall ms (med/max)':>20}  runs")
    for r in rows:
        stall = "-" if r["stall_ms_median"] is None else f"{r['stall_ms_median']:.1f} / {r['stall_ms_max']:.1f}"
        print(f"{r['mode']:<12} {r['procs']:>5} {r['claims_per_s_median']:>10.0f} {stall:>20}  "
              f"{r['claims_per_s_all']}")


if __name__ == "__main__":
    main()
