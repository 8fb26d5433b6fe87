"""Native threads for `threaded=True` handlers, and the way back to the hub for what they call.

A threaded handler runs on a real OS thread, so CPU-bound work or a blocking C call
leaves the gevent hub free to ack. What it calls must not touch hub-bound objects
from that thread: the store (a ThreadedStore's pool and group commit, a RedisStore's
gevent sockets) and the outbox expect the hub's thread. `HubCall` runs such a call in
a greenlet on the hub and blocks only the calling native thread until it is done.
"""
from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent import monkey
from gevent.threadpool import ThreadPool

T = TypeVar("T")

# The unpatched primitives: a native lock blocks only its thread, and the real thread id
# (the patched get_ident names greenlets, not threads).
_native_lock = monkey.get_original("_thread", "allocate_lock")
_native_rlock = monkey.get_original("_thread", "RLock")
_native_ident = monkey.get_original("_thread", "get_ident")


def share_logging_with_threads() -> None:
    """Give the root handlers native locks (Handler.lock, which createLock makes).

    A patched (gevent) lock contended between the hub's thread and a native thread
    can leave its waiter unwoken for good: greenlets logging while a threaded handler
    logged hung (tests/test_handler_pool.py). A native lock is held only for one
    record's write. logging's own module lock is kept native by the gevent patch
    (runtime/gevent_patch.py). Call it once logging is set up, before any native thread logs.
    """
    for handler in logging.getLogger().handlers:
        handler.lock = _native_rlock()


class HubCall:
    """Call functions on the hub of the thread that made this object, from any thread."""

    def __init__(self) -> None:
        self.hub = gevent.get_hub()

    def on_hub_thread(self) -> bool:
        return _native_ident() == self.hub.thread_ident

    def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        if self.on_hub_thread():
            return fn(*args)
        done = _native_lock()
        done.acquire()
        outcome: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                outcome.append((True, fn(*args)))
            except BaseException as exc:  # handed to the calling thread, raised there
                outcome.append((False, exc))
            finally:
                done.release()

        # The loop callback runs in the hub greenlet, which must not block: it only spawns.
        self.hub.loop.run_callback_threadsafe(gevent.spawn, run)
        done.acquire()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn`, callable from any thread; it always runs on the hub."""
        def on_hub(*args: Any) -> T:
            return self(fn, *args)
        on_hub.__name__ = getattr(fn, "__name__", "on_hub")
        return on_hub


class HubLogger(logging.LoggerAdapter):
    """ctx.logger: from a threaded handler, the record is logged on the hub (so Sentry's
    logging hook and its transport are never entered from the native thread)."""

    def __init__(self, logger: logging.Logger, extra: dict[str, Any], hub_call: HubCall) -> None:
        super().__init__(logger, extra)
        self.hub_call = hub_call

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.hub_call.on_hub_thread():
            super().log(level, msg, *args, **kwargs)
        else:
            if kwargs.get("exc_info") is True:  # the thread's exception, taken before leaving it
                import sys
                kwargs["exc_info"] = sys.exc_info()
            self.hub_call(lambda: super(HubLogger, self).log(level, msg, *args, **kwargs))


class HandlerThreads:
    """A native thread pool for threaded handlers, started on first use (no threads otherwise)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: ThreadPool | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a pool thread; only the calling greenlet waits for it.

        It runs in a copy of the caller's context, so log lines it writes still name the envelope.
        """
        if self._pool is None:
            self._pool = ThreadPool(self.size)
        context = contextvars.copy_context()
        return self._pool.apply(context.run, (fn, *args))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.kill()
