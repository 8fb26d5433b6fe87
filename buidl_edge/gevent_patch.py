"""The gevent patch: the first step of a worker's start, before anything of ours is imported.

The worker command calls `patch()` and only then imports the worker, so that every module
that opens a socket, starts a thread or takes a lock gets gevent's versions. Nothing here
imports the rest of the package.
"""
from __future__ import annotations

import sys

# sqlite3 runs on a pool thread; a short switch interval keeps the hub from waiting on it.
SWITCH_INTERVAL_S = 0.001


def patch() -> None:
    """Patch the standard library for gevent; call once, first thing in the worker process."""
    from gevent import monkey

    monkey.patch_all()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
