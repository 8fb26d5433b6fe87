"""Run a blocking store on one gevent pool thread so the hub never waits on sqlite3.

One thread (not several) because a store holds one sqlite3 connection: the
calls of a process are serialized anyway, and a single thread keeps them in
arrival order without lock contention. Greenlets calling at once simply
queue; each one blocks only itself.

Claims and finishes, the two writes of every envelope, are made on the hub
itself (`SqliteDb.run_batch_now`), the claims of all the envelopes of one read
in one commit: when nothing else is writing, that is cheaper than the hand-off
to the thread and back, and it cannot wait. Only when the database is busy, or
a batch is already on the thread, do they queue for it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gevent.threadpool import ThreadPool

from buidl_edge.config.settings import DEFAULT_FINISH_DELAY_S
from buidl_edge.delivery.ratelimit import PostLimits, StreamLimits
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import (
    DEFAULT_RETENTION_S,
    Claimed,
    DeliveryOutcome,
    Lifespan,
    OutboxRow,
    RelayRow,
    Reply,
    StreamRow,
)
from buidl_edge.store.errors import StoreError
from buidl_edge.store.group_commit import NOT_NOW, GroupCommit, on_thread

if TYPE_CHECKING:
    from buidl_edge.store.sqlite import SqliteStore



class ThreadedStore:
    """Every call of the store's protocols (store/base.py) on a one-thread gevent pool; claims and
    finishes, the calls of every envelope, go through a group commit."""

    def __init__(self, inner: SqliteStore, finish_delay_s: float = DEFAULT_FINISH_DELAY_S) -> None:
        self.inner = inner
        self._finish_delay_s = finish_delay_s
        self._pool = ThreadPool(1)
        self._closed = False
        self._batcher = GroupCommit(self._pool, inner.run_batch, inner.run_batch_now)

    def claim(self, envelope: Any, owner: str) -> bool:
        return bool(self._batcher.submit(self.inner.claim_txn(envelope, owner)))

    def claim_many_now(self, envelopes: Sequence[Any], owner: str) -> list[bool | StoreError] | None:
        values = self._batcher.submit_now([self.inner.claim_txn(envelope, owner) for envelope in envelopes])
        return None if values is NOT_NOW else list(values)

    def claim_many(self, envelopes: Sequence[Any], owner: str) -> list[bool | StoreError]:
        # A burst the hub could not claim at once: its acks wait, so it goes ahead of the finishes.
        return self._batcher.submit_many([self.inner.claim_txn(envelope, owner) for envelope in envelopes],
                                         ahead=True)

    def finish(self, envelope_id: str, replies: Any, error: str | None = None) -> None:
        # It rides the next commit (the next burst's claims) for at most BUIDL_FINISH_DELAY_MS: at
        # a steady rate one commit an envelope instead of two. A kill -9 meanwhile runs nothing
        # again: the finish was journaled before it got here (finishes.py), and the sweep stores it.
        self._batcher.submit_later(self.inner.finish_txn(envelope_id, replies, error), self._finish_delay_s)

    def finish_promptly(self) -> None:
        """From now on a finish is written at once: a drain began (nothing later is coming)."""
        self._finish_delay_s = 0.0
        self._batcher.flush_later()

    def describe(self) -> str:
        return self.inner.describe()  # a string: no reason to wait behind a busy thread for it

    def change_token(self, others_only: bool = False) -> tuple[int, ...] | None:
        return self.inner.change_token(others_only)  # on the caller's thread: it never waits

    @property
    def lifespan(self) -> Lifespan:
        return self.inner.lifespan  # the wrapped file's: a thread in front does not change it

    # -- every other call of the store's protocols, on the thread

    def claim_key(self, key: str) -> bool:
        return on_thread(self._pool, self.inner.claim_key, key)

    def renew(self, owner: str) -> int:
        return on_thread(self._pool, self.inner.renew, owner)

    def sweep(self, owner: str, limit: int = 100) -> list[Envelope]:
        return on_thread(self._pool, self.inner.sweep, owner, limit)

    def leases_elsewhere(self, owner: str) -> dict[str, float]:
        return on_thread(self._pool, self.inner.leases_elsewhere, owner)

    def prune(self, retention_s: float = DEFAULT_RETENTION_S, now: float | None = None) -> int:
        return on_thread(self._pool, self.inner.prune, retention_s, now)

    def outbox_enqueue(self, replies: Sequence[Reply], envelope_id: str = "",
                       keys: Sequence[str] | None = None) -> list[int]:
        return on_thread(self._pool, self.inner.outbox_enqueue, replies, envelope_id, keys)

    def outbox_claim(self, owner: str, limit: int, limits: PostLimits,
                     lease_s: float | None = None) -> Claimed[OutboxRow]:
        return on_thread(self._pool, self.inner.outbox_claim, owner, limit, limits, lease_s)

    def outbox_settle(self, row_id: int, owner: str, outcome: DeliveryOutcome) -> OutboxRow | None:
        return on_thread(self._pool, self.inner.outbox_settle, row_id, owner, outcome)

    def outbox_renew(self, owner: str, lease_s: float | None = None) -> int:
        return on_thread(self._pool, self.inner.outbox_renew, owner, lease_s)

    def outbox_recover(self, owner: str) -> int:
        return on_thread(self._pool, self.inner.outbox_recover, owner)

    def outbox_stats(self) -> dict[str, Any]:
        return on_thread(self._pool, self.inner.outbox_stats)

    def acquire_slot(self, holder: str, limit: int, ttl: float) -> bool:
        return on_thread(self._pool, self.inner.acquire_slot, holder, limit, ttl)

    def renew_slots(self, holders: Sequence[str], limit: int, ttl: float) -> list[str]:
        return on_thread(self._pool, self.inner.renew_slots, holders, limit, ttl)

    def release_slot(self, holder: str) -> None:
        return on_thread(self._pool, self.inner.release_slot, holder)

    def relay_enqueue(self, envelope_id: str, owner: str, order_key: str, not_before: float | None = None,
                      error: str | None = None) -> bool:
        return on_thread(self._pool, self.inner.relay_enqueue, envelope_id, owner, order_key, not_before, error)

    def relay_claim(self, owner: str, limit: int, lease_s: float | None = None) -> Claimed[RelayRow]:
        return on_thread(self._pool, self.inner.relay_claim, owner, limit, lease_s)

    def relay_settle(self, envelope_id: str, owner: str, outcome: DeliveryOutcome) -> bool:
        return on_thread(self._pool, self.inner.relay_settle, envelope_id, owner, outcome)

    def stream_save(self, row: StreamRow) -> None:
        return on_thread(self._pool, self.inner.stream_save, row)

    def stream_orphans(self, envelope_id: str) -> list[StreamRow]:
        return on_thread(self._pool, self.inner.stream_orphans, envelope_id)

    def stream_take(self, methods: Sequence[str], limits: StreamLimits) -> tuple[list[bool], float | None]:
        return on_thread(self._pool, self.inner.stream_take, methods, limits)

    def stream_pause(self, method: str, until: float) -> None:
        return on_thread(self._pool, self.inner.stream_pause, method, until)

    def stream_stats(self) -> dict[str, Any]:
        return on_thread(self._pool, self.inner.stream_stats)

    def ping(self) -> bool:
        return on_thread(self._pool, self.inner.ping)

    def heartbeat(self, owner: str, stats: dict[str, Any]) -> None:
        return on_thread(self._pool, self.inner.heartbeat, owner, stats)

    def forget_worker(self, owner: str) -> None:
        return on_thread(self._pool, self.inner.forget_worker, owner)

    def workers(self, max_age_s: float | None = None) -> list[dict[str, Any]]:
        return on_thread(self._pool, self.inner.workers, max_age_s)

    def slots(self) -> list[dict[str, Any]]:
        return on_thread(self._pool, self.inner.slots)

    def inbox_stats(self) -> dict[str, Any]:
        return on_thread(self._pool, self.inner.inbox_stats)

    def inbox_list(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return on_thread(self._pool, self.inner.inbox_list, state, limit)

    def inbox_row(self, envelope_id: str) -> dict[str, Any] | None:
        return on_thread(self._pool, self.inner.inbox_row, envelope_id)

    def retry(self, envelope_id: str) -> bool:
        return on_thread(self._pool, self.inner.retry, envelope_id)

    def outbox_list(self, state: str | None = None, channel: str | None = None, limit: int = 50) -> list[OutboxRow]:
        return on_thread(self._pool, self.inner.outbox_list, state, channel, limit)

    def outbox_row(self, row_id: int) -> OutboxRow | None:
        return on_thread(self._pool, self.inner.outbox_row, row_id)

    def outbox_retry(self, row_id: int) -> bool:
        return on_thread(self._pool, self.inner.outbox_retry, row_id)

    def outbox_cancel(self, row_id: int) -> bool:
        return on_thread(self._pool, self.inner.outbox_cancel, row_id)

    def outbox_purge(self, state: str = "failed") -> int:
        return on_thread(self._pool, self.inner.outbox_purge, state)

    def close(self) -> None:
        """Close the inner store on its own thread, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._batcher.stop()
        try:
            self._pool.apply(self.inner.close)
        finally:
            self._pool.kill()


