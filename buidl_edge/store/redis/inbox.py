"""The Redis inbox: dedup claims, finishing an envelope (with its replies), the stream's leases,
sweeps and prune; its Lua scripts are in inbox_lua.py.

Every decision that reads and writes more than one key runs as one Lua script, so it is atomic
across every process of every dyno.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis

from buidl_edge.socketmode import protocol
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import DEFAULT_RETENTION_S, Reply, Swept, blocks_json, retention_cutoff
from buidl_edge.store.errors import StoreError, StoreRejected, StoreUnavailable
from buidl_edge.store.owners import is_dead_local
from buidl_edge.store.redis.db import RedisDb, redis_op, rows_json
from buidl_edge.store.redis.inbox_lua import CLAIM, FINISH, PRUNE_INBOX, RENEW, SWEEP
from buidl_edge.store.redis.outbox_lua import DROP_ROWS
from buidl_edge.store.redis.schema import CHUNK, GROUP, STREAM_MAXLEN
from buidl_edge.store.turn_batch import TurnBatch

T = TypeVar("T")


# A finish's arguments: the envelope id, the handler's replies, its error (None when it ended well).
Finish = tuple[str, Sequence[Reply], "str | None"]


def _alone(call: Callable[..., T], *args: Any) -> T | StoreError:
    """`call(*args)`, its StoreError returned rather than raised: one item of a batch sent alone."""
    try:
        return call(*args)
    except StoreError as exc:
        return exc


class RedisInbox(RedisDb):
    _finish_batch: TurnBatch[Finish] | None = None

    # ------------------------------------------------------------ dedup

    def claim_many_now(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError] | None:
        return None  # a round trip to Redis: the caller waits for it in a greenlet of its own

    @redis_op
    def claim(self, envelope: Envelope, owner: str) -> bool:
        """Dedup keys (SET NX EX, both or neither) + stream entry + inbox row, in one script."""
        keys, args = self._claim_call(envelope, owner)
        return self._claimed(envelope, owner, self._script(CLAIM, args, keys))

    def claim_many(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError]:
        """Every claim of a read burst in one round trip (a pipeline of CLAIM scripts)."""
        try:
            return self._claim_pipelined(envelopes, owner)
        except StoreRejected:  # one of them could not even be sent: each alone, so only it fails
            return [_alone(self.claim, envelope, owner) for envelope in envelopes]

    @redis_op
    def _claim_pipelined(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError]:
        results = self._script_many(CLAIM, [self._claim_call(envelope, owner) for envelope in envelopes])
        return [self._item_failed(result) if isinstance(result, redis.RedisError)
                else self._claimed(envelope, owner, result) for envelope, result in zip(envelopes, results)]

    def _claim_call(self, envelope: Envelope, owner: str) -> tuple[list[str], list[Any]]:
        """CLAIM's keys and arguments (after the prefix) for one envelope."""
        keys = [self._k(f"k:{key}") for key in envelope.dedup_keys]
        text = envelope.raw_text or json.dumps(envelope.to_dict(), separators=(",", ":"))
        return keys, [envelope.envelope_id, self._ttl(), envelope.kind, text, owner,
                      repr(time.time()), STREAM_MAXLEN, GROUP]

    def _claimed(self, envelope: Envelope, owner: str, result: Any) -> bool:
        if result:
            self._handling.setdefault(owner, set()).add(envelope.envelope_id)
        return bool(result)

    @redis_op
    def claim_key(self, key: str) -> bool:
        return bool(self.r.set(self._k(f"k:{key}"), "", nx=True, ex=self._ttl()))

    # ------------------------------------------------------------ handling

    def batch_finishes(self) -> None:
        """From now on, the finishes of one turn of the hub's loop go to Redis in one round trip
        (a worker's store: its handlers call `finish` from greenlets)."""
        self._finish_batch = TurnBatch(self.finish_many, f"store {self.where} finish")

    def finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None = None) -> None:
        """Mark done/failed (XACK) and queue the replies with idempotency keys, atomically."""
        if self._finish_batch is not None:
            self._finish_batch.submit((envelope_id, replies, error))
        else:
            self._finish_now(envelope_id, replies, error)

    def _finish_now(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> None:
        try:
            self._finish(envelope_id, replies, error)
        except StoreUnavailable:  # marked done when Redis is back (see _flush_unfinished)
            self._unfinished[envelope_id] = error
            raise

    def finish_many(self, items: Sequence[Finish]) -> list[StoreError | None]:
        """`finish` of each (envelope_id, replies, error), in one pipeline of FINISH scripts."""
        try:
            return self._finish_pipelined(items)
        except StoreUnavailable:
            for envelope_id, _, error in items:
                self._unfinished[envelope_id] = error
            raise
        except StoreRejected:  # one of them could not even be sent: each alone, so only it fails
            return [_alone(self._finish_now, *item) for item in items]

    @redis_op
    def _finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> None:
        self._run_finish(envelope_id, replies, error)

    def _run_finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> None:
        self._script(FINISH, self._finish_args(envelope_id, replies, error))
        self._finished(envelope_id)

    @redis_op
    def _finish_pipelined(self, items: Sequence[Finish]) -> list[StoreError | None]:
        results = self._script_many(FINISH, [((), self._finish_args(*item)) for item in items])
        failures: list[StoreError | None] = []
        for item, result in zip(items, results):
            if isinstance(result, redis.RedisError):
                failures.append(self._item_failed(result))
            else:
                self._finished(item[0])
                failures.append(None)
        return failures

    def _finish_args(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> list[Any]:
        rows = [[r.channel, r.text, blocks_json(r.blocks), r.thread_ts] for r in replies]
        return [GROUP, envelope_id, "failed" if error else "done", "1" if error else "0",
                error or "", repr(time.time()), self._ttl(), rows_json(rows)]

    def _finished(self, envelope_id: str) -> None:
        self._unfinished.pop(envelope_id, None)
        for handling in self._handling.values():
            handling.discard(envelope_id)

    def _flush_unfinished(self) -> None:
        """Mark done what was handled while Redis was away; no replies (they were sent from memory)."""
        for envelope_id, error in list(self._unfinished.items()):
            try:
                self._run_finish(envelope_id, [], error)
            except redis.RedisError:
                return  # still failing: the next successful call tries again

    def _succeeded(self) -> None:
        super()._succeeded()
        if self._unfinished:
            self._flush_unfinished()

    @redis_op
    def renew(self, owner: str) -> int:
        """Reset the idle time of this owner's stream entries so that no sweeper takes them."""
        return int(self._script(RENEW, [GROUP, owner]))

    def leases_elsewhere(self, owner: str) -> None:
        """Not tracked here: a Redis worker sweeps every chore round (one script call)."""
        return None

    @redis_op
    def sweep(self, owner: str, limit: int = 100) -> list[Envelope]:
        """Take over entries of dead local consumers at once, and of any consumer past the lease.

        XAUTOCLAIM cannot skip our own consumer: an entry of ours that it hands back
        (our renewals failed for a whole lease) is still being handled here, so it is
        kept without a re-run.
        """
        dead = [c["name"] for c in self._consumers()
                if c.get("pending") and c["name"] != owner and is_dead_local(c["name"], self.host)]
        flat = self._script(SWEEP, [GROUP, owner, int(self.lease_s * 1000), limit, repr(time.time()), *dead])
        mine = self._handling.setdefault(owner, set())
        taken: list[Envelope] = []
        for envelope_id, text, taken_from in zip(flat[::3], flat[1::3], flat[2::3]):
            if envelope_id in mine:
                continue
            frame = protocol.parse_frame(text)
            if isinstance(frame, Envelope):
                mine.add(envelope_id)
                taken.append(Swept.of(frame, taken_from))
        return taken

    def _consumers(self) -> list[dict[str, Any]]:
        try:
            return list(self.r.xinfo_consumers(self._k("inbox:stream"), GROUP))
        except redis.ResponseError:  # no stream or no group yet: nobody to take from
            return []

    # ---------------------------------------------------------- housekeeping

    @redis_op
    def prune(self, retention_s: float = DEFAULT_RETENTION_S, now: float | None = None) -> int:
        """Drop handled inbox rows and sent replies older than the retention (floored).

        Rows still processing or pending delivery (relay mode) are kept whatever their age.
        Dedup keys need no pruning: each expires on its own (TTL = the store's retention).
        Also trims the stream, forgets consumers with nothing pending that went quiet
        (workers that exited), and drops stale heartbeat and slot entries.
        """
        now = time.time() if now is None else now
        cutoff = retention_cutoff(now, retention_s)
        dropped = 0
        offset = 0
        while True:
            gone, kept, seen = self._script(PRUNE_INBOX, [repr(cutoff), offset, CHUNK])
            dropped += gone
            offset += kept
            if seen < CHUNK:
                break
        while True:
            gone = self._script(DROP_ROWS, ["sent", CHUNK, repr(cutoff)])
            dropped += gone
            if gone < CHUNK:
                break
        stream = self._k("inbox:stream")
        self.r.xtrim(stream, maxlen=STREAM_MAXLEN, approximate=True)
        for consumer in self._consumers():
            quiet_ms = consumer.get("inactive", consumer.get("idle", 0))
            if not consumer.get("pending") and (quiet_ms > self.retention_s * 1000
                                                or is_dead_local(consumer["name"], self.host)):
                self.r.xgroup_delconsumer(stream, GROUP, consumer["name"])
        self.r.zremrangebyscore(self._k("workers"), "-inf", now - 24 * 3600)
        self.r.zremrangebyscore(self._k("ob:paused"), "-inf", time.time())
        return dropped

    def close(self) -> None:
        if not self._closed and self._unfinished and not self._failures:
            try:
                self._flush_unfinished()
            except Exception:  # best effort on the way out
                pass
        super().close()
