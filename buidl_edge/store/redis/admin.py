"""The Redis store's admin side: the workers' heartbeats and the reads and repairs behind
`status`, `inbox` and `outbox` (scans in chunks: admin commands, not the hot path)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from redis.client import Pipeline

from buidl_edge.store.base import CANCELLED, OUTBOX_STATES, OutboxRow, check_purgeable
from buidl_edge.store.owners import Owner
from buidl_edge.store.redis.db import RedisDb, redis_op
from buidl_edge.store.redis.inbox_lua import RETRY
from buidl_edge.store.redis.outbox import to_outbox_row
from buidl_edge.store.redis.outbox_lua import DROP_ROWS, OUTBOX_CANCEL, OUTBOX_RETRY
from buidl_edge.store.redis.schema import CHUNK, GROUP, STREAM_MAXLEN, WORKER_TTL_S


class RedisAdmin(RedisDb):
    # ------------------------------------------------------------ workers

    @redis_op
    def heartbeat(self, owner: str, stats: dict[str, Any]) -> None:
        parsed = Owner.parse(owner)
        now = time.time()
        key = self._k(f"w:{owner}")
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={"owner": owner, "pid": parsed.pid or 0, "host": parsed.host, "updated_at": repr(now),
                                "stats": json.dumps(stats, separators=(",", ":"), default=str),
                                "degraded": int(bool(stats.get("degraded")))})
        pipe.expire(key, WORKER_TTL_S)
        pipe.zadd(self._k("workers"), {owner: now})
        pipe.execute()

    @redis_op
    def forget_worker(self, owner: str) -> None:
        """A worker that stopped cleanly takes its heartbeat out of `status`."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._k(f"w:{owner}"))
        pipe.zrem(self._k("workers"), owner)
        pipe.execute()

    @redis_op
    def workers(self, max_age_s: float | None = None) -> list[dict[str, Any]]:
        """Workers of every dyno that reported, newest first; `max_age_s` hides ones gone quiet."""
        since = "-inf" if max_age_s is None else repr(time.time() - max_age_s)
        # decode_responses=True (db.py): every reply is str, which redis-py's types cannot tell.
        owners = cast(list[str], self.r.zrevrangebyscore(self._k("workers"), "+inf", since))
        pipe = self.r.pipeline(transaction=False)
        for owner in owners:
            pipe.hgetall(self._k(f"w:{owner}"))
        out = []
        for row in pipe.execute() if owners else []:
            if not row:
                continue  # its hash expired: long gone
            out.append({"owner": row["owner"], "pid": int(row["pid"]), "host": row["host"],
                        "updated_at": float(row["updated_at"]), "stats": json.loads(row["stats"]),
                        "degraded": row.get("degraded") == "1"})
        return out

    @redis_op
    def slots(self) -> list[dict[str, Any]]:
        """Leases held now, for `status`: holder and seconds left."""
        seconds, micros = self.r.time()
        now = seconds + micros / 1e6
        held = cast(list[tuple[str, float]],
                    self.r.zrangebyscore(self._k("slots"), repr(now), "+inf", withscores=True))
        return [{"holder": h, "expires_in": round(until - now, 3)} for h, until in sorted(held)]

    # ------------------------------------------------------------ inbox

    @redis_op
    def inbox_row(self, envelope_id: str) -> dict[str, Any] | None:
        """One inbox row; `lease_until` comes from the stream entry's idle time."""
        row = self.r.hgetall(self._k(f"in:{envelope_id}"))
        if not row:
            return None
        lease_until = None
        if row.get("state") == "processing" and row.get("sid"):
            pending = cast(list[dict[str, Any]],
                           self.r.xpending_range(self._k("inbox:stream"), GROUP, row["sid"], row["sid"], 1))
            if pending:
                lease_until = time.time() - pending[0]["time_since_delivered"] / 1000 + self.lease_s
        next_at = row.get("next_at")
        return {"envelope_id": envelope_id, "kind": row.get("kind"), "state": row.get("state"),
                "owner": row.get("owner"), "lease_until": lease_until, "attempts": int(row.get("attempts", 0)),
                "deliveries": int(row.get("deliveries", 0)), "next_attempt_at": float(next_at) if next_at else None,
                "order_key": row.get("order_key"), "received_at": float(row.get("received_at", 0)),
                "updated_at": float(row.get("updated_at", 0)), "error": row.get("error")}

    @redis_op
    def inbox_list(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent inbox rows, optionally of one state."""
        cols = ("envelope_id", "kind", "state", "owner", "attempts", "deliveries", "received_at", "error")
        out: list[dict[str, Any]] = []
        for eid, (kind, st, owner, attempts, deliveries, received, error) in self._scan(
                "inbox", True, lambda pipe, eid: pipe.hmget(self._k(f"in:{eid}"), *cols[1:])):
            if len(out) >= limit:
                break
            if st is None or (state and st != state):
                continue
            out.append(dict(zip(cols, (eid, kind, st, owner, int(attempts or 0), int(deliveries or 0),
                                       float(received or 0), error))))
        return out

    @redis_op
    def inbox_stats(self) -> dict[str, Any]:
        """Counts for `inbox stats` (a scan of the inbox: an admin command, not the hot path)."""
        stats: dict[str, Any] = {"processing": 0, "pending": 0, "done": 0, "failed": 0}
        oldest: dict[str, float] = {}
        for _, (st, received) in self._scan(
                "inbox", False, lambda pipe, eid: pipe.hmget(self._k(f"in:{eid}"), "state", "received_at")):
            if st is None:
                continue
            stats[st] = stats.get(st, 0) + 1
            if st in ("processing", "pending"):
                oldest[st] = min(oldest.get(st, float(received)), float(received))
        for st in ("processing", "pending"):
            stats[f"oldest_{st}_age_s"] = max(0.0, time.time() - oldest[st]) if st in oldest else None
        stats["keys"] = sum(1 for _ in self.r.scan_iter(match=self._k("k:*"), count=1000))
        return stats

    @redis_op
    def retry(self, envelope_id: str) -> bool:
        """Hand a done/failed envelope back to the sweepers (a new stream entry, long idle)."""
        return bool(self._script(RETRY, [GROUP, envelope_id, repr(time.time()), STREAM_MAXLEN]))

    # ------------------------------------------------------------ outbox

    @redis_op
    def outbox_list(self, state: str | None = None, channel: str | None = None,
                    limit: int = 50) -> list[OutboxRow]:
        """Newest rows first (per-state indexes merged), optionally of one state or channel."""
        found: list[OutboxRow] = []
        for st in ([state] if state else OUTBOX_STATES):
            taken = 0
            for _, row in self._scan(f"ob:s:{st}", True, lambda pipe, row_id: pipe.hgetall(self._k(f"ob:r:{row_id}"))):
                if taken >= limit:
                    break
                if row and (channel is None or row.get("channel") == channel):
                    found.append(to_outbox_row(row))
                    taken += 1
        return sorted(found, key=lambda r: r.id, reverse=True)[:limit]

    @redis_op
    def outbox_row(self, row_id: int) -> OutboxRow | None:
        row = self.r.hgetall(self._k(f"ob:r:{row_id}"))
        return to_outbox_row(row) if row else None

    @redis_op
    def outbox_retry(self, row_id: int) -> bool:
        return bool(self._script(OUTBOX_RETRY, [row_id, repr(time.time())]))

    @redis_op
    def outbox_cancel(self, row_id: int) -> bool:
        return bool(self._script(OUTBOX_CANCEL, [row_id, repr(time.time()), CANCELLED]))

    @redis_op
    def outbox_purge(self, state: str = "failed") -> int:
        check_purgeable(state)
        total = 0
        while True:
            gone = self._script(DROP_ROWS, [state, CHUNK, ""])
            total += gone
            if gone < CHUNK:
                return total

    def _scan(self, zset: str, newest_first: bool,
              read: Callable[[Pipeline, Any], Any]) -> Iterator[tuple[Any, Any]]:
        """(member, what `read` queued for it) for every member of a zset, CHUNK members a round trip."""
        members = self.r.zrevrange if newest_first else self.r.zrange
        start = 0
        while True:
            ids = members(self._k(zset), start, start + CHUNK - 1)
            if not ids:
                return
            start += CHUNK
            pipe = self.r.pipeline(transaction=False)
            for member in ids:
                read(pipe, member)
            yield from zip(ids, pipe.execute())
