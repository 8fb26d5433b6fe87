"""Tiny WSGI request/response helpers: Slack methods take form or JSON bodies."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

MAX_BODY = 2_000_000
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass
class Response:
    status: int
    body: dict[str, Any]
    headers: list[tuple[str, str]] = field(default_factory=list)
    # A plain-text answer instead of JSON: what a response_url says ("ok", "expired_url").
    text: str | None = None

    def __call__(self, start_response: Any) -> list[bytes]:
        if self.text is not None:
            data, ctype = self.text.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(self.body).encode(), "application/json; charset=utf-8"
        status = f"{self.status} {_REASONS.get(self.status, 'Unknown')}"
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data))), *self.headers])
        return [data]


def json_param(value: Any) -> Any:
    """A JSON argument (`blocks`, `view`, `prompts` …): a string in a form post, a value in a JSON body."""
    return json.loads(value) if isinstance(value, str) and value else value


def slack_error(error: str, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, {"ok": False, "error": error}, headers or [])


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any]
    environ: dict[str, Any]
    body_error: str | None = None

    @property
    def bearer(self) -> str | None:
        """The token from `Authorization: Bearer …`, the only place Slack reads it for these methods."""
        header = self.environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None

    @property
    def host(self) -> str:
        return self.environ.get("HTTP_HOST") or f"{self.environ['SERVER_NAME']}:{self.environ['SERVER_PORT']}"


def read_request(environ: dict[str, Any]) -> Request:
    params: dict[str, Any] = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    req = Request(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/"), params, environ)
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0:
        return req
    if length > MAX_BODY:
        req.body_error = "body too large"
        return req
    raw = environ["wsgi.input"].read(length)
    ctype = environ.get("CONTENT_TYPE", "")
    if "json" in ctype:
        try:
            data = json.loads(raw)
        except ValueError:
            req.body_error = "invalid JSON body"
            return req
        if not isinstance(data, dict):
            req.body_error = "JSON body must be an object"
            return req
        params.update(data)
    else:
        params.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    return req
