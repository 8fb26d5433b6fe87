"""The SQLite outbox: the queue of replies, the token buckets every process spends from, and the
leases of rows in flight (see buidl_edge/delivery/outbox.py for the sender that drives these)."""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from buidl_edge.delivery.ratelimit import GLOBAL_KEY, Bucket, PostLimits, channel_key, pause, plan
from buidl_edge.store.base import Claimed, DeliveryOutcome, OutboxRow, Reply, blocks_json, idempotency_keys
from buidl_edge.store.sqlite.binding import bind, unbind
from buidl_edge.store.sqlite.db import SqliteDb

INSERT_OUTBOX = """INSERT INTO outbox(envelope_id, channel, text, blocks, thread_ts, idempotency_key,
                                      next_attempt_at, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(idempotency_key) DO NOTHING"""

OUTBOX_COLS = ("id, channel, text, blocks, thread_ts, idempotency_key, state, attempts, next_attempt_at, "
               "created_at, envelope_id, error, lease_owner, lease_until, sent_at, ts, rate_limited")
# The channel heads not in flight, earliest due first, at most HEADS_READ of them: outbox_heads
# (schema.py) holds each channel's oldest unsent row, kept by triggers, and its (sendable, due)
# index serves this read, so a claim costs the same with 100 or 100,000 channels waiting.
_OUTBOX_HEADS = f"""SELECT {', '.join('o.' + c.strip() for c in OUTBOX_COLS.split(','))}
    FROM outbox_heads AS h INDEXED BY outbox_heads_due JOIN outbox AS o ON o.id = h.id
    WHERE h.sendable = 1 ORDER BY h.due LIMIT ?"""
# Heads read per claim, as a multiple of the rows it may take: room for heads whose channel has
# no token yet (they wait their turn among the first by due time).
HEADS_PER_ROW = 8
MIN_HEADS_READ = 256
_OUTBOX_TAKE = ("UPDATE outbox SET state = 'sending', lease_owner = ?, lease_until = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE id = ? AND state = 'pending'")
_BUCKET_UPSERT = ("INSERT INTO post_buckets(key, tokens, updated_at, paused_until) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT(key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at, "
                  "paused_until = excluded.paused_until")


