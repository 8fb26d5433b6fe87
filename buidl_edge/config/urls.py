"""URLs in the settings: wss:// and https:// outside loopback, BUIDL_STORE_URL's shapes, and a
URL as it may be printed (its password masked)."""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from buidl_edge.config.env import ConfigError

STORE_SCHEMES = ("sqlite:///", "memory://", "redis://", "rediss://")
_PASSWORD_QUERY = re.compile(r"(?i)((?:^|&)(?:password|passwd|pass|token|secret)=)[^&]*")


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport_url(url: str, secure_scheme: str, plain_scheme: str, what: str) -> str:
    """Allow the plain scheme only towards loopback (the simulator); refuse anything else."""
    parts = urlsplit(url)
    if parts.scheme == secure_scheme:
        return url
    if parts.scheme == plain_scheme:
        if is_loopback_host(parts.hostname):
            return url
        raise ConfigError(
            f"{what} must use {secure_scheme}:// outside loopback; "
            f"{plain_scheme}:// to {parts.hostname or '?'} is refused"
        )
    raise ConfigError(f"{what} must be a {secure_scheme}:// URL, got scheme {parts.scheme or 'none'!r}")


def mask_url_password(url: str) -> str:
    """A URL as it may be printed: `redis://user:secret@host` -> `redis://user:***@host`;
    a lone `token@host` userinfo (it may be a credential) -> `***@host`; password= in the query masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if has_password and user else f"***@{host}"
    query = _PASSWORD_QUERY.sub(r"\1***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


def absolute(path: Path | str) -> Path:
    """An absolute path (~ expanded) that does not depend on the working directory any more."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def store_url(env: Mapping[str, str]) -> str | None:
    """BUIDL_STORE_URL; `$NAME[?options]` reads the URL from variable NAME (Heroku keeps REDIS_URL
    current) and appends the options, e.g. `$REDIS_URL?ssl_cert_reqs=none`."""
    raw = (env.get("BUIDL_STORE_URL") or "").strip()
    if not raw.startswith("$"):
        return _absolute_sqlite(raw) or None
    name, _, options = raw[1:].partition("?")
    name = name.strip("{}")
    if not env.get(name):
        raise ConfigError(f"BUIDL_STORE_URL is ${name}, but {name} is not set")
    url = env[name].strip()
    return f"{url}{'&' if '?' in url else '?'}{options}" if options else url


def _absolute_sqlite(url: str) -> str:
    """sqlite:///relative/path is taken from the working directory once, here, like the state dir."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and url[len(prefix):] and not url[len(prefix):].startswith("/"):
        return prefix + str(absolute(url[len(prefix):]))
    return url


def check_store_url(url: str) -> None:
    """The shape of BUIDL_STORE_URL, checked where it enters: a bad port or database number is
    refused here in one line (the URL itself is never echoed: it may carry a password)."""
    if not url.startswith(STORE_SCHEMES):
        raise ConfigError("BUIDL_STORE_URL must be sqlite:///path, redis://… or memory://")
    if url.startswith("sqlite:///"):
        if not url[len("sqlite:///"):].strip():
            raise ConfigError("BUIDL_STORE_URL sqlite:/// needs a file path, like sqlite:////app/edge.sqlite3")
        return
    if not url.startswith(("redis://", "rediss://")):
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (property: parses and range-checks the port)
    except ValueError:
        port = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].rpartition(":")[2]
        raise ConfigError(f"BUIDL_STORE_URL has a bad port {port[:12]!r}: it must be a number "
                          "(1..65535), like redis://host:6379/0") from None
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ConfigError(f"BUIDL_STORE_URL's database must be a number, like redis://host:6379/0 "
                          f"(got /{database[:12]})")
