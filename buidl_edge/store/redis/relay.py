"""The Redis relay queue: inbox rows waiting for delivery to the backend, one queue per order key;
its Lua scripts below the class.

A key is in `rl:ready` (scored by when its head may go) exactly when its oldest undelivered row
is pending; a head in flight holds its key back. A row in flight is an entry of the inbox stream
under the deliverer's consumer, so `renew` and `sweep` cover it as they cover a handler's.
"""
from __future__ import annotations

import time

from buidl_edge.socketmode import protocol
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import Claimed, DeliveryOutcome, RelayRow
from buidl_edge.store.redis.db import RedisDb, redis_op
from buidl_edge.store.redis.inbox_lua import STREAM_LIB
from buidl_edge.store.redis.schema import CLAIM_SCAN, GROUP, LUA_PRELUDE, STREAM_MAXLEN


class RedisRelay(RedisDb):
    @redis_op
    def relay_enqueue(self, envelope_id: str, owner: str, order_key: str, not_before: float | None = None,
                      error: str | None = None) -> bool:
        now = time.time()
        due = now if not_before is None else not_before
        queued = self._script(RELAY_ENQUEUE, [GROUP, envelope_id, owner, order_key, repr(due), error or "", repr(now)])
        self._forget_handling(envelope_id)
        return bool(queued)

    @redis_op
    def relay_claim(self, owner: str, limit: int, lease_s: float | None = None) -> Claimed[RelayRow]:
        # The lease is the stream entry's idle time, as for a handled envelope: `lease_s` is the store's.
        next_at, flat = self._script(RELAY_CLAIM, [GROUP, owner, max(0, limit), repr(time.time()), CLAIM_SCAN,
                                                   STREAM_MAXLEN])
        rows = []
        mine = self._handling.setdefault(owner, set())
        for i in range(0, len(flat), 6):
            envelope_id, text, key, attempts, received_at, error = flat[i:i + 6]
            frame = protocol.parse_frame(text)
            if isinstance(frame, Envelope):
                mine.add(envelope_id)
                rows.append(RelayRow(frame, key, int(attempts), float(received_at), error or None))
        return Claimed(rows, float(next_at) if next_at else None)

    @redis_op
    def relay_settle(self, envelope_id: str, owner: str, outcome: DeliveryOutcome) -> bool:
        settled = self._script(RELAY_SETTLE, [GROUP, envelope_id, owner, outcome.kind, outcome.error or "",
                                              repr(outcome.retry_at), repr(time.time()), self._ttl()])
        self._forget_handling(envelope_id)
        return bool(settled)

    def _forget_handling(self, envelope_id: str) -> None:
        for handling in self._handling.values():
            handling.discard(envelope_id)


# ---------------------------------------------------------------- Lua

RELAY_LIB = r"""
-- A key is in rl:ready, scored by its head's next attempt, exactly when its head is pending.
local function refresh_queue(key)
  local q = P .. 'rl:q:' .. key
  for _ = 1, 100 do
    local head = redis.call('ZRANGE', q, 0, 0)[1]
    if not head then
      redis.call('ZREM', P .. 'rl:ready', key)
      return
    end
    local row = redis.call('HMGET', P .. 'in:' .. head, 'state', 'next_at')
    if row[1] == 'pending' then
      redis.call('ZADD', P .. 'rl:ready', row[2] or '0', key)
      return
    elseif row[1] == 'processing' then
      redis.call('ZREM', P .. 'rl:ready', key)
      return
    end
    redis.call('ZREM', q, head)  -- delivered, failed or forgotten: no longer queued
  end
end
"""

