"""The SQLite streams: each streamed answer's Slack ts and progress, and the token bucket of each
stream method that every process spends from (see buidl_edge/delivery/streams.py)."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from buidl_edge.delivery.ratelimit import STREAM_METHODS, Bucket, StreamLimits, method_key, pause, take_calls
from buidl_edge.store.base import StreamRow
from buidl_edge.store.sqlite.binding import bind, unbind
from buidl_edge.store.sqlite.db import SqliteDb

_COLS = "stream_id, envelope_id, owner, channel, thread_ts, ts, sent_chars, messages, state, updated_at"
_SAVE = f"INSERT OR REPLACE INTO streams({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_BUCKET_UPSERT = ("INSERT INTO stream_buckets(key, tokens, updated_at, paused_until) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT(key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at, "
                  "paused_until = excluded.paused_until")


class SqliteStreams(SqliteDb):
    def stream_save(self, row: StreamRow) -> None:
        values = (row.stream_id, bind(row.envelope_id), row.owner, bind(row.channel), bind(row.thread_ts),
                  bind(row.ts), row.sent_chars, row.messages, row.state, time.time())
        self._run(lambda cur: cur.execute(_SAVE, values), write=True)

    def stream_orphans(self, envelope_id: str) -> list[StreamRow]:
        def read(cur: sqlite3.Cursor) -> list[StreamRow]:
            rows = cur.execute(f"SELECT {_COLS} FROM streams WHERE envelope_id = ? AND state = 'open'",
                               (bind(envelope_id),)).fetchall()
            return [StreamRow(sid, unbind(eid), owner, unbind(channel), unbind(thread), unbind(ts), sent, messages,
                              state, updated) for sid, eid, owner, channel, thread, ts, sent, messages, state, updated
                    in rows]

        return self._run(read, write=False)

    def stream_take(self, methods: Sequence[str], limits: StreamLimits) -> tuple[list[bool], float | None]:
        if not methods:
            return [], None

        def txn(cur: sqlite3.Cursor) -> tuple[list[bool], float | None]:
            granted, changed, next_at = take_calls(methods, _buckets(cur), time.time(), limits)
            cur.executemany(_BUCKET_UPSERT, [(k, b.tokens, b.updated, b.paused_until) for k, b in changed.items()])
            return granted, next_at

        return self._run(txn, write=True)

    def stream_pause(self, method: str, until: float) -> None:
        def txn(cur: sqlite3.Cursor) -> None:
            key = method_key(method)
            paused = pause(_buckets(cur).get(key), time.time(), until)
            cur.execute(_BUCKET_UPSERT, (key, paused.tokens, paused.updated, paused.paused_until))

        self._run(txn, write=True)

    def stream_stats(self) -> dict[str, Any]:
        def read(cur: sqlite3.Cursor) -> dict[str, Any]:
            now = time.time()
            return {"open": cur.execute("SELECT COUNT(*) FROM streams WHERE state = 'open'").fetchone()[0],
                    "paused": [{"bucket": k, "for_s": round(p - now, 3)} for k, p in cur.execute(
                        "SELECT key, paused_until FROM stream_buckets WHERE paused_until > ? ORDER BY key", (now,))]}

        return self._run(read, write=False)


def _buckets(cur: sqlite3.Cursor) -> dict[str, Bucket]:
    keys = [method_key(m) for m in STREAM_METHODS]
    return {key: Bucket(tokens, updated, paused) for key, tokens, updated, paused in cur.execute(
        "SELECT key, tokens, updated_at, paused_until FROM stream_buckets WHERE key IN (?, ?, ?)", keys)}


def prune_streams(cur: sqlite3.Cursor, cutoff: float) -> int:
    """Inside `prune`'s transaction: streams stopped before the cutoff."""
    cur.execute("DELETE FROM streams WHERE state = 'stopped' AND updated_at < ?", (cutoff,))
    return cur.rowcount
