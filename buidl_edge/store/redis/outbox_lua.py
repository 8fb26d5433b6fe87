"""The Lua scripts of the Redis outbox: every decision on queue, buckets and leases is one atomic
script (see store/redis/schema.py for the key layout, store/redis/outbox.py for the calls).
"""
from __future__ import annotations

from buidl_edge.store.redis.schema import LUA_PRELUDE

# The outbox's helpers, prepended to each script below that needs them (and to the inbox's FINISH,
# which queues a handler's replies).
OUTBOX_LIB = r"""
-- Outbox: a channel is in ob:ready (scored by the earliest time it may send) exactly
-- when its oldest unsent row is pending; a head in flight holds the channel back.
local function refresh_channel(channel)
  local head = redis.call('ZRANGE', P .. 'ob:q:' .. channel, 0, 0)[1]
  if not head then
    redis.call('ZREM', P .. 'ob:ready', channel)
    redis.call('SREM', P .. 'ob:chans', channel)
    return
  end
  redis.call('SADD', P .. 'ob:chans', channel)
  local row = redis.call('HMGET', P .. 'ob:r:' .. head, 'state', 'next_at')
  if row[1] == 'pending' then
    redis.call('ZADD', P .. 'ob:ready', row[2] or '0', channel)
  else
    redis.call('ZREM', P .. 'ob:ready', channel)
  end
end

local function move(id, from, to)
  redis.call('ZREM', P .. 'ob:s:' .. from, id)
  redis.call('ZADD', P .. 'ob:s:' .. to, id, id)
end

-- One reply into the outbox unless its idempotency key was queued before; returns the row id.
local function enqueue(eid, r, now)
  local channel, text, blocks, thread_ts, key = r[1], r[2], r[3], r[4], r[5]
  local kk = P .. 'ob:k:' .. key
  local existing = redis.call('GET', kk)
  if existing then return tonumber(existing) end
  local id = redis.call('INCR', P .. 'ob:seq')
  local rk = P .. 'ob:r:' .. id
  redis.call('HSET', rk, 'id', id, 'envelope_id', eid, 'channel', channel, 'key', key, 'state', 'pending',
             'attempts', 0, 'next_at', now, 'created_at', now, 'updated_at', now, 'rate_limited', 0)
  if text ~= cjson.null then redis.call('HSET', rk, 'text', text) end
  if blocks ~= cjson.null then redis.call('HSET', rk, 'blocks', blocks) end
  if thread_ts ~= cjson.null then redis.call('HSET', rk, 'thread_ts', thread_ts) end
  redis.call('SET', kk, id)
  redis.call('ZADD', P .. 'ob:s:pending', id, id)
  local q = P .. 'ob:q:' .. channel
  redis.call('ZADD', q, id, id)
  if redis.call('ZCARD', q) == 1 then refresh_channel(channel) end
  return id
end

-- Token buckets (the same arithmetic as buidl_edge/delivery/ratelimit.py).
local function bucket(key)
  local b = redis.call('HMGET', P .. 'ob:b:' .. key, 'tokens', 'updated', 'paused')
  if not b[1] then return nil end
  return {tokens = tonumber(b[1]), updated = tonumber(b[2]), paused = num(b[3], 0)}
end

local function save_bucket(key, b, rate, burst, now)
  local bk = P .. 'ob:b:' .. key
  redis.call('HSET', bk, 'tokens', f(b.tokens), 'updated', f(b.updated), 'paused', f(b.paused))
  -- Untouched this long the bucket is full again: the same as no bucket at all.
  local refill = 3600
  if rate > 0 then refill = math.max(0, burst - b.tokens) / rate end
  redis.call('EXPIRE', bk, math.ceil(math.max(0, b.paused - now) + refill + 60))
  if b.paused > now then redis.call('ZADD', P .. 'ob:paused', f(b.paused), key) end
end

local function level(b, now, rate, burst)
  if not b then return burst end
  return math.min(burst, b.tokens + math.max(0, now - b.updated) * rate)
end

local function need(rate, burst, jitter)
  return math.max(1, math.min(burst, 1 + rate * jitter))
end

local function ready_at(b, now, rate, burst, jitter)
  local start = now
  if b and b.paused > start then start = b.paused end
  local have = level(b, start, rate, burst)
  local want = need(rate, burst, jitter)
  if have >= want then return start end
  return start + (want - have) / rate
end

local function spend(b, now, rate, burst)
  local paused = 0
  if b then paused = b.paused end
  return {tokens = level(b, now, rate, burst) - 1, updated = now, paused = paused}
end
"""

