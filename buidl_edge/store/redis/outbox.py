"""The Redis outbox: the queue of replies, the token buckets every process spends from, and the
leases of rows in flight; each decision is one script of store/redis/outbox_lua.py."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, cast

from buidl_edge.delivery.ratelimit import PostLimits
from buidl_edge.store.base import (
    OUTBOX_STATES,
    Claimed,
    DeliveryOutcome,
    OutboxRow,
    Reply,
    blocks_json,
    idempotency_keys,
)
from buidl_edge.store.owners import is_dead_local
from buidl_edge.store.redis.db import RedisDb, redis_op, rows_json
from buidl_edge.store.redis.outbox_lua import OUTBOX_CLAIM, OUTBOX_ENQUEUE, OUTBOX_RECOVER, OUTBOX_RENEW, OUTBOX_SETTLE
from buidl_edge.store.redis.schema import CLAIM_SCAN


class RedisOutbox(RedisDb):
    @redis_op
    def outbox_enqueue(self, replies: Sequence[Reply], envelope_id: str = "",
                       keys: Sequence[str] | None = None) -> list[int]:
        """Queue messages; a key queued before is not queued again (its row id is returned)."""
        keys = idempotency_keys(replies, keys)
        rows = [[r.channel, r.text, blocks_json(r.blocks), r.thread_ts, key] for r, key in zip(replies, keys)]
        if not rows:
            return []
        return [int(i) for i in self._script(OUTBOX_ENQUEUE, [repr(time.time()), envelope_id, rows_json(rows)])]

    @redis_op
    def outbox_claim(self, owner: str, limit: int, limits: PostLimits,
                     lease_s: float | None = None) -> Claimed[OutboxRow]:
        """One script per send decision: due channel heads, token buckets spent, rows leased."""
        if limit <= 0:
            return Claimed([], None)
        now = time.time()
        lease = self.lease_s if lease_s is None else lease_s
        out = self._script(OUTBOX_CLAIM, [owner, limit, repr(now), repr(now + lease), repr(limits.rate),
                                          repr(limits.burst), repr(limits.global_rate),
                                          repr(limits.effective_global_burst), repr(limits.jitter_s), CLAIM_SCAN])
        rows = sorted((to_outbox_row(flat) for flat in out[1:]), key=lambda r: r.id)
        return Claimed(rows, float(out[0]) if out[0] else None)

    @redis_op
    def outbox_settle(self, row_id: int, owner: str, outcome: DeliveryOutcome) -> OutboxRow | None:
        flat = self._script(OUTBOX_SETTLE, [row_id, owner, outcome.kind, outcome.error or "", outcome.ts or "",
                                            repr(outcome.retry_at), outcome.pause, repr(time.time())])
        return to_outbox_row(flat) if flat else None

    @redis_op
    def outbox_renew(self, owner: str, lease_s: float | None = None) -> int:
        lease_until = time.time() + (self.lease_s if lease_s is None else lease_s)
        return int(self._script(OUTBOX_RENEW, [owner, repr(lease_until)]))

    @redis_op
    def outbox_recover(self, owner: str) -> int:
        """Rows left `sending` by a dead local process or past their lease go back to pending."""
        ids = cast(list[str], self.r.zrange(self._k("ob:s:sending"), 0, -1))  # decode_responses=True: str
        if not ids:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for row_id in ids:
            pipe.hmget(self._k(f"ob:r:{row_id}"), "lease_owner", "lease_until")
        now = time.time()
        suspects, dead = False, set()
        for lease_owner, until in pipe.execute():
            if not lease_owner or lease_owner == owner:
                continue
            if is_dead_local(lease_owner, self.host):
                dead.add(lease_owner)
                suspects = True
            elif until is not None and float(until) < now:
                suspects = True
        if not suspects:
            return 0
        return int(self._script(OUTBOX_RECOVER, [owner, repr(time.time()), *sorted(dead)]))

    @redis_op
    def outbox_stats(self) -> dict[str, Any]:
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        for state in OUTBOX_STATES:
            pipe.zcard(self._k(f"ob:s:{state}"))
        pipe.zrange(self._k("ob:s:pending"), 0, 0)
        pipe.zrange(self._k("ob:s:sending"), 0, 0)
        pipe.get(self._k("ob:rl"))
        pipe.scard(self._k("ob:chans"))
        pipe.zrangebyscore(self._k("ob:paused"), repr(now), "+inf", withscores=True)
        *counts, pending_head, sending_head, rate_limited, channels, paused = pipe.execute()
        stats: dict[str, Any] = dict(zip(OUTBOX_STATES, counts))
        stats["depth"] = stats["pending"] + stats["sending"]
        heads = [int(i) for i in pending_head + sending_head]
        created = self.r.hget(self._k(f"ob:r:{min(heads)}"), "created_at") if heads else None
        stats["oldest_unsent_age_s"] = None if created is None else round(max(0.0, now - float(created)), 3)
        stats["rate_limited"] = int(rate_limited or 0)
        stats["channels_waiting"] = channels
        stats["paused"] = [{"bucket": key, "for_s": round(until - now, 3)} for key, until in sorted(paused)]
        return stats


def to_outbox_row(data: Any) -> OutboxRow:
    """A row from HGETALL: a dict from redis-py, a flat [field, value, ...] list from a script."""
    row = data if isinstance(data, dict) else dict(zip(data[::2], data[1::2]))

    def opt_float(name: str) -> float | None:
        value = row.get(name)
        return None if value in (None, "") else float(value)

    return OutboxRow(id=int(row["id"]), channel=row["channel"], text=row.get("text"),
                     blocks=json.loads(row["blocks"]) if row.get("blocks") else None,
                     thread_ts=row.get("thread_ts"), idempotency_key=row["key"], state=row["state"],
                     attempts=int(row.get("attempts", 0)), next_attempt_at=float(row["next_at"]),
                     created_at=float(row["created_at"]), envelope_id=row.get("envelope_id", ""),
                     error=row.get("error"), lease_owner=row.get("lease_owner"), lease_until=opt_float("lease_until"),
                     sent_at=opt_float("sent_at"), ts=row.get("ts"), rate_limited=int(row.get("rate_limited", 0)))
