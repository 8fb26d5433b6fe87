"""What one idle chores' round costs a worker with the SQLite store: counted from the real parts.

An idle worker's hub wakes every 2 s for the chores (runtime/chores.py); what a round does then is
most of what a dyno pays for an idle bot. Here a real worker (SQLite file, simulator link) is up
and idle, its timer is stopped, and the test runs its 2 s chores' rounds itself, counting:

- reads of the store's change token: SQLite's `PRAGMA data_version` on the hub connection, as its
  own trace callback sees each statement;
- listings of the spill directory (`os.listdir`), as Python's audit hook sees each one;
- whole snapshots of the worker built for its heartbeat (the check needs only a few figures).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent

from buidl_edge.api.app import EdgeApp
from buidl_edge.config import Settings
from buidl_edge.runtime.chores import Chores
from buidl_edge.runtime.worker import Worker
from buidl_edge.sandbox.harness import wait_until
from buidl_edge.sandbox.simulator.client import SimulatorClient
from buidl_edge.store import open_store
from buidl_edge.store.spill_files import spill_dir

ROUNDS = 5
# The chores of the idle tick: those of a renewal turn (10 s) and the prune (60 s) come less often.
IDLE_TICK_S = 2.0

_listed: list[str] = []


def _count_listings(event: str, args: tuple[Any, ...]) -> None:
    if event == "os.listdir" and _listed and args:
        _listed.append(os.fsdecode(args[0]))


sys.addaudithook(_count_listings)  # cannot be removed: it counts only while a test arms it


def renewal_turn(worker: Worker, chores: Chores) -> None:
    """Make every chore due now: the round of a renewal turn, whose heartbeat refresh writes (its
    last publish was a turn ago, not at start-up)."""
    for chore in chores.chores:
        chore.due_at = 0.0
    worker.beat._last_at = -1e9


@contextlib.contextmanager
def idle_worker(settings: Settings, sim: SimulatorClient) -> Iterator[tuple[Worker, Chores]]:
    """A real worker up and linked, past its first chores' round, with its timer stopped: the test
    runs the rounds itself."""
    worker = Worker(settings, EdgeApp("idle"), store=open_store(settings))
    runner = gevent.spawn(worker.run)
    try:
        sim.wait_for(lambda s: s["open_connections"] == 1, 10, "the worker's link")
        wait_until(lambda: worker.up and worker.chores is not None and worker.chores.rounds >= 1, 10,
                   "the worker up, its chores past their first round")
        chores = worker.chores
        assert chores is not None
        chores.stop()
        yield worker, chores
    finally:
        worker.request_stop()
        runner.join(timeout=15)


def idle_tick_only(chores: Chores) -> None:
    """Make the idle tick's chores due now and the others not before the test ends."""
    for chore in chores.chores:
        chore.due_at = 0.0 if chore.interval_s <= IDLE_TICK_S else math.inf


def test_an_idle_round_reads_the_change_token_once_lists_the_spill_directory_once_and_builds_no_snapshot(
        settings_for: Callable[..., Settings], sim: SimulatorClient) -> None:
    settings = settings_for()
    with idle_worker(settings, sim) as (worker, chores):
        idle_tick_only(chores)
        chores.run_due()  # a round that settles anything the start left (a first heartbeat)

        hub_connection = worker.store.inner._hub_cur.connection  # type: ignore[attr-defined]
        token_reads: list[str] = []
        hub_connection.set_trace_callback(lambda sql: token_reads.append(sql) if "data_version" in sql else None)
        snapshots = 0
        real_snapshot = worker.beat.snapshot

        def counted_snapshot() -> dict[str, Any]:
            nonlocal snapshots
            snapshots += 1
            return real_snapshot()

        worker.beat.snapshot = counted_snapshot
        spill = str(spill_dir(settings.state_dir))
        _listed[:] = ["(armed)"]
        try:
            for _ in range(ROUNDS):
                idle_tick_only(chores)
                chores.run_due()
        finally:
            hub_connection.set_trace_callback(None)
            listings = [path for path in _listed[1:] if Path(path) == Path(spill)]
            _listed.clear()

        assert len(token_reads) == ROUNDS, (
            f"{len(token_reads)} reads of the change token in {ROUNDS} idle rounds (one a round, shared by the chores)")
        assert len(listings) <= ROUNDS, (
            f"{len(listings)} listings of the spill directory in {ROUNDS} idle rounds (at most one a round)")
        assert snapshots == 0, f"{snapshots} snapshots of the worker built in {ROUNDS} idle rounds (nothing to publish)"


def test_a_renewal_turn_costs_one_look_at_the_leases_not_one_more_for_its_own_writes(
        settings_for: Callable[..., Settings], sim: SimulatorClient) -> None:
    """The turn's own writes (heartbeat, slots) move SQLite's change token; the sweep watch must
    look after them, not before the last, or the next round looks again for nothing."""
    with idle_worker(settings_for(), sim) as (worker, chores):
        renewal_turn(worker, chores)
        chores.run_due()
        for _ in range(ROUNDS):  # settle: whatever start-up left is looked at
            idle_tick_only(chores)
            chores.run_due()
        looks = worker.sweeps.looks
        renewal_turn(worker, chores)
        chores.run_due()
        for _ in range(ROUNDS):
            idle_tick_only(chores)
            chores.run_due()
        assert worker.sweeps.looks - looks <= 1, (
            f"{worker.sweeps.looks - looks} looks at the leases for one renewal turn and {ROUNDS} idle rounds")
