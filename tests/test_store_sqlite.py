"""SqliteStore and ThreadedStore against real SQLite files and real processes."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from buidl_edge.protocol import Envelope
from buidl_edge.store.base import MIN_RETENTION_S, Reply
from buidl_edge.store.errors import StoreCorrupt, StoreLocked, StoreUnavailable
from buidl_edge.store.sqlite import SCHEMA_VERSION, SqliteStore

HOST = socket.gethostname()
ME = f"{HOST}:{os.getpid()}"


def env(envelope_id: str, event_id: str | None = None, text: str = "hi") -> Envelope:
    payload = {"event": {"type": "message", "text": text}}
    if event_id:
        payload["event_id"] = event_id
    return Envelope(type="events_api", envelope_id=envelope_id, payload=payload)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "edge.db"


@pytest.fixture
def store(db: Path):
    s = SqliteStore(db)
    yield s
    s.close()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def run_py(code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).parent.parent)


# ---------------------------------------------------------------- open / schema

def test_open_creates_dir_file_wal_and_schema_version(db: Path, store: SqliteStore) -> None:
    assert db.exists()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
    conn.close()


def test_reopen_keeps_data_and_does_not_rerun_migrations(db: Path, store: SqliteStore) -> None:
    assert store.claim(env("E1"), ME)
    again = SqliteStore(db)
    try:
        assert not again.claim(env("E1"), ME)
    finally:
        again.close()


# ---------------------------------------------------------------- claims

def test_claim_new_then_duplicate(store: SqliteStore) -> None:
    assert store.claim(env("E1", "Ev1"), ME) is True
    assert store.claim(env("E1", "Ev1"), ME) is False
    row = store.inbox_row("E1")
    assert row and row["state"] == "processing" and row["owner"] == ME and row["attempts"] == 1


def test_redelivery_with_new_envelope_id_is_duplicate_by_event_id(store: SqliteStore) -> None:
    assert store.claim(env("E1", "Ev1"), ME)
    assert not store.claim(env("E2", "Ev1"), ME)
    # nothing of the loser was written, not even its env: key
    assert store.inbox_row("E2") is None
    assert store.inbox_stats()["keys"] == 2
    assert store.claim(env("E2", "Ev2"), ME)


def test_claim_key_is_once_only_and_shares_the_keys_table(store: SqliteStore) -> None:
    assert store.claim_key("job:42")
    assert not store.claim_key("job:42")
    assert store.claim(env("E1"), ME)
    assert not store.claim_key("env:E1")


def test_concurrent_claims_from_four_processes_have_one_winner_each(db: Path) -> None:
    SqliteStore(db).close()  # schema first, so the race is about claims only
    code = f"""
        import json, sys, time
        from buidl_edge.protocol import Envelope
        from buidl_edge.store.sqlite import SqliteStore
        s = SqliteStore({str(db)!r}, busy_timeout_s=10)
        start = float(sys.argv[1])
        while time.time() < start: time.sleep(0.001)
        won = [i for i in range(200) if s.claim(Envelope("events_api", f"E{{i}}",
               {{"event_id": f"Ev{{i}}", "event": {{"type": "message"}}}}), "h:%d" % __import__("os").getpid())]
        s.close()
        print(json.dumps(won))
    """
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), start], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=25)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    wins = [i for won in results for i in won]
    assert len(wins) == 200 and sorted(wins) == list(range(200))
    assert sum(1 for won in results if won) >= 2, "no actual race happened"


# ---------------------------------------------------------------- finish / outbox

def test_finish_marks_done_and_queues_replies(store: SqliteStore) -> None:
    store.claim(env("E1"), ME)
    store.finish("E1", [Reply("C1", "one"), Reply("C2", blocks=[{"type": "divider"}], thread_ts="1.2")])
    assert store.inbox_row("E1")["state"] == "done"
    rows = store.outbox_rows("E1")
    assert [(r["channel"], r["text"], r["idempotency_key"], r["state"]) for r in rows] == [
        ("C1", "one", "E1:0", "pending"), ("C2", None, "E1:1", "pending")]
    assert json.loads(rows[1]["blocks"]) == [{"type": "divider"}] and rows[1]["thread_ts"] == "1.2"
    # a second finish (a re-run after a sweep) queues nothing twice
    store.finish("E1", [Reply("C1", "one")])
    assert len(store.outbox_rows("E1")) == 2
    assert store.mark_replies_sent("E1") == 2
    assert {r["state"] for r in store.outbox_rows("E1")} == {"sent"}


def test_finish_with_error_marks_failed(store: SqliteStore) -> None:
    store.claim(env("E1"), ME)
    store.finish("E1", [], error="ValueError: boom")
    assert store.inbox_list(state="failed") == [
        {"envelope_id": "E1", "kind": "message", "state": "failed", "owner": ME, "attempts": 1,
         "received_at": pytest.approx(time.time(), abs=5), "error": "ValueError: boom"}]


def test_finish_is_one_transaction(store: SqliteStore, db: Path) -> None:
    """A reply that cannot be stored undoes the 'done' too (no done row without its replies)."""
    store.claim(env("E1"), ME)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TRIGGER no_c2 BEFORE INSERT ON outbox WHEN NEW.channel = 'C2' "
                 "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END")
    conn.commit()
    conn.close()
    with pytest.raises(StoreUnavailable):
        store.finish("E1", [Reply("C1", "ok"), Reply("C2", "boom")])
    assert store.inbox_row("E1")["state"] == "processing"
    assert store.outbox_rows("E1") == []


# ---------------------------------------------------------------- leases / sweep

def test_sweep_takes_row_of_dead_pid_on_this_host_at_once(store: SqliteStore) -> None:
    dead = f"{HOST}:{dead_pid()}"
    store.claim(env("E1", "Ev1"), dead)  # lease still 30 s away
    taken = store.sweep(ME)
    assert [e.envelope_id for e in taken] == ["E1"] and taken[0].event_id == "Ev1"
    row = store.inbox_row("E1")
    assert row["owner"] == ME and row["attempts"] == 2 and row["lease_until"] > time.time() + 20


def test_sweep_takes_expired_lease_of_live_owner_on_another_host(db: Path) -> None:
    short = SqliteStore(db, lease_s=0.0)
    other = f"elsewhere:{os.getpid()}"  # a live pid, but a host we cannot check
    short.claim(env("E1"), other)
    short.close()
    store = SqliteStore(db)
    try:
        time.sleep(0.01)
        assert [e.envelope_id for e in store.sweep(ME)] == ["E1"]
    finally:
        store.close()


def test_sweep_leaves_live_lease_and_live_owner_and_own_rows(store: SqliteStore) -> None:
    parent = f"{HOST}:{os.getppid()}"
    store.claim(env("E1"), parent)
    store.claim(env("E2"), f"elsewhere:{dead_pid()}")  # other host: only the lease counts
    store.claim(env("E3"), ME)
    assert store.sweep(ME) == []
    assert store.sweep(f"{HOST}:1") == []


def test_two_sweepers_never_take_the_same_row(db: Path) -> None:
    setup = SqliteStore(db, lease_s=0.0)
    for i in range(300):
        setup.claim(env(f"E{i}"), "gone:1")
    setup.close()
    code = f"""
        import json, os, sys, time
        from buidl_edge.store.sqlite import SqliteStore
        s = SqliteStore({str(db)!r}, busy_timeout_s=10)
        start = float(sys.argv[1])
        while time.time() < start: time.sleep(0.001)
        got = []
        while True:
            batch = s.sweep("h:%d" % os.getpid(), limit=7)
            if not batch: break
            got += [e.envelope_id for e in batch]
        print(json.dumps(got))
    """
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), start], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    got = []
    for p in procs:
        out, err = p.communicate(timeout=25)
        assert p.returncode == 0, err
        got += json.loads(out)
    assert sorted(got) == sorted(f"E{i}" for i in range(300))  # each once, none lost


def test_renew_extends_the_lease_so_sweep_leaves_it(db: Path) -> None:
    store = SqliteStore(db, lease_s=0.2)
    try:
        store.claim(env("E1"), "otherhost:1")
        before = store.inbox_row("E1")["lease_until"]
        time.sleep(0.1)
        assert store.renew("otherhost:1") == 1
        assert store.inbox_row("E1")["lease_until"] > before
        time.sleep(0.15)  # past the first lease, within the renewed one
        assert store.sweep(ME) == []
        assert store.renew("nobody:2") == 0
    finally:
        store.close()


def test_retry_hands_a_finished_row_back_to_the_sweeper(store: SqliteStore) -> None:
    store.claim(env("E1"), ME)
    store.finish("E1", [], error="boom")
    assert store.retry("E1") and not store.retry("nope")
    assert [e.envelope_id for e in store.sweep(ME)] == ["E1"]


# ---------------------------------------------------------------- prune / workers

def test_prune_drops_old_handled_rows_and_keys_only(store: SqliteStore) -> None:
    for name in ("Old", "Live", "Fresh"):
        store.claim(env(name, f"Ev{name}"), ME)
    store.finish("Old", [Reply("C", "x")])
    store.mark_replies_sent("Old")
    store.finish("Fresh", [])
    store.claim_key("k:old")
    later = time.time() + 2 * 3600
    # Old, Fresh: done; Live: processing. At +2h with 1h retention every row is "old",
    # but a processing row and its keys survive.
    dropped = store.prune(3600, now=later)
    assert dropped == 2 + 5 + 1  # inbox Old+Fresh, keys (Old 2, Fresh 2, k:old), outbox 1
    assert store.inbox_row("Old") is None and store.inbox_row("Live")["state"] == "processing"
    assert not store.claim(env("Live2", "EvLive"), ME)
    assert store.claim(env("Old", "EvOld"), ME)  # forgotten: new again


def test_prune_never_goes_below_the_retention_floor(store: SqliteStore) -> None:
    store.claim(env("E1", "Ev1"), ME)
    store.finish("E1", [])
    assert store.prune(0, now=time.time() + MIN_RETENTION_S / 2) == 0
    assert not store.claim(env("E2", "Ev1"), ME)
    assert store.prune(0, now=time.time() + MIN_RETENTION_S + 5) == 3


def test_heartbeat_upserts_and_workers_reads_back(store: SqliteStore) -> None:
    store.heartbeat("h1:10", {"acks": 1})
    store.heartbeat("h1:10", {"acks": 2, "degraded": True})
    store.heartbeat("h2:20", {"acks": 0})
    workers = {w["owner"]: w for w in store.workers()}
    assert workers["h1:10"]["stats"] == {"acks": 2, "degraded": True}
    assert workers["h1:10"]["pid"] == 10 and workers["h1:10"]["host"] == "h1" and workers["h1:10"]["degraded"]
    assert not workers["h2:20"]["degraded"]
    time.sleep(0.05)
    store.heartbeat("h2:20", {})
    assert [w["owner"] for w in store.workers(max_age_s=0.03)] == ["h2:20"]


def test_inbox_stats_counts(store: SqliteStore) -> None:
    store.claim(env("E1", "Ev1"), ME)
    store.claim(env("E2"), ME)
    store.finish("E2", [Reply("C", "x")])
    stats = store.inbox_stats()
    assert stats["processing"] == 1 and stats["done"] == 1 and stats["failed"] == 0
    assert stats["keys"] == 3 and stats["outbox_pending"] == 1
    assert 0 <= stats["oldest_processing_age_s"] < 5


# ---------------------------------------------------------------- failures

def test_corrupt_file_raises_store_corrupt_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "edge.db"
    bad.write_bytes(os.urandom(8192))
    with pytest.raises(StoreCorrupt) as info:
        SqliteStore(bad)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message


def test_path_below_a_file_raises_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreUnavailable, match="afile"):
        SqliteStore(tmp_path / "afile" / "edge.db")


def test_disk_full_raises_store_unavailable(store: SqliteStore) -> None:
    # Real SQLite behaviour: past max_page_count it reports "database or disk is full".
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreUnavailable, match="full"):
        for i in range(1000):
            store.claim(env(f"E{i}", text="x" * 3000), ME)
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.claim(env("after"), ME)  # recovers once there is room


def test_locked_database_raises_store_locked_in_bounded_time(db: Path) -> None:
    store = SqliteStore(db, busy_timeout_s=0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreLocked, match="locked") as info:
            store.claim(env("E1"), ME)
        assert time.monotonic() - started < 2.0
        assert str(db) in str(info.value)
        holder.execute("ROLLBACK")
        assert store.claim(env("E1"), ME)  # nothing half-written by the failed tries
    finally:
        holder.close()
        store.close()


def test_closed_store_raises_store_unavailable(db: Path) -> None:
    store = SqliteStore(db)
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.claim(env("E1"), ME)


# ---------------------------------------------------------------- ThreadedStore

def test_threaded_store_in_gevent_patched_process_keeps_hub_running(db: Path) -> None:
    result = run_py(f"""
        from gevent import monkey; monkey.patch_all()
        import json, threading, time, gevent
        from buidl_edge.protocol import Envelope
        from buidl_edge.store.sqlite import SqliteStore
        from buidl_edge.store.threaded import ThreadedStore
        store = ThreadedStore(SqliteStore({str(db)!r}))
        ticks = []
        def ticker():
            while True:
                ticks.append(time.perf_counter()); gevent.sleep(0.001)
        t = gevent.spawn(ticker)
        def claim(i):
            return store.claim(Envelope("events_api", f"E{{i % 100}}", {{"event": {{"type": "m"}}}}), "h:1")
        wins = sum(gevent.pool.Pool(8).map(claim, range(200)))
        workers_before = store.workers()
        t.kill(); store.close()
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        print(json.dumps({{"wins": wins, "ticks": len(ticks), "max_gap": max(gaps),
                          "threads": threading.active_count(), "lease": store.lease_s}}))
    """)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["wins"] == 100
    assert out["ticks"] > 5  # the ticker ran while claims were in flight
    assert out["max_gap"] < 0.25
    assert out["lease"] == 30.0  # plain attributes pass through


def test_threaded_store_propagates_store_errors(db: Path) -> None:
    result = run_py(f"""
        from gevent import monkey; monkey.patch_all()
        from buidl_edge.store.errors import StoreUnavailable
        from buidl_edge.store.sqlite import SqliteStore
        from buidl_edge.store.threaded import ThreadedStore
        inner = SqliteStore({str(db)!r}); inner.close()
        store = ThreadedStore(inner)
        try:
            store.claim_key("k")
        except StoreUnavailable as exc:
            print("raised", type(exc).__name__)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "raised StoreUnavailable"
