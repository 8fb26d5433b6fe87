"""The shared store on one SQLite file (WAL): dedup keys, inbox, outbox, slots, worker stats.

Every worker process of a dyno opens the same file. WAL with `synchronous=NORMAL` keeps
commits cheap (no fsync per commit; a power loss may drop the last commits, a process crash
loses nothing). sqlite3 blocks the calling thread; in a gevent worker wrap this store in
`ThreadedStore` so the hub keeps running.

Text from Slack is valid JSON but not always valid UTF-8: a lone surrogate escape ("\\udc00")
decodes to a str sqlite3 cannot encode. Such a str is bound as its surrogatepass bytes (a BLOB,
never equal to any TEXT), so every id and key stays one-to-one, and is decoded back on reading.
The file is private (0600, in a 0700 dir when we make it), as is what SQLite adds beside it.

One file a topic, mirrored by store/redis/: `db` (connection, retries, group commit), `schema`,
`inbox`, `outbox`, `slots`, `relay`, `streams`, `admin`. Each topic is a subclass of `SqliteDb`; `SqliteStore` is
all of them on one connection.
"""
from buidl_edge.store.base import Lifespan
from buidl_edge.store.sqlite.admin import SqliteAdmin
from buidl_edge.store.sqlite.inbox import SqliteInbox
from buidl_edge.store.sqlite.outbox import SqliteOutbox
from buidl_edge.store.sqlite.relay import SqliteRelay
from buidl_edge.store.sqlite.slots import SqliteSlots
from buidl_edge.store.sqlite.streams import SqliteStreams


class SqliteStore(SqliteInbox, SqliteOutbox, SqliteSlots, SqliteRelay, SqliteStreams, SqliteAdmin):
    """`EdgeStore` on a SQLite file, safe to share between processes."""

    # The file is on this dyno's disk: a restarted Heroku dyno starts with a fresh one.
    lifespan = Lifespan.DYNO


__all__ = ["SqliteStore"]
