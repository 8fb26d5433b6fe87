"""What an idle worker costs the store: nothing is written while nothing changes, and a dead
peer's envelope is still re-run at once by a worker that had been idle.

Counted from the SQLite file itself: `PRAGMA data_version` on a connection of the test's own moves
once for every commit another connection made that changed the file (a commit of nothing does not
move it), whichever process made it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from buidl_edge.sandbox.harness import WorkerProcess, wait_until, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from stack_support import PROJECT_ROOT, TESTS_DIR

# The chores tick every 2 s; heartbeat refreshes and slot renewals come once a 10 s turn.
IDLE_ROUNDS = 4
# Over IDLE_ROUNDS rounds that fall inside one renewal turn: at most that turn's two writes
# (the slot renewal and the heartbeat refresh), however the rounds fall against the turn.
MAX_IDLE_WRITES = 2
LEASE_S = 3


def slow_env(sim: SimulatorProcess, state_dir: Path, **extra: Any) -> dict[str, str]:
    return worker_env(sim.api_url, BUIDL_APP="slow_app:app", BUIDL_STATE_DIR=state_dir,
                      PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(PROJECT_ROOT)]), **extra)


@contextlib.contextmanager
def workers(*envs: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started = [WorkerProcess(env, log_path=tmp_path / f"worker-{i}.log").start() for i, env in enumerate(envs)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def beat(db: sqlite3.Connection) -> dict[str, Any] | None:
    row = db.execute("SELECT stats FROM workers").fetchone()
    return None if row is None else json.loads(row[0])


def test_an_idle_worker_writes_nothing_to_the_store_while_nothing_changes(
        fresh_simulator: SimulatorProcess, tmp_path: Path) -> None:
    sim, state_dir = fresh_simulator, tmp_path / "state"
    with workers(slow_env(sim, state_dir), tmp_path=tmp_path) as [worker]:
        sim.client.wait_for(lambda s: s["open_connections"] == 1, 20, "the worker's link (its store is made before)")
        db = sqlite3.connect(state_dir / "edge.sqlite3")
        # The heartbeat that says the link is open: from here on nothing changes.
        first = wait_until(lambda: (b := beat(db)) and any(c["connected"] for c in b["connections"]) and b,
                           15, "a heartbeat with the link open")
        version = db.execute("PRAGMA data_version").fetchone()[0]
        writes = 0

        def idle_rounds_or_writes() -> bool:
            nonlocal writes
            writes = db.execute("PRAGMA data_version").fetchone()[0] - version
            rounds = ((beat(db) or {}).get("chores") or {}).get("rounds", 0) - (first.get("chores") or {}).get(
                "rounds", 0)
            return writes > MAX_IDLE_WRITES or rounds >= IDLE_ROUNDS

        wait_until(idle_rounds_or_writes, 40, f"{IDLE_ROUNDS} chore rounds, as the heartbeat counts them",
                   interval=0.05)
        assert writes <= MAX_IDLE_WRITES, (f"the idle worker wrote to the store {writes} times "
                                           f"(at most {MAX_IDLE_WRITES} a renewal turn)")
        assert worker.proc is not None and worker.proc.poll() is None, worker.output()


def test_a_live_peers_envelope_stays_with_it_past_its_first_lease_and_a_dead_ones_is_rerun_at_once(
        fresh_simulator: SimulatorProcess, tmp_path: Path) -> None:
    sim, state_dir = fresh_simulator, tmp_path / "state"
    quick = {"BUIDL_LEASE_S": LEASE_S, "BUIDL_DRAIN_TIMEOUT": 1}  # leases renewed every LEASE_S / 3 while held
    with workers(slow_env(sim, state_dir, **quick), slow_env(sim, state_dir, **quick), tmp_path=tmp_path) as pair:
        sim.client.wait_for(lambda s: s["open_connections"] == 2, 20, "both workers' links")
        (event,) = sim.client.inject("app_mention", channel="CPEER", text="slow 60")
        sim.client.wait_for(lambda s: s["acked"] == 1, 10, "the ack")
        db = sqlite3.connect(state_dir / "edge.sqlite3")

        def row() -> tuple[str, float, int] | None:
            found = db.execute("SELECT owner, lease_until, attempts FROM inbox WHERE envelope_id = ? "
                               "AND state = 'processing'", (event["envelope_id"],)).fetchone()
            return None if found is None else (str(found[0]), float(found[1]), int(found[2]))

        holder, first_lease, _ = wait_until(row, 10, "the envelope to be processing")
        # Its first lease runs out while its handler still runs: the holder's renewals keep it.
        renewed = wait_until(lambda: (r := row()) and time.time() > first_lease + 1 and r, 20,
                             "the first lease to run out, the holder still handling")
        assert renewed[0] == holder and renewed[2] == 1 and renewed[1] > first_lease, renewed
        [doomed] = [w for w in pair if holder.endswith(f":{w.pid}")]
        [survivor] = [w for w in pair if w is not doomed]
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
        # Not a lease's wait: the survivor sees its peer's pid gone at its next chore round.
        taken = wait_until(lambda: (r := row()) and r[0] != holder and r, 10, "the survivor to take the envelope over")
        assert taken[0] == f"{holder.rpartition(':')[0]}:{survivor.pid}" and taken[2] == 2, (taken, survivor.output())


def test_a_worker_started_without_flags_does_not_load_the_cli(
        fresh_simulator: SimulatorProcess, tmp_path: Path) -> None:
    """`run` starts each worker as `python -m buidl_edge worker`, no flags: click and the command
    group would be 1.3 MB of its RSS for good (issue 26). The app module, imported once the worker
    is set up, says what is loaded; a worker with flags still parses them with the CLI."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "probe_app.py").write_text(
        "import sys\n"
        "from buidl_edge import EdgeApp\n"
        "print('click loaded:', 'click' in sys.modules, flush=True)\n"
        "app = EdgeApp('probe')\n")
    env = worker_env(fresh_simulator.api_url, BUIDL_APP="probe_app:app", BUIDL_STATE_DIR=tmp_path / "state",
                     BUIDL_STORE_URL="memory://", PYTHONPATH=os.pathsep.join([str(app_dir), str(PROJECT_ROOT)]))
    with workers(env, tmp_path=tmp_path) as [plain]:
        wait_until(lambda: "click loaded:" in plain.output(), 20, "the app module's line")
        assert "click loaded: False" in plain.output(), plain.output()
    flagged = WorkerProcess(env, args=("--connections", "1"), log_path=tmp_path / "flagged.log").start()
    try:
        wait_until(lambda: "click loaded:" in flagged.output(), 20, "the app module's line")
        assert "click loaded: True" in flagged.output(), flagged.output()
    finally:
        flagged.stop()
