"""The gevent patch: the first step of a worker's start, before anything of ours is imported.

The worker command calls `patch()` and only then imports the worker, so that every module
that opens a socket, starts a thread or takes a lock gets gevent's versions. Nothing here
imports the rest of the package.
"""
from __future__ import annotations


def patch() -> None:
    """Patch the standard library for gevent; call once, first thing in the worker process.

    Python's default thread switch interval (5 ms) stays: the hub writes to SQLite itself when
    nothing else is writing, and a shorter interval made every GIL holder switch five times as
    often, for the whole process, to shorten a hand-off that is now the exception.
    """
    # logging's module lock is taken by any thread that logs (a level-cache miss, getLogger): it
    # must stay a native lock, held for one record at a time, since a gevent lock contended
    # between the hub's thread and a native thread (a threaded handler, the hub monitor) can
    # leave its waiter unwoken for good. So logging is imported first, and its existing locks
    # are not converted to gevent's (`logging=False`, `existing_locks=False`).
    import logging  # noqa: F401

    from gevent import monkey

    monkey.patch_thread(logging=False, existing_locks=False)
    monkey.patch_all(thread=False)
