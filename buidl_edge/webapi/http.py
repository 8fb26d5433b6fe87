"""The one HTTP stack of the edge's own calls (the Web API, ctx.respond, the relay's posts):
urllib3 pools that keep their connections between calls, TLS verified, the proxy chosen as
requests chooses it. Handlers' `ctx.client` is slack_sdk's WebClient, and is not this.

urllib3 rather than requests, which is built on it: scripts/bench_webapi.py posts the same JSON
through a bare urllib3.PoolManager and a bare requests.Session (pooled alike) from a gevent
worker. Medians of 3 on this 2-core machine, 2,000 posts 8 at once to a loopback server: 481
against 765 ms of CPU per 1,000 posts over plain http and 585 against 908 over TLS (about a third
less for the hub), p50 2.6 against 4.4 ms and 4.2 against 5.4 ms, and the import adds 1 MB to a
worker where requests adds 5 (BENCHMARKS.md). What requests would give the edge is kept here:
- proxies: HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read as requests reads them by config.proxy_for,
  which the WebSocket follows too, so the Web API and the link always take the same way;
- certificates: REQUESTS_CA_BUNDLE, then CURL_CA_BUNDLE (requests' own variables), then
  SSL_CERT_FILE, then certifi's bundle, which is requests' default;
- a refused connection told apart from a timeout (`network_failure`), as requests tells them.
Callers pass `retries=False, redirect=False`: a POST is never sent twice behind their back (each
caller decides its retries), and a redirect could carry a token or an answer to another host.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from enum import Enum
from typing import Any

import urllib3

from buidl_edge.config import Proxy, proxy_for

CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


def pool_manager(proxy: Proxy | None, size: int, env: Mapping[str, str] | None = None) -> urllib3.PoolManager:
    """Pools of up to `size` kept connections per host, through `proxy` when there is one; TLS
    verified. Past `size` calls at once, a call opens a connection of its own instead of waiting."""
    env = os.environ if env is None else env
    ca_certs = next((env[name] for name in CA_BUNDLE_VARIABLES if env.get(name)), None) or _certifi_bundle()
    options: dict[str, Any] = {"maxsize": size, "block": False, "cert_reqs": "CERT_REQUIRED", "ca_certs": ca_certs}
    if proxy is None:
        return urllib3.PoolManager(num_pools=2, **options)
    headers = urllib3.make_headers(proxy_basic_auth=":".join(proxy.auth)) if proxy.auth else None
    return urllib3.ProxyManager(f"http://{proxy.host}:{proxy.port}", num_pools=2, proxy_headers=headers, **options)


def http_pool(url: str, size: int, env: Mapping[str, str] | None = None) -> urllib3.PoolManager:
    """Connections to `url`'s host, through the proxy chosen for it; TLS verified."""
    return pool_manager(proxy_for(url, env), size, env)


class PoolsByProxy:
    """Pools for calls whose URL comes with each call (a payload's response_url): one manager per
    proxy choice, made when first needed and kept for the process's life, so that calls to one
    host reuse their connections whichever envelope they answer. The proxy is chosen per URL at
    each call, as requests would (NO_PROXY names hosts)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._managers: dict[Proxy | None, urllib3.PoolManager] = {}

    def for_url(self, url: str) -> urllib3.PoolManager:
        proxy = proxy_for(url)
        manager = self._managers.get(proxy)
        if manager is None:  # two callers racing here make one spare manager, nothing worse
            manager = self._managers.setdefault(proxy, pool_manager(proxy, self.size))
        return manager


class NetworkFailure(Enum):
    """How a call that got no HTTP answer failed. The value says it in a few words without the
    URL (urllib3's own text names host and path, and a URL can carry a secret)."""

    PROXY = "the proxy failed"
    NAME = "cannot resolve the host"
    REFUSED = "connection refused"
    CONNECT = "connection failed"
    CONNECT_TIMEOUT = "no connection in time"
    READ_TIMEOUT = "no answer in time"
    TLS = "TLS handshake failed (certificate not verified?)"
    CLOSED = "connection closed before an answer"

    @property
    def code(self) -> str:
        """A short name for logs and stored rows, as requests names these failures."""
        return _CODES[self]


_CODES = {
    NetworkFailure.PROXY: "ProxyError", NetworkFailure.NAME: "NameResolution",
    NetworkFailure.REFUSED: "ConnectionRefused", NetworkFailure.CONNECT: "ConnectionError",
    NetworkFailure.CONNECT_TIMEOUT: "ConnectTimeout", NetworkFailure.READ_TIMEOUT: "ReadTimeout",
    NetworkFailure.TLS: "SSLError", NetworkFailure.CLOSED: "ConnectionError",
}


def network_failure(exc: urllib3.exceptions.HTTPError) -> NetworkFailure:
    """What a urllib3 error raised with `retries=False` means.

    urllib3's NewConnectionError (refused, unresolvable) subclasses ConnectTimeoutError, so it is
    told apart first, as requests does: a refused connection is not a timeout. Anything else
    (a protocol error, a reset, a broken answer) means the peer went away before answering.
    """
    errors = urllib3.exceptions
    if isinstance(exc, errors.ProxyError):
        return NetworkFailure.PROXY
    if isinstance(exc, errors.NameResolutionError):
        return NetworkFailure.NAME
    if isinstance(exc, errors.NewConnectionError):
        refused = isinstance(exc.__cause__, ConnectionRefusedError) or "refused" in str(exc).lower()
        return NetworkFailure.REFUSED if refused else NetworkFailure.CONNECT
    if isinstance(exc, errors.ConnectTimeoutError):
        return NetworkFailure.CONNECT_TIMEOUT
    if isinstance(exc, errors.TimeoutError):
        return NetworkFailure.READ_TIMEOUT
    if isinstance(exc, errors.SSLError):
        return NetworkFailure.TLS
    return NetworkFailure.CLOSED


def _certifi_bundle() -> str | None:
    try:
        import certifi
    except ImportError:  # the system's store, then
        return None
    return certifi.where()
