"""One POST to the backend: only where the user pointed it, redirects never followed, and how it
ended as an `Answer` the relay decides on (done, retry later, or failed for good).

Outcomes, as a Slack-facing edge treats them: any 2xx is delivered; connection errors, timeouts
and 5xx are worth retrying; 429 waits for its Retry-After; any other 3xx or 4xx is the app's
verdict on this request (a 401 is a signature it refuses) and is not retried.
"""
from __future__ import annotations

import email.utils
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from buidl_edge.config import is_loopback_host, mask_url_password, proxy_for
from buidl_edge.config.relay import is_private_address
from buidl_edge.relay.request import SignedRequest

# More than Slack's ack payload limit (20 KB) and any sane answer; the rest is not read.
MAX_ANSWER_BYTES = 256 * 1024
# How long a name in BUIDL_RELAY_PRIVATE_HOSTS is trusted to resolve to what it resolved to.
RESOLVE_CACHE_S = 30.0
MAX_RETRY_AFTER_S = 3600.0


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
        if self.kind != "ok" or not self.body.strip():
            return None
        text = self.body.decode("utf-8", "replace")
        if self.content_type.split(";")[0].strip().lower() == "application/json":
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if isinstance(value, dict):
                return value
        return {"text": text}


class BackendClient:
    """POSTs signed requests to one URL, over one pooled session."""

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
        self.session = requests.Session()
        self.session.trust_env = False  # no .netrc, and proxies only as chosen here
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool_size), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        proxy = proxy_for(url) if parts.scheme == "https" else None  # the backend next door: always direct
        if proxy is not None:
            self.session.proxies = {"https": proxy.url()}

    def post(self, request: SignedRequest, timeout: float | None = None) -> Answer:
        timeout = self.timeout if timeout is None else timeout
        started = time.monotonic()
        refused = self._guard()
        if refused:
            return Answer("retry", error=refused)
        try:
            response = self.session.post(self.url, data=request.body, headers=request.headers,
                                         timeout=(min(timeout, 5.0), timeout), allow_redirects=False, stream=True)
            try:
                body = _read_capped(response)
            finally:
                response.close()
        except requests.RequestException as exc:
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
        public = sorted({info[4][0] for info in infos if not is_private_address(info[4][0])})
        if public:
            return (f"refused: {self._guarded} resolves to the public address {public[0]}; "
                    "BUIDL_RELAY_PRIVATE_HOSTS admits private hosts only (use https://)")
        self._resolved_at = time.monotonic()
        return None

    def close(self) -> None:
        self.session.close()


def _classify(response: requests.Response, body: bytes, elapsed: float) -> Answer:
    status = response.status_code
    content_type = response.headers.get("Content-Type", "")
    if 200 <= status < 300:
        return Answer("ok", status, None, body, content_type, elapsed=elapsed)
    if status == 429:
        return Answer("ratelimited", status, "HTTP 429", retry_after=_retry_after(response.headers.get("Retry-After")),
                      elapsed=elapsed)
    if 300 <= status < 400:
        where = response.headers.get("Location")
        to = f" to {mask_url_password(where)[:200]}" if where else ""
        return Answer("failed", status, f"HTTP {status} redirect{to} not followed (set BUIDL_RELAY_URL to the "
                                        "app's own Request URL)", elapsed=elapsed)
    if status >= 500:
        return Answer("retry", status, f"HTTP {status}", elapsed=elapsed)
    return Answer("failed", status, f"HTTP {status}", body, content_type, elapsed=elapsed)


def _read_capped(response: requests.Response) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_ANSWER_BYTES:
            break
    return b"".join(chunks)[:MAX_ANSWER_BYTES]


def _network_error(exc: requests.RequestException, timeout: float) -> str:
    """One line without the URL: requests' own text names the host and path at length."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed (certificate not verified?)"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {min(timeout, 5.0):g}s"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        if "refused" in text.lower():
            return "connection refused"
        if "resolve" in text.lower() or "name or service" in text.lower():
            return "cannot resolve the host"
        if "reset" in text.lower() or "aborted" in text.lower() or "disconnected" in text.lower():
            return "connection closed before an answer"
        return "connection failed"
    return f"request failed ({type(exc).__name__})"


def _retry_after(value: str | None) -> float:
    """Retry-After as seconds or an HTTP date; 1 s when absent or unreadable."""
    if not value:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 1.0
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
