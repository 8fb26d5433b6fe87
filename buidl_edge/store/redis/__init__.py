"""The shared store on Redis, for scale-out: several dynos coordinate through one Redis.

The same contract as store/sqlite/, for processes that cannot share a file, and the same files,
one a topic: `db` (connection, errors, fail-fast backoff), `schema` (key layout), `inbox`,
`outbox` (with `outbox_lua`), `slots`, `relay`, `streams`, `admin`. Each topic's Lua scripts sit beside it. Each
topic is a subclass of `RedisDb`; `RedisStore` is all of them on one connection pool.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from buidl_edge.store.base import Lifespan
from buidl_edge.store.redis.admin import RedisAdmin
from buidl_edge.store.redis.inbox import RedisInbox
from buidl_edge.store.redis.outbox import RedisOutbox
from buidl_edge.store.redis.relay import RedisRelay
from buidl_edge.store.redis.slots import RedisSlots
from buidl_edge.store.redis.streams import RedisStreams

if TYPE_CHECKING:
    from buidl_edge.config import Settings


class RedisStore(RedisInbox, RedisOutbox, RedisSlots, RedisRelay, RedisStreams, RedisAdmin):
    """`EdgeStore` on Redis 6.2+ (XAUTOCLAIM), shared by every worker of every dyno."""

    # Rows here are sent by the workers of the other dynos when this one stops.
    lifespan = Lifespan.BEYOND_THE_DYNO

    @classmethod
    def from_settings(cls, url: str, settings: Settings, for_worker: bool = False) -> RedisStore:
        store = cls(url, lease_s=settings.lease_s, retention_s=settings.retention_s)
        if for_worker:
            store.batch_finishes()
        return store


__all__ = ["RedisStore"]
