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
    from gevent import monkey

    monkey.patch_all()
