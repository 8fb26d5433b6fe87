"""A worker that supervisord restarted takes its predecessor's heartbeat out of the store.

Heartbeats are keyed by owner (`host:pid`), and a killed worker never removes its own. While
supervisord runs, `status` hides such a row (supervisord speaks for the host); once the stack has
stopped cleanly, the killed predecessor's row would be all that is left, a `DEAD` worker in a
stack where every worker stopped cleanly. Its successor, the same supervisord program on the same
host, is the one process that knows the row is history, so it removes it when it starts.
"""
from __future__ import annotations

import logging
import socket

from buidl_edge.store.base import AdminStore
from buidl_edge.store.errors import StoreError
from buidl_edge.store.owners import dead_here

log = logging.getLogger("buidl_edge.worker")


def forget_predecessors(store: AdminStore, owner: str, process_name: str) -> int:
    """Remove the heartbeats of earlier processes of `process_name` on this host whose pid is gone;
    how many. Nothing without a supervisord program name (a `worker` started by hand)."""
    if not process_name:
        return 0
    here = socket.gethostname()
    try:
        gone = [beat["owner"] for beat in store.workers()
                if beat["owner"] != owner and (beat.get("stats") or {}).get("process") == process_name
                and dead_here(beat["owner"], here)]
        for predecessor in gone:
            store.forget_worker(predecessor)
    except StoreError as exc:  # `status` may show a stale DEAD row; the worker starts all the same
        log.warning("could not remove the heartbeat of this worker's predecessor: %s", exc)
        return 0
    return len(gone)
