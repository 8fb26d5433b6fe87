"""SqliteStore and ThreadedStore against real SQLite files and real processes."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from buidl_edge.store.base import Reply
from buidl_edge.store.errors import StoreCorrupt, StoreLocked, StoreRejected, StoreUnavailable
from buidl_edge.store.sqlite import SqliteStore
from buidl_edge.store.sqlite.schema import SCHEMA_VERSION
from support import ME, envelope as env, inbox_state, outbox_rows


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "edge.db"


@pytest.fixture
def store(db: Path):
    s = SqliteStore(db)
    yield s
    s.close()


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


# ---------------------------------------------------------------- finish / outbox

def test_finish_is_one_transaction(store: SqliteStore, db: Path) -> None:
    """A reply that cannot be stored undoes the 'done' too (no done row without its replies)."""
    store.claim(env("E1"), ME)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TRIGGER no_c2 BEFORE INSERT ON outbox WHEN NEW.channel = 'C2' "
                 "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END")
    conn.commit()
    conn.close()
    with pytest.raises(StoreRejected):  # this call's data was refused; the store itself works
        store.finish("E1", [Reply("C1", "ok"), Reply("C2", "boom")])
    assert inbox_state(store, "E1") == "processing"
    assert outbox_rows(store, "E1") == []


# ---------------------------------------------------------------- stats

def test_inbox_stats_counts(store: SqliteStore) -> None:
    store.claim(env("E1", "Ev1"), ME)
    store.claim(env("E2"), ME)
    store.finish("E2", [Reply("C", "x")])
    stats = store.inbox_stats()
    assert stats["processing"] == 1 and stats["done"] == 1 and stats["failed"] == 0
    assert stats["keys"] == 2 and "outbox_pending" not in stats  # the outbox has stats of its own
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
        # Bounded: a few tries of its busy timeout each, as the error says, not SQLite's default wait.
        with pytest.raises(StoreLocked, match=r"stayed locked after \d+ tries of 0\.05s") as info:
            store.claim(env("E1"), ME)
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
        import json, threading, gevent, gevent.pool
        from buidl_edge.socketmode.protocol import Envelope
        from buidl_edge.sandbox.stallprobe import HubTicker
        from buidl_edge.store.sqlite import SqliteStore
        from buidl_edge.store.threaded import ThreadedStore
        store = ThreadedStore(SqliteStore({str(db)!r}))
        probe = HubTicker().start()
        def claim(i):
            return store.claim(Envelope("events_api", f"E{{i % 100}}", {{"event": {{"type": "m"}}}}), "h:1")
        wins = sum(gevent.pool.Pool(8).map(claim, range(200)))
        workers_before = store.workers()
        probe.stop(); store.close()
        print(json.dumps({{"wins": wins, "ticks": probe.ticks, "max_gap": probe.max_gap,
                          "threads": threading.active_count(), "lease": store.inner.lease_s}}))
    """)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["wins"] == 100
    # The ticker ran while claims were in flight; how long the hub's longest stall is,
    # scripts/bench_store.py measures (threaded mode).
    assert out["ticks"] > 5
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


# ---------------------------------------------------------------- group commit

def test_run_batch_keeps_each_claim_atomic_and_dedups_within_the_batch(store: SqliteStore) -> None:
    store.claim(env("E0", "Ev0"), ME)
    txns = [store.claim_txn(env("E1", "Ev1"), ME),
            store.claim_txn(env("E2", "Ev1"), ME),   # Slack's retry of E1 in the same burst
            store.claim_txn(env("E3", "Ev0"), ME),   # retry of an event claimed earlier
            store.claim_txn(env("E4"), ME),
            store.finish_txn("E1", [Reply("C1", "hi")])]
    assert store.run_batch(txns) == [True, False, False, True, None]
    assert store.inbox_row("E2") is None and store.inbox_row("E3") is None
    assert inbox_state(store, "E1") == "done"
    assert len(outbox_rows(store, "E1")) == 1


