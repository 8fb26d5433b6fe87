"""The SQLite outbox's claim reads a bounded number of channel heads, whatever the backlog.

When replies fall behind (1,000 events/s, each in a channel of its own) every pending channel has a
head; a claim that read them all held the store's lock for 1.1 s at 100,000 pending, so the
checkpointer skipped its RESTART and claims queued behind it. The work one claim does is counted in
SQLite's own VM steps (a progress handler on the store's connection), not in wall time.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from buidl_edge.delivery.ratelimit import PostLimits
from buidl_edge.store.base import Reply
from buidl_edge.store.sqlite import SqliteStore
from buidl_edge.store.sqlite.schema import MIGRATIONS

STEP = 100  # the progress handler is called every STEP VM instructions


def claim_steps(tmp_path: Path, pending: int) -> tuple[int, int]:
    """(VM steps of one 32-row outbox_claim with `pending` replies each in its own channel, rows taken)."""
    store = SqliteStore(tmp_path / f"edge-{pending}.sqlite3", checkpoint_interval_s=None)
    try:
        for first in range(0, pending, 1000):
            store.run_batch([store.finish_txn(f"R{i}", [Reply(channel=f"C{i:06d}", text="ok")])
                             for i in range(first, min(pending, first + 1000))])
        calls = [0]

        def count() -> int:
            calls[0] += 1
            return 0

        store._conn.set_progress_handler(count, STEP)
        claimed = store.outbox_claim("w1", 32, PostLimits(rate=1.0, burst=3.0))
        store._conn.set_progress_handler(None, STEP)
        return calls[0] * STEP, len(claimed.rows)
    finally:
        store.close()


def test_one_claim_does_about_the_same_work_with_20000_replies_pending_as_with_1000(tmp_path: Path) -> None:
    small, taken_small = claim_steps(tmp_path, 1_000)
    large, taken_large = claim_steps(tmp_path, 20_000)
    assert taken_small == taken_large == 32
    assert large < 2 * small, f"{small:,} VM steps at 1,000 pending, {large:,} at 20,000"


def test_a_file_from_before_the_heads_table_gets_its_pending_replies_claimed(tmp_path: Path) -> None:
    """Opening a file at the previous schema builds the heads of the rows already queued."""
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    for migration in MIGRATIONS[:-1]:
        for statement in migration:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    for i, channel in enumerate(["CA", "CA", "CB"]):
        conn.execute("INSERT INTO outbox(envelope_id, channel, text, idempotency_key, next_attempt_at, created_at) "
                     "VALUES (?, ?, ?, ?, 0, 0)", (f"E{i}", channel, f"t{i}", f"k{i}"))
    conn.close()
    store = SqliteStore(db, checkpoint_interval_s=None)
    try:
        first = store.outbox_claim("w1", 10, PostLimits(rate=10.0, burst=10.0)).rows
        assert sorted(row.text or "" for row in first) == ["t0", "t2"]  # one head per channel
    finally:
        store.close()
