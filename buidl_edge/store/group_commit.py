"""Group commit: the claims and finishes of many greenlets in one SQLite commit.

A batch is first tried on the hub (`run_now`, which never waits and says None when it would);
else it goes to the store's one pool thread (`run_batch`). `on_thread` runs anything on that
thread and raises what it raised in the caller. A burst's claims that must queue (an ack waits
for them) go ahead of the queued finishes, so that under load no ack waits for the handlers' backlog.
Items submitted `later` (handlers' finishes) ride the next commit made for anything else, or go
alone once their bound runs out: at a steady rate, one commit a claim instead of two. They wait only
while claims come closer together than the bound: at a bot's usual few events a second no claim
would come in time, and the wait would cost a wake-up of the hub of its own.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import gevent
import gevent.event
from gevent.threadpool import ThreadPool

from buidl_edge.store.errors import StoreError, rejected

T = TypeVar("T")
Queued = tuple[Any, gevent.event.AsyncResult]

# Enough to amortise a commit over a burst, small enough to keep one transaction short.
MAX_BATCH = 64
# How long `stop` lets a batch already on the thread finish (a lock wait is bounded below this).
STOP_WAIT_S = 20.0
# What submit_now says when the item could not be written without waiting.
NOT_NOW: Any = object()


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
        # Items waiting for a commit: those an ack waits for (claims) first, then the others.
        self._ahead: list[Queued] = []
        self._pending: list[Queued] = []
        # Items that may wait for the next commit, each up to its bound (see submit_later).
        self._later: list[Queued] = []
        self._later_timer: Any = None
        # When claims (items an ack waits for) were last submitted, and the gap before that: a
        # handler ends just after its own claim, so only the gap says whether another is coming.
        self._claimed_at = -1e9
        self._claim_gap = 1e9
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

    def submit_later(self, txn: Any, delay_s: float) -> Any:
        """`submit`, but the item may wait up to `delay_s` for a commit made for something else
        (the next burst's claims) and ride it; when none comes in time it is written alone. The
        caller waits until it is committed, as with `submit`. Only for items whose loss in a kill -9
        meanwhile something else covers (a handler's finish is journaled first: finishes.py)."""
        if delay_s <= 0 or self._claim_gap > delay_s or time.monotonic() - self._claimed_at > delay_s:
            return self.submit(txn)  # claims are not coming that often: the next one would be late
        result: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self._later.append((txn, result))
        if self._later_timer is None:
            self._later_timer = self._hub.loop.timer(delay_s)
            self._later_timer.start(self.flush_later)
        return _value(result.get())

    def _claims_came(self) -> None:
        now = time.monotonic()
        self._claim_gap, self._claimed_at = now - self._claimed_at, now

    def flush_later(self) -> None:
        """Write the items waiting for a later commit now (their bound ran out, or a drain began)."""
        self._stop_later_timer()
        if self._later:
            self._pending.extend(self._later)
            self._later = []
            if not self._flush_due:
                self._flush_due = True
                self._hub.loop.run_callback(self._flush)

    def _stop_later_timer(self) -> None:
        if self._later_timer is not None:
            self._later_timer.stop()
            self._later_timer.close()
            self._later_timer = None

    def _ride_along(self) -> list[Queued]:
        """The items waiting for a later commit, taken to ride the one being made."""
        riders, self._later = self._later, []
        self._stop_later_timer()
        return riders

    def submit_many(self, txns: Sequence[Any], ahead: bool = False) -> list[Any]:
        """`submit` of each item, in order, together (one commit, or one per MAX_BATCH items on
        the thread): each one's result, or the StoreError it failed with alone; raises when a
        commit failed as a whole. `ahead`: an ack waits for them (a burst's claims), so they go
        before the queued items that are not (handlers' finishes, whose claims committed long
        before): under load an ack then waits for one commit, not for the handlers' backlog."""
        return [result.get() for result in self._enqueue(txns, ahead)]

    def _enqueue(self, txns: Sequence[Any], ahead: bool = False) -> list[gevent.event.AsyncResult]:
        results: list[gevent.event.AsyncResult] = [gevent.event.AsyncResult() for _ in txns]
        if ahead:
            self._claims_came()
        (self._ahead if ahead else self._pending).extend(zip(txns, results))
        if not self._flush_due:
            self._flush_due = True
            self._hub.loop.run_callback(self._flush)
        return results

    def _flush(self) -> None:
        self._flush_due = False
        if not (self._ahead or self._pending):
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
        before them go first, in the same commit, so that items keep their arrival order: the
        claims queued `ahead`, and at most MAX_BATCH of the others (a backlog of finishes is left
        to the drain loop, a batch at a time, so that this commit, often a reader's, stays short);
        never while a batch is on the thread.
        """
        if txns:  # a read's claims (what the hub writes at once)
            self._claims_came()
        if self._on_thread:
            return NOT_NOW
        self._pending += self._ride_along()  # finishes waiting for a later commit: this one
        ahead, pending = self._ahead, self._pending[:MAX_BATCH]
        queued = ahead + pending
        self._ahead, self._pending = [], self._pending[MAX_BATCH:]
        try:
            values = self._run_now([txn for txn, _ in queued] + list(txns))
        except Exception as exc:  # the whole commit failed: the queued items' callers hear it too
            error = exc if isinstance(exc, StoreError) else rejected("group commit", exc)
            for _, result in queued:
                result.set_exception(error)
            raise error from exc
        if values is None:
            self._ahead, self._pending = ahead + self._ahead, pending + self._pending
            if self._pending:  # riders taken from `later` may have no flush of their own coming
                self._wakeup.set()
            return NOT_NOW
        for (_, result), value in zip(queued, values):
            result.set(value)
        if self._pending:
            self._wakeup.set()
        return values[len(queued):]

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Stop taking batches. A batch already on the thread is let finish and answered: it may
        have committed, so its callers must hear how it went, not that the store closed."""
        self.flush_later()
        if self._pending:  # a finish that waited for a later commit: written now, if the hub can
            try:
                self.submit_now(())
            except StoreError:
                pass  # its caller heard it
        self._stopping = True
        self._wakeup.set()
        self._loop.join(timeout=timeout)
        self._loop.kill(block=True)
        for _, result in self._ahead + self._pending:
            result.set_exception(StoreError("store closed"))

    def _take(self, limit: int) -> list[Queued]:
        """The next batch: up to `limit` items, those `ahead` first, each list in arrival order."""
        batch, self._ahead = self._ahead[:limit], self._ahead[limit:]
        room = limit - len(batch)
        if room > 0:
            batch += self._pending[:room]
            self._pending = self._pending[room:]
            room = limit - len(batch)
        if room > 0 and self._later:  # they ride this commit; any left over go in the next one
            riders = self._ride_along()
            batch += riders[:room]
            self._pending = riders[room:]  # (empty before: all of it fit in this batch)
        return batch

    def _drain(self) -> None:
        while not self._stopping:
            self._wakeup.wait()
            self._wakeup.clear()
            while (self._ahead or self._pending) and not self._stopping:
                batch = self._take(MAX_BATCH)
                txns = [txn for txn, _ in batch]
                try:
                    values = self._run_now(txns)
                    on_hub = values is not None
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
                if on_hub:
                    gevent.sleep(0)  # a backlog written on the hub: the reader gets in between commits


def on_thread(pool: ThreadPool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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
