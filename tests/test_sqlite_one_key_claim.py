"""The SQLite claim's one random-key insert (issue 26): one dedup key a claim (the event id for
events_api, the envelope id otherwise), the inbox keyed by rowid, its rows found again without an
index on envelope ids, and a file of the schema before it migrated on open with its rows and dedup."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import DeliveryOutcome, Reply
from buidl_edge.store.sqlite import SqliteStore
from buidl_edge.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from support import ME, dead_pid, envelope as env, inbox_state, outbox_rows

# The schema this change migrates from, and how that version's claim wrote (its SQL as shipped).
V6 = 6
_V6_KEY = "INSERT INTO keys(key, envelope_id, created_at) VALUES (?, ?, ?)"
_V6_ROW = ("INSERT INTO inbox(envelope_id, kind, envelope, state, owner, lease_until, attempts, received_at, "
           "updated_at, error) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?)")


def slash(envelope_id: str) -> Envelope:
    return Envelope(type="slash_commands", envelope_id=envelope_id, payload={"command": "/deploy"})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "edge.db"


@pytest.fixture
def store(db: Path) -> Any:
    s = SqliteStore(db)
    yield s
    s.close()


def unique_indexes(db: Path, table: str) -> list[str]:
    """Indexes SQLite keeps unique on the table (its own for a TEXT primary key among them)."""
    conn = sqlite3.connect(db)
    try:
        return [row[1] for row in conn.execute(f"PRAGMA index_list({table})") if row[2]]
    finally:
        conn.close()


def test_a_claim_takes_one_dedup_key_and_the_inbox_has_no_random_key_index(db: Path, store: Any) -> None:
    for i in range(10):
        assert store.claim(env(f"E{i}", f"Ev{i}"), ME)
    assert store.claim(slash("S1"), ME)
    # One b-tree insert at a random key a claim: its dedup key. The row itself goes at the end.
    assert store.inbox_stats()["keys"] == 11
    assert unique_indexes(db, "inbox") == []
    # Dedup is what it was: the event id for events_api, the envelope id for the rest.
    assert not store.claim(env("E10", "Ev3"), ME)
    assert not store.claim(env("E3", "Ev3"), ME)
    assert not store.claim(slash("S1"), ME)
    assert store.claim(env("E11"), ME) and not store.claim(env("E11"), ME)


def test_a_finish_sweep_or_relay_from_another_store_finds_its_row(db: Path, store: Any) -> None:
    """No envelope id index: a store object that did not claim the row finds it among those in flight."""
    other = SqliteStore(db)
    try:
        assert store.claim(env("E1", "Ev1"), ME)
        other.finish("E1", [Reply("C1", "done")])
        assert inbox_state(store, "E1") == "done"
        assert [r.text for r in outbox_rows(store, "E1")] == ["done"]
        store.finish("E1", [Reply("C1", "done")], error="late")  # a second finish changes nothing
        assert inbox_state(store, "E1") == "done" and len(outbox_rows(store, "E1")) == 1

        gone = f"{ME.rsplit(':', 1)[0]}:{dead_pid()}"
        assert other.claim(slash("S1"), gone)
        assert [e.envelope_id for e in store.sweep(ME)] == ["S1"]
        store.finish("S1", [], error="boom")
        assert inbox_state(other, "S1") == "failed"

        assert store.claim(env("E2", "Ev2"), ME)
        assert other.relay_enqueue("E2", ME, "C9")
        [taken] = store.relay_claim(ME, 10).rows
        assert taken.envelope.envelope_id == "E2"
        assert other.relay_settle("E2", ME, DeliveryOutcome("sent"))
        assert inbox_state(store, "E2") == "done"
    finally:
        other.close()


def make_v6_file(path: Path, owner_gone: str) -> None:
    """A store file as the version before this one left it: its shipped migrations, and rows its
    claim and finish wrote (both dedup keys of an events_api envelope, the inbox keyed by envelope id)."""
    path.parent.mkdir(mode=0o700)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for statements in MIGRATIONS[:V6]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {V6}")
    now = time.time()
    rows = [("E1", "Ev1", "done", ME, None), ("E2", "Ev2", "processing", owner_gone, now + 30),
            ("S1", None, "failed", ME, None)]
    for eid, event_id, state, owner, lease in rows:
        envelope = env(eid, event_id) if event_id else slash(eid)
        for key in envelope.dedup_keys:
            conn.execute(_V6_KEY, (key, eid, now))
        conn.execute(_V6_ROW, (eid, envelope.kind, envelope_text(envelope), state, owner, lease, now, now,
                               "boom" if state == "failed" else None))
    conn.execute("COMMIT")
    conn.close()


def envelope_text(envelope: Envelope) -> str:
    return json.dumps(envelope.to_dict(), separators=(",", ":"))


def test_a_file_of_the_schema_before_migrates_on_open_and_keeps_its_rows_and_dedup(db: Path) -> None:
    gone = f"{ME.rsplit(':', 1)[0]}:{dead_pid()}"
    make_v6_file(db, gone)
    assert unique_indexes(db, "inbox") == ["sqlite_autoindex_inbox_1"]
    store = SqliteStore(db)
    try:
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION > V6
        conn.close()
        assert unique_indexes(db, "inbox") == []
        rows = {r["envelope_id"]: r for r in store.inbox_list()}
        assert {e: (r["state"], r["owner"], r["error"]) for e, r in rows.items()} == {
            "E1": ("done", ME, None), "E2": ("processing", gone, None), "S1": ("failed", ME, "boom")}
        # The keys the old claims took still dedup: a retry with a new envelope id, a redelivery.
        assert not store.claim(env("E7", "Ev1"), ME)
        assert not store.claim(env("E8", "Ev2"), ME)
        assert not store.claim(slash("S1"), ME)
        assert store.claim(env("E9", "Ev9"), ME)
        # The old processing row of a dead worker is swept and finished through its new rowid.
        assert [e.envelope_id for e in store.sweep(ME)] == ["E2"]
        store.finish("E2", [Reply("C1", "again")])
        assert inbox_state(store, "E2") == "done"
        assert store.retry("S1") and inbox_state(store, "S1") == "processing"
    finally:
        store.close()
    again = SqliteStore(db)  # a second open migrates nothing
    try:
        assert not again.claim(env("E10", "Ev9"), ME)
    finally:
        again.close()


def test_an_open_waits_out_another_process_migrating_the_file(db: Path) -> None:
    """Copying a big inbox takes seconds (200,000 rows: ~5 s): a process opening the file then waits
    for it instead of giving up after its usual lock wait, which would stop its worker from starting."""
    make_v6_file(db, ME)
    migrating = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    migrating.execute("BEGIN IMMEDIATE")  # what another process's migration holds meanwhile
    released = threading.Timer(1.0, migrating.execute, ("COMMIT",))
    released.start()
    try:
        store = SqliteStore(db, busy_timeout_s=0.1)
    finally:
        released.join()
        migrating.close()
    try:
        assert not store.claim(env("E7", "Ev1"), ME)
        assert unique_indexes(db, "inbox") == []
    finally:
        store.close()