# ARGV: prefix, now, envelope_id, replies json ([channel, text, blocks, thread_ts, key], ...).
OUTBOX_ENQUEUE = LUA_PRELUDE + OUTBOX_LIB + r"""
local now, eid = ARGV[2], ARGV[3]
local ids = {}
for _, r in ipairs(cjson.decode(ARGV[4])) do ids[#ids + 1] = enqueue(eid, r, now) end
return ids
"""

# ARGV: prefix, owner, limit, now, lease_until, rate, burst, global_rate, global_burst, jitter, scan.
# One send decision: the due channel heads that their bucket (and the global one) allow.
OUTBOX_CLAIM = LUA_PRELUDE + OUTBOX_LIB + r"""
local owner, limit, now, lease_until = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local rate, burst, grate, gburst = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local jitter, scan = tonumber(ARGV[10]), ARGV[11]
local ready = P .. 'ob:ready'
local next_at = nil
local function later(t) if next_at == nil or t < next_at then next_at = t end end
local cands = redis.call('ZRANGEBYSCORE', ready, '-inf', f(now), 'LIMIT', 0, scan)
local glob = bucket('*')
local glob_spent = false
local chosen = {}
for _, channel in ipairs(cands) do
  if #chosen >= limit then later(now) break end
  local head = redis.call('ZRANGE', P .. 'ob:q:' .. channel, 0, 0)[1]
  local row = head and redis.call('HMGET', P .. 'ob:r:' .. head, 'state', 'next_at')
  if not row or row[1] ~= 'pending' then
    refresh_channel(channel)
  else
    local ckey = 'c:' .. channel
    local cb = bucket(ckey)
    local at = math.max(tonumber(row[2]) or 0, ready_at(cb, now, rate, burst, jitter))
    if grate > 0 then
      at = math.max(at, ready_at(glob, now, grate, gburst, 0))
    elseif glob then
      at = math.max(at, glob.paused)
    end
    if at > now then
      redis.call('ZADD', ready, f(at), channel)  -- not before then: look again at that time
      later(at)
    else
      save_bucket(ckey, spend(cb, now, rate, burst), rate, burst, now)
      if grate > 0 then
        glob = spend(glob, now, grate, gburst)
        glob_spent = true
      end
      local rk = P .. 'ob:r:' .. head
      redis.call('HSET', rk, 'state', 'sending', 'lease_owner', owner, 'lease_until', lease_until,
                 'updated_at', f(now))
      redis.call('HINCRBY', rk, 'attempts', 1)
      move(head, 'pending', 'sending')
      redis.call('ZREM', ready, channel)
      chosen[#chosen + 1] = head
    end
  end
end
if glob_spent then save_bucket('*', glob, grate, gburst, now) end
local first = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
if first[1] then later(math.max(now, tonumber(first[2]))) end
local out = {''}
if next_at then out[1] = f(next_at) end
for _, id in ipairs(chosen) do out[#out + 1] = redis.call('HGETALL', P .. 'ob:r:' .. id) end
return out
"""

# ARGV: prefix, id, owner, kind, error ('' = none), ts ('' = none), retry_at, pause scope, now.
OUTBOX_SETTLE = LUA_PRELUDE + OUTBOX_LIB + r"""
local id, owner, kind, err, ts, retry_at, scope, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7],
  ARGV[8], tonumber(ARGV[9])
local rk = P .. 'ob:r:' .. id
local row = redis.call('HMGET', rk, 'state', 'lease_owner', 'channel', 'attempts')
if row[1] ~= 'sending' or row[2] ~= owner then return false end
local channel = row[3]
if kind == 'sent' then
  redis.call('HSET', rk, 'state', 'sent', 'sent_at', f(now), 'updated_at', f(now))
  if ts ~= '' then redis.call('HSET', rk, 'ts', ts) end
  redis.call('HDEL', rk, 'lease_until')
  move(id, 'sending', 'sent')
  redis.call('ZREM', P .. 'ob:q:' .. channel, id)
elseif kind == 'failed' then
  redis.call('HSET', rk, 'state', 'failed', 'updated_at', f(now))
  if err ~= '' then redis.call('HSET', rk, 'error', err) end
  redis.call('HDEL', rk, 'lease_until')
  move(id, 'sending', 'failed')
  redis.call('ZREM', P .. 'ob:q:' .. channel, id)
else
  redis.call('HSET', rk, 'state', 'pending', 'next_at', retry_at, 'updated_at', f(now))
  if err ~= '' then redis.call('HSET', rk, 'error', err) else redis.call('HDEL', rk, 'error') end
  redis.call('HDEL', rk, 'lease_owner', 'lease_until')
  move(id, 'sending', 'pending')
  if kind == 'ratelimited' then  -- not an attempt; pause the bucket Slack said was empty
    redis.call('HSET', rk, 'attempts', math.max(0, tonumber(row[4]) - 1))
    redis.call('HINCRBY', rk, 'rate_limited', 1)
    redis.call('INCR', P .. 'ob:rl')
    local key = 'c:' .. channel
    if scope == 'global' then key = '*' end
    local old = bucket(key)
    local paused = tonumber(retry_at)
    if old and old.paused > paused then paused = old.paused end
    save_bucket(key, {tokens = 0, updated = now, paused = paused}, 0, 0, now)
  end
end
refresh_channel(channel)
return redis.call('HGETALL', rk)
"""