# ARGV: prefix, group, envelope_id, owner, order key, due, error, now.
RELAY_ENQUEUE = LUA_PRELUDE + RELAY_LIB + r"""
local group, eid, owner, key, due, err, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local rk = P .. 'in:' .. eid
local row = redis.call('HMGET', rk, 'state', 'owner', 'sid', 'received_at', 'order_key')
if row[1] ~= 'processing' or row[2] ~= owner then return 0 end
if row[3] then redis.pcall('XACK', P .. 'inbox:stream', group, row[3]) end
redis.call('HSET', rk, 'state', 'pending', 'owner', '', 'order_key', key, 'next_at', due, 'updated_at', now)
redis.call('HDEL', rk, 'sid')
if err ~= '' then redis.call('HSET', rk, 'error', err) end
if row[5] and row[5] ~= key then
  redis.call('ZREM', P .. 'rl:q:' .. row[5], eid)
  refresh_queue(row[5])
end
redis.call('ZADD', P .. 'rl:q:' .. key, row[4] or now, eid)
refresh_queue(key)
return 1
"""

# ARGV: prefix, group, owner, limit, now, scan, maxlen. Returns {next_at or '', {eid, envelope, key,
# attempts, received_at, error, ...}} for the due heads it took.
RELAY_CLAIM = LUA_PRELUDE + STREAM_LIB + RELAY_LIB + r"""
local group, owner, limit, now, scan, maxlen = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local ready = P .. 'rl:ready'
local out, taken, more = {}, 0, false
for _, key in ipairs(redis.call('ZRANGEBYSCORE', ready, '-inf', f(now), 'LIMIT', 0, scan)) do
  if taken >= limit then more = true break end
  local head = redis.call('ZRANGE', P .. 'rl:q:' .. key, 0, 0)[1]
  local rk = head and (P .. 'in:' .. head)
  local row = rk and redis.call('HMGET', rk, 'state', 'next_at', 'received_at', 'error')
  if row and row[1] == 'pending' and num(row[2], 0) <= now then
    local body = redis.call('GET', P .. 'ine:' .. head)
    if body then
      local sid = add_entry(P .. 'inbox:stream', group, owner, head, maxlen)
      redis.call('HSET', rk, 'state', 'processing', 'owner', owner, 'sid', sid, 'updated_at', f(now))
      local attempts = redis.call('HINCRBY', rk, 'deliveries', 1)
      redis.call('ZREM', ready, key)
      for _, v in ipairs({head, body, key, attempts, row[3] or '0', row[4] or ''}) do out[#out + 1] = v end
      taken = taken + 1
    else  -- never expected: the envelope is written with the row
      redis.call('HSET', rk, 'state', 'failed', 'error', 'envelope missing', 'updated_at', f(now))
      refresh_queue(key)
    end
  else
    refresh_queue(key)
  end
end
local next_at = ''
if more then
  next_at = f(now)
else
  local first = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if first[2] then next_at = first[2] end
end
return {next_at, out}
"""

# ARGV: prefix, group, envelope_id, owner, kind, error, retry_at, now, ttl.
RELAY_SETTLE = LUA_PRELUDE + RELAY_LIB + r"""
local group, eid, owner, kind, err, retry_at, now, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7],
  ARGV[8], ARGV[9]
local rk = P .. 'in:' .. eid
local row = redis.call('HMGET', rk, 'state', 'owner', 'sid', 'order_key')
if row[1] ~= 'processing' or row[2] ~= owner then return 0 end
if row[3] then redis.pcall('XACK', P .. 'inbox:stream', group, row[3]) end
redis.call('HDEL', rk, 'sid')
if kind == 'sent' or kind == 'failed' then
  redis.call('HSET', rk, 'state', kind == 'sent' and 'done' or 'failed', 'updated_at', now)
  if kind == 'failed' then redis.call('HSET', rk, 'error', err) else redis.call('HDEL', rk, 'error') end
  redis.call('EXPIRE', rk, ttl)
  redis.call('EXPIRE', P .. 'ine:' .. eid, ttl)
  if row[4] then redis.call('ZREM', P .. 'rl:q:' .. row[4], eid) end
else
  redis.call('HSET', rk, 'state', 'pending', 'owner', '', 'next_at', retry_at, 'updated_at', now)
  if err ~= '' then redis.call('HSET', rk, 'error', err) end
  if kind == 'ratelimited' and redis.call('HINCRBY', rk, 'deliveries', -1) < 0 then
    redis.call('HSET', rk, 'deliveries', 0)
  end
end
if row[4] then refresh_queue(row[4]) end
return 1
"""
