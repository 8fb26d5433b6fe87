"""GroupCommit in this process: claims from many greenlets share commits on a real SQLite file,
each item stays atomic on its own, the hub runs while a commit waits on its thread, and a write
that cannot wait is made on the hub itself.

The batches are counted by handing GroupCommit the store's own `run_batch` through a recorder
that can also hold a commit on its thread (with a native lock: the thread is a real one).
"""
from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent.monkey import get_original
from gevent.threadpool import ThreadPool

from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.errors import StoreError, StoreRejected
from buidl_edge.store.group_commit import MAX_BATCH, NOT_NOW, GroupCommit
from buidl_edge.store.sqlite import SqliteStore
from buidl_edge.store.threaded import ThreadedStore
from support import ME, envelope, inbox_state

NativeEvent = get_original("threading", "Event")


class Recorder:
    """The store's run_batch, recording each batch's size; `hold()` makes the next commit wait."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.sizes: list[int] = []
        self.committing = NativeEvent()
        self.release = NativeEvent()
        self.release.set()

    def hold(self) -> None:
        self.release.clear()

    def __call__(self, txns: list[Any]) -> list[Any]:
        self.sizes.append(len(txns))
        self.committing.set()
        self.release.wait(10)
        return self.store.run_batch(txns)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None)
    yield s
    s.close()


@pytest.fixture
def batcher(store: SqliteStore) -> Iterator[tuple[GroupCommit, Recorder]]:
    pool = ThreadPool(1)
    recorder = Recorder(store)
    commits = GroupCommit(pool, recorder)
    yield commits, recorder
    recorder.release.set()
    commits.stop()
    pool.kill()


def claims(commits: GroupCommit, store: SqliteStore, ids: list[str]) -> list[gevent.Greenlet]:
    return [gevent.spawn(commits.submit, store.claim_txn(envelope(i), ME)) for i in ids]


def counting_hub_commits(pool: ThreadPool, recorder: Recorder, store: SqliteStore
                         ) -> tuple[GroupCommit, list[int]]:
    """A GroupCommit as ThreadedStore builds it, with the size of each batch tried on the hub."""
    hub_batches: list[int] = []

    def run_now(txns: list[Any]) -> list[Any] | None:
        hub_batches.append(len(txns))
        return store.run_batch_now(txns)

    return GroupCommit(pool, recorder, run_now), hub_batches


def held_claim(commits: GroupCommit, recorder: Recorder, store: SqliteStore, envelope_id: str) -> gevent.Greenlet:
    """A claim whose commit is under way on the thread and held there until `recorder.release`."""
    recorder.hold()
    [claim] = claims(commits, store, [envelope_id])
    wait_native(recorder.committing, "a commit on its thread")
    return claim


def stop_while_committing(commits: GroupCommit, recorder: Recorder) -> None:
    stopper = gevent.spawn(commits.stop)
    gevent.sleep(0.05)  # stop() is waiting on the commit's thread
    recorder.release.set()
    stopper.join(timeout=5)


def wait_native(event: Any, what: str) -> None:
    for _ in range(500):
        if event.is_set():
            return
        gevent.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_claims_that_arrive_together_share_one_commit_of_at_most_max_batch(
        batcher: tuple[GroupCommit, Recorder], store: SqliteStore) -> None:
    commits, recorder = batcher
    ids = [f"E{i}" for i in range(MAX_BATCH + 36)]
    first = claims(commits, store, ids)
    again = claims(commits, store, ids[:10])  # the same envelopes: dedup inside one burst
    gevent.joinall(first + again, raise_error=True)
    assert [g.value for g in first] == [True] * len(ids)
    assert [g.value for g in again] == [False] * 10
    assert recorder.sizes == [MAX_BATCH, len(ids) + 10 - MAX_BATCH]
    assert store.inbox_row("E0") is not None and store.inbox_row(ids[-1]) is not None


def test_claims_that_arrive_while_a_commit_runs_go_into_the_next_one_together(
        batcher: tuple[GroupCommit, Recorder], store: SqliteStore) -> None:
    commits, recorder = batcher
    lone = held_claim(commits, recorder, store, "E-first")
    # The hub is free while that commit waits: these greenlets run and queue behind it.
    later = claims(commits, store, [f"E{i}" for i in range(30)])
    gevent.sleep(0.1)
    assert all(not g.ready() for g in later) and recorder.sizes == [1]
    recorder.release.set()
    gevent.joinall([lone, *later], raise_error=True)
    assert recorder.sizes == [1, 30]
    assert lone.value is True and all(g.value is True for g in later)


def test_an_item_that_fails_fails_only_its_own_caller(batcher: tuple[GroupCommit, Recorder],
                                                      store: SqliteStore) -> None:
    commits, recorder = batcher
    unstorable = Envelope("events_api", "E-set", {"event_id": "Ev-set", "event": {"type": "m", "text": {1, 2}}})
    good = claims(commits, store, ["E1", "E2"])
    bad = gevent.spawn(commits.submit, store.claim_txn(unstorable, ME))
    more = claims(commits, store, ["E3"])
    gevent.joinall([*good, bad, *more])
    assert isinstance(bad.exception, StoreRejected)
    assert [g.value for g in good + more] == [True, True, True]
    assert recorder.sizes == [4]
    assert store.inbox_row("E-set") is None and store.claim_key("Ev-set")  # nothing of it was kept


def test_stop_fails_the_claims_still_queued(batcher: tuple[GroupCommit, Recorder], store: SqliteStore) -> None:
    commits, recorder = batcher
    held_claim(commits, recorder, store, "E-running")  # its callers: see the xfail below
    queued = claims(commits, store, ["E-queued-1", "E-queued-2"])
    gevent.sleep(0.05)
    stop_while_committing(commits, recorder)
    gevent.joinall(queued, timeout=5)
    assert all(isinstance(g.exception, StoreError) and "closed" in str(g.exception) for g in queued)
    assert store.inbox_row("E-queued-1") is None


def test_a_lone_claim_is_written_on_the_hub_and_a_busy_database_sends_the_burst_to_the_thread(
        tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None, hub_writes=True)  # a worker's
    pool = ThreadPool(1)
    recorder = Recorder(store)
    commits = GroupCommit(pool, recorder, store.run_batch_now)  # as ThreadedStore builds it
    other_process = sqlite3.connect(tmp_path / "edge.db", isolation_level=None)
    try:
        assert commits.submit(store.claim_txn(envelope("E-lone"), ME)) is True
        assert recorder.sizes == []  # nothing was writing: no hand-off to the thread
        other_process.execute("BEGIN IMMEDIATE")  # another writer holds the database
        burst = claims(commits, store, [f"E{i}" for i in range(20)])
        gevent.sleep(0.1)  # the hub never waits on that lock: the claims queue meanwhile
        assert not any(g.ready() for g in burst)
        other_process.execute("COMMIT")
        gevent.joinall(burst, raise_error=True)
        assert all(g.value is True for g in burst)
        assert sum(recorder.sizes) == 20 and len(recorder.sizes) <= 2  # a burst, not 20 commits
    finally:
        other_process.close()
        commits.stop()
        pool.kill()
        store.close()


def test_stop_during_a_commit_still_answers_the_callers_of_that_commit(
        batcher: tuple[GroupCommit, Recorder], store: SqliteStore) -> None:
    commits, recorder = batcher
    running = held_claim(commits, recorder, store, "E-running")
    stop_while_committing(commits, recorder)
    running.join(timeout=3)
    assert store.inbox_row("E-running") is not None  # the batch did commit
    assert running.ready(), "the caller of a committed claim still waits"


def test_threaded_store_routes_claim_and_finish_through_the_group_commit(tmp_path: Path) -> None:
    threaded = ThreadedStore(SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None))
    try:
        won = gevent.joinall([gevent.spawn(threaded.claim, envelope(f"E{i % 5}", f"Ev{i % 5}"), ME)
                              for i in range(20)], raise_error=True)
        assert Counter(g.value for g in won) == {False: 15, True: 5}
        gevent.joinall([gevent.spawn(threaded.finish, f"E{i}", []) for i in range(5)], raise_error=True)
        assert {inbox_state(threaded, f"E{i}") for i in range(5)} == {"done"}
    finally:
        threaded.close()


def test_a_readers_burst_is_one_commit_on_the_hub_and_waits_while_a_batch_is_on_the_thread(
        tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None, hub_writes=True)  # a worker's
    pool = ThreadPool(1)
    recorder = Recorder(store)
    commits, hub_batches = counting_hub_commits(pool, recorder, store)
    try:
        burst = [store.claim_txn(envelope(f"E{i}"), ME) for i in range(20)]
        burst.append(store.claim_txn(envelope("E0"), ME))  # Slack's retry inside the same read
        assert commits.submit_now(burst) == [True] * 20 + [False]
        assert hub_batches == [21]
        recorder.hold()
        with pytest.MonkeyPatch.context() as patch:  # make the next batch go to the thread
            patch.setattr(store, "run_batch_now", lambda txns: None)
            [on_thread] = claims(commits, store, ["E-thread"])
            wait_native(recorder.committing, "a commit on its thread")
        # Arrival order: a burst read meanwhile is not written ahead of the batch on the thread.
        assert commits.submit_now([store.claim_txn(envelope("E-later"), ME)]) is NOT_NOW
        assert store.inbox_row("E-later") is None
        recorder.release.set()
        on_thread.join(timeout=5)
        assert on_thread.value is True
    finally:
        recorder.release.set()
        commits.stop()
        pool.kill()
        store.close()


def test_finishes_of_handlers_that_end_in_the_same_loop_turn_share_one_commit_on_the_hub(
        tmp_path: Path) -> None:
    """Under load the handlers of one read burst end one after another in the same turn of the
    hub's loop: their finishes go into one commit, not one each (a lone finish still commits at
    once, in that same turn, so the kill -9 window does not widen)."""
    store = SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None, hub_writes=True)  # a worker's
    pool = ThreadPool(1)
    commits, hub_batches = counting_hub_commits(pool, Recorder(store), store)
    try:
        ids = [f"E{i}" for i in range(30)]
        assert commits.submit_now([store.claim_txn(envelope(i), ME) for i in ids]) == [True] * 30
        hub_batches.clear()
        handlers = [gevent.spawn(commits.submit, store.finish_txn(i, [])) for i in ids]
        gevent.joinall(handlers, raise_error=True)
        assert hub_batches == [30]
        assert {inbox_state(store, i) for i in ids} == {"done"}

        hub_batches.clear()
        assert commits.submit(store.claim_txn(envelope("E-lone"), ME)) is True
        assert hub_batches == [1]
    finally:
        commits.stop()
        pool.kill()
        store.close()


def test_a_burst_that_waited_for_a_busy_database_is_claimed_in_one_commit_with_each_item_on_its_own(
        tmp_path: Path) -> None:
    """When the hub cannot write (another process holds the lock), the reader hands the whole
    burst to one greenlet: `ThreadedStore.claim_many` queues it as one batch, not N commits."""
    threaded = ThreadedStore(SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None))
    other_process = sqlite3.connect(tmp_path / "edge.db", isolation_level=None)
    batches: list[int] = []
    run_batch = threaded.inner.run_batch
    try:
        with pytest.MonkeyPatch.context() as patch:
            def counted_run_batch(txns: list[Any]) -> list[Any]:
                batches.append(len(txns))
                return run_batch(txns)

            patch.setattr(threaded._batcher, "_run_batch", counted_run_batch)
            other_process.execute("BEGIN IMMEDIATE")
            unstorable = Envelope("events_api", "E-set", {"event": {"type": "m", "text": {1, 2}}})
            burst = [envelope(f"E{i}", f"Ev{i}") for i in range(20)] + [envelope("E-retry", "Ev3"), unstorable]
            claimer = gevent.spawn(threaded.claim_many, burst, ME)
            gevent.sleep(0.1)
            assert not claimer.ready()  # waits for the lock, off the hub
            other_process.execute("COMMIT")
            outcomes = claimer.get(timeout=10)
        assert outcomes[:21] == [True] * 20 + [False]  # Slack's retry in the same burst: a duplicate
        assert isinstance(outcomes[21], StoreRejected)  # fails alone; the rest of the batch stands
        assert batches == [22]
        assert threaded.inbox_row("E19") is not None and threaded.inbox_row("E-set") is None
    finally:
        other_process.close()
        threaded.close()


def test_a_claim_queued_behind_a_backlog_of_finishes_goes_into_the_next_commit_ahead_of_them(
        tmp_path: Path) -> None:
    """Under load, the finishes of many handlers queue while a batch is on the thread. A burst's
    claims that queue after them are written first: the ack waits for one commit, not for the
    handlers' backlog (which, past BUIDL_CLAIM_WAIT_S, made load alone read as a degraded store)."""
    threaded = ThreadedStore(SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None))
    other_process = sqlite3.connect(tmp_path / "edge.db", isolation_level=None)
    ids = [f"E{i}" for i in range(3 * MAX_BATCH)]
    decided: list[str] = []
    try:
        assert threaded.claim_many([envelope(i) for i in ids], ME) == [True] * len(ids)
        other_process.execute("BEGIN IMMEDIATE")  # the hub cannot write: everything queues
        finishes = [gevent.spawn(threaded.finish, i, []) for i in ids]
        gevent.sleep(0.05)  # every handler ended and waits for its finish
        claimer = gevent.spawn(threaded.claim_many, [envelope("E-new")], ME)
        waiting: list[gevent.Greenlet] = [*finishes, claimer]
        def decided_when_done(greenlet: gevent.Greenlet, name: str) -> None:
            greenlet.link(lambda _: decided.append(name))

        for greenlet, name in zip(waiting, [*ids, "E-new"]):
            decided_when_done(greenlet, name)
        gevent.sleep(0.05)
        other_process.execute("COMMIT")
        gevent.joinall(waiting, raise_error=True, timeout=10)
        assert claimer.value == [True]
        waited_for = decided.index("E-new")
        # At most for the batch already on the thread when it came.
        assert waited_for <= MAX_BATCH, f"the claim waited for {waited_for} finishes queued ahead of it"
    finally:
        other_process.close()
        threaded.close()


