"""The Redis streams: each streamed answer's Slack ts and progress, and the token bucket of each
stream method that every process of every dyno spends from (see buidl_edge/delivery/streams.py).

Keys: `st:<stream id>` (a hash: the row), `st:env:<envelope id>` (a set: its streams), `st:open`
(a set: the streams open now), `st:b:<method>` (a hash: the method's bucket). A bucket decision
reads the buckets under WATCH, decides with `ratelimit.take_calls` (the arithmetic every store
shares) and writes them back in MULTI/EXEC, tried again if another process changed them meanwhile.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from buidl_edge.delivery.ratelimit import STREAM_METHODS, Bucket, StreamLimits, method_key, pause, take_calls
from buidl_edge.store.base import StreamRow
from buidl_edge.store.redis.db import RedisDb, redis_op

_FIELDS = ("envelope_id", "owner", "channel", "thread_ts", "ts", "sent_chars", "messages", "state", "updated_at")
# A bucket untouched this long is full again (and a pause this long is over): the key may go.
BUCKET_TTL_S = 3600


class RedisStreams(RedisDb):
    @redis_op
    def stream_save(self, row: StreamRow) -> None:
        key, of_envelope, open_set = self._k(f"st:{row.stream_id}"), self._k(f"st:env:{row.envelope_id}"), \
            self._k("st:open")
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={"envelope_id": row.envelope_id, "owner": row.owner, "channel": row.channel,
                                "thread_ts": row.thread_ts, "ts": row.ts or "", "sent_chars": row.sent_chars,
                                "messages": row.messages, "state": row.state, "updated_at": repr(time.time())})
        pipe.expire(key, self._ttl())
        pipe.sadd(of_envelope, row.stream_id)
        pipe.expire(of_envelope, self._ttl())
        if row.state == "open":
            pipe.sadd(open_set, row.stream_id)
        else:
            pipe.srem(open_set, row.stream_id)
        pipe.execute()

    @redis_op
    def stream_orphans(self, envelope_id: str) -> list[StreamRow]:
        ids = sorted(str(i) for i in self.r.smembers(self._k(f"st:env:{envelope_id}")))
        pipe = self.r.pipeline(transaction=False)
        for stream_id in ids:
            pipe.hmget(self._k(f"st:{stream_id}"), _FIELDS)
        rows = []
        for stream_id, values in zip(ids, pipe.execute()):
            if values[0] is None:
                continue
            got = dict(zip(_FIELDS, values))
            if got["state"] == "open":
                rows.append(StreamRow(stream_id, got["envelope_id"], got["owner"], got["channel"], got["thread_ts"],
                                      got["ts"] or None, int(got["sent_chars"]), int(got["messages"]), "open",
                                      float(got["updated_at"])))
        return rows

    @redis_op
    def stream_take(self, methods: Sequence[str], limits: StreamLimits) -> tuple[list[bool], float | None]:
        if not methods:
            return [], None
        keys = [self._k(f"st:b:{m}") for m in STREAM_METHODS]

        def decide(pipe: Any) -> tuple[list[bool], float | None]:
            buckets = _read_buckets(pipe, keys)
            granted, changed, next_at = take_calls(methods, buckets, time.time(), limits)
            pipe.multi()
            self._write_buckets(pipe, changed)
            return granted, next_at

        transaction: Any = self.r.transaction  # typed as if the callable returned None
        result: tuple[list[bool], float | None] = transaction(decide, *keys, value_from_callable=True)
        return result

    @redis_op
    def stream_pause(self, method: str, until: float) -> None:
        keys = [self._k(f"st:b:{m}") for m in STREAM_METHODS]

        def decide(pipe: Any) -> None:
            key = method_key(method)
            paused = pause(_read_buckets(pipe, keys).get(key), time.time(), until)
            pipe.multi()
            self._write_buckets(pipe, {key: paused})

        transaction: Any = self.r.transaction
        transaction(decide, *keys)

    @redis_op
    def stream_stats(self) -> dict[str, Any]:
        now = time.time()
        buckets = _read_buckets(self.r, [self._k(f"st:b:{m}") for m in STREAM_METHODS])
        return {"open": int(self.r.scard(self._k("st:open"))),
                "paused": [{"bucket": k, "for_s": round(b.paused_until - now, 3)}
                           for k, b in sorted(buckets.items()) if b.paused_until > now]}

    def _write_buckets(self, pipe: Any, changed: dict[str, Bucket]) -> None:
        for key, bucket in changed.items():
            name = self._k(f"st:b:{key.removeprefix('m:')}")
            pipe.hset(name, mapping={"tokens": repr(bucket.tokens), "updated": repr(bucket.updated),
                                     "paused": repr(bucket.paused_until)})
            pipe.expire(name, BUCKET_TTL_S)


def _read_buckets(conn: Any, keys: Sequence[str]) -> dict[str, Bucket]:
    """The stream method buckets held now, by `method_key` (a missing one is full)."""
    found = {}
    for method, key in zip(STREAM_METHODS, keys):
        tokens, updated, paused = conn.hmget(key, ("tokens", "updated", "paused"))
        if tokens is not None:
            found[method_key(method)] = Bucket(float(tokens), float(updated), float(paused or 0))
    return found
