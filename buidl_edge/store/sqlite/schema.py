"""The SQLite store's schema: its migrations, applied in order, and the version they reach.

The version lives in `PRAGMA user_version`; a file newer than this code is refused.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from buidl_edge.store.errors import StoreError

# Each entry moves the schema from version i to i + 1. Never edit a shipped
# entry; append a new one. Statements run one by one inside BEGIN IMMEDIATE
# (executescript would commit behind our back).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # WITHOUT ROWID: one b-tree per key instead of two, on the hot path.
        # No created_at index either: only prune scans by age, rarely.
        """CREATE TABLE keys (
               key TEXT PRIMARY KEY,
               envelope_id TEXT NOT NULL,
               created_at REAL NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE inbox (
               envelope_id TEXT PRIMARY KEY,
               kind TEXT NOT NULL,
               envelope TEXT NOT NULL,
               state TEXT NOT NULL,
               owner TEXT NOT NULL,
               lease_until REAL,
               attempts INTEGER NOT NULL DEFAULT 1,
               received_at REAL NOT NULL,
               updated_at REAL NOT NULL,
               error TEXT)""",
        # Partial: only in-flight rows, which is what renew/sweep look at.
        "CREATE INDEX inbox_processing ON inbox(owner, lease_until) WHERE state = 'processing'",
        """CREATE TABLE outbox (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               envelope_id TEXT NOT NULL,
               channel TEXT NOT NULL,
               text TEXT,
               blocks TEXT,
               thread_ts TEXT,
               idempotency_key TEXT NOT NULL UNIQUE,
               state TEXT NOT NULL DEFAULT 'pending',
               attempts INTEGER NOT NULL DEFAULT 0,
               next_attempt_at REAL NOT NULL,
               created_at REAL NOT NULL,
               sent_at REAL,
               error TEXT)""",
        "CREATE INDEX outbox_envelope ON outbox(envelope_id)",
        "CREATE INDEX outbox_due ON outbox(state, next_attempt_at)",
        """CREATE TABLE workers (
               owner TEXT PRIMARY KEY,
               pid INTEGER NOT NULL,
               host TEXT NOT NULL,
               updated_at REAL NOT NULL,
               stats TEXT NOT NULL,
               degraded INTEGER NOT NULL DEFAULT 0)""",
    ),
    (
        # The outbox sender (buidl_edge/delivery/outbox.py): a lease for rows in flight, Slack's ts,
        # and the token buckets every process spends from.
        "ALTER TABLE outbox ADD COLUMN lease_owner TEXT",
        "ALTER TABLE outbox ADD COLUMN lease_until REAL",
        "ALTER TABLE outbox ADD COLUMN updated_at REAL",
        "ALTER TABLE outbox ADD COLUMN ts TEXT",
        "ALTER TABLE outbox ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0",
        "DROP INDEX outbox_due",
        # Partial: the unsent rows only, which is all the claim query reads (each channel's head).
        "CREATE INDEX outbox_unsent ON outbox(channel, id) WHERE state IN ('pending', 'sending')",
        "CREATE INDEX outbox_state ON outbox(state, id)",
        """CREATE TABLE post_buckets (
               key TEXT PRIMARY KEY,
               tokens REAL NOT NULL,
               updated_at REAL NOT NULL,
               paused_until REAL NOT NULL DEFAULT 0) WITHOUT ROWID""",
    ),
    (
        # Connection slots (see store/slots.py): one row per open Socket Mode link, leased.
        """CREATE TABLE slots (
               holder TEXT PRIMARY KEY,
               expires_at REAL NOT NULL) WITHOUT ROWID""",
    ),
    (
        # Relay mode (store/sqlite/relay.py): the inbox is also the queue of deliveries to the
        # backend. A row's queue (its channel), when its next attempt is due, attempts made.
        "ALTER TABLE inbox ADD COLUMN order_key TEXT",
        "ALTER TABLE inbox ADD COLUMN next_attempt_at REAL",
        "ALTER TABLE inbox ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0",
        # Partial: the undelivered rows only, which is all that relay_claim reads (each queue's head).
        ("CREATE INDEX inbox_relay ON inbox(order_key, received_at) "
         "WHERE order_key IS NOT NULL AND state IN ('pending', 'processing')"),
    ),
    (
        # Streamed answers (store/sqlite/streams.py): each stream's Slack ts and how far it got,
        # and one token bucket per stream method for the app.
        """CREATE TABLE streams (
               stream_id TEXT PRIMARY KEY,
               envelope_id TEXT NOT NULL,
               owner TEXT NOT NULL,
               channel TEXT NOT NULL,
               thread_ts TEXT NOT NULL,
               ts TEXT,
               sent_chars INTEGER NOT NULL,
               messages INTEGER NOT NULL,
               state TEXT NOT NULL,
               updated_at REAL NOT NULL) WITHOUT ROWID""",
        "CREATE INDEX streams_envelope ON streams(envelope_id) WHERE state = 'open'",
        """CREATE TABLE stream_buckets (
               key TEXT PRIMARY KEY,
               tokens REAL NOT NULL,
               updated_at REAL NOT NULL,
               paused_until REAL NOT NULL DEFAULT 0) WITHOUT ROWID""",
    ),
    (
        # Each channel's oldest unsent outbox row, kept by triggers, so that a claim reads the first
        # heads by due time (an index) instead of every pending channel's: with replies lagging at
        # 1,000 events/s that read held the store's lock 1.1 s at 100,000 pending.
        """CREATE TABLE outbox_heads (
               channel TEXT PRIMARY KEY,
               id INTEGER NOT NULL,
               sendable INTEGER NOT NULL,
               due REAL NOT NULL) WITHOUT ROWID""",
        "CREATE INDEX outbox_heads_due ON outbox_heads(sendable, due)",
        # A new row is its channel's head only when the channel has none (ids only grow).
        """CREATE TRIGGER outbox_heads_insert AFTER INSERT ON outbox
               WHEN NEW.state IN ('pending', 'sending') BEGIN
               INSERT OR IGNORE INTO outbox_heads(channel, id, sendable, due)
                   VALUES (NEW.channel, NEW.id, NEW.state = 'pending', NEW.next_attempt_at);
           END""",
        # Any change of an unsent row (taken, settled, retried, cancelled) or to one: the head again.
        """CREATE TRIGGER outbox_heads_update AFTER UPDATE OF state, next_attempt_at ON outbox
               WHEN OLD.state IN ('pending', 'sending') OR NEW.state IN ('pending', 'sending') BEGIN
               DELETE FROM outbox_heads WHERE channel = NEW.channel;
               INSERT INTO outbox_heads(channel, id, sendable, due)
                   SELECT channel, id, state = 'pending', next_attempt_at
                   FROM outbox INDEXED BY outbox_unsent
                   WHERE channel = NEW.channel AND state IN ('pending', 'sending') ORDER BY id LIMIT 1;
           END""",
        """CREATE TRIGGER outbox_heads_delete AFTER DELETE ON outbox
               WHEN OLD.state IN ('pending', 'sending') BEGIN
               DELETE FROM outbox_heads WHERE channel = OLD.channel;
               INSERT INTO outbox_heads(channel, id, sendable, due)
                   SELECT channel, id, state = 'pending', next_attempt_at
                   FROM outbox INDEXED BY outbox_unsent
                   WHERE channel = OLD.channel AND state IN ('pending', 'sending') ORDER BY id LIMIT 1;
           END""",
        """INSERT INTO outbox_heads(channel, id, sendable, due)
               SELECT channel, id, state = 'pending', next_attempt_at FROM outbox
               WHERE id IN (SELECT MIN(id) FROM outbox WHERE state IN ('pending', 'sending') GROUP BY channel)""",
    ),
    (
        # One random-key b-tree insert per claim (issue 26): the inbox is keyed by its rowid, so a
        # claim appends its row at the table's end instead of inserting it at a random envelope id
        # (and the claim now takes one dedup key, not two: see Envelope.claim_key in socketmode/protocol.py).
        # The rows are copied in arrival order; the keys table is kept as it is, so every key an
        # older version took (`env:` and `evt:` alike) still dedups after the move.
        """CREATE TABLE inbox_by_rowid (
               id INTEGER PRIMARY KEY,
               envelope_id TEXT NOT NULL,
               kind TEXT NOT NULL,
               envelope TEXT NOT NULL,
               state TEXT NOT NULL,
               owner TEXT NOT NULL,
               lease_until REAL,
               attempts INTEGER NOT NULL DEFAULT 1,
               received_at REAL NOT NULL,
               updated_at REAL NOT NULL,
               error TEXT,
               order_key TEXT,
               next_attempt_at REAL,
               deliveries INTEGER NOT NULL DEFAULT 0)""",
        """INSERT INTO inbox_by_rowid(envelope_id, kind, envelope, state, owner, lease_until, attempts,
                                      received_at, updated_at, error, order_key, next_attempt_at, deliveries)
               SELECT envelope_id, kind, envelope, state, owner, lease_until, attempts,
                      received_at, updated_at, error, order_key, next_attempt_at, deliveries
               FROM inbox ORDER BY received_at""",
        "DROP TABLE inbox",  # and its indexes, made again below on the new table
        "ALTER TABLE inbox_by_rowid RENAME TO inbox",
        "CREATE INDEX inbox_processing ON inbox(owner, lease_until) WHERE state = 'processing'",
        ("CREATE INDEX inbox_relay ON inbox(order_key, received_at) "
         "WHERE order_key IS NOT NULL AND state IN ('pending', 'processing')"),
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_behind(cur: sqlite3.Cursor) -> bool:
    """The file has migrations still to run (a read: no lock)."""
    return bool(cur.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION)


def migrate(cur: sqlite3.Cursor, path: Path) -> None:
    """Bring the file up to SCHEMA_VERSION. Run inside BEGIN IMMEDIATE so that two processes
    opening at once migrate once."""
    version = cur.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"store {path} has schema v{version}, newer than this code (v{SCHEMA_VERSION})")
    for target in range(version, SCHEMA_VERSION):
        for statement in MIGRATIONS[target]:
            cur.execute(statement)
        cur.execute(f"PRAGMA user_version = {target + 1}")
