"""The shared store on Redis, for scale-out: several dynos coordinate through one Redis.

The same contract as `sqlite.py`, for processes that cannot share a file. Every
decision that reads and writes more than one key runs as one Lua script
(`redis_lua.py`), so it is atomic across every process of every dyno.

Keys (all under the prefix, `buidl:` unless the URL says `?prefix=`):

    k:<dedup key>       SET NX EX retention: `env:<envelope_id>`, `evt:<event_id>`, handlers' own keys
    inbox:stream        Stream + consumer group `edge`: one entry per claimed envelope, delivered to
                        the claiming worker (consumer = owner `host:pid`) in the claim script; XACKed
                        by `finish`; entries of a dead or silent consumer are taken over by `sweep`
                        (XAUTOCLAIM past the lease); trimmed with MAXLEN ~
    in:<envelope_id>    hash: the inbox row (state, owner, attempts, stream id); TTL once handled
    ine:<envelope_id>   the envelope's JSON (a string beside the small hash: cheaper); same TTL
    inbox               zset envelope_id -> received_at (listing and prune)
    ob:*                the outbox: rows (hashes), one zset per state, one queue per channel,
                        `ob:ready` (channels whose head may go, by the earliest time), token buckets
    w:<owner>, workers  heartbeat hashes with a TTL, and a zset of owners by last beat
    slots               zset holder -> lease expiry: the app's Socket Mode connections

redis-py's sockets are plain `socket` objects, cooperative once gevent has patched
the process, so a worker calls this store directly: no thread pool. A failing
Redis raises `StoreUnavailable` (the dispatcher then acks on in degraded mode);
after a failure, calls fail fast for a backoff that grows to BACKOFF_CAP_S, then
one call probes again, so an outage never stalls an ack on connect timeouts.
"""
from __future__ import annotations

import functools
import json
import logging
import random
import socket
import time
import uuid
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from buidl_edge import protocol
from buidl_edge.protocol import Envelope
from buidl_edge.ratelimit import PostLimits
from buidl_edge.store import redis_lua
from buidl_edge.store.base import (DEFAULT_RETENTION_S, MIN_RETENTION_S, OUTBOX_STATES, Claimed, OutboxRow,
                                   PostOutcome, Reply)
from buidl_edge.store.errors import StoreError, StoreUnavailable, rejected
from buidl_edge.store.owners import Owner, holder_owner, is_dead_local, one_line

log = logging.getLogger("buidl_edge.store.redis")

T = TypeVar("T")

DEFAULT_PREFIX = "buidl:"
GROUP = "edge"
# Entries are tiny (the envelope id); in-flight ones are far fewer than this.
STREAM_MAXLEN = 10_000
# A heartbeat hash outlives a few missed beats (workers beat every 2 s; status hides >15 s).
WORKER_TTL_S = 60
# Redis answers in well under a millisecond; these only bound a dead or unreachable server.
SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
POOL_SIZE = 8  # per process: Heroku Redis mini allows 20 clients in all
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 2.0  # a probe every 2 s at most: degraded mode ends soon after Redis is back
# How many ready channels one send decision looks at (the rest: next round, at once).
CLAIM_SCAN = 200
CHUNK = 500

# Errors that say "the server is not there (yet)", as opposed to a bug in a command.
_DOWN_HINTS = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM")


class _CallerError(ValueError):
    """A call with arguments no store takes: the caller's mistake, raised as it is."""


def _redis_op(method: Callable[..., T]) -> Callable[..., T]:
    """Fail fast while backing off, translate redis-py errors into StoreError, note recoveries."""

    @functools.wraps(method)
    def call(self: "RedisStore", *args: Any, **kwargs: Any) -> T:
        self._check_backoff()
        try:
            result = method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise self._failed(exc) from exc
        except (StoreError, _CallerError):
            raise
        except Exception as exc:  # not Redis failing: this call alone (a bug, data it cannot send)
            raise rejected(f"store {self.where} {method.__name__.lstrip('_')}", exc) from exc
        self._succeeded()
        return result

    return call


