"""In-process store: dedup across one worker's connections. Lost on exit, by design.

Every store protocol, for one process: nothing outlives it, so there is nothing to sweep,
recover or renew, and nobody else to share connection slots with.
"""
from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from buidl_edge.delivery.ratelimit import (
    GLOBAL_KEY,
    Bucket,
    PostLimits,
    StreamLimits,
    channel_key,
    method_key,
    pause,
    plan,
    take_calls,
)
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import (
    CANCELLED,
    DEFAULT_RETENTION_S,
    Claimed,
    DeliveryOutcome,
    Lifespan,
    OutboxRow,
    RelayRow,
    Reply,
    StreamRow,
    check_purgeable,
    idempotency_keys,
    reply_key,
    retention_cutoff,
)
from buidl_edge.store.errors import StoreError
from buidl_edge.store.owners import Owner

DEFAULT_LEASE_S = 30.0


class MemoryStore:
    # Rows die with the process: the delivery loop sends them before it exits, and `send` refuses.
    lifespan = Lifespan.PROCESS

    def __init__(self) -> None:
        self._claims: dict[str, tuple[str, float]] = {}
        self._inbox: dict[str, dict[str, Any]] = {}
        self._beats: dict[str, dict[str, Any]] = {}
        self._slots: dict[str, float] = {}  # holder -> lease expiry (listed, never refused)
        self._outbox: dict[int, OutboxRow] = {}  # insertion order is id order
        self._outbox_keys: dict[str, int] = {}
        self._buckets: dict[str, Bucket] = {}
        self._streams: dict[str, StreamRow] = {}
        self._stream_buckets: dict[str, Bucket] = {}  # one per stream method, for the app
        self._ids = itertools.count(1)
        self._writes = 0  # change_token: bumped by every call in _WRITES

    def claim(self, envelope: Envelope, owner: str) -> bool:
        keys = envelope.dedup_keys
        if any(key in self._claims for key in keys):
            return False
        now = time.time()
        for key in keys:
            self._claims[key] = (envelope.envelope_id, now)
        self._inbox[envelope.envelope_id] = {"state": "processing", "owner": owner, "at": now,
                                             "received_at": now, "envelope": envelope, "error": None,
                                             "order_key": None, "next_at": None, "deliveries": 0}
        return True

    def claim_many_now(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError] | None:
        return self.claim_many(envelopes, owner)

    def claim_many(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError]:
        return [self.claim(envelope, owner) for envelope in envelopes]

    def claim_key(self, key: str) -> bool:
        if key in self._claims:
            return False
        self._claims[key] = ("", time.time())
        return True

    def finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None = None) -> None:
        row = self._inbox.get(envelope_id)
        if row is not None:
            row.update(state="failed" if error else "done", error=error, replies=list(replies),
                       at=time.time())
        if replies:
            self.outbox_enqueue(replies, envelope_id, [reply_key(envelope_id, i) for i in range(len(replies))])

    def renew(self, owner: str) -> int:
        return 0

    # -- relay: the same queue rules as SqliteStore's, for one process

    def relay_enqueue(self, envelope_id: str, owner: str, order_key: str, not_before: float | None = None,
                      error: str | None = None) -> bool:
        row = self._inbox.get(envelope_id)
        if row is None or row["state"] != "processing" or row["owner"] != owner:
            return False
        now = time.time()
        row.update(state="pending", owner="", order_key=order_key, next_at=now if not_before is None else not_before,
                   at=now, error=row["error"] if error is None else error)
        return True

    def relay_claim(self, owner: str, limit: int, lease_s: float | None = None) -> Claimed[RelayRow]:
        now = time.time()
        heads: dict[str, tuple[str, dict[str, Any]]] = {}
        for envelope_id, row in sorted(self._inbox.items(), key=lambda item: item[1]["received_at"]):
            if row["order_key"] is not None and row["state"] in ("pending", "processing"):
                heads.setdefault(row["order_key"], (envelope_id, row))
        pending = [(e, r) for e, r in heads.values() if r["state"] == "pending"]
        due = [(e, r) for e, r in pending if r["next_at"] <= now]
        waiting = [r["next_at"] for _, r in pending if r["next_at"] > now]
        next_at = now if len(due) > limit else (min(waiting) if waiting else None)
        rows = []
        for _, row in due[:max(0, limit)]:
            row.update(state="processing", owner=owner, deliveries=row["deliveries"] + 1, at=now)
            rows.append(RelayRow(row["envelope"], row["order_key"], row["deliveries"], row["received_at"],
                                 row["error"]))
        return Claimed(rows, next_at)

    def relay_settle(self, envelope_id: str, owner: str, outcome: DeliveryOutcome) -> bool:
        row = self._inbox.get(envelope_id)
        if row is None or row["state"] != "processing" or row["owner"] != owner:
            return False
        row["at"] = time.time()
        if outcome.kind == "sent":
            row.update(state="done", error=None)
        elif outcome.kind == "failed":
            row.update(state="failed", error=outcome.error)
        else:
            row.update(state="pending", owner="", next_at=outcome.retry_at, error=outcome.error)
            if outcome.kind == "ratelimited":
                row["deliveries"] = max(0, row["deliveries"] - 1)
        return True

    def sweep(self, owner: str, limit: int = 100) -> list[Envelope]:
        return []  # nothing outlives this process, so nothing is left to take over

    def leases_elsewhere(self, owner: str) -> dict[str, float]:
        return {}  # one process: no one else holds anything

    def prune(self, retention_s: float = DEFAULT_RETENTION_S, now: float | None = None) -> int:
        cutoff = retention_cutoff(time.time() if now is None else now, retention_s)
        live = {e for e, row in self._inbox.items() if row["state"] in ("processing", "pending")}
        old_keys = [k for k, (e, at) in self._claims.items() if at < cutoff and e not in live]
        for key in old_keys:
            del self._claims[key]
        old_rows = [e for e, row in self._inbox.items() if row["state"] in ("done", "failed") and row["at"] < cutoff]
        for envelope_id in old_rows:
            del self._inbox[envelope_id]
        old_sent = [r for r in self._outbox.values() if r.state == "sent" and r.created_at < cutoff]
        for r in old_sent:
            self._drop(r)
        old_streams = [k for k, r in self._streams.items() if r.state == "stopped" and r.updated_at < cutoff]
        for stream_id in old_streams:
            del self._streams[stream_id]
        return len(old_keys) + len(old_rows) + len(old_sent) + len(old_streams)

    # -- streamed answers

    def stream_save(self, row: StreamRow) -> None:
        self._streams[row.stream_id] = replace(row, updated_at=time.time())

    def stream_orphans(self, envelope_id: str) -> list[StreamRow]:
        return [r for r in self._streams.values() if r.envelope_id == envelope_id and r.state == "open"]

    def stream_take(self, methods: Sequence[str], limits: StreamLimits) -> tuple[list[bool], float | None]:
        granted, changed, next_at = take_calls(methods, self._stream_buckets, time.time(), limits)
        self._stream_buckets.update(changed)
        return granted, next_at

    def stream_pause(self, method: str, until: float) -> None:
        key = method_key(method)
        self._stream_buckets[key] = pause(self._stream_buckets.get(key), time.time(), until)

    def stream_stats(self) -> dict[str, Any]:
        now = time.time()
        return {"open": sum(r.state == "open" for r in self._streams.values()),
                "paused": [{"bucket": k, "for_s": round(b.paused_until - now, 3)}
                           for k, b in sorted(self._stream_buckets.items()) if b.paused_until > now]}

    # -- outbox: the same semantics as SqliteStore's, for one process

    def outbox_enqueue(self, replies: Sequence[Reply], envelope_id: str = "",
                       keys: Sequence[str] | None = None) -> list[int]:
        now = time.time()
        keys = idempotency_keys(replies, keys)
        ids = []
        for reply, key in zip(replies, keys):
            if key not in self._outbox_keys:
                row_id = next(self._ids)
                self._outbox[row_id] = OutboxRow(row_id, reply.channel, reply.text, reply.blocks, reply.thread_ts,
                                                 key, "pending", 0, now, now, envelope_id)
                self._outbox_keys[key] = row_id
            ids.append(self._outbox_keys[key])
        return ids

    def outbox_claim(self, owner: str, limit: int, limits: PostLimits,
                     lease_s: float | None = None) -> Claimed[OutboxRow]:
        lease = DEFAULT_LEASE_S if lease_s is None else lease_s
        if limit <= 0:
            return Claimed([], None)
        now = time.time()
        heads: dict[str, OutboxRow] = {}
        for row in self._outbox.values():
            if row.state in ("pending", "sending") and row.channel not in heads:
                heads[row.channel] = row
        decision = plan([h for h in heads.values() if h.state == "pending"], self._buckets, now, limits, limit)
        self._buckets.update(decision.changed)
        taken = []
        for row in decision.chosen:
            row = self._outbox[row.id] = replace(row, state="sending", attempts=row.attempts + 1,
                                                 lease_owner=owner, lease_until=now + lease)
            taken.append(row)
        return Claimed(taken, decision.next_at)

    def outbox_settle(self, row_id: int, owner: str, outcome: DeliveryOutcome) -> OutboxRow | None:
        row = self._outbox.get(row_id)
        if row is None or row.state != "sending" or row.lease_owner != owner:
            return None
        now = time.time()
        if outcome.kind == "sent":
            row = replace(row, state="sent", sent_at=now, ts=outcome.ts, lease_until=None)
        elif outcome.kind == "failed":
            row = replace(row, state="failed", error=outcome.error, lease_until=None)
        elif outcome.kind == "retry":
            row = replace(row, state="pending", error=outcome.error, next_attempt_at=outcome.retry_at,
                          lease_owner=None, lease_until=None)
        else:
            row = replace(row, state="pending", error=outcome.error, next_attempt_at=outcome.retry_at,
                          attempts=max(0, row.attempts - 1), rate_limited=row.rate_limited + 1,
                          lease_owner=None, lease_until=None)
            key = GLOBAL_KEY if outcome.pause == "global" else channel_key(row.channel)
            self._buckets[key] = pause(self._buckets.get(key), now, outcome.retry_at)
        self._outbox[row_id] = row
        return row

    def outbox_renew(self, owner: str, lease_s: float | None = None) -> int:
        return 0  # nothing outlives this process, so no one else could take a row over

    def outbox_recover(self, owner: str) -> int:
        return 0

    def outbox_stats(self) -> dict[str, Any]:
        now = time.time()
        stats: dict[str, Any] = dict.fromkeys(("pending", "sending", "sent", "failed"), 0)
        for row in self._outbox.values():
            stats[row.state] += 1
        stats["depth"] = stats["pending"] + stats["sending"]
        unsent = [r for r in self._outbox.values() if r.state in ("pending", "sending")]
        stats["oldest_unsent_age_s"] = round(now - min(r.created_at for r in unsent), 3) if unsent else None
        stats["rate_limited"] = sum(r.rate_limited for r in self._outbox.values())
        stats["channels_waiting"] = len({r.channel for r in unsent})
        stats["paused"] = [{"bucket": k, "for_s": round(b.paused_until - now, 3)}
                           for k, b in sorted(self._buckets.items()) if b.paused_until > now]
        return stats

    def outbox_list(self, state: str | None = None, channel: str | None = None,
                    limit: int = 50) -> list[OutboxRow]:
        rows = [r for r in reversed(self._outbox.values())
                if (state is None or r.state == state) and (channel is None or r.channel == channel)]
        return rows[:limit]

    def outbox_row(self, row_id: int) -> OutboxRow | None:
        return self._outbox.get(row_id)

    def outbox_retry(self, row_id: int) -> bool:
        row = self._outbox.get(row_id)
        if row is None or row.state != "failed":
            return False
        self._outbox[row_id] = replace(row, state="pending", attempts=0, next_attempt_at=time.time(),
                                       lease_owner=None, lease_until=None)
        return True

    def outbox_cancel(self, row_id: int) -> bool:
        row = self._outbox.get(row_id)
        if row is None or row.state != "pending":
            return False
        self._outbox[row_id] = replace(row, state="failed", error=CANCELLED)
        return True

    def outbox_purge(self, state: str = "failed") -> int:
        check_purgeable(state)
        doomed = [r for r in self._outbox.values() if r.state == state]
        for row in doomed:
            self._drop(row)
        return len(doomed)

    def _drop(self, row: OutboxRow) -> None:
        del self._outbox[row.id]
        self._outbox_keys.pop(row.idempotency_key, None)

    # -- connection slots: a pass-through. One process alone cannot see the app's other
    # connections; BUIDL_CONNECTIONS and Slack's own too_many_websockets are the limit here.
    # Leases are only recorded, for `slots()`.

    def acquire_slot(self, holder: str, limit: int, ttl: float) -> bool:
        self._slots[holder] = time.time() + ttl
        return True

    def renew_slots(self, holders: Sequence[str], limit: int, ttl: float) -> list[str]:
        for holder in holders:
            self._slots[holder] = time.time() + ttl
        return []

    def release_slot(self, holder: str) -> None:
        self._slots.pop(holder, None)

    # -- admin: what this process holds (an admin command in another process sees an empty store)

    def describe(self) -> str:
        return "memory (this process only)"

    def ping(self) -> bool:
        return True

    def change_token(self, others_only: bool = False) -> int:
        """How many writes this store has taken (claims that took nothing are not writes)."""
        return self._writes

    def heartbeat(self, owner: str, stats: dict[str, Any]) -> None:
        parsed = Owner.parse(owner)
        self._beats[owner] = {"owner": owner, "pid": parsed.pid or 0, "host": parsed.host, "updated_at": time.time(),
                              "stats": stats, "degraded": bool(stats.get("degraded"))}

    def forget_worker(self, owner: str) -> None:
        self._beats.pop(owner, None)

    def workers(self, max_age_s: float | None = None) -> list[dict[str, Any]]:
        since = -1.0 if max_age_s is None else time.time() - max_age_s
        beats = [b for b in self._beats.values() if b["updated_at"] >= since]
        return sorted(beats, key=lambda b: b["updated_at"], reverse=True)

    def slots(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"holder": h, "expires_in": round(until - now, 3)}
                for h, until in sorted(self._slots.items()) if until >= now]

    def inbox_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"processing": 0, "pending": 0, "done": 0, "failed": 0}
        for row in self._inbox.values():
            stats[row["state"]] += 1
        for state in ("processing", "pending"):
            times = [row["received_at"] for row in self._inbox.values() if row["state"] == state]
            stats[f"oldest_{state}_age_s"] = max(0.0, time.time() - min(times)) if times else None
        stats["keys"] = len(self._claims)
        return stats

    def inbox_list(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        rows = sorted(self._inbox, key=lambda e: self._inbox[e]["received_at"], reverse=True)
        listed = [self.inbox_row(e) for e in rows if state is None or self._inbox[e]["state"] == state]
        return [{k: row[k] for k in ("envelope_id", "kind", "state", "owner", "attempts", "deliveries", "received_at",
                                     "error")}
                for row in listed[:limit] if row is not None]

    def inbox_row(self, envelope_id: str) -> dict[str, Any] | None:
        row = self._inbox.get(envelope_id)
        if row is None:
            return None
        return {"envelope_id": envelope_id, "kind": row["envelope"].kind, "state": row["state"],
                "owner": row["owner"], "lease_until": None, "attempts": 1, "deliveries": row["deliveries"],
                "next_attempt_at": row["next_at"], "order_key": row["order_key"], "received_at": row["received_at"],
                "updated_at": row["at"], "error": row.get("error")}

    def retry(self, envelope_id: str) -> bool:
        """Always False: no sweeper here would take the row over (nothing outlives this process)."""
        return False

    def close(self) -> None:
        pass


# The calls that change what a claim would find (a claim itself changes nothing until it takes a
# row, and then its delivery settles, which counts).
_WRITES = ("claim", "claim_many", "claim_key", "finish", "renew", "relay_enqueue", "relay_settle", "prune",
           "outbox_enqueue", "outbox_settle", "outbox_renew", "outbox_recover", "outbox_retry", "outbox_cancel",
           "outbox_purge", "retry")


def _counted(call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def write(self: MemoryStore, *args: Any, **kwargs: Any) -> Any:
        self._writes += 1
        return call(self, *args, **kwargs)

    return write


for _name in _WRITES:
    setattr(MemoryStore, _name, _counted(getattr(MemoryStore, _name)))
