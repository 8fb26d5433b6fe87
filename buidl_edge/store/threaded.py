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

import functools
from typing import TYPE_CHECKING, Any, Callable, Sequence

import gevent
import gevent.event
from gevent.threadpool import ThreadPool

from buidl_edge.store.errors import StoreError, rejected

if TYPE_CHECKING:
    from buidl_edge.store.base import Lifespan
    from buidl_edge.store.sqlite import SqliteStore

# Enough to amortise a commit over a burst, small enough to keep one transaction short.
MAX_BATCH = 64
# How long `stop` lets a batch already on the thread finish (a lock wait is bounded below this).
STOP_WAIT_S = 20.0
# What submit_now says when the item could not be written without waiting.
NOT_NOW: Any = object()


class ThreadedStore:
    """Forward every public method of a SqliteStore through a one-thread gevent pool; claims and
    finishes, the calls of every envelope, go through a group commit."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self._pool = ThreadPool(1)
        self._closed = False
        self._batcher = GroupCommit(self._pool, inner.run_batch, inner.run_batch_now)

    def claim(self, envelope: Any, owner: str) -> bool:
        return self._batcher.submit(self.inner.claim_txn(envelope, owner))  # type: ignore[no-any-return]

    def claim_many_now(self, envelopes: Sequence[Any], owner: str) -> list[bool | StoreError] | None:
        values = self._batcher.submit_now([self.inner.claim_txn(envelope, owner) for envelope in envelopes])
        return None if values is NOT_NOW else values  # type: ignore[no-any-return]

    def claim_many(self, envelopes: Sequence[Any], owner: str) -> list[bool | StoreError]:
        return self._batcher.submit_many([self.inner.claim_txn(envelope, owner) for envelope in envelopes])

    def finish(self, envelope_id: str, replies: Any, error: str | None = None) -> None:
        # Written at once, not held for the next commit: until it commits, a kill -9 makes a
        # sweeper run the handler again (measured in the soak: holding it widened that window).
        self._batcher.submit(self.inner.finish_txn(envelope_id, replies, error))

    def describe(self) -> str:
        return self.inner.describe()  # a string: no reason to wait behind a busy thread for it

    @property
    def lifespan(self) -> Lifespan:
        return self.inner.lifespan  # the wrapped file's: a thread in front does not change it

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally, i.e. the inner store's API.
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr
        wrapper = self._wrap(attr)
        self.__dict__[name] = wrapper  # cache: the next lookup skips __getattr__
        return wrapper

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        pool = self._pool

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            return on_thread(pool, fn, *args, **kwargs)

        return call

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


class GroupCommit:
    """Claims and finishes that arrive while a commit runs go into the next one together.

    A batch is first tried on the hub (`run_now`, which never waits and says None when it
    would); else it goes to the pool thread (`run_batch`). With one call at a time that is a
    plain transaction on the hub; under a burst, N commits become one per batch.
    """

    def __init__(self, pool: ThreadPool, run_batch: Callable[[list[Any]], list[Any]],
                 run_now: Callable[[list[Any]], list[Any] | None] | None = None) -> None:
        self._pool = pool
        self._run_batch = run_batch
        self._run_now = run_now or (lambda txns: None)
        self._pending: list[tuple[Any, gevent.event.AsyncResult]] = []
        self._on_thread = False  # a batch is on the pool thread: later items wait their turn
        self._flush_due = False  # a _flush is scheduled for the end of this loop turn
        self._hub = gevent.get_hub()
        self._stopping = False
        self._wakeup = gevent.event.Event()
        self._loop = gevent.spawn(self._drain)

    def submit(self, txn: Any) -> Any:
        """The item's result, once committed. It is written at the end of this turn of the hub's
        loop, together with every item other greenlets submit in the same turn (the handlers of
        one read burst end one after another): one commit for all of them, with no wait beyond
        the turn. When the hub cannot write at once, the drain loop sends them to the thread."""
        return _value(self._enqueue([txn])[0].get())

    def submit_many(self, txns: Sequence[Any]) -> list[Any]:
        """`submit` of each item, in order, together (one commit, or one per MAX_BATCH items on
        the thread): each one's result, or the StoreError it failed with alone; raises when a
        commit failed as a whole."""
        return [result.get() for result in self._enqueue(txns)]

    def _enqueue(self, txns: Sequence[Any]) -> list[gevent.event.AsyncResult]:
        results = [gevent.event.AsyncResult() for _ in txns]
        self._pending.extend(zip(txns, results))
        if not self._flush_due:
            self._flush_due = True
            self._hub.loop.run_callback(self._flush)
        return results

    def _flush(self) -> None:
        self._flush_due = False
        if not self._pending:
            return
        try:
            if self.submit_now(()) is not NOT_NOW:
                return
        except StoreError:
            return  # submit_now gave the error to every caller of the batch
        self._wakeup.set()

    def submit_now(self, txns: Sequence[Any]) -> Any:
        """The items' results (a StoreError in the place of an item that failed alone) if they
        could be written on the hub at once, else NOT_NOW (nothing written). The items queued
        before them go first, in the same commit, so that items keep their arrival order; never
        while a batch is on the thread.
        """
        if self._on_thread:
            return NOT_NOW
        queued, self._pending = self._pending, []
        try:
            values = self._run_now([txn for txn, _ in queued] + list(txns))
        except Exception as exc:  # the whole commit failed: the queued items' callers hear it too
            error = exc if isinstance(exc, StoreError) else rejected("group commit", exc)
            for _, result in queued:
                result.set_exception(error)
            raise error from exc
        if values is None:
            self._pending = queued + self._pending
            return NOT_NOW
        for (_, result), value in zip(queued, values):
            result.set(value)
        return values[len(queued):]

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Stop taking batches. A batch already on the thread is let finish and answered: it may
        have committed, so its callers must hear how it went, not that the store closed."""
        self._stopping = True
        self._wakeup.set()
        self._loop.join(timeout=timeout)
        self._loop.kill(block=True)
        for _, result in self._pending:
            result.set_exception(StoreError("store closed"))

    def _drain(self) -> None:
        while not self._stopping:
            self._wakeup.wait()
            self._wakeup.clear()
            while self._pending and not self._stopping:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                txns = [txn for txn, _ in batch]
                try:
                    values = self._run_now(txns)
                    if values is None:
                        self._on_thread = True
                        try:
                            values = on_thread(self._pool, self._run_batch, txns)
                        finally:
                            self._on_thread = False
                except Exception as exc:  # the whole batch failed (or a bug): every caller raises it
                    error = exc if isinstance(exc, StoreError) else rejected("group commit", exc)
                    for _, result in batch:
                        result.set_exception(error)
                    continue
                for (_, result), value in zip(batch, values):
                    result.set(value)


def on_thread(pool: ThreadPool, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` on the pool's thread; what it raises is raised here, in the caller.

    Not `pool.apply` alone: gevent prints the traceback of anything a pool thread raises to stderr
    (raw, not a log line), once per failed call, and a failing store fails every call.
    """
    ok, value = pool.apply(_capture, (fn, args, kwargs))
    if not ok:
        raise value
    return value


def _capture(fn: Callable[..., Any], args: Any, kwargs: Any) -> tuple[bool, Any]:
    try:
        return True, fn(*args, **kwargs)
    except Exception as exc:
        return False, exc


def _value(value: Any) -> Any:
    if isinstance(value, StoreError):  # this item failed on its own; the rest of its batch stands
        raise value
    return value
