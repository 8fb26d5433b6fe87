"""The Lua scripts of the Redis store: every multi-key decision runs as one atomic script.

Each script gets the key prefix as ARGV[1] and builds its key names from it (a
single Redis, not a cluster: see `store/redis.py` for the key layout). Floats
written back go through `f()` (17 significant digits), because Redis turns a
Lua number argument into text with only 14.
"""
from __future__ import annotations

# Helpers shared by the scripts below (prepended to each one that needs them).
LIB = r"""
local P = ARGV[1]
local function f(x) return string.format('%.17g', x) end
local function num(v, default) if v then return tonumber(v) end return default end

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

-- Token buckets (the same arithmetic as buidl_edge/ratelimit.py).
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

# KEYS: the dedup keys. ARGV: prefix, envelope_id, ttl, kind, envelope json, owner, now, maxlen, group.
CLAIM = LIB + r"""
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
FINISH = LIB + r"""
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
RETRY = LIB + r"""
local group, eid, now, maxlen = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rk = P .. 'in:' .. eid
local state = redis.call('HGET', rk, 'state')
if state ~= 'done' and state ~= 'failed' then return 0 end
local stream = P .. 'inbox:stream'
local sid = add_entry(stream, group, 'retry', eid, maxlen)
-- idle since long ago: the next sweep of any worker takes it
redis.call('XCLAIM', stream, group, 'retry', 0, sid, 'IDLE', 86400000, 'JUSTID')
redis.call('HSET', rk, 'state', 'processing', 'owner', '', 'sid', sid, 'updated_at', now)
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
  elseif row[1] ~= 'processing' and (tonumber(row[2]) or 0) < cutoff then
    redis.call('DEL', rk, P .. 'ine:' .. eid)
    redis.call('ZREM', P .. 'inbox', eid)
    dropped = dropped + 1
  else
    kept = kept + 1
  end
end
return {dropped, kept, #ids}
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

# ARGV: prefix, now, envelope_id, replies json ([channel, text, blocks, thread_ts, key], ...).
OUTBOX_ENQUEUE = LIB + r"""
local now, eid = ARGV[2], ARGV[3]
local ids = {}
for _, r in ipairs(cjson.decode(ARGV[4])) do ids[#ids + 1] = enqueue(eid, r, now) end
return ids
"""

# ARGV: prefix, owner, limit, now, lease_until, rate, burst, global_rate, global_burst, jitter, scan.
# One send decision: the due channel heads that their bucket (and the global one) allow.
OUTBOX_CLAIM = LIB + r"""
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
OUTBOX_SETTLE = LIB + r"""
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
OUTBOX_RECOVER = LIB + r"""
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
OUTBOX_RETRY = LIB + r"""
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

# Connection slots: a sorted set of holders scored by lease expiry, on Redis's clock
# (one clock for every dyno). ARGV: prefix, holder, limit, ttl.
SLOT_ACQUIRE = r"""
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local k, holder, limit, ttl = ARGV[1] .. 'slots', ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%.6f', now))
if redis.call('ZSCORE', k, holder) or redis.call('ZCARD', k) < limit then
  redis.call('ZADD', k, string.format('%.6f', now + ttl), holder)
  return 1
end
return 0
"""

# ARGV: prefix, limit, ttl, holders... Returns the holders that could not be kept.
SLOT_RENEW = r"""
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local k, limit, ttl = ARGV[1] .. 'slots', tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%.6f', now))
local lost = {}
for i = 4, #ARGV do
  if redis.call('ZSCORE', k, ARGV[i]) or redis.call('ZCARD', k) < limit then
    redis.call('ZADD', k, string.format('%.6f', now + ttl), ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""
