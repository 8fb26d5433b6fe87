"""Run a blocking store on one gevent pool thread so the hub never waits on sqlite3.

One thread (not several) because a store holds one sqlite3 connection: the
calls of a process are serialized anyway, and a single thread keeps them in
arrival order without lock contention. Greenlets calling at once simply
queue; each one blocks only itself.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from gevent.threadpool import ThreadPool


class ThreadedStore:
    """Forward every public method of `inner` through a one-thread gevent pool."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._pool = ThreadPool(1)
        self._closed = False

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
            return pool.apply(fn, args, kwargs)

        return call

    def close(self) -> None:
        """Close the inner store on its own thread, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._pool.apply(self.inner.close)
        finally:
            self._pool.kill()
