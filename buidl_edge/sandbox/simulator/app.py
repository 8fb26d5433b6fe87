"""The WSGI application and handler that put the fake Slack on one port."""
from __future__ import annotations

import socket
import traceback
from collections import Counter
from collections.abc import Iterable
from typing import Any

from gevent.pywsgi import WSGIHandler
from geventwebsocket.handler import WebSocketHandler

from .control import Control
from .events import RESPOND_PATH
from .http import Response, read_request
from .hub import Hub
from .knobs import Knobs
from .sentry import SentryIngest, match as sentry_route
from .socketmode import Tickets, admission, run_link
from .webapi import WebApi


class SimApp:
    def __init__(self, knobs: Knobs | None = None) -> None:
        self.knobs = knobs or Knobs()
        self.counters: Counter[str] = Counter()
        self.tickets = Tickets()
        self.hub = Hub(self.knobs, self.counters)
        self.webapi = WebApi(self.knobs, self.counters, self.tickets, self.hub.ts)
        self.hub.inject_observer = self.webapi.note
        self.sentry = SentryIngest()
        self.control = Control(self.knobs, self.counters, self.hub, self.webapi, self.sentry)

    def admit_link(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        return admission(environ, self.tickets)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/link/":
            ws = environ.get("wsgi.websocket")
            if ws is None:
                status, reason = environ.get("sim.refused", (400, "not a WebSocket request"))
                return Response(status, {"ok": False, "error": reason})(start_response)
            run_link(self.hub, ws)
            return []
        try:
            sentry = sentry_route(path)
            if sentry:  # raw (often gzip) body: read before the form/JSON parser sees it
                return self.sentry.handle(environ, sentry["project"], sentry["kind"])(start_response)
            req = read_request(environ)
            if path.startswith(RESPOND_PATH):
                return self.webapi.responses.handle(path[len(RESPOND_PATH):], req)(start_response)
            if path.startswith("/api/"):
                return self.webapi.handle(path[len("/api/"):], req)(start_response)
            if path.startswith("/_sim/"):
                return self.control.handle(path[len("/_sim/"):], req)(start_response)
            return Response(404, {"ok": False, "error": "not_found"})(start_response)
        except Exception:  # answer like a server, keep the details on our side
            traceback.print_exc()
            return Response(500, {"ok": False, "error": "internal_error"})(start_response)


class SimHandler(WebSocketHandler):
    """Refuses bad `/link/` requests with a plain HTTP answer before any upgrade."""

    def handle(self) -> None:
        # pywsgi writes headers and body separately; without TCP_NODELAY, Nagle and the
        # client's delayed ACK add ~40 ms to every answer.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()

    def run_application(self) -> None:
        if self.environ.get("PATH_INFO") == "/link/":
            refused = self.application.admit_link(self.environ)
            if refused is not None:
                self.environ["sim.refused"] = refused
                return WSGIHandler.run_application(self)
        return super().run_application()
