"""Loopback HTTP servers' shared part, for the tests that stand one up as Slack's response_url,
the relay's backend, or a proxy."""
from __future__ import annotations

from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler


def write_answer(handler: BaseHTTPRequestHandler, answer: tuple[int, Mapping[str, str], bytes]) -> None:
    """Send an answer: the status, the headers, then the body with its length (keep-alive safe)."""
    status, headers, body = answer
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