class RedisStore:
    """`EdgeStore` on Redis 6.2+ (XAUTOCLAIM), shared by every worker of every dyno."""

    durable = True

    def __init__(self, url: str, lease_s: float = 30.0, retention_s: float = DEFAULT_RETENTION_S,
                 host: str | None = None, pool_size: int = POOL_SIZE,
                 socket_timeout: float = SOCKET_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        """No I/O here: a worker starts (degraded) even while Redis is down.

        `retention_s` is the TTL of dedup keys and handled inbox rows (config keeps it >= 600 s).
        """
        url, self.prefix = _split_prefix(url)
        parts = urlsplit(url)
        # Named in errors and logs; never the password.
        self.where = f"redis {parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"
        self._password = parts.password
        self.lease_s = lease_s
        self.retention_s = retention_s
        self.host = host or socket.gethostname()
        try:
            self._pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=pool_size, timeout=socket_timeout, socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout, health_check_interval=30, decode_responses=True,
                # A lone surrogate (valid JSON from Slack, not UTF-8) travels as its surrogatepass
                # bytes and comes back as the same str: ids and keys stay one-to-one.
                encoding_errors="surrogatepass",
                # one quick retry on a fresh connection covers a socket left dead by a Redis restart
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        except ValueError as exc:
            raise StoreError(f"bad BUIDL_STORE_URL for {self.where}: {self._scrub(one_line(exc))}") from None
        self.r = redis.Redis(connection_pool=self._pool)
        self._scripts = {name: self.r.register_script(getattr(redis_lua, name)) for name in (
            "CLAIM", "FINISH", "RENEW", "SWEEP", "RETRY", "PRUNE_INBOX", "DROP_ROWS", "OUTBOX_ENQUEUE",
            "OUTBOX_CLAIM", "OUTBOX_SETTLE", "OUTBOX_RENEW", "OUTBOX_RECOVER", "OUTBOX_RETRY",
            "SLOT_ACQUIRE", "SLOT_RENEW")}
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._closed = False
        # Envelopes this process is handling, per owner: a sweep that claims one back is not a re-run.
        self._handling: dict[str, set[str]] = {}
        # Envelopes whose `finish` failed while Redis was away: marked done when it is back
        # (their replies went out from the worker's memory, so none are queued again).
        self._unfinished: dict[str, str | None] = {}

    @classmethod
    def from_settings(cls, url: str, settings: Any) -> "RedisStore":
        return cls(url, lease_s=settings.lease_s, retention_s=settings.retention_s)

    # ------------------------------------------------------------- plumbing

    def _k(self, name: str) -> str:
        return self.prefix + name

    def _script(self, name: str, args: Sequence[Any], keys: Sequence[str] = ()) -> Any:
        return self._scripts[name](keys=list(keys), args=[self.prefix, *args])

    def _check_backoff(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"store {self.where} is closed")
        if self._failures and time.monotonic() < self._retry_at:
            raise StoreUnavailable(f"store {self.where} unavailable (retrying in "
                                   f"{self._retry_at - time.monotonic():.1f}s): {self._last_error}")

    def _failed(self, exc: redis.RedisError) -> StoreError:
        detail = self._scrub(one_line(exc))
        down = isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) or (
            isinstance(exc, redis.ResponseError) and str(exc).upper().startswith(_DOWN_HINTS))
        if not down:
            return StoreError(f"store {self.where}: {detail}")
        self._failures += 1
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(self._failures - 1, 10)) * random.uniform(0.5, 1.0)
        self._retry_at = time.monotonic() + delay
        if self._failures == 1:
            log.error("%s unreachable (%s); failing fast and retrying with backoff", self.where, detail)
        self._last_error = detail
        return StoreUnavailable(f"store {self.where} unavailable: {detail}")

    def _succeeded(self) -> None:
        if self._failures:
            log.warning("%s reachable again after %d failed call(s)", self.where, self._failures)
            self._failures = 0
            self._last_error = ""
        if self._unfinished:
            self._flush_unfinished()

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def ping(self) -> bool:
        """True when Redis answers (`check` and tests)."""
        return bool(self._ping())

    @_redis_op
    def _ping(self) -> Any:
        return self.r.ping()

    # ------------------------------------------------------------ dedup

    @_redis_op
    def claim(self, envelope: Envelope, owner: str) -> bool:
        """Dedup keys (SET NX EX, both or neither) + stream entry + inbox row, in one script."""
        eid = envelope.envelope_id
        keys = [self._k(f"k:{key}") for key in envelope.dedup_keys]
        text = envelope.raw_text or json.dumps(envelope.to_dict(), separators=(",", ":"))
        new = self._script("CLAIM", [eid, self._ttl(), envelope.kind, text, owner,
                                     repr(time.time()), STREAM_MAXLEN, GROUP], keys)
        if new:
            self._handling.setdefault(owner, set()).add(eid)
        return bool(new)

    @_redis_op
    def claim_key(self, key: str) -> bool:
        return bool(self.r.set(self._k(f"k:{key}"), "", nx=True, ex=self._ttl()))

    def _ttl(self) -> int:
        return max(1, int(self.retention_s))

    # ------------------------------------------------------------ handling

    def finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None = None) -> None:
        """Mark done/failed (XACK) and queue the replies with idempotency keys, atomically."""
        try:
            self._finish(envelope_id, replies, error)
        except StoreUnavailable:
            self._unfinished[envelope_id] = error
            raise

    @_redis_op
    def _finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> None:
        rows = [[r.channel, r.text, _blocks_json(r.blocks), r.thread_ts] for r in replies]
        self._script("FINISH", [GROUP, envelope_id, "failed" if error else "done", "1" if error else "0",
                                error or "", repr(time.time()), self._ttl(), _rows_json(rows)])
        self._unfinished.pop(envelope_id, None)
        for handling in self._handling.values():
            handling.discard(envelope_id)

    def _flush_unfinished(self) -> None:
        """Mark done what was handled while Redis was away; no replies (they were sent from memory)."""
        for envelope_id, error in list(self._unfinished.items()):
            try:
                self._script("FINISH", [GROUP, envelope_id, "failed" if error else "done", "1" if error else "0",
                                        error or "", repr(time.time()), self._ttl(), "[]"])
            except redis.RedisError:
                return  # still failing: the next successful call tries again
            self._unfinished.pop(envelope_id, None)
            for handling in self._handling.values():
                handling.discard(envelope_id)

    @_redis_op
    def renew(self, owner: str) -> int:
        """Reset the idle time of this owner's stream entries so that no sweeper takes them."""
        return int(self._script("RENEW", [GROUP, owner]))

    @_redis_op
    def sweep(self, owner: str, limit: int = 100) -> list[Envelope]:
        """Take over entries of dead local consumers at once, and of any consumer past the lease.

        XAUTOCLAIM cannot skip our own consumer: an entry of ours that it hands back
        (our renewals failed for a whole lease) is still being handled here, so it is
        kept without a re-run.
        """
        dead = [c["name"] for c in self._consumers()
                if c.get("pending") and c["name"] != owner and is_dead_local(c["name"], self.host)]
        flat = self._script("SWEEP", [GROUP, owner, int(self.lease_s * 1000), limit, repr(time.time()), *dead])
        mine = self._handling.setdefault(owner, set())
        taken: list[Envelope] = []
        for envelope_id, text in zip(flat[::2], flat[1::2]):
            if envelope_id in mine:
                continue
            frame = protocol.parse_frame(text)
            if isinstance(frame, Envelope):
                mine.add(envelope_id)
                taken.append(frame)
        return taken

    def _consumers(self) -> list[dict[str, Any]]:
        try:
            return list(self.r.xinfo_consumers(self._k("inbox:stream"), GROUP))
        except redis.ResponseError:  # no stream or no group yet: nobody to take from
            return []

    @_redis_op
    def retry(self, envelope_id: str) -> bool:
        """Hand a done/failed envelope back to the sweepers (a new stream entry, long idle)."""
        return bool(self._script("RETRY", [GROUP, envelope_id, repr(time.time()), STREAM_MAXLEN]))

    # ---------------------------------------------------------- housekeeping

    @_redis_op
    def prune(self, retention_s: float = DEFAULT_RETENTION_S, now: float | None = None) -> int:
        """Drop handled inbox rows and sent replies older than the retention (floored).

        Dedup keys need no pruning: each expires on its own (TTL = the store's retention).
        Also trims the stream, forgets consumers with nothing pending that went quiet
        (workers that exited), and drops stale heartbeat and slot entries.
        """
        now = time.time() if now is None else now
        cutoff = now - max(retention_s, MIN_RETENTION_S)
        dropped = 0
        offset = 0
        while True:
            gone, kept, seen = self._script("PRUNE_INBOX", [repr(cutoff), offset, CHUNK])
            dropped += gone
            offset += kept
            if seen < CHUNK:
                break
        while True:
            gone = self._script("DROP_ROWS", ["sent", CHUNK, repr(cutoff)])
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

    @_redis_op
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

    @_redis_op
    def forget_worker(self, owner: str) -> None:
        """A worker that stopped cleanly takes its heartbeat out of `status`."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._k(f"w:{owner}"))
        pipe.zrem(self._k("workers"), owner)
        pipe.execute()

    @_redis_op
    def workers(self, max_age_s: float | None = None) -> list[dict[str, Any]]:
        """Workers of every dyno that reported, newest first; `max_age_s` hides ones gone quiet."""
        since = "-inf" if max_age_s is None else repr(time.time() - max_age_s)
        owners = self.r.zrevrangebyscore(self._k("workers"), "+inf", since)
        pipe = self.r.pipeline(transaction=False)
        for owner in owners:
            pipe.hgetall(self._k(f"w:{owner}"))
        out = []
        for owner, row in zip(owners, pipe.execute() if owners else []):
            if not row:
                continue  # its hash expired: long gone
            out.append({"owner": row["owner"], "pid": int(row["pid"]), "host": row["host"],
                        "updated_at": float(row["updated_at"]), "stats": json.loads(row["stats"]),
                        "degraded": row.get("degraded") == "1"})
        return out

    # ------------------------------------------------------------ admin reads

    @_redis_op
    def inbox_row(self, envelope_id: str) -> dict[str, Any] | None:
        """One inbox row; `lease_until` comes from the stream entry's idle time."""
        row = self.r.hgetall(self._k(f"in:{envelope_id}"))
        if not row:
            return None
        lease_until = None
        if row.get("state") == "processing" and row.get("sid"):
            pending = self.r.xpending_range(self._k("inbox:stream"), GROUP, row["sid"], row["sid"], 1)
            if pending:
                lease_until = time.time() - pending[0]["time_since_delivered"] / 1000 + self.lease_s
        return {"envelope_id": envelope_id, "kind": row.get("kind"), "state": row.get("state"),
                "owner": row.get("owner"), "lease_until": lease_until, "attempts": int(row.get("attempts", 0)),
                "received_at": float(row.get("received_at", 0)), "updated_at": float(row.get("updated_at", 0)),
                "error": row.get("error")}

    @_redis_op
    def inbox_list(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent inbox rows, optionally of one state."""
        cols = ("envelope_id", "kind", "state", "owner", "attempts", "received_at", "error")
        out: list[dict[str, Any]] = []
        start = 0
        while len(out) < limit:
            ids = self.r.zrevrange(self._k("inbox"), start, start + CHUNK - 1)
            if not ids:
                break
            start += CHUNK
            pipe = self.r.pipeline(transaction=False)
            for eid in ids:
                pipe.hmget(self._k(f"in:{eid}"), "kind", "state", "owner", "attempts", "received_at", "error")
            for eid, (kind, st, owner, attempts, received, error) in zip(ids, pipe.execute()):
                if st is None or (state and st != state):
                    continue
                out.append(dict(zip(cols, (eid, kind, st, owner, int(attempts or 0), float(received or 0), error))))
                if len(out) >= limit:
                    break
        return out

    @_redis_op
    def inbox_stats(self) -> dict[str, Any]:
        """Counts for `inbox stats` (a scan of the inbox: an admin command, not the hot path)."""
        stats: dict[str, Any] = {"processing": 0, "done": 0, "failed": 0}
        oldest: float | None = None
        start = 0
        while True:
            ids = self.r.zrange(self._k("inbox"), start, start + CHUNK - 1)
            if not ids:
                break
            start += CHUNK
            pipe = self.r.pipeline(transaction=False)
            for eid in ids:
                pipe.hmget(self._k(f"in:{eid}"), "state", "received_at")
            for st, received in pipe.execute():
                if st is None:
                    continue
                stats[st] = stats.get(st, 0) + 1
                if st == "processing":
                    oldest = float(received) if oldest is None else min(oldest, float(received))
        stats["oldest_processing_age_s"] = None if oldest is None else max(0.0, time.time() - oldest)
        stats["keys"] = sum(1 for _ in self.r.scan_iter(match=self._k("k:*"), count=1000))
        stats["outbox_pending"] = self.r.zcard(self._k("ob:s:pending"))
        stats["outbox_sent"] = self.r.zcard(self._k("ob:s:sent"))
        return stats

    # ------------------------------------------------------------ outbox

    @_redis_op
    def outbox_enqueue(self, replies: Sequence[Reply], envelope_id: str = "",
                       keys: Sequence[str] | None = None) -> list[int]:
        """Queue messages; a key queued before is not queued again (its row id is returned)."""
        keys = list(keys) if keys is not None else [f"q:{uuid.uuid4().hex}" for _ in replies]
        if len(keys) != len(replies):
            raise _CallerError("one idempotency key per reply")
        rows = [[r.channel, r.text, _blocks_json(r.blocks), r.thread_ts, key] for r, key in zip(replies, keys)]
        if not rows:
            return []
        return [int(i) for i in self._script("OUTBOX_ENQUEUE", [repr(time.time()), envelope_id, _rows_json(rows)])]

    @_redis_op
    def outbox_claim(self, owner: str, limit: int, limits: PostLimits, lease_s: float | None = None) -> Claimed:
        """One script per send decision: due channel heads, token buckets spent, rows leased."""
        if limit <= 0:
            return Claimed([], None)
        now = time.time()
        lease = self.lease_s if lease_s is None else lease_s
        out = self._script("OUTBOX_CLAIM", [owner, limit, repr(now), repr(now + lease), repr(limits.rate),
                                            repr(limits.burst), repr(limits.global_rate),
                                            repr(limits.effective_global_burst), repr(limits.jitter_s), CLAIM_SCAN])
        rows = sorted((_outbox_row(flat) for flat in out[1:]), key=lambda r: r.id)
        return Claimed(rows, float(out[0]) if out[0] else None)

    @_redis_op
    def outbox_settle(self, row_id: int, owner: str, outcome: PostOutcome) -> OutboxRow | None:
        flat = self._script("OUTBOX_SETTLE", [row_id, owner, outcome.kind, outcome.error or "", outcome.ts or "",
                                              repr(outcome.retry_at), outcome.pause, repr(time.time())])
        return _outbox_row(flat) if flat else None

    @_redis_op
    def outbox_renew(self, owner: str, lease_s: float | None = None) -> int:
        lease_until = time.time() + (self.lease_s if lease_s is None else lease_s)
        return int(self._script("OUTBOX_RENEW", [owner, repr(lease_until)]))

    @_redis_op
    def outbox_recover(self, owner: str) -> int:
        """Rows left `sending` by a dead local process or past their lease go back to pending."""
        ids = self.r.zrange(self._k("ob:s:sending"), 0, -1)
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
        return int(self._script("OUTBOX_RECOVER", [owner, repr(time.time()), *sorted(dead)]))

    @_redis_op
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

    @_redis_op
    def outbox_list(self, state: str | None = None, channel: str | None = None,
                    limit: int = 50) -> list[OutboxRow]:
        """Newest rows first (per-state indexes merged), optionally of one state or channel."""
        found: list[OutboxRow] = []
        for st in ([state] if state else OUTBOX_STATES):
            taken, start = 0, 0
            while taken < limit:
                ids = self.r.zrevrange(self._k(f"ob:s:{st}"), start, start + CHUNK - 1)
                if not ids:
                    break
                start += CHUNK
                pipe = self.r.pipeline(transaction=False)
                for row_id in ids:
                    pipe.hgetall(self._k(f"ob:r:{row_id}"))
                for row in pipe.execute():
                    if row and (channel is None or row.get("channel") == channel):
                        found.append(_outbox_row(row))
                        taken += 1
                        if taken >= limit:
                            break
        return sorted(found, key=lambda r: r.id, reverse=True)[:limit]

    @_redis_op
    def outbox_row(self, row_id: int) -> OutboxRow | None:
        row = self.r.hgetall(self._k(f"ob:r:{row_id}"))
        return _outbox_row(row) if row else None

    @_redis_op
    def outbox_retry(self, row_id: int) -> bool:
        return bool(self._script("OUTBOX_RETRY", [row_id, repr(time.time())]))

    @_redis_op
    def outbox_purge(self, state: str = "failed") -> int:
        if state not in ("failed", "sent"):
            raise _CallerError(f"only failed or sent rows can be purged, not {state!r}")
        total = 0
        while True:
            gone = self._script("DROP_ROWS", [state, CHUNK, ""])
            total += gone
            if gone < CHUNK:
                return total

    # ------------------------------------------------------------ connection slots

    @_redis_op
    def acquire_slot(self, holder: str, limit: int, ttl: float) -> bool:
        """Lease one of `limit` slots, app-wide (every dyno), on Redis's clock.

        When all are taken, leases of dead processes on this host are freed and it tries once more
        (a dyno elsewhere that died frees its slots when their leases lapse).
        """
        if self._script("SLOT_ACQUIRE", [holder, limit, repr(ttl)]):
            return True
        dead = [h for h in self.r.zrange(self._k("slots"), 0, -1) if is_dead_local(holder_owner(h), self.host)]
        if not dead:
            return False
        self.r.zrem(self._k("slots"), *dead)
        return bool(self._script("SLOT_ACQUIRE", [holder, limit, repr(ttl)]))

    @_redis_op
    def renew_slots(self, holders: Sequence[str], limit: int, ttl: float) -> list[str]:
        if not holders:
            return []
        return list(self._script("SLOT_RENEW", [limit, repr(ttl), *holders]))

    @_redis_op
    def release_slot(self, holder: str) -> None:
        self.r.zrem(self._k("slots"), holder)

    @_redis_op
    def slots(self) -> list[dict[str, Any]]:
        """Leases held now, for `status`: holder and seconds left."""
        seconds, micros = self.r.time()
        now = seconds + micros / 1e6
        held = self.r.zrangebyscore(self._k("slots"), repr(now), "+inf", withscores=True)
        return [{"holder": h, "expires_in": round(until - now, 3)} for h, until in sorted(held)]

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._closed:
            return
        if self._unfinished and not self._failures:
            try:
                self._flush_unfinished()
            except Exception:  # best effort on the way out
                pass
        self._closed = True
        self._pool.disconnect()


def _split_prefix(url: str) -> tuple[str, str]:
    """Take our own `prefix=` out of the URL's query; redis-py would pass it on to sockets."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def _rows_json(rows: list[list[Any]]) -> str:
    # Not ASCII-escaped: Lua's cjson refuses a lone surrogate escape, but passes its bytes through.
    return json.dumps(rows, ensure_ascii=False)


def _blocks_json(blocks: list[dict[str, Any]] | None) -> str | None:
    return None if blocks is None else json.dumps(blocks, separators=(",", ":"))


def _outbox_row(data: Any) -> OutboxRow:
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
