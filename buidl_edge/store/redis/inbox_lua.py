"""The Lua scripts of the Redis inbox: a claim, a finish, the stream's leases, sweeps and prune,
each one atomic script (see store/redis/schema.py for the key layout, store/redis/inbox.py for
the calls).
"""
from __future__ import annotations

from buidl_edge.store.redis.outbox_lua import OUTBOX_LIB
from buidl_edge.store.redis.schema import LUA_PRELUDE

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
# Returns envelope_id, envelope json, previous owner, ... of the entries taken over.
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
    local row = eid and redis.call('HMGET', P .. 'in:' .. eid, 'state', 'sid', 'owner')
    local body = row and row[1] == 'processing' and row[2] == sid and redis.call('GET', P .. 'ine:' .. eid)
    if body then
      redis.call('HSET', P .. 'in:' .. eid, 'owner', me, 'updated_at', now)
      redis.call('HINCRBY', P .. 'in:' .. eid, 'attempts', 1)
      out[#out + 1] = eid
      out[#out + 1] = body
      out[#out + 1] = row[3] or ''  -- who held it: '' after an operator's retry
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
