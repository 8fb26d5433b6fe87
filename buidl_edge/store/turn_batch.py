"""Calls that greenlets make in one turn of the hub's loop, sent to the store together.

Under load the handlers of one read burst end one after another in the same turn; each one's
`finish` is a round trip to Redis. Queued here, they go out at the end of that turn as one
pipeline, from one greenlet, and each caller waits only for its own answer. Nothing waits past
the turn it was submitted in, so a kill -9 finds no more unfinished envelopes than before.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import gevent
import gevent.event

from buidl_edge.store.errors import StoreError, rejected

T = TypeVar("T")


class TurnBatch(Generic[T]):
    """`submit(item)` from any greenlet; `run_many(items)` gets every item of a turn, in order,
    and answers each one's result, or the StoreError it failed with alone (or raises StoreError
    when all of them failed)."""

    def __init__(self, run_many: Callable[[Sequence[T]], Sequence[Any]], name: str) -> None:
        self._run_many = run_many
        self._name = name
        self._pending: list[tuple[T, gevent.event.AsyncResult]] = []

    def submit(self, item: T) -> Any:
        result: gevent.event.AsyncResult[Any] = gevent.event.AsyncResult()
        if not self._pending:  # the first of this turn: one sender for all of them, at its end
            gevent.spawn(self._send)
        self._pending.append((item, result))
        value = result.get()
        if isinstance(value, StoreError):
            raise value
        return value

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        try:
            values = list(self._run_many([item for item, _ in batch]))
        except StoreError as exc:
            values = [exc] * len(batch)
        except Exception as exc:  # a bug: every caller hears it, as a failure of its own call
            values = [rejected(self._name, exc)] * len(batch)
        for (_, result), value in zip(batch, values):
            result.set(value)
