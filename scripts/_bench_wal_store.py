"""scripts/bench_wal.py --compare: the SQLite checkpointer's strategies, on the store alone.

Each (strategy, run) is a fresh child process on a fresh file: `SqliteStore` with its own
checkpointer thread, and one writer that commits like a worker does. Every TICK_S it commits the
claims of one read burst (`run_batch` of rate × TICK_S claims), then the finishes of the previous
burst, each with one reply for the outbox. When a commit is held (a RESTART holds this process's
writers), the ticks that fell due meanwhile run back to back, as a worker's backlog would.

The strategies set the module's constants before the store opens (the checkpointer reads them
when its thread starts); TRUNCATE swaps the RESTART checkpoint's mode on the checkpointer's own
connection. The size of the -wal file is read after every commit, so its maximum is exact.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from buidl_edge.sandbox.simulator.load import latency_summary  # noqa: E402
from buidl_edge.socketmode.protocol import Envelope, parse_frame  # noqa: E402

TICK_S = 0.005  # the simulator's load pacing: a burst of rate × 5 ms envelopes
TEXT = "x" * 400  # about the size of a bench envelope's frame
MB = 1024 * 1024
OUTBOX_POLL_S = 0.25  # OutboxConfig.poll_interval


@dataclass(frozen=True)
class Strategy:
    key: str
    label: str
    restart_share: float  # of WAL_SIZE_LIMIT_BYTES; 1e6: never (PASSIVE only)
    interval_s: float
    mode: str = "RESTART"
    outbox_backlog: int = 0  # replies pending, and a second thread claiming them as a lagging outbox does


STRATEGIES = (
    Strategy("passive", "(a) PASSIVE only, every 2 s (before c44de58)", 1e6, 2.0),
    Strategy("restart", "(b) PASSIVE, then RESTART past 25 % (16 MB), every 2 s (the default)", 0.25, 2.0),
    Strategy("truncate", "(c) PASSIVE, then TRUNCATE past 25 %, every 2 s", 0.25, 2.0, "TRUNCATE"),
    Strategy("fast", "(d) PASSIVE, then RESTART past 25 %, every 0.5 s", 0.25, 0.5),
    Strategy("backlog", "(e) as (b), with 150,000 replies pending, claimed 32 at a time every 0.25 s",
             0.25, 2.0, outbox_backlog=150_000),
)
DEFAULT_STRATEGIES = ("passive", "restart", "truncate", "fast")


class _Checkpoints:
    """The checkpointer's connection as `_restart_wal` uses it: its RESTART runs in `mode`, and each
    one that ran is counted (a round whose locks were not had in time runs none)."""

    def __init__(self, conn: sqlite3.Connection, mode: str, ran: list[int]) -> None:
        self._conn, self._mode, self._ran = conn, mode, ran

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql.replace("(RESTART)", f"({self._mode})"), *args)
        self._ran.append(1)
        return cursor


def child(key: str, seconds: float, rate: float) -> dict[str, Any]:
    from buidl_edge.store.base import Reply
    from buidl_edge.store.sqlite import SqliteStore, checkpoint
    from buidl_edge.store.sqlite.db import Txn

    strategy = next(s for s in STRATEGIES if s.key == key)
    checkpoint.WAL_RESTART_SHARE = strategy.restart_share
    holds: list[float] = []
    ran: list[int] = []
    restart_wal = checkpoint._restart_wal

    def timed_restart(db: Any, conn: sqlite3.Connection, pages: int, done: int) -> tuple[int, int, bool]:
        started = time.perf_counter()  # from asking for the writers' locks to letting go
        try:
            return restart_wal(db, _Checkpoints(conn, strategy.mode, ran), pages, done)  # type: ignore[arg-type]  # duck-typed connection
        finally:
            holds.append((time.perf_counter() - started) * 1000)

    checkpoint._restart_wal = timed_restart  # this child process only: the strategy under test

    path = Path(tempfile.mkdtemp(prefix="bench-wal-")) / "edge.sqlite3"
    wal = Path(f"{path}-wal")
    store = SqliteStore(path, checkpoint_interval_s=strategy.interval_s)
    outbox = _OutboxLoop(store, strategy.outbox_backlog) if strategy.outbox_backlog else None
    per_tick = max(1, round(rate * TICK_S))
    ticks = int(seconds / TICK_S)
    commits_ms: list[float] = []
    late_ms = 0.0  # the most a burst's claims were committed after they fell due
    largest = 0
    previous: list[str] = []
    cpu0, started = time.process_time(), time.monotonic()
    for tick in range(ticks):
        due = started + tick * TICK_S
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        ids = [f"E{tick}-{i}" for i in range(per_tick)]
        envelopes = [_envelope(eid) for eid in ids]
        batches: list[list[Txn]] = [[store.claim_txn(envelope, "w1") for envelope in envelopes],
                   [store.finish_txn(eid, [Reply(channel=f"C{eid}", text="ok")]) for eid in previous]]
        for number, batch in enumerate(batches):
            if not batch:
                continue
            t0 = time.perf_counter()
            store.run_batch(batch)
            commits_ms.append((time.perf_counter() - t0) * 1000)
            if number == 0:
                late_ms = max(late_ms, (time.monotonic() - due) * 1000)
            largest = max(largest, _size(wal))
        previous = ids
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu0
    outbox_ms = outbox.stop() if outbox is not None else []
    wal_at_end, db_size = _size(wal), _size(path)
    store.close()
    shutil.rmtree(path.parent, ignore_errors=True)
    claims = ticks * per_tick
    return {"strategy": key, "claims": claims, "claims_per_s": round(claims / elapsed, 1),
            "wal_max_mb": round(largest / MB, 1), "wal_end_mb": round(wal_at_end / MB, 1),
            "db_mb": round(db_size / MB, 1), "commit_ms": latency_summary(commits_ms),
            "claims_late_max_ms": round(late_ms, 1), "holds": len(holds),
            "hold_ms": latency_summary(holds), "restarts_run": len(ran),
            "outbox_claim_ms": latency_summary(outbox_ms), "cpu_ms_per_1000": round(cpu * 1e6 / claims, 1)}


class _OutboxLoop(threading.Thread):
    """`backlog` replies pending, each in its own channel, claimed 32 at a time every OUTBOX_POLL_S (an
    outbox whose posts lag: each claim reads every pending channel's head, under the store's lock)."""

    def __init__(self, store: Any, backlog: int) -> None:
        super().__init__(daemon=True)
        self.store = store
        fill_outbox(store, backlog)
        self.times_ms: list[float] = []
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        from buidl_edge.delivery.ratelimit import PostLimits

        while not self._stop_event.wait(OUTBOX_POLL_S):
            t0 = time.perf_counter()
            self.store.outbox_claim("w2", 32, PostLimits())
            self.times_ms.append((time.perf_counter() - t0) * 1000)

    def stop(self) -> list[float]:
        self._stop_event.set()
        self.join()
        return self.times_ms


def fill_outbox(store: Any, backlog: int) -> None:
    from buidl_edge.store.base import Reply

    for first in range(0, backlog, 1000):
        store.run_batch([store.finish_txn(f"R{i}", [Reply(channel=f"C{i}", text="ok")])
                         for i in range(first, min(backlog, first + 1000))])


def outbox_claim_ms(backlogs: list[int], repeats: int = 5) -> dict[int, dict[str, Any]]:
    """How long one `outbox_claim` (32 rows) takes with N replies pending, each in a channel of its
    own, as when replies fall behind events: both of its store calls hold the store's lock, which
    the checkpointer's RESTART waits for (RESTART_LOCK_WAIT_S) before it skips a round."""
    from buidl_edge.delivery.ratelimit import PostLimits
    from buidl_edge.store.sqlite import SqliteStore

    out: dict[int, dict[str, Any]] = {}
    for backlog in backlogs:
        top = Path(tempfile.mkdtemp(prefix="bench-wal-"))
        store = SqliteStore(top / "edge.sqlite3", checkpoint_interval_s=None)
        fill_outbox(store, backlog)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            store.outbox_claim("w1", 32, PostLimits(rate=1.0, burst=3.0))
            times.append((time.perf_counter() - t0) * 1000)
        store.close()
        shutil.rmtree(top, ignore_errors=True)
        out[backlog] = latency_summary(times)
        print(f"  {backlog:,} pending: outbox_claim median {statistics.median(times):,.0f} ms", flush=True)
    return out


