"""A Sentry ingestion endpoint, so the real sentry-sdk can report to the simulator.

The SDK posts envelopes to `/api/<project>/envelope/` (older ones posted single
events to `/api/<project>/store/`), gzip-compressed by default. We decompress,
split the envelope into items, and keep every `event` item plus the raw bytes,
so tests can check both what was reported and that no secret rode along.
Point a DSN at it as `http://<any key>@127.0.0.1:<port>/<project>`.
"""
from __future__ import annotations

import gzip
import json
import re
import threading
import time
import zlib
from collections import deque
from typing import Any

from .http import Response

ROUTE = re.compile(r"^/api/(?P<project>\d+)/(?P<kind>envelope|store)/?$")
MAX_BODY = 5_000_000
MAX_DECODED = 20_000_000
KEEP = 2_000  # events and raw envelopes kept; older ones fall off
AUTH_KEY = re.compile(r"sentry_key=([^,\s&]+)")


class EnvelopeError(ValueError):
    pass


def match(path: str) -> re.Match[str] | None:
    return ROUTE.match(path)


class SentryIngest:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.raw: deque[str] = deque(maxlen=KEEP)
        self.envelopes = 0
        self.events_total = 0
        self.rejected = 0

    def reset(self) -> None:
        with self._lock:
            self.events.clear()
            self.raw.clear()
            self.envelopes = self.events_total = self.rejected = 0

    def handle(self, environ: dict[str, Any], project: str, kind: str) -> Response:
        if environ.get("REQUEST_METHOD") != "POST":
            return Response(405, {"detail": "POST only"})
        key = _auth_key(environ)
        if not key:
            self.rejected += 1
            return Response(401, {"detail": "missing sentry_key"})
        try:
            body = _decode(_read_body(environ), environ.get("HTTP_CONTENT_ENCODING", ""))
            items = parse_envelope(body) if kind == "envelope" else [({"type": "event"}, body)]
        except EnvelopeError as exc:
            self.rejected += 1
            return Response(400, {"detail": str(exc)})
        received = time.time()
        recorded = []
        for header, payload in items:
            if header.get("type") != "event":
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                self.rejected += 1
                return Response(400, {"detail": "event item is not JSON"})
            if isinstance(event, dict):
                recorded.append(summarise(event, project, received))
        with self._lock:
            self.envelopes += 1
            self.raw.append(body.decode("utf-8", "replace"))
            self.events.extend(recorded)
            self.events_total += len(recorded)
        event_id = recorded[0]["event_id"] if recorded else None
        return Response(200, {"id": event_id})

    def listing(self, include_raw: bool) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {"ok": True, "count": self.events_total, "envelopes": self.envelopes,
                                   "rejected": self.rejected, "events": list(self.events)}
            if include_raw:
                out["raw"] = list(self.raw)
        return out


def summarise(event: dict[str, Any], project: str, received: float) -> dict[str, Any]:
    """The fields tests look at first, next to the whole event."""
    exceptions = (event.get("exception") or {}).get("values") or []
    last = exceptions[-1] if exceptions else {}
    message = event.get("message") or (event.get("logentry") or {}).get("formatted") \
        or (event.get("logentry") or {}).get("message")
    tags = event.get("tags") or {}
    if isinstance(tags, list):  # the wire format allows [[key, value], …]
        tags = {k: v for k, v in tags if isinstance(k, str)}
    return {
        "event_id": event.get("event_id"),
        "project": project,
        "received_at": received,
        "level": event.get("level"),
        "message": message,
        "exception_type": last.get("type"),
        "exception_value": last.get("value"),
        "tags": tags,
        "extra": event.get("extra") or {},
        "environment": event.get("environment"),
        "release": event.get("release"),
        "event": event,
    }


def parse_envelope(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """Split a Sentry envelope: a header line, then (item header line, payload) pairs.

    A payload is `length` bytes when the item header says so, else the rest of its line.
    """
    pos = body.find(b"\n")
    header_line = body if pos < 0 else body[:pos]
    try:
        header = json.loads(header_line or b"{}")
    except ValueError:
        raise EnvelopeError("envelope header is not JSON") from None
    if not isinstance(header, dict):
        raise EnvelopeError("envelope header is not an object")
    items: list[tuple[dict[str, Any], bytes]] = []
    pos = len(body) if pos < 0 else pos + 1
    while pos < len(body):
        end = body.find(b"\n", pos)
        line = body[pos:] if end < 0 else body[pos:end]
        pos = len(body) if end < 0 else end + 1
        if not line.strip():
            continue
        try:
            item_header = json.loads(line)
        except ValueError:
            raise EnvelopeError("item header is not JSON") from None
        if not isinstance(item_header, dict):
            raise EnvelopeError("item header is not an object")
        length = item_header.get("length")
        if isinstance(length, int) and length >= 0:
            payload = body[pos:pos + length]
            if len(payload) != length:
                raise EnvelopeError("item shorter than its length")
            pos += length
            if body[pos:pos + 1] == b"\n":
                pos += 1
        else:
            end = body.find(b"\n", pos)
            payload = body[pos:] if end < 0 else body[pos:end]
            pos = len(body) if end < 0 else end + 1
        items.append((item_header, payload))
    return items


def _auth_key(environ: dict[str, Any]) -> str | None:
    for source in (environ.get("HTTP_X_SENTRY_AUTH", ""), environ.get("HTTP_AUTHORIZATION", ""),
                   environ.get("QUERY_STRING", "")):
        found = AUTH_KEY.search(source)
        if found:
            return found.group(1)
    return None


def _read_body(environ: dict[str, Any]) -> bytes:
    stream = environ["wsgi.input"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length > MAX_BODY:
        raise EnvelopeError("body too large")
    data = stream.read(length) if length >= 0 else stream.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise EnvelopeError("body too large")
    return data


def _decode(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            return data
        if encoding in ("gzip", "x-gzip"):
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            decoder = zlib.decompressobj()
        elif encoding == "br":
            try:
                import brotli  # type: ignore[import-not-found]
            except ImportError:
                raise EnvelopeError("br encoding needs the brotli module") from None
            return brotli.decompress(data)
        else:
            raise EnvelopeError(f"unsupported Content-Encoding {encoding!r}")
        out = decoder.decompress(data, MAX_DECODED)
        if decoder.unconsumed_tail:
            raise EnvelopeError("decoded body too large")
        return out
    except (OSError, zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise EnvelopeError(f"cannot decode {encoding} body: {type(exc).__name__}") from None
