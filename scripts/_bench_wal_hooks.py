"""scripts/bench_wal.py: what the bench changes in its workers' checkpointer, and what it reads back.

The workers import nothing of the bench: a sitecustomize.py on their PYTHONPATH adjusts
`buidl_edge.store.sqlite.checkpoint` once it is loaded, without importing the store (or anything
gevent patches) before the worker starts:
- BENCH_WAL_RESTART_SHARE sets WAL_RESTART_SHARE (1e6: never RESTART, PASSIVE only);
- BENCH_WAL_TRACE_DIR logs every `wal_checkpoint` the checkpointer runs, one JSON line each in
  ckpt-<pid>.jsonl: when, its mode, how long it took, the WAL's frames just before (counted from
  the -wal file as the checkpointer counts them) and SQLite's answer (busy, WAL frames, frames
  checkpointed; -1, -1 when another connection held the checkpoint lock).
"""
from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

MB = 1024 * 1024
FRAME_BYTES = 4096 + 24

WORKER_HOOKS = """import importlib.machinery, json, os, sys, time


def _traced(loop, trace_dir):
    from pathlib import Path
    from buidl_edge.store.sqlite.wal_file import wal_frames

    log = open(os.path.join(trace_dir, f"ckpt-{os.getpid()}.jsonl"), "a", buffering=1)

    def traced_loop(db, interval_s, limit):
        connect, wal = db._connect, Path(f"{db.path}-wal")

        class Traced:
            def __init__(self, conn):
                self.conn = conn

            def close(self):
                self.conn.close()

            def execute(self, sql, *args):
                if "wal_checkpoint" not in sql:
                    return self.conn.execute(sql, *args)
                started, frames = time.time(), wal_frames(wal)
                row = self.conn.execute(sql, *args).fetchone()
                log.write(json.dumps({"pid": os.getpid(), "t": started, "mode": sql.split("(")[-1].rstrip(")"),
                                      "ms": round((time.time() - started) * 1000, 2), "frames": frames,
                                      "result": list(row)}) + "\\n")

                class Answer:
                    def fetchone(self):
                        return row

                return Answer()

        db._connect = lambda: Traced(connect())
        return loop(db, interval_s, limit)

    return traced_loop


class _BenchHooks(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "buidl_edge.store.sqlite.checkpoint":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if "BENCH_WAL_RESTART_SHARE" in os.environ:
                module.WAL_RESTART_SHARE = float(os.environ["BENCH_WAL_RESTART_SHARE"])
            if "BENCH_WAL_TRACE_DIR" in os.environ:
                module.checkpoint_loop = _traced(module.checkpoint_loop, os.environ["BENCH_WAL_TRACE_DIR"])

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _BenchHooks)
"""


def hooks_env(top: Path, paths: list[str], restart_share: float | None, trace: bool) -> dict[str, str]:
    """The workers' environment for the hooks asked for (none: just `paths` on PYTHONPATH)."""
    env: dict[str, str] = {}
    if restart_share is not None:
        env["BENCH_WAL_RESTART_SHARE"] = str(restart_share)
    if trace:
        (top / "trace").mkdir()
        env["BENCH_WAL_TRACE_DIR"] = str(top / "trace")
    if env:
        site = top / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(WORKER_HOOKS)
        paths = [str(site), *paths]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def read_trace(trace_dir: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for path in sorted(trace_dir.glob("ckpt-*.jsonl"))
               for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: r["t"])


def trace_table(records: list[dict[str, Any]]) -> str:
    """Per process and mode: checkpoints run, how many SQLite answered busy (and of those, how many
    found the checkpoint lock held by another connection), the WAL just before, the time each took."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["pid"], record["mode"])].append(record)
    lines = [("| process | mode | run | busy (checkpoint lock held elsewhere) | WAL before, MB p50 / max "
              "| WAL frames not copied, max | ms p50 / max |"), "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (pid, mode), group in sorted(groups.items()):
        busy = [r for r in group if r["result"][0]]
        locked = [r for r in busy if r["result"][1] == -1]
        before = [r["frames"] * FRAME_BYTES / MB for r in group]
        left = max((r["result"][1] - r["result"][2] for r in group if r["result"][1] >= 0), default=0)
        ms = [r["ms"] for r in group]
        lines.append(f"| {pid} | {mode} | {len(group):,} | {len(busy)} ({len(locked)}) "
                     f"| {statistics.median(before):.1f} / {max(before):.1f} | {left:,} "
                     f"| {statistics.median(ms):.1f} / {max(ms):.1f} |")
    return "\n".join(lines)
