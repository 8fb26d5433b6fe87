"""Settings from the environment, validated once, with one-line errors that never echo a token."""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

DEFAULT_API_URL = "https://slack.com/api/"
DEFAULT_APP = "buidl_edge.bot:app"
# Slack's ceiling on open Socket Mode connections per app.
SLACK_MAX_CONNECTIONS = 10


class ConfigError(ValueError):
    """A setting that cannot work. The message is one line and safe to print."""


class Secret:
    """A token that prints as its type and last four characters, never whole."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def kind(self) -> str:
        return self._value.split("-", 1)[0] if "-" in self._value else "unknown"

    def masked(self) -> str:
        return f"{self.kind}-…{self._value[-4:]}" if len(self._value) > 12 else f"{self.kind}-…"

    def __repr__(self) -> str:
        return f"Secret({self.masked()})"

    __str__ = masked

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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
    """`redis://user:secret@host` -> `redis://user:***@host`: URLs print without their password."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}***@{host}").geturl()


@dataclass(frozen=True)
class Settings:
    app_token: Secret
    bot_token: Secret
    bot_user_id: str | None = None
    api_url: str = DEFAULT_API_URL
    connections: int = 1
    processes: int = 2
    # Socket Mode connections the whole app may hold, over every dyno (store/slots.py).
    max_app_connections: int = SLACK_MAX_CONNECTIONS
    app_spec: str = DEFAULT_APP
    websocket_debug: bool = False
    state_dir: Path = field(default_factory=lambda: Path(".buidl"))
    store_url: str | None = None
    db_path: Path | None = None
    lease_s: float = 30.0
    retention_s: float = 3600.0
    ack_payload_deadline: float = 2.5
    ping_interval: float = 10.0
    stale_timeout: float = 30.0
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    refresh_lead: float = 30.0
    drain_timeout: float = 10.0
    http_timeout: float = 10.0
    # Handlers running at once per process (more queue, in arrival order), and the native
    # threads that `threaded=True` handlers share.
    handler_concurrency: int = 200
    handler_threads: int = 8
    # Warn when one greenlet holds the gevent hub longer than this (0 turns the monitor off).
    hub_block_warn_s: float = 0.5

    @property
    def database_path(self) -> Path:
        """BUIDL_DB, else edge.sqlite3 in the state directory."""
        return self.db_path or self.state_dir / "edge.sqlite3"

    def redacted(self) -> dict[str, Any]:
        """What `config` prints: every setting, with tokens masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.masked() if isinstance(value, Secret) else (
                str(value) if isinstance(value, Path) else value
            )
        if self.store_url:  # a Redis URL carries its password
            out["store_url"] = mask_url_password(self.store_url)
        return out


# env var -> (field, parser)
_NUMBERS: dict[str, tuple[str, type]] = {
    "BUIDL_CONNECTIONS": ("connections", int),
    "BUIDL_PROCESSES": ("processes", int),
    "BUIDL_MAX_APP_CONNECTIONS": ("max_app_connections", int),
    "BUIDL_ACK_DEADLINE": ("ack_payload_deadline", float),
    "BUIDL_PING_INTERVAL": ("ping_interval", float),
    "BUIDL_STALE_TIMEOUT": ("stale_timeout", float),
    "BUIDL_BACKOFF_BASE": ("backoff_base", float),
    "BUIDL_BACKOFF_CAP": ("backoff_cap", float),
    "BUIDL_REFRESH_LEAD": ("refresh_lead", float),
    "BUIDL_DRAIN_TIMEOUT": ("drain_timeout", float),
    "BUIDL_HTTP_TIMEOUT": ("http_timeout", float),
    "BUIDL_LEASE_S": ("lease_s", float),
    "BUIDL_RETENTION_S": ("retention_s", float),
    "BUIDL_HANDLER_CONCURRENCY": ("handler_concurrency", int),
    "BUIDL_HANDLER_THREADS": ("handler_threads", int),
    "BUIDL_HUB_BLOCK_WARN_S": ("hub_block_warn_s", float),
}


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from `env` (default os.environ); keyword overrides win (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {
        "app_token": _token(env, "SLACK_APP_TOKEN", "xapp-", "an app-level token"),
        "bot_token": _token(env, "SLACK_BOT_TOKEN", "xoxb-", "a bot token"),
        "bot_user_id": env.get("BOT_USER_ID") or None,
        "api_url": env.get("SLACK_API_URL") or DEFAULT_API_URL,
        "app_spec": env.get("BUIDL_APP") or DEFAULT_APP,
        "websocket_debug": env.get("WEBSOCKET_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"),
        "state_dir": Path(env.get("BUIDL_STATE_DIR") or ".buidl"),
        "store_url": _store_url(env),
        "db_path": Path(env["BUIDL_DB"]) if env.get("BUIDL_DB") else None,
    }
    for name, (attr, parse) in _NUMBERS.items():
        raw = env.get(name)
        if raw not in (None, ""):
            try:
                values[attr] = parse(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw[:20]!r}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    validate(settings)
    return settings


def _store_url(env: Mapping[str, str]) -> str | None:
    """BUIDL_STORE_URL; `$NAME[?options]` reads the URL from variable NAME (Heroku keeps REDIS_URL
    current) and appends the options, e.g. `$REDIS_URL?ssl_cert_reqs=none`."""
    raw = (env.get("BUIDL_STORE_URL") or "").strip()
    if not raw.startswith("$"):
        return raw or None
    name, _, options = raw[1:].partition("?")
    name = name.strip("{}")
    if not env.get(name):
        raise ConfigError(f"BUIDL_STORE_URL is ${name}, but {name} is not set")
    url = env[name].strip()
    return f"{url}{'&' if '?' in url else '?'}{options}" if options else url


def validate(settings: Settings) -> None:
    if not 1 <= settings.connections <= SLACK_MAX_CONNECTIONS:
        raise ConfigError(
            f"BUIDL_CONNECTIONS must be 1..{SLACK_MAX_CONNECTIONS} (Slack's limit per app), "
            f"got {settings.connections}"
        )
    if not 1 <= settings.max_app_connections <= SLACK_MAX_CONNECTIONS:
        raise ConfigError(f"BUIDL_MAX_APP_CONNECTIONS must be 1..{SLACK_MAX_CONNECTIONS} (Slack's limit per app), "
                          f"got {settings.max_app_connections}")
    if settings.processes < 1:
        raise ConfigError(f"BUIDL_PROCESSES must be at least 1, got {settings.processes}")
    for env_name, attr in (("BUIDL_HANDLER_CONCURRENCY", "handler_concurrency"),
                           ("BUIDL_HANDLER_THREADS", "handler_threads")):
        if getattr(settings, attr) < 1:
            raise ConfigError(f"{env_name} must be at least 1, got {getattr(settings, attr)}")
    if settings.hub_block_warn_s < 0:
        raise ConfigError(f"BUIDL_HUB_BLOCK_WARN_S must be 0 (off) or more, got {settings.hub_block_warn_s}")
    for attr in ("ack_payload_deadline", "ping_interval", "stale_timeout", "backoff_base",
                 "backoff_cap", "drain_timeout", "http_timeout", "lease_s"):
        if getattr(settings, attr) <= 0:
            raise ConfigError(f"{attr} must be positive, got {getattr(settings, attr)}")
    if settings.ack_payload_deadline >= 3.0:
        raise ConfigError("BUIDL_ACK_DEADLINE must be under Slack's 3 s ack deadline")
    if settings.stale_timeout <= settings.ping_interval:
        raise ConfigError("BUIDL_STALE_TIMEOUT must be longer than BUIDL_PING_INTERVAL")
    if settings.retention_s < 600:
        raise ConfigError("BUIDL_RETENTION_S must be at least 600: Slack retries for about 5 minutes")
    if settings.store_url and not settings.store_url.startswith(("sqlite:///", "memory://", "redis://", "rediss://")):
        raise ConfigError("BUIDL_STORE_URL must be sqlite:///path, redis://… or memory://")
    if ":" not in settings.app_spec:
        raise ConfigError(f"BUIDL_APP must look like module:attribute, got {settings.app_spec!r}")
    check_transport_url(settings.api_url, "https", "http", "SLACK_API_URL")
    if not settings.api_url.endswith("/"):
        raise ConfigError("SLACK_API_URL must end with '/', like https://slack.com/api/")


_PREFIXES = {"xapp-": "an app-level token (xapp-)", "xoxb-": "a bot token (xoxb-)",
             "xoxp-": "a user token (xoxp-)"}


# A Slack token is a prefix and dashes/alphanumerics; quotes, spaces or a second token pasted
# along are caught on load rather than as invalid_auth later.
_TOKEN_BODY = re.compile(r"[A-Za-z0-9-]+")


def _token(env: Mapping[str, str], name: str, prefix: str, what: str) -> Secret:
    """The token from the environment, else from its file under BUIDL_HOME (the env wins)."""
    raw = (env.get(name) or "").strip()
    source = name
    if not raw:
        path = token_file(name, env)
        raw = (read_token_file(path) or "").strip()
        source = str(path)
    if not raw:
        flag = "--app" if name == "SLACK_APP_TOKEN" else "--bot"
        raise ConfigError(f"{name} is not set: it must be {what} starting with {prefix} "
                          f"(or store one with `buidl-edge token set {flag}`)")
    check_token_format(raw, prefix, what, source)
    return Secret(raw)


def check_token_format(raw: str, prefix: str, what: str, source: str) -> None:
    """Raise a ConfigError naming `source` (a variable or a file) and what was found, never the value."""
    if not raw.startswith(prefix):
        found = next((desc for p, desc in _PREFIXES.items() if raw.startswith(p)), "not a Slack token")
        raise ConfigError(f"{source} must start with {prefix} ({what}); the value given is {found}")
    if not _TOKEN_BODY.fullmatch(raw[len(prefix):]):
        raise ConfigError(f"{source} holds {prefix}… followed by characters no Slack token has "
                          "(spaces, quotes or a second value?)")


# -- token files: ~/.buidl/token (the name Buidl's earlier client used) and ~/.buidl/bot_token --

TOKEN_FILES = {"SLACK_APP_TOKEN": "token", "SLACK_BOT_TOKEN": "bot_token"}


def buidl_home(env: Mapping[str, str] | None = None) -> Path:
    """BUIDL_HOME, else ~/.buidl."""
    env = os.environ if env is None else env
    if env.get("BUIDL_HOME"):
        return Path(env["BUIDL_HOME"]).expanduser()
    return (Path(env["HOME"]) if env.get("HOME") else Path.home()) / ".buidl"


def token_file(name: str, env: Mapping[str, str] | None = None) -> Path:
    """Where the token for variable `name` (SLACK_APP_TOKEN or SLACK_BOT_TOKEN) is stored."""
    return buidl_home(env) / TOKEN_FILES[name]


def read_token_file(path: Path) -> str | None:
    """The stored token, or None without a file. A file group or others can open is refused."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as fh:
        mode = os.fstat(fh.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{path} is open to group or others (mode {mode:o}); refusing to use it. "
                              f"Fix it with: chmod 600 {path}")
        return fh.read(4096).strip()


# -- proxies: HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as requests reads them, for the WebSocket too --


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    auth: tuple[str, str] | None = None

    def __repr__(self) -> str:  # never the password
        return f"Proxy({self.host}:{self.port}{', auth' if self.auth else ''})"


def proxy_for(url: str, env: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy `url` should go through: HTTPS_PROXY for https/wss, HTTP_PROXY for http/ws,
    lower-case names first (as curl and requests read them), unless NO_PROXY matches the host."""
    env = os.environ if env is None else env
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
    env = os.environ if env is None else env
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