def test_a_backlog_of_finishes_is_written_on_the_hub_a_batch_at_a_time_with_the_readers_claims_between(
        tmp_path: Path) -> None:
    """A backlog of finishes (they queued while the database was busy) is written on the hub at most
    MAX_BATCH at a time, and a reader's claim gets in between two of those commits: it used to wait
    until the whole backlog was written, on the hub, in one go (hub blocked 0.1 s at 3,000/s)."""
    store = SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None, hub_writes=True)  # a worker's
    pool = ThreadPool(1)
    recorder = Recorder(store)
    hub_free = [True]
    hub_batches: list[int] = []

    def run_now(txns: list[Any]) -> list[Any] | None:
        if not hub_free[0]:
            return None
        hub_batches.append(len(txns))
        return store.run_batch_now(txns)

    commits = GroupCommit(pool, recorder, run_now)
    ids = [f"E{i}" for i in range(3 * MAX_BATCH)]
    try:
        assert commits.submit_now([store.claim_txn(envelope(i), ME) for i in ids]) == [True] * len(ids)
        hub_free[0] = False  # the database is busy: the finishes queue, one batch on the thread
        recorder.hold()
        finishes = [gevent.spawn(commits.submit, store.finish_txn(i, [])) for i in ids]
        wait_native(recorder.committing, "a batch of finishes on the thread")
        hub_free[0] = True
        hub_batches.clear()
        readers_commit: list[int] = []

        def reader() -> None:  # a read burst arrives as soon as the hub is free
            while not hub_batches:
                gevent.sleep(0)
            assert commits.submit_now([store.claim_txn(envelope("E-new"), ME)]) == [True]
            readers_commit.append(hub_batches[-1])

        waiting: list[gevent.Greenlet] = [*finishes, gevent.spawn(reader)]
        recorder.release.set()
        gevent.joinall(waiting, raise_error=True, timeout=10)
        assert {inbox_state(store, i) for i in ids} == {"done"}
        assert max(hub_batches) <= MAX_BATCH + 1, f"hub commits of {hub_batches} items"
        assert readers_commit and readers_commit[0] > 1, "the whole backlog was written before the claim"
    finally:
        recorder.release.set()
        commits.stop()
        pool.kill()
        store.close()