def test_group_commit_under_concurrent_greenlets_gives_one_winner_per_event(db: Path) -> None:
    result = run_py(f"""
        from gevent import monkey; monkey.patch_all()
        import gevent.pool
        from buidl_edge.socketmode.protocol import Envelope
        from buidl_edge.store.sqlite import SqliteStore
        from buidl_edge.store.threaded import ThreadedStore
        store = ThreadedStore(SqliteStore({str(db)!r}))
        def claim(i):
            # 3 envelopes per event, as Slack's retries would be
            return store.claim(Envelope("events_api", f"E{{i}}", {{"event_id": f"Ev{{i // 3}}",
                                                                 "event": {{"type": "m"}}}}), "h:1")
        wins = gevent.pool.Pool(100).map(claim, range(900))
        store.close()
        print(sum(wins))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "300"


LONE = "\udc00"  # a lone surrogate: what json.loads makes of "\udc00", which UTF-8 cannot hold


def test_run_batch_fails_only_the_item_that_raises_whatever_it_raises(store: SqliteStore) -> None:
    def half_written_then_broken(cur: sqlite3.Cursor) -> None:
        cur.execute("INSERT INTO keys(key, envelope_id, created_at) VALUES ('half', 'E?', 0)")
        raise KeyError("a bug inside a transaction body")

    def broken(cur: sqlite3.Cursor) -> None:
        raise RuntimeError("not a sqlite3 error")

    results = store.run_batch([store.claim_txn(env("E1", "Ev1"), ME),
                               store.claim_txn(env(f"E{LONE}", f"Ev{LONE}", text=LONE), ME),
                               half_written_then_broken,
                               broken,
                               store.finish_txn("E1", [Reply("C1", "hi")]),
                               store.claim_txn(env("E2"), ME)])
    assert results[:2] == [True, True] and results[4:] == [None, True]
    for failed, kind in ((results[2], "KeyError"), (results[3], "RuntimeError")):
        assert isinstance(failed, StoreRejected) and failed.kind == kind and str(store.path) in str(failed)
    assert inbox_state(store, "E1") == "done" and len(outbox_rows(store, "E1")) == 1
    assert inbox_state(store, f"E{LONE}") == "processing" and store.inbox_row("E2") is not None
    assert store.claim_key("half")  # its item was rolled back: the key it wrote is not there


def test_an_unclassified_failure_is_logged_once_per_kind_and_counted(store: SqliteStore,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    from buidl_edge.store.errors import rejected_counts

    def broken(cur: sqlite3.Cursor) -> None:
        raise LookupError("the same bug, again and again")

    before = rejected_counts["LookupError"]
    with caplog.at_level("ERROR", logger="buidl_edge.store"):
        results = [store.run_batch([broken])[0] for _ in range(3)]
    assert rejected_counts["LookupError"] == before + 3
    assert [r.first for r in results] == [before == 0, False, False]
    lines = [r for r in caplog.records if "LookupError" in r.getMessage()]
    assert len(lines) == (1 if before == 0 else 0) and all(r.levelname == "ERROR" for r in lines)
    with pytest.raises(StoreRejected):  # a call on its own, outside a batch: a value sqlite3 cannot bind
        store.claim_key({"not": "a str"})  # type: ignore[arg-type]  # not a str on purpose
    assert store.claim(env("E1"), ME)  # and the store goes on working


def test_group_commit_fails_only_the_caller_whose_item_fails(db: Path) -> None:
    """A burst of concurrent claims through ThreadedStore (one group commit serves many): envelopes
    with lone surrogates in their ids are claimed like any other, and one that cannot be stored at
    all (a payload that is not JSON, so nothing to keep) fails its own caller with a StoreError only."""
    result = run_py(f"""
        from gevent import monkey; monkey.patch_all()
        import json
        import gevent.pool
        from buidl_edge.socketmode.protocol import Envelope
        from buidl_edge.store.errors import StoreRejected
        from buidl_edge.store.sqlite import SqliteStore
        from buidl_edge.store.threaded import ThreadedStore
        store = ThreadedStore(SqliteStore({str(db)!r}))
        LONE = "\\udc00"
        def claim(i):
            eid = f"E{{LONE}}{{i}}" if i % 10 == 3 else f"E{{i}}"
            payload = {{"event_id": f"Ev{{LONE if i % 10 == 7 else ''}}{{i}}", "event": {{"type": "m"}}}}
            if i == 25:
                payload["event"]["text"] = {{1, 2}}  # a set: no JSON for it
            try:
                return store.claim(Envelope("events_api", eid, payload), "h:1")
            except StoreRejected as exc:
                return exc.kind
        results = gevent.pool.Pool(60).map(claim, range(60))
        rows = store.inbox_list(limit=100)
        store.close()
        print(json.dumps({{"results": results, "rows": len(rows)}}))
    """)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["results"] == [True] * 25 + ["TypeError"] + [True] * 34
    assert data["rows"] == 59


# ---------------------------------------------------------------- private files


@pytest.fixture
def umask_022():
    old = os.umask(0o022)  # the usual umask: what made the store world-readable
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_store_is_private_from_the_start_dirs_0700_files_0600(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "deep" / "state" / "edge.db"
    before = mode(tmp_path)
    store = SqliteStore(db)
    try:
        store.claim(env("E1"), ME)  # a write: the WAL and its index exist now
        assert mode(tmp_path / "deep") == 0o700 and mode(db.parent) == 0o700
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert path.exists() and mode(path) == 0o600, (path, oct(mode(path)))
    finally:
        store.close()
    assert mode(tmp_path) == before  # not ours: left as it was


def test_an_existing_store_left_world_readable_is_tightened_but_its_dir_is_left_alone(
        tmp_path: Path, umask_022: None) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    db = state / "edge.db"
    SqliteStore(db, checkpoint_interval_s=None).close()
    old = sqlite3.connect(db)  # as an older version left it: 0644, WAL files beside it
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE IF NOT EXISTS t(x)")
    old.execute("INSERT INTO t VALUES (1)")
    old.commit()
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        os.chmod(path, 0o644)
    store = SqliteStore(db)
    try:
        assert mode(db) == 0o600 and mode(Path(f"{db}-wal")) == 0o600 and mode(Path(f"{db}-shm")) == 0o600
        assert mode(state) == 0o755  # a directory we did not make is not ours to chmod
    finally:
        store.close()
        old.close()


def test_opening_without_create_never_makes_a_file_or_a_dir(tmp_path: Path) -> None:
    from buidl_edge.store.errors import StoreMissing

    db = tmp_path / "nowhere" / "edge.db"
    with pytest.raises(StoreMissing, match=r"no store at .*nowhere/edge.db: check that BUIDL_STATE_DIR"):
        SqliteStore(db, create=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreMissing):
        SqliteStore(tmp_path / "empty" / "edge.db", create=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty"]
    SqliteStore(db).close()  # a worker makes it...
    again = SqliteStore(db, create=False)  # ...and then an admin command opens it
    again.close()


def test_the_wal_stays_within_its_size_limit_under_commits_that_never_pause(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpointer must reset the WAL even though a commit lands during every checkpoint (a
    PASSIVE one alone never could: the WAL grew to 426 MB at 300 envelopes/s). Scaled down: a 4 MB
    limit, a checkpoint every 50 ms, and a commit of 16 claims every 2 ms (8,000 claims/s)."""
    from buidl_edge.store.sqlite import db as sqlite_db

    limit = 4 * 1024 * 1024
    monkeypatch.setattr(sqlite_db, "WAL_SIZE_LIMIT_BYTES", limit)
    store = SqliteStore(db, checkpoint_interval_s=0.05)
    wal = Path(f"{db}-wal")
    largest = 0
    written = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # one writer that never pauses for long, as a busy worker
            store.run_batch([store.claim_txn(env(f"E{written + i}", f"Ev{written + i}", text="x" * 400), ME)
                             for i in range(16)])
            written += 16
            largest = max(largest, wal.stat().st_size)
            time.sleep(0.002)
    finally:
        store.close()
    one_batch = 64 * 4096  # what one commit of 16 claims may add past the limit
    assert written > 5_000, "too few commits to prove anything"
    assert largest <= limit + one_batch, f"WAL reached {largest / 1024:.0f} KB (limit {limit / 1024:.0f} KB)"


def test_a_wal_that_outgrows_its_share_between_rounds_is_restarted_before_the_next_round(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpointer counts the WAL's frames every 0.1 s between its rounds: a WAL that holds
    more than its share of the limit is restarted then, not a round later (at 1,000 events/s with
    replies, 2 s rounds let it reach 87 MB). Scaled down: a 4 MB limit, rounds every 30 s (none
    within the test), a commit of 16 claims every 10 ms."""
    from buidl_edge.store.sqlite import db as sqlite_db

    limit = 4 * 1024 * 1024
    monkeypatch.setattr(sqlite_db, "WAL_SIZE_LIMIT_BYTES", limit)
    store = SqliteStore(db, checkpoint_interval_s=30.0)
    wal = Path(f"{db}-wal")
    largest = written = 0
    try:
        while written < 3_200:  # about 2 s of commits
            store.run_batch([store.claim_txn(env(f"E{written + i}", f"Ev{written + i}", text="x" * 400), ME)
                             for i in range(16)])
            written += 16
            largest = max(largest, wal.stat().st_size)
            time.sleep(0.01)
    finally:
        store.close()
    assert largest <= limit, f"WAL reached {largest / 1024:.0f} KB (limit {limit / 1024:.0f} KB)"