# ARGV: prefix, owner, lease_until.
OUTBOX_RENEW = r"""
local P, owner, lease_until = ARGV[1], ARGV[2], ARGV[3]
local n = 0
for _, id in ipairs(redis.call('ZRANGE', P .. 'ob:s:sending', 0, -1)) do
  local rk = P .. 'ob:r:' .. id
  if redis.call('HGET', rk, 'lease_owner') == owner then
    redis.call('HSET', rk, 'lease_until', lease_until)
    n = n + 1
  end
end
return n
"""

# ARGV: prefix, owner, now, dead owners...
OUTBOX_RECOVER = LUA_PRELUDE + OUTBOX_LIB + r"""
local owner, now = ARGV[2], tonumber(ARGV[3])
local dead = {}
for i = 4, #ARGV do dead[ARGV[i]] = true end
local n = 0
for _, id in ipairs(redis.call('ZRANGE', P .. 'ob:s:sending', 0, -1)) do
  local rk = P .. 'ob:r:' .. id
  local row = redis.call('HMGET', rk, 'lease_owner', 'lease_until', 'channel')
  if row[1] and row[1] ~= owner and (num(row[2], 0) < now or dead[row[1]]) then
    redis.call('HSET', rk, 'state', 'pending', 'error', 'in flight when its sender died', 'next_at', f(now),
               'updated_at', f(now))
    redis.call('HDEL', rk, 'lease_until')
    move(id, 'sending', 'pending')
    refresh_channel(row[3])
    n = n + 1
  end
end
return n
"""

# ARGV: prefix, id, now.
OUTBOX_RETRY = LUA_PRELUDE + OUTBOX_LIB + r"""
local id, now = ARGV[2], ARGV[3]
local rk = P .. 'ob:r:' .. id
local row = redis.call('HMGET', rk, 'state', 'channel')
if row[1] ~= 'failed' then return 0 end
redis.call('HSET', rk, 'state', 'pending', 'attempts', 0, 'next_at', now, 'updated_at', now)
redis.call('HDEL', rk, 'lease_owner', 'lease_until')
move(id, 'failed', 'pending')
redis.call('ZADD', P .. 'ob:q:' .. row[2], id, id)
refresh_channel(row[2])
return 1
"""

# ARGV: prefix, id, now, error. A pending row leaves its channel's queue as failed (kept: its key
# still stops a re-run of its envelope from queueing it again, and `outbox retry` can undo it).
OUTBOX_CANCEL = LUA_PRELUDE + OUTBOX_LIB + r"""
local id, now, err = ARGV[2], ARGV[3], ARGV[4]
local rk = P .. 'ob:r:' .. id
local row = redis.call('HMGET', rk, 'state', 'channel')
if row[1] ~= 'pending' then return 0 end
redis.call('HSET', rk, 'state', 'failed', 'error', err, 'updated_at', now)
move(id, 'pending', 'failed')
redis.call('ZREM', P .. 'ob:q:' .. row[2], id)
refresh_channel(row[2])
return 1
"""

# ARGV: prefix, state, count, cutoff (sent rows created before it; '' = every row). Returns rows deleted.
DROP_ROWS = r"""
local P, state, count, cutoff = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = 0
for _, id in ipairs(redis.call('ZRANGE', P .. 'ob:s:' .. state, 0, tonumber(count) - 1)) do
  local rk = P .. 'ob:r:' .. id
  local row = redis.call('HMGET', rk, 'key', 'rate_limited', 'created_at')
  if cutoff ~= '' and row[3] and tonumber(row[3]) >= tonumber(cutoff) then break end
  if row[1] then redis.call('DEL', P .. 'ob:k:' .. row[1]) end
  if row[2] and tonumber(row[2]) > 0 then redis.call('DECRBY', P .. 'ob:rl', row[2]) end
  redis.call('DEL', rk)
  redis.call('ZREM', P .. 'ob:s:' .. state, id)
  n = n + 1
end
return n
"""