def outbox_table(results: dict[int, dict[str, Any]]) -> str:
    return "\n".join(["| replies pending | outbox_claim ms p50 / max |", "| ---: | ---: |"] + [
        f"| {n:,} | {r['p50']:,.1f} / {r['max']:,.1f} |" for n, r in results.items()])


def _envelope(eid: str) -> Envelope:
    """An events_api message as a worker reads it off its link (with its raw text, as stored)."""
    envelope = parse_frame(json.dumps({"envelope_id": eid, "type": "events_api", "payload": {
        "event_id": f"Ev{eid}", "event": {"type": "message", "text": TEXT, "channel": f"C{eid}"}}}))
    assert isinstance(envelope, Envelope)
    return envelope


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def compare(runs: int, seconds: float, rate: float, keys: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every strategy once per run, interleaved (run 1 of all, then run 2, …), each in a fresh child."""
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    for run in range(1, runs + 1):
        for key in keys:
            out = subprocess.run([sys.executable, __file__, "--child", key, str(seconds), str(rate)], check=True,
                                 capture_output=True, text=True, env=dict(os.environ))
            result = json.loads(out.stdout)
            results[key].append(result)
            print(f"  run {run} {key}: WAL max {result['wal_max_mb']} MB, commit p99 "
                  f"{result['commit_ms']['p99']} ms, max {result['commit_ms']['max']} ms, "
                  f"{result['holds']} holds", flush=True)
    return results


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(numbers) if numbers else None


def _cell(runs: list[dict[str, Any]], path: str, digits: int = 1) -> str:
    def get(run: dict[str, Any]) -> Any:
        value: Any = run
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    median = _median([get(run) for run in runs])
    return "–" if median is None else f"{median:,.{digits}f}"


def compare_table(results: dict[str, list[dict[str, Any]]], seconds: float, rate: float) -> str:
    labels = {s.key: s.label for s in STRATEGIES}
    runs = len(next(iter(results.values())))
    lines = [(f"Store alone: {rate:,.0f} claims/s in bursts every {TICK_S * 1000:g} ms (claims, then the last "
              f"burst's finishes with one reply each), {seconds:g} s per run; medians of {runs} interleaved runs."),
             "", ("| strategy | WAL max MB | WAL at end MB | commit ms p50 / p99 / max | claims late, max ms "
                  "| rounds past 25 % (checkpoints run): writers held ms p50 / max | CPU ms per 1,000 claims |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, rs in results.items():
        commit = " / ".join(_cell(rs, f"commit_ms.{stat}", 2) for stat in ("p50", "p99", "max"))
        holds = (f"{_cell(rs, 'holds', 0)} ({_cell(rs, 'restarts_run', 0)}): "
                 f"{_cell(rs, 'hold_ms.p50')} / {_cell(rs, 'hold_ms.max')}")
        lines.append(f"| {labels[key]} | {_cell(rs, 'wal_max_mb')} | {_cell(rs, 'wal_end_mb')} | {commit} | "
                     f"{_cell(rs, 'claims_late_max_ms')} | {holds} | {_cell(rs, 'cpu_ms_per_1000', 0)} |")
    lines += ["", "Per run (WAL max MB; commit max ms): " + "; ".join(
        f"{key} " + " / ".join(f"{r['wal_max_mb']}" for r in rs) + "; "
        + " / ".join(f"{r['commit_ms']['max']}" for r in rs) for key, rs in results.items())]
    lines += [f"{labels[key]}: one outbox claim took {_cell(rs, 'outbox_claim_ms.p50', 0)} ms (median; max "
              f"{_cell(rs, 'outbox_claim_ms.max', 0)})." for key, rs in results.items()
              if rs[0].get("outbox_claim_ms", {}).get("count")]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))))
        sys.exit(0)
    sys.exit("run scripts/bench_wal.py --compare")
