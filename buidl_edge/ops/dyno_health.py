"""The health endpoint of a whole dyno, served by `buidl-edge run` from the workers' heartbeats.

The workers already publish a snapshot to the store every heartbeat; `run`'s watch (inside
supervisord, stack_watch.py) reads those of this host (a memory:// store has none to read: each
worker would have to serve its own). The store is opened lazily and never created: until the
first worker has made it, nothing is ready.
"""
from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any

from buidl_edge.config import Settings
from buidl_edge.ops import health_events
from buidl_edge.ops.status import STALE_AFTER_S, live_workers
from buidl_edge.store.base import EdgeStore
from buidl_edge.store.errors import StoreError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


class DynoView:
    """Thread-safe reads for the endpoint's threads: this host's live workers and the outbox."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self._store: EdgeStore | None = None
        self._lock = threading.Lock()

    def _open(self) -> EdgeStore:
        with self._lock:
            if self._store is None:
                from buidl_edge.store import open_store

                self._store = open_store(self.settings, threaded=False, create=False)
            return self._store

    def snapshots(self) -> list[dict[str, Any]]:
        try:
            beats = live_workers(self._open())
        except StoreError:
            return []
        return [self._with_told_state(stats) for stats in self._on_this_host(beats)]

    @staticmethod
    def _with_told_state(stats: dict[str, Any]) -> dict[str, Any]:
        """A worker's last heartbeat, with the degraded state it told supervisord since (a degraded
        store may not have taken the heartbeat that says so)."""
        cause = health_events.degraded_workers.get(stats.get("process") or "")
        return {**stats, "degraded": True, "degraded_cause": cause} if cause is not None else stats

    def _on_this_host(self, beats: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The stats of the workers of this dyno (a heartbeat from an older worker names no host)."""
        return [w["stats"] for w in beats if (w.get("host") or self.host) == self.host]

    def outbox(self) -> dict[str, Any] | None:
        return self._open().outbox_stats()

    def readiness(self) -> tuple[bool, str]:
        degraded = dict(health_events.degraded_workers)
        if degraded:
            return False, "degraded, acking with local dedup only: " + "; ".join(
                f"{process}: {cause}" for process, cause in sorted(degraded.items()))
        try:
            beats = live_workers(self._open())
            self._open().outbox_stats()  # the store answers a read, not only our cache of it
        except StoreError as exc:
            return False, f"store not reachable: {exc}"
        local = self._on_this_host(beats)
        if not local:
            return False, f"no worker has heartbeated in the last {STALE_AFTER_S:.0f}s"
        links = sum(1 for s in local for c in s.get("connections") or [] if c.get("connected"))
        if not links:
            return False, f"{len(local)} worker(s) up, but no Slack link is open"
        return True, f"{len(local)} worker(s), {links} Slack link(s) open"

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def serve(settings: Settings) -> tuple[WSGIServer, DynoView] | None:
    """Start the endpoint on a thread when BUIDL_HTTP_PORT is set; None otherwise."""
    if settings.http_port is None:
        return None
    from buidl_edge.observability.health import build_app, serve_on_thread

    view = DynoView(settings)
    app = build_app(view.readiness, view.snapshots, view.outbox)
    return serve_on_thread(settings.http_host, settings.http_port, app), view
