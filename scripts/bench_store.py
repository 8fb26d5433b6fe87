#!/usr/bin/env python
"""Benchmark the SQLite store: claim throughput and gevent hub stalls.

    .venv/bin/python scripts/bench_store.py [--claims 6000] [--runs 3] [--json]

Modes, each run in fresh child processes on a fresh database file:
  raw       SqliteStore called directly (no gevent), the ceiling;
  threaded  gevent-patched process, ThreadedStore, 8 greenlets claiming at once
            (as the worker's connection greenlets do) while a ticker greenlet
            loops on sleep(0.001) and records the largest gap: the hub stall.
With 4 processes, each claims its own distinct envelopes, all racing for the
one write lock; throughput is total claims / wall time from a common start.
"""
import sys

if len(sys.argv) > 2 and sys.argv[1] == "--child" and sys.argv[2] == "threaded":
    from gevent import monkey  # must precede every other import in this child

    monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buidl_edge.protocol import Envelope  # noqa: E402
from buidl_edge.store.sqlite import SqliteStore  # noqa: E402

TARGET_CLAIMS_PER_S = 10_000
TARGET_STALL_MS = 10.0


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
    if mode == "raw":
        store = SqliteStore(db)
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

    from buidl_edge.store.threaded import ThreadedStore

    store = ThreadedStore(SqliteStore(db))
    store.inbox_stats()  # pool thread up before timing
    worst = [0.0]
    running = [True]

    def ticker() -> None:
        last = time.perf_counter()
        while running[0]:
            gevent.sleep(0.001)
            now = time.perf_counter()
            worst[0] = max(worst[0], now - last)
            last = now

    while time.time() < start_at:
        gevent.sleep(0.0005)
    tick = gevent.spawn(ticker)
    t0 = time.time()
    wins = sum(Pool(8).imap_unordered(lambda e: store.claim(e, owner), envelopes))
    t1 = time.time()
    running[0] = False
    tick.join()
    store.close()
    # The 1 ms sleep itself is not a stall: report the gap beyond it.
    print(json.dumps({"wins": wins, "t0": t0, "t1": t1, "stall_ms": (worst[0] - 0.001) * 1000}))


def one_run(mode: str, procs: int, claims: int, payload_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        db = str(Path(tmp) / "edge.db")
        SqliteStore(db, checkpoint_interval_s=None).close()  # schema outside the timing
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
    args = parser.parse_args()

    rows = []
    for mode in ("raw", "threaded"):
        for procs in (1, 4):
            runs = [one_run(mode, procs, args.claims, args.payload_bytes) for _ in range(args.runs)]
            stalls = [r["stall_ms"] for r in runs if r["stall_ms"] is not None]
            rows.append({"mode": mode, "procs": procs, "runs": len(runs),
                         "claims_per_s_median": statistics.median(r["claims_per_s"] for r in runs),
                         "claims_per_s_all": [round(r["claims_per_s"]) for r in runs],
                         "stall_ms_median": statistics.median(stalls) if stalls else None,
                         "stall_ms_max": max(stalls) if stalls else None})
    report = {"environment": environment(), "claims_per_run": args.claims,
              "payload_bytes": args.payload_bytes,
              "targets": {"claims_per_s_one_process": TARGET_CLAIMS_PER_S, "stall_ms": TARGET_STALL_MS},
              "results": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    env = report["environment"]
    print(f"{env['cores']} cores, Python {env['python']}, SQLite {env['sqlite']}, gevent {env['gevent']}, "
          f"{env['platform']}")
    print(f"{args.claims} claims/run, payload ~{args.payload_bytes} B, medians of {args.runs} runs\n")
    print(f"{'mode':<9} {'procs':>5} {'claims/s':>10} {'stall ms (med/max)':>20}  runs")
    for r in rows:
        stall = "-" if r["stall_ms_median"] is None else f"{r['stall_ms_median']:.1f} / {r['stall_ms_max']:.1f}"
        print(f"{r['mode']:<9} {r['procs']:>5} {r['claims_per_s_median']:>10.0f} {stall:>20}  "
              f"{r['claims_per_s_all']}")


if __name__ == "__main__":
    main()
