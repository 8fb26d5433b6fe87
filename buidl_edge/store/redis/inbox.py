"""The Redis inbox: dedup claims, finishing an envelope (with its replies), the stream's leases,
sweeps and prune; its Lua scripts below the class.

Every decision that reads and writes more than one key runs as one Lua script, so it is atomic
across every process of every dyno.
"""
from __future__ import annotations

import json
import time
from typing import Any, Sequence

import redis

from buidl_edge import protocol
from buidl_edge.protocol import Envelope
from buidl_edge.store.base import DEFAULT_RETENTION_S, Reply, blocks_json, retention_cutoff
from buidl_edge.store.errors import StoreError, StoreRejected, StoreUnavailable
from buidl_edge.store.owners import is_dead_local
from buidl_edge.store.redis.db import RedisDb, redis_op, rows_json
from buidl_edge.store.redis.outbox_lua import DROP_ROWS, OUTBOX_LIB
from buidl_edge.store.redis.schema import CHUNK, GROUP, LUA_PRELUDE, STREAM_MAXLEN


class RedisInbox(RedisDb):
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
            return [self._claim_alone(envelope, owner) for envelope in envelopes]

    @redis_op
    def _claim_pipelined(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError]:
        calls = [self._claim_call(envelope, owner) for envelope in envelopes]
        sha = self._loaded_sha(CLAIM)
        results = self._pipelined(sha, calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, redis.exceptions.NoScriptError)]
        if missing:  # the server lost its scripts (a restart, SCRIPT FLUSH): load it, send those again
            sha = self.r.script_load(CLAIM)
            for i, result in zip(missing, self._pipelined(sha, [calls[i] for i in missing])):
                results[i] = result
        outcomes: list[bool | StoreError] = []
        for envelope, result in zip(envelopes, results):
            if isinstance(result, redis.RedisError):
                error = self._failed(result)
                if isinstance(error, StoreUnavailable):  # the store is down, not this one item
                    raise error
                outcomes.append(error)
            else:
                outcomes.append(self._claimed(envelope, owner, result))
        return outcomes

    def _claim_alone(self, envelope: Envelope, owner: str) -> bool | StoreError:
        try:
            return self.claim(envelope, owner)
        except StoreRejected as exc:
            return exc

    def _pipelined(self, sha: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        pipe = self.r.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, self.prefix, *args)
        return list(pipe.execute(raise_on_error=False))

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

    def finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None = None) -> None:
        """Mark done/failed (XACK) and queue the replies with idempotency keys, atomically."""
        try:
            self._finish(envelope_id, replies, error)
        except StoreUnavailable:
            self._unfinished[envelope_id] = error
            raise

    @redis_op
    def _finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> None:
        rows = [[r.channel, r.text, blocks_json(r.blocks), r.thread_ts] for r in replies]
        self._run_finish(envelope_id, error, rows_json(rows))

    def _run_finish(self, envelope_id: str, error: str | None, replies_json: str) -> None:
        self._script(FINISH, [GROUP, envelope_id, "failed" if error else "done", "1" if error else "0",
                              error or "", repr(time.time()), self._ttl(), replies_json])
        self._unfinished.pop(envelope_id, None)
        for handling in self._handling.values():
            handling.discard(envelope_id)

    def _flush_unfinished(self) -> None:
        """Mark done what was handled while Redis was away; no replies (they were sent from memory)."""
        for envelope_id, error in list(self._unfinished.items()):
            try:
                self._run_finish(envelope_id, error, "[]")
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


# ---------------------------------------------------------------- Lua

