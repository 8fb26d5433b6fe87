#!/usr/bin/env python
"""What the durable inbox costs at the bottom: two SQLite commits per envelope, at fixed rates.

    .venv/bin/python scripts/bench_sqlite_floor.py [--rates 200,1000,0] [--seconds 5] [--runs 3]

For each rate (0: as fast as it goes), in fresh child processes on a fresh database file:
  sqlite3  bare sqlite3 with the inbox's own statements: BEGIN IMMEDIATE, the dedup key and
           the inbox row, COMMIT; then BEGIN IMMEDIATE, the finish, COMMIT (the floor);
  claim    the first of those two commits alone: the least a claim stored before its ack costs;
  store    SqliteStore's claim and finish, each through run_batch_now, as a worker's hub makes
           them (our code around the same SQL);
  idle     the same paced loop with no work, to take the pacing's own sleeps out.
Prints CPU (user + system) per 1,000 envelopes, medians of --runs. At a low rate each commit
runs with cold caches, which is why the per-envelope cost falls as the rate rises.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXT = "x" * 400  # about the size of a bench envelope's frame


def child(mode: str, rate: float, seconds: float) -> float:
    from buidl_edge.socketmode.protocol import Envelope, parse_frame
    from buidl_edge.store.sqlite import SqliteStore
    from buidl_edge.store.sqlite.inbox import _FINISH, _INSERT_INBOX, _INSERT_KEY

    path = Path(tempfile.mkdtemp(prefix="floor-")) / "edge.db"
    store = SqliteStore(path, checkpoint_interval_s=None, hub_writes=True)
    count = int(rate * seconds) if rate else 20_000
    frames = [cast(Envelope, parse_frame(json.dumps({"envelope_id": f"E{i}", "type": "events_api", "payload": {
        "event_id": f"Ev{i}", "event": {"type": "message", "text": TEXT, "channel": "C1"}}})))
        for i in range(count)]
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute("PRAGMA synchronous = NORMAL")
    cur = conn.cursor()
    started, cpu0 = time.monotonic(), time.process_time()
    for i, envelope in enumerate(frames):
        if rate:
            due = started + i / rate
            while (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
        if mode in ("sqlite3", "claim"):
            now, eid = time.time(), envelope.envelope_id
            cur.execute("BEGIN IMMEDIATE")
            cur.executemany(_INSERT_KEY, [(key, eid, now) for key in envelope.dedup_keys])
            cur.execute(_INSERT_INBOX, (eid, envelope.kind, envelope.raw_text, "w1", now + 30, now, now))
            cur.execute("COMMIT")
            if mode == "claim":
                continue
            cur.execute("BEGIN IMMEDIATE")
            cur.execute(_FINISH, ("done", None, now, eid))
            cur.execute("COMMIT")
        elif mode == "store":
            store.run_batch_now([store.claim_txn(envelope, "w1")])
            store.run_batch_now([store.finish_txn(envelope.envelope_id, [])])
    cpu = time.process_time() - cpu0
    conn.close()
    store.close()
    return cpu * 1e6 / count


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(child(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="200,1000,0")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    cfg = parser.parse_args()
    rates = [float(r) for r in cfg.rates.split(",")]
    modes = ("sqlite3", "claim", "store", "idle")
    results: dict[tuple[str, float], list[float]] = {}
    for _ in range(cfg.runs):  # interleaved: one run of every cell, then the next
        for rate in rates:
            for mode in modes:
                out = subprocess.run([sys.executable, __file__, "--child", mode, str(rate), str(cfg.seconds)],
                                     check=True, capture_output=True, text=True, env=dict(os.environ))
                results.setdefault((mode, rate), []).append(float(out.stdout))
    print(f"CPU ms per 1,000 envelopes, medians of {cfg.runs}")
    print("| rate | bare sqlite3 | claim commit alone | SqliteStore | idle pacing | store - pacing | "
          "sqlite3 - pacing | claim - pacing |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rate in rates:
        med = {mode: statistics.median(results[(mode, rate)]) for mode in modes}
        label = f"{rate:,.0f}/s" if rate else "as fast as it goes"
        print(f"| {label} | {med['sqlite3']:.0f} | {med['claim']:.0f} | {med['store']:.0f} | {med['idle']:.0f} | "
              f"{med['store'] - med['idle']:.0f} | {med['sqlite3'] - med['idle']:.0f} | "
              f"{med['claim'] - med['idle']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
