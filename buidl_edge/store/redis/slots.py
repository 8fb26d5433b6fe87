"""The Redis connection slots: a sorted set of holders scored by lease expiry (see store/slots.py
for the gate that holds them); its Lua scripts below the class."""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from buidl_edge.store.owners import holder_owner, is_dead_local
from buidl_edge.store.redis.db import RedisDb, redis_op


class RedisSlots(RedisDb):
    @redis_op
    def acquire_slot(self, holder: str, limit: int, ttl: float) -> bool:
        """Lease one of `limit` slots, app-wide (every dyno), on Redis's clock.

        When all are taken, leases of dead processes on this host are freed and it tries once more
        (a dyno elsewhere that died frees its slots when their leases lapse).
        """
        if self._script(SLOT_ACQUIRE, [holder, limit, repr(ttl)]):
            return True
        holders = cast(list[str], self.r.zrange(self._k("slots"), 0, -1))  # decode_responses=True: str
        dead = [h for h in holders if is_dead_local(holder_owner(h), self.host)]
        if not dead:
            return False
        self.r.zrem(self._k("slots"), *dead)
        return bool(self._script(SLOT_ACQUIRE, [holder, limit, repr(ttl)]))

    @redis_op
    def renew_slots(self, holders: Sequence[str], limit: int, ttl: float) -> list[str]:
        if not holders:
            return []
        return list(self._script(SLOT_RENEW, [limit, repr(ttl), *holders]))

    @redis_op
    def release_slot(self, holder: str) -> None:
        self.r.zrem(self._k("slots"), holder)


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