# Prepended to the scripts that add an inbox stream entry (CLAIM, RETRY).
STREAM_LIB = r"""
-- Every XADD is followed by an XREADGROUP as the claiming consumer in the same
-- script, so the group never has undelivered entries and '>' returns ours.
local function add_entry(stream, group, consumer, eid, maxlen)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, group, '$', 'MKSTREAM')
  end
  local sid = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', eid)
  local got = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', stream, '>')
  if type(got) == 'table' and got.err then
    -- the group alone was dropped: make it again past our entry and take ours explicitly
    redis.pcall('XGROUP', 'CREATE', stream, group, sid)
    redis.call('XCLAIM', stream, group, consumer, 0, sid, 'FORCE', 'JUSTID')
    return sid
  end
  local guard = 0
  while got and got[1][2][1] and got[1][2][1][1] ~= sid and guard < 100 do
    -- an entry nobody read (never expected): leave it idle for the sweepers
    redis.call('XCLAIM', stream, group, 'orphan', 0, got[1][2][1][1], 'IDLE', 86400000, 'JUSTID')
    got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', stream, '>')
    guard = guard + 1
  end
  if not got or not got[1][2][1] or got[1][2][1][1] ~= sid then
    redis.call('XCLAIM', stream, group, consumer, 0, sid, 'FORCE', 'JUSTID')
  end
  return sid
end
"""

# KEYS: the dedup keys. ARGV: prefix, envelope_id, ttl, kind, envelope json, owner, now, maxlen, group.
CLAIM = LUA_PRELUDE + STREAM_LIB + r"""
local eid, ttl, kind, env, owner, now, maxlen, group =
  ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
for i = 1, #KEYS do redis.call('SET', KEYS[i], eid, 'EX', ttl) end
local sid = add_entry(P .. 'inbox:stream', group, owner, eid, maxlen)
local rk = P .. 'in:' .. eid
-- The row stays a small hash (listpack); the envelope, ~1 KB, is a string of its own: cheaper.
redis.call('HSET', rk, 'kind', kind, 'state', 'processing', 'owner', owner, 'sid', sid,
           'attempts', 1, 'received_at', now, 'updated_at', now)
redis.call('HDEL', rk, 'error')  -- a row left from a claim long ago (its keys expired) starts over
redis.call('PERSIST', rk)
redis.call('SET', P .. 'ine:' .. eid, env)
redis.call('ZADD', P .. 'inbox', now, eid)
return 1
"""

# ARGV: prefix, group, envelope_id, state, has_error, error, now, ttl, replies json.
FINISH = LUA_PRELUDE + OUTBOX_LIB + r"""
local group, eid, state, has_error, err, now, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local rk = P .. 'in:' .. eid
if redis.call('EXISTS', rk) == 1 then
  local sid = redis.call('HGET', rk, 'sid')
  redis.call('HSET', rk, 'state', state, 'updated_at', now)
  if has_error == '1' then redis.call('HSET', rk, 'error', err) else redis.call('HDEL', rk, 'error') end
  redis.call('EXPIRE', rk, ttl)
  redis.call('EXPIRE', P .. 'ine:' .. eid, ttl)
  if sid then redis.pcall('XACK', P .. 'inbox:stream', group, sid) end
end
local ids = {}
for i, r in ipairs(cjson.decode(ARGV[9])) do
  r[5] = eid .. ':' .. (i - 1)
  ids[#ids + 1] = enqueue(eid, r, now)
end
return ids
"""

# ARGV: prefix, group, owner. Resets the idle time of the owner's pending entries.
RENEW = r"""
local stream, group, owner = ARGV[1] .. 'inbox:stream', ARGV[2], ARGV[3]
if redis.call('EXISTS', stream) == 0 then return 0 end
local pend = redis.pcall('XPENDING', stream, group, '-', '+', 10000, owner)
if type(pend) ~= 'table' or pend.err then return 0 end
local ids = {}
for _, p in ipairs(pend) do ids[#ids + 1] = p[1] end
for i = 1, #ids, 500 do
  local args = {stream, group, owner, 0}
  for j = i, math.min(i + 499, #ids) do args[#args + 1] = ids[j] end
  args[#args + 1] = 'JUSTID'  -- resets the idle time without counting a delivery
  redis.call('XCLAIM', unpack(args))
end
return #ids
"""

