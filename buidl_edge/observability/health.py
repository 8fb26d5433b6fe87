"""The optional HTTP endpoint (BUIDL_HTTP_PORT): /healthz, /readyz and /metrics.

- /healthz: the process answers (200), nothing more.
- /readyz: 200 when at least one Slack link is open and the store answers,
  else 503; the body says which is missing.
- /metrics: Prometheus text, rendered by prometheus_client from worker snapshots.

A standalone worker serves it on its gevent hub (gevent's WSGI server); under
`buidl-edge run` supervisord's process serves it once for every worker of the
dyno, on a thread. prometheus_client is imported only when the endpoint is on.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("buidl_edge.health")

Readiness = Callable[[], tuple[bool, str]]
StartResponse = Callable[..., Any]


def make_app(ready: Readiness, metrics_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", {"ok": False, "error": "GET only"})
        if path == "/healthz":
            return _reply(start_response, "200 OK", {"ok": True})
        if path == "/readyz":
            try:
                ok, why = ready()
            except Exception as exc:  # a readiness probe must answer, not hang or 500
                ok, why = False, f"readiness check failed: {type(exc).__name__}"
            return _reply(start_response, "200 OK" if ok else "503 Service Unavailable", {"ok": ok, "reason": why})
        if path == "/metrics":
            return metrics_app(environ, start_response)
        return _reply(start_response, "404 Not Found", {"ok": False, "error": "try /healthz, /readyz or /metrics"})

    return app


def _reply(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def build_app(ready: Readiness, snapshots: Callable[[], Iterable[Any]],
              outbox: Callable[[], Any] | None = None) -> Callable[..., Iterable[bytes]]:
    from prometheus_client import make_wsgi_app

    from buidl_edge.observability.metrics import SnapshotCollector, registry_for

    registry = registry_for(SnapshotCollector(snapshots, outbox))
    return make_app(ready, make_wsgi_app(registry))


def serve_on_hub(host: str, port: int, app: Callable[..., Iterable[bytes]]) -> Any:
    """gevent's WSGI server on the worker's hub; returns it started (`.stop()` ends it)."""
    from gevent.pywsgi import WSGIServer

    server = WSGIServer((host, port), app, log=None, error_log=log)
    server.start()
    log.info("health and metrics on http://%s:%d/ (/healthz /readyz /metrics)", host, server.server_port)
    return server


def serve_on_thread(host: str, port: int, app: Callable[..., Iterable[bytes]]) -> Any:
    """A threaded wsgiref server for `run`'s supervisord process (no gevent there); returns it
    (`.shutdown()`)."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: no log line each
            pass

    class ThreadingServer(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = make_server(host, port, app, server_class=ThreadingServer, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="buidl-health", daemon=True).start()
    log.info("health and metrics on http://%s:%d/ (/healthz /readyz /metrics)", host, server.server_port)
    return server
