"""One POST to the backend: only where the user pointed it, redirects never followed, and how it
ended as an `Answer` the relay decides on (done, retry later, or failed for good).

Outcomes, as a Slack-facing edge treats them: any 2xx is delivered; connection errors, timeouts
and 5xx are worth retrying; 429 waits for its Retry-After; any other 3xx or 4xx is the app's
verdict on this request (a 401 is a signature it refuses) and is not retried.

The POST goes over the edge's one HTTP stack (webapi.http: urllib3, its pool keeping the
connections to the backend between posts).
"""
from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import urllib3

from buidl_edge.config import is_loopback_host, mask_url_password, proxy_for
from buidl_edge.config.relay import is_private_address
from buidl_edge.relay.request import SignedRequest
from buidl_edge.socketmode.protocol import ack_payload_of_answer
from buidl_edge.webapi.http import NetworkFailure, network_failure, pool_manager
from buidl_edge.webapi.retry_after import parse_retry_after

# More than Slack's ack payload limit (20 KB) and any sane answer; the rest is not read.
MAX_ANSWER_BYTES = 256 * 1024
# How long a name in BUIDL_RELAY_PRIVATE_HOSTS is trusted to resolve to what it resolved to.
RESOLVE_CACHE_S = 30.0
# Connecting gives up sooner than waiting for the app's answer: a backend that is down shows at once.
MAX_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Answer:
    """How one POST ended. `error` is one line for logs and the inbox (never the URL's secrets)."""

    kind: Literal["ok", "retry", "failed", "ratelimited"]
    status: int | None = None
    error: str | None = None
    body: bytes = b""
    content_type: str = ""
    retry_after: float = 0.0
    elapsed: float = 0.0

    def ack_payload(self) -> dict[str, Any] | None:
        """A 2xx answer as Socket Mode's ack payload: a JSON object as it is, other text as
        {"text": …}, nothing for an empty body (a plain ack), as Bolt's own Socket Mode adapter does."""
        if self.kind != "ok":
            return None
        return ack_payload_of_answer(self.body.decode("utf-8", "replace"), self.content_type)


class BackendClient:
    """POSTs signed requests to one URL, over one pool of kept connections."""

    def __init__(self, url: str, private_hosts: tuple[str, ...] = (), timeout: float = 10.0,
                 pool_size: int = 16) -> None:
        self.url = url
        self.shown = mask_url_password(url)  # what logs and `status` say
        self.timeout = timeout
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        # http:// beyond loopback is allowed only to a named private host: a name is held to
        # private addresses at every use (an IP literal was checked with the settings).
        self._guarded = host if parts.scheme == "http" and not is_loopback_host(host) and \
            host in private_hosts and not _is_ip(host) else None
        self._resolved_at = 0.0
        proxy = proxy_for(url) if parts.scheme == "https" else None  # the backend next door: always direct
        self.pool = pool_manager(proxy, max(1, pool_size))

    def post(self, request: SignedRequest, timeout: float | None = None) -> Answer:
        timeout = self.timeout if timeout is None else timeout
        started = time.monotonic()
        refused = self._guard()
        if refused:
            return Answer("retry", error=refused)
        try:
            response = self.pool.request(
                "POST", self.url, body=request.body, headers=request.headers, retries=False, redirect=False,
                timeout=urllib3.Timeout(connect=min(timeout, MAX_CONNECT_TIMEOUT_S), read=timeout),
                preload_content=False)
            try:
                body = _read_capped(response)
            finally:
                # Read to its end, the connection went back to the pool already; cut short, this
                # closes it rather than leave the rest of the answer for the next post to read.
                response.close()
        except urllib3.exceptions.HTTPError as exc:
            return Answer("retry", error=_network_error(exc, timeout), elapsed=time.monotonic() - started)
        return _classify(response, body, time.monotonic() - started)

    def _guard(self) -> str | None:
        """None when the named private host still resolves to private addresses only."""
        if self._guarded is None or time.monotonic() - self._resolved_at < RESOLVE_CACHE_S:
            return None
        try:
            infos = socket.getaddrinfo(self._guarded, self.port, type=socket.SOCK_STREAM)
        except OSError:
            return f"cannot resolve {self._guarded}"
        public = sorted({str(info[4][0]) for info in infos if not is_private_address(str(info[4][0]))})
        if public:
            return (f"refused: {self._guarded} resolves to the public address {public[0]}; "
                    "BUIDL_RELAY_PRIVATE_HOSTS admits private hosts only (use https://)")
        self._resolved_at = time.monotonic()
        return None

    def close(self) -> None:
        self.pool.clear()


def _classify(response: urllib3.BaseHTTPResponse, body: bytes, elapsed: float) -> Answer:
    status = response.status
    content_type = response.headers.get("Content-Type", "")
    if 200 <= status < 300:
        return Answer("ok", status, None, body, content_type, elapsed=elapsed)
    if status == 429:
        return Answer("ratelimited", status, "HTTP 429",
                      retry_after=parse_retry_after(response.headers.get("Retry-After")), elapsed=elapsed)
    if 300 <= status < 400:
        where = response.headers.get("Location")
        to = f" to {mask_url_password(where)[:200]}" if where else ""
        return Answer("failed", status, f"HTTP {status} redirect{to} not followed (set BUIDL_RELAY_URL to the "
                                        "app's own Request URL)", elapsed=elapsed)
    if status >= 500:
        return Answer("retry", status, f"HTTP {status}", elapsed=elapsed)
    return Answer("failed", status, f"HTTP {status}", body, content_type, elapsed=elapsed)


def _read_capped(response: urllib3.BaseHTTPResponse) -> bytes:
    chunks, size = [], 0
    for chunk in response.stream(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_ANSWER_BYTES:
            break
    return b"".join(chunks)[:MAX_ANSWER_BYTES]


def _network_error(exc: urllib3.exceptions.HTTPError, timeout: float) -> str:
    """One line without the URL: urllib3's own text names the host and path at length."""
    failure = network_failure(exc)
    if failure is NetworkFailure.CONNECT_TIMEOUT:
        return f"no connection within {min(timeout, MAX_CONNECT_TIMEOUT_S):g}s"
    if failure is NetworkFailure.READ_TIMEOUT:
        return f"no answer within {timeout:g}s"
    return failure.value


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