class SqliteOutbox(SqliteDb):
    _outbox_busy = False  # the last outbox_claim took rows: skip its read-only look next time

    def outbox_enqueue(self, replies: Sequence[Reply], envelope_id: str = "",
                       keys: Sequence[str] | None = None) -> list[int]:
        """Queue messages sent outside a handler (`send_message`, `buidl-edge send`).

        Without `keys` each row gets a random idempotency key; with them, a key
        already queued is not queued again and its existing row id is returned.
        """
        now = time.time()
        keys = idempotency_keys(replies, keys)

        def txn(cur: sqlite3.Cursor) -> list[int]:
            rows = [reply_row(envelope_id, r, key, now) for r, key in zip(replies, keys)]
            ids = []
            for row in rows:
                cur.execute(INSERT_OUTBOX, row)
                ids.append(cur.execute("SELECT id FROM outbox WHERE idempotency_key = ?", (row[5],)).fetchone()[0])
            return ids

        return self._run(txn, write=True)

    def outbox_claim(self, owner: str, limit: int, limits: PostLimits,
                     lease_s: float | None = None) -> Claimed[OutboxRow]:
        """Take the sendable channel heads (see `ratelimit.plan`) in one write transaction.

        A read-only pass first: when nothing is sendable (the common case while
        a channel waits for its token) no write lock is taken at all.
        """
        lease = self.lease_s if lease_s is None else lease_s
        if limit <= 0:
            return Claimed([], None)
        heads_read = max(MIN_HEADS_READ, HEADS_PER_ROW * limit)

        def decide(cur: sqlite3.Cursor, now: float) -> tuple[list[OutboxRow], dict[str, Bucket], float | None]:
            heads = [to_outbox_row(r) for r in cur.execute(_OUTBOX_HEADS, (heads_read,)).fetchall()]
            if not heads:
                return [], {}, None
            wanted = sorted({channel_key(h.channel) for h in heads} | {GLOBAL_KEY})
            buckets: dict[str, Bucket] = {}
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                for key, tokens, updated, paused in cur.execute(
                        f"SELECT key, tokens, updated_at, paused_until FROM post_buckets "
                        f"WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                    buckets[key] = Bucket(tokens, updated, paused)
            decision = plan(heads, buckets, now, limits, limit)
            return decision.chosen, decision.changed, decision.next_at

        if not self._outbox_busy:  # idle or waiting on tokens: look before taking the write lock
            peek, _, next_at = self._run(lambda cur: decide(cur, time.time()), write=False)
            if not peek:
                return Claimed([], next_at)

        def txn(cur: sqlite3.Cursor) -> Claimed[OutboxRow]:
            now = time.time()
            chosen, changed, next_at = decide(cur, now)
            taken = []
            for row in chosen:
                cur.execute(_OUTBOX_TAKE, (owner, now + lease, now, row.id))
                if cur.rowcount == 1:
                    taken.append(replace(row, state="sending", attempts=row.attempts + 1, lease_owner=owner,
                                         lease_until=now + lease))
            cur.executemany(_BUCKET_UPSERT, [(k, b.tokens, b.updated, b.paused_until) for k, b in changed.items()])
            return Claimed(taken, next_at)

        claimed = self._run(txn, write=True)
        self._outbox_busy = bool(claimed.rows)
        return claimed

    def outbox_settle(self, row_id: int, owner: str, outcome: DeliveryOutcome) -> OutboxRow | None:
        """Record a post's end, only while the row is still ours and in flight."""

        def txn(cur: sqlite3.Cursor) -> OutboxRow | None:
            now = time.time()
            cur.execute(f"SELECT {OUTBOX_COLS} FROM outbox WHERE id = ? AND state = 'sending' AND lease_owner = ?",
                        (row_id, owner))
            found = cur.fetchone()
            if found is None:
                return None
            row = to_outbox_row(found)
            if outcome.kind == "sent":
                cur.execute("UPDATE outbox SET state = 'sent', sent_at = ?, ts = ?, lease_until = NULL, "
                            "updated_at = ? WHERE id = ?", (now, outcome.ts, now, row_id))
            elif outcome.kind == "failed":
                cur.execute("UPDATE outbox SET state = 'failed', error = ?, lease_until = NULL, updated_at = ? "
                            "WHERE id = ?", (outcome.error, now, row_id))
            elif outcome.kind == "retry":
                cur.execute("UPDATE outbox SET state = 'pending', error = ?, next_attempt_at = ?, lease_owner = NULL, "
                            "lease_until = NULL, updated_at = ? WHERE id = ?",
                            (outcome.error, outcome.retry_at, now, row_id))
            else:  # ratelimited: not an attempt; pause the bucket Slack said was empty
                cur.execute("UPDATE outbox SET state = 'pending', error = ?, next_attempt_at = ?, "
                            "attempts = MAX(0, attempts - 1), rate_limited = rate_limited + 1, lease_owner = NULL, "
                            "lease_until = NULL, updated_at = ? WHERE id = ?",
                            (outcome.error, outcome.retry_at, now, row_id))
                key = GLOBAL_KEY if outcome.pause == "global" else channel_key(row.channel)
                old = cur.execute("SELECT tokens, updated_at, paused_until FROM post_buckets WHERE key = ?",
                                  (key,)).fetchone()
                paused = pause(Bucket(*old) if old else None, now, outcome.retry_at)
                cur.execute(_BUCKET_UPSERT, (key, paused.tokens, paused.updated, paused.paused_until))
            cur.execute(f"SELECT {OUTBOX_COLS} FROM outbox WHERE id = ?", (row_id,))
            return to_outbox_row(cur.fetchone())

        return self._run(txn, write=True)

    def outbox_renew(self, owner: str, lease_s: float | None = None) -> int:
        lease_until = time.time() + (self.lease_s if lease_s is None else lease_s)

        def txn(cur: sqlite3.Cursor) -> int:
            cur.execute("UPDATE outbox SET lease_until = ? WHERE state = 'sending' AND lease_owner = ?",
                        (lease_until, owner))
            return cur.rowcount

        return self._run(txn, write=True)

    def outbox_recover(self, owner: str) -> int:
        """Rows left `sending` by a dead process (same host) or past their lease go back to pending.

        Uses the sweep's liveness test. The attempt that was in flight still counts:
        it may have reached Slack (the double-post window README describes).
        """

        def suspects(cur: sqlite3.Cursor) -> list[str]:
            now = time.time()
            rows = cur.execute("SELECT lease_owner, MIN(lease_until) FROM outbox WHERE state = 'sending' "
                               "AND lease_owner != ? GROUP BY lease_owner", (owner,)).fetchall()
            return [o for o, until in rows if (until is not None and until < now) or self._is_dead_local(o)]

        if not self._run(suspects, write=False):
            return 0

        def txn(cur: sqlite3.Cursor) -> int:
            now = time.time()
            dead = [o for o in suspects(cur) if self._is_dead_local(o)]
            marks = ",".join("?" * len(dead))
            dead_clause = f" OR lease_owner IN ({marks})" if dead else ""
            cur.execute("UPDATE outbox SET state = 'pending', error = 'in flight when its sender died', "
                        "next_attempt_at = ?, lease_until = NULL, updated_at = ? "
                        f"WHERE state = 'sending' AND lease_owner != ? AND (lease_until < ?{dead_clause})",
                        (now, now, owner, now, *dead))
            return cur.rowcount

        return self._run(txn, write=True)

    def outbox_stats(self) -> dict[str, Any]:
        def read(cur: sqlite3.Cursor) -> dict[str, Any]:
            now = time.time()
            stats: dict[str, Any] = {"pending": 0, "sending": 0, "sent": 0, "failed": 0}
            stats.update(cur.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
            stats["depth"] = stats["pending"] + stats["sending"]
            oldest = cur.execute(
                "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'sending')").fetchone()[0]
            stats["oldest_unsent_age_s"] = None if oldest is None else round(max(0.0, now - oldest), 3)
            stats["rate_limited"] = cur.execute("SELECT COALESCE(SUM(rate_limited), 0) FROM outbox").fetchone()[0]
            stats["channels_waiting"] = cur.execute(
                "SELECT COUNT(DISTINCT channel) FROM outbox WHERE state IN ('pending', 'sending')").fetchone()[0]
            stats["paused"] = [{"bucket": k, "for_s": round(p - now, 3)} for k, p in cur.execute(
                "SELECT key, paused_until FROM post_buckets WHERE paused_until > ? ORDER BY key", (now,))]
            return stats

        return self._run(read, write=False)


def prune_outbox(cur: sqlite3.Cursor, cutoff: float) -> int:
    """Inside `prune`'s transaction: sent rows older than the cutoff, and buckets left alone since."""
    cur.execute("DELETE FROM outbox WHERE state = 'sent' AND created_at < ?", (cutoff,))
    dropped = cur.rowcount
    # A bucket untouched this long is full again: the same as no row at all.
    cur.execute("DELETE FROM post_buckets WHERE updated_at < ? AND paused_until < ?", (cutoff, cutoff))
    return dropped + cur.rowcount


def reply_row(envelope_id: str, reply: Reply, key: str, now: float) -> tuple[Any, ...]:
    """The values of INSERT_OUTBOX for one reply."""
    return (bind(envelope_id), bind(reply.channel), bind(reply.text), bind(blocks_json(reply.blocks)),
            bind(reply.thread_ts), bind(key), now, now)


def to_outbox_row(row: Sequence[Any]) -> OutboxRow:
    """An OutboxRow from the OUTBOX_COLS of one row."""
    (id_, channel, text, blocks, thread_ts, key, state, attempts, next_at, created, envelope_id, error,
     lease_owner, lease_until, sent_at, ts, rate_limited) = map(unbind, row)
    return OutboxRow(id_, channel, text, json.loads(blocks) if blocks else None, thread_ts, key, state, attempts,
                     next_at, created, envelope_id, error, lease_owner, lease_until, sent_at, ts, rate_limited or 0)
