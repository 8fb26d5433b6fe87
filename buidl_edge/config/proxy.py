"""Proxies: HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read as requests reads them, and handed to the
WebSocket explicitly, so that the Web API and the Socket Mode link always take the same way."""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from buidl_edge.config.env import ConfigError, environ


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    auth: tuple[str, str] | None = None

    def __repr__(self) -> str:  # never the password
        return f"Proxy({self.host}:{self.port}{', auth' if self.auth else ''})"

    def url(self) -> str:
        """As a proxy URL for requests and urllib3: credentials quoted, an IPv6 host bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = f"{quote(self.auth[0], safe='')}:{quote(self.auth[1], safe='')}@" if self.auth else ""
        return f"http://{auth}{host}:{self.port}"


def proxy_for(url: str, env: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy `url` should go through: HTTPS_PROXY for https/wss, HTTP_PROXY for http/ws,
    lower-case names first (as curl and requests read them), unless NO_PROXY matches the host."""
    env = environ(env)
    parts = urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    names = ("https_proxy", "HTTPS_PROXY") if secure else ("http_proxy", "HTTP_PROXY")
    raw = next((env[n].strip() for n in names if env.get(n, "").strip()), "")
    if not raw or bypass_proxy(parts.hostname or "", parts.port or (443 if secure else 80), env):
        return None
    proxy = urlsplit(raw if "://" in raw else f"http://{raw}")
    if proxy.scheme not in ("http", "https") or not proxy.hostname:
        raise ConfigError(f"{names[1]} must be an http:// proxy URL like http://proxy:3128")
    try:
        port = proxy.port or (443 if proxy.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{names[1]} has a bad port") from None
    auth = (unquote(proxy.username), unquote(proxy.password or "")) if proxy.username else None
    return Proxy(proxy.hostname, port, auth)


def bypass_proxy(host: str, port: int | None, env: Mapping[str, str] | None = None) -> bool:
    """NO_PROXY matching: `*`, a host or domain suffix (with or without a leading dot),
    host:port, an IP or a CIDR block."""
    env = environ(env)
    raw = env.get("no_proxy") or env.get("NO_PROXY") or ""
    host = host.strip("[]").lower()
    for entry in (e.strip().lower() for e in raw.replace(" ", ",").split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and port is not None and entry_port != str(port):
            continue
        name = name.strip("[]")
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                return True
            continue
        except ValueError:
            pass
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def websocket_options(url: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Extra `create_connection` arguments: the proxy, chosen the way requests chooses it.

    websocket-client would read the proxy variables itself, with its own NO_PROXY rules; we pass
    our choice explicitly so the Web API and the WebSocket always agree. No `sslopt` is ever
    passed: websocket-client's default verifies the certificate and the host name.
    """
    env = environ(env)
    proxy = proxy_for(url, env)
    if proxy is not None:
        return {"http_proxy_host": proxy.host, "http_proxy_port": proxy.port,
                "http_proxy_auth": proxy.auth, "proxy_type": "http"}
    configured = proxy_for(url, {k: v for k, v in env.items() if k.lower() != "no_proxy"})
    if configured is not None:  # a proxy is set but NO_PROXY exempts this host: go direct
        return {"http_proxy_host": configured.host, "http_proxy_port": configured.port, "http_no_proxy": ["*"]}
    return {}
