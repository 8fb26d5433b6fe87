"""The shared store: dedup claims, the inbox, the outbox, connection slots and worker stats.

`base` has the five protocols every backend implements (InboxStore, OutboxStore, SlotStore,
RelayStore, AdminStore; EdgeStore is all of them); `memory`, `sqlite/` and `redis/` are the
backends, `open_store` picks one. `threaded` runs SQLite off the hub, `failover` pairs the
shared store with this process's fallback, `health` is the degraded episode.

Nothing is imported here at the top: importing a leaf such as `store.errors` runs this file.
"""
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buidl_edge.config import Settings
    from buidl_edge.store.base import EdgeStore


def open_store(settings: "Settings", threaded: bool = True, create: bool | None = None) -> "EdgeStore":
    """The store named by BUIDL_STORE_URL, else SQLite at BUIDL_DB (or in the state dir).

    Workers want `threaded` (sqlite3 would block the gevent hub); admin commands do not. A
    SQLite store is created (private: dir 0700, file 0600) only when `create`, by default only
    for a worker: an admin command pointed at nothing gets StoreMissing, and no file or dir.
    """
    from pathlib import Path

    from buidl_edge.config import ConfigError

    url = settings.store_url or f"sqlite:///{settings.database_path}"
    if url.startswith("memory://"):
        from buidl_edge.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("redis://", "rediss://")):
        # Not threaded: redis-py's sockets are gevent-cooperative once the worker is patched.
        from buidl_edge.store.redis import RedisStore

        return RedisStore.from_settings(url, settings, for_worker=threaded)
    if url.startswith("sqlite:///"):
        from buidl_edge.store.sqlite import SqliteStore
        from buidl_edge.store.threaded import ThreadedStore

        store = SqliteStore(Path(url[len("sqlite:///"):]), lease_s=settings.lease_s,
                            create=threaded if create is None else create, hub_writes=threaded)
        return ThreadedStore(store, settings.finish_delay_ms / 1000) if threaded else store
    raise ConfigError(f"store {url.split(':', 1)[0]}:// is not available in this version")
