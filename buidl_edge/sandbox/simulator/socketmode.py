"""The `/link/` endpoint: handshake checks, then one connection's lifetime."""
from __future__ import annotations

import base64
import binascii
import time
from typing import Any
from urllib.parse import parse_qs

import gevent
import gevent.event
from geventwebsocket.exceptions import WebSocketError

from .hub import Hub
from .link import Link, run_writer

SUPPORTED_VERSIONS = ("13", "8", "7")


class Tickets:
    """Single-use link tickets handed out by apps.connections.open."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def issue(self, ticket: str, ttl: float) -> None:
        now = time.monotonic()
        if len(self._expiry) > 1000:  # forget expired ones now and then
            self._expiry = {t: e for t, e in self._expiry.items() if e > now}
        self._expiry[ticket] = now + ttl

    def redeem(self, ticket: str) -> bool:
        expiry = self._expiry.pop(ticket, None)
        return expiry is not None and expiry > time.monotonic()


def handshake_problem(environ: dict[str, Any]) -> str | None:
    """Why this request cannot become a WebSocket, checked before any upgrade."""
    if environ.get("REQUEST_METHOD") != "GET":
        return "method must be GET"
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        return "missing Upgrade: websocket"
    if "upgrade" not in environ.get("HTTP_CONNECTION", "").lower():
        return "missing Connection: upgrade"
    if environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return "HTTP/1.1 required"
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION") not in SUPPORTED_VERSIONS:
        return "unsupported Sec-WebSocket-Version"
    try:
        key = base64.b64decode(environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 16:
        return "bad Sec-WebSocket-Key"
    return None


def admission(environ: dict[str, Any], tickets: Tickets) -> tuple[int, str] | None:
    """(status, reason) refusing the link, or None to let the upgrade go ahead."""
    problem = handshake_problem(environ)
    if problem:
        return 400, problem
    ticket = parse_qs(environ.get("QUERY_STRING", "")).get("ticket", [""])[0]
    if not ticket or not tickets.redeem(ticket):
        return 401, "unknown, used or expired ticket"
    return None


def run_link(hub: Hub, ws: Any) -> None:
    """Serve one accepted WebSocket until either side ends it, or it falls into a blackhole."""
    link = hub.admit(ws)
    writer = gevent.spawn(run_writer, link)
    if link.state == "closing":  # refused: the writer says why and closes
        writer.join(timeout=5)
        return
    reader = gevent.spawn(_read_frames, hub, link, ws)
    try:
        ends: list[gevent.Greenlet[..., None] | gevent.event.Event] = [reader, link.hole]
        gevent.wait(ends, count=1)
        if link.hole.is_set():
            reader.kill()  # nothing more is read: the client's pings and acks pile up unread
            link.hold_blackhole()
    finally:
        reader.kill()
        hub.closed(link)
        writer.join(timeout=2)


def _read_frames(hub: Hub, link: Link, ws: Any) -> None:
    while link.is_open:
        wait = link.silenced_until - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)  # silence: stop reading, so pings go unanswered
        try:
            message = ws.receive()
        except (WebSocketError, OSError):
            return
        if message is None:
            return
        wait = link.silenced_until - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)
        hub.record_frame(link, message)