# ARGV: prefix, group, me, lease_ms, limit, now, dead consumers...
# Returns envelope_id, envelope json, ... of the entries taken over.
SWEEP = r"""
local P, group, me, lease_ms, limit, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local stream = P .. 'inbox:stream'
if redis.call('EXISTS', stream) == 0 then return {} end
local taken = {}
for i = 7, #ARGV do
  local room = limit - #taken
  if room <= 0 then break end
  local pend = redis.pcall('XPENDING', stream, group, '-', '+', room, ARGV[i])
  if type(pend) == 'table' and not pend.err and #pend > 0 then
    local ids = {}
    for _, p in ipairs(pend) do ids[#ids + 1] = p[1] end
    for _, e in ipairs(redis.call('XCLAIM', stream, group, me, 0, unpack(ids))) do taken[#taken + 1] = e end
  end
end
local room = limit - #taken
if room > 0 then
  local res = redis.pcall('XAUTOCLAIM', stream, group, me, lease_ms, '0-0', 'COUNT', room)
  if type(res) == 'table' and not res.err then
    for _, e in ipairs(res[2]) do taken[#taken + 1] = e end
  end
end
local out = {}
for _, e in ipairs(taken) do
  if type(e) == 'table' then  -- Redis 6.2 lists entries trimmed away as nil
    local sid, fields = e[1], e[2]
    local eid = type(fields) == 'table' and fields[2]
    local row = eid and redis.call('HMGET', P .. 'in:' .. eid, 'state', 'sid')
    local body = row and row[1] == 'processing' and row[2] == sid and redis.call('GET', P .. 'ine:' .. eid)
    if body then
      redis.call('HSET', P .. 'in:' .. eid, 'owner', me, 'updated_at', now)
      redis.call('HINCRBY', P .. 'in:' .. eid, 'attempts', 1)
      out[#out + 1] = eid
      out[#out + 1] = body
    else
      redis.call('XACK', stream, group, sid)  -- handled or forgotten: nothing left to run
    end
  end
end
return out
"""

# ARGV: prefix, group, envelope_id, now, maxlen.
RETRY = LUA_PRELUDE + STREAM_LIB + r"""
local group, eid, now, maxlen = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rk = P .. 'in:' .. eid
local state = redis.call('HGET', rk, 'state')
if state ~= 'done' and state ~= 'failed' then return 0 end
local stream = P .. 'inbox:stream'
local sid = add_entry(stream, group, 'retry', eid, maxlen)
-- idle since long ago: the next sweep of any worker takes it
redis.call('XCLAIM', stream, group, 'retry', 0, sid, 'IDLE', 86400000, 'JUSTID')
redis.call('HSET', rk, 'state', 'processing', 'owner', '', 'sid', sid, 'updated_at', now, 'deliveries', 0)
redis.call('HDEL', rk, 'error')
redis.call('PERSIST', rk)
redis.call('PERSIST', P .. 'ine:' .. eid)
return 1
"""

# ARGV: prefix, cutoff, offset, count. Drops handled inbox rows last updated before the cutoff.
PRUNE_INBOX = r"""
local P, cutoff = ARGV[1], tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', P .. 'inbox', '-inf', ARGV[2], 'LIMIT', ARGV[3], ARGV[4])
local dropped, kept = 0, 0
for _, eid in ipairs(ids) do
  local rk = P .. 'in:' .. eid
  local row = redis.call('HMGET', rk, 'state', 'updated_at')
  if not row[1] then
    redis.call('ZREM', P .. 'inbox', eid)  -- expired on its own (TTL = retention)
    redis.call('DEL', P .. 'ine:' .. eid)
    dropped = dropped + 1
  elseif (row[1] == 'done' or row[1] == 'failed') and (tonumber(row[2]) or 0) < cutoff then
    redis.call('DEL', rk, P .. 'ine:' .. eid)
    redis.call('ZREM', P .. 'inbox', eid)
    dropped = dropped + 1
  else
    kept = kept + 1
  end
end
return {dropped, kept, #ids}
"""
