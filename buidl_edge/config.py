"""Settings from the environment, validated once, with one-line errors that never echo a token."""
from __future__ import annotations

import ipaddress
import math
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
# The sizing rule: each process holds its connections plus one spare for a refresh overlap
# (the new link opens before the old one closes), so processes x (connections + 1) <= 10.
REFRESH_SPARE = 1
MAX_CONNECTIONS_PER_PROCESS = SLACK_MAX_CONNECTIONS - REFRESH_SPARE
MAX_PROCESSES = SLACK_MAX_CONNECTIONS // (1 + REFRESH_SPARE)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("logfmt", "json")
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
# module:attribute with an absolute, dotted module path (what importlib can import by name).
_APP_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


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

    @property
    def problem(self) -> str | None:
        """Why this token cannot be used, or None: it can."""
        return None


class MissingSecret(Secret):
    """A token that is not set (or not usable), for commands that never call Slack (`config`,
    `status`, `inbox` …): the settings load, and using the token raises its one-line reason."""

    __slots__ = ("_problem",)

    def __init__(self, problem: str) -> None:
        super().__init__("")
        self._problem = problem

    @property
    def problem(self) -> str:
        return self._problem

    def reveal(self) -> str:
        raise ConfigError(self._problem)

    def masked(self) -> str:
        return "(not usable)"

    def __repr__(self) -> str:
        return "MissingSecret()"

    __str__ = masked


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


_PASSWORD_QUERY = re.compile(r"(?i)((?:^|&)(?:password|passwd|pass|token|secret)=)[^&]*")


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


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """$BUIDL_HOME/state (~/.buidl/state): the same for every command, wherever it is run."""
    return absolute(buidl_home(env) / "state")


def absolute(path: Path | str) -> Path:
    """An absolute path (~ expanded) that does not depend on the working directory any more."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


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
    log_level: str = "INFO"
    log_format: str = "logfmt"
    state_dir: Path = field(default_factory=lambda: default_state_dir())
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
    # /healthz /readyz /metrics (health.py): off unless a port is given; `run` serves one for the dyno.
    http_port: int | None = None
    http_host: str = "0.0.0.0"

    @property
    def database_path(self) -> Path:
        """BUIDL_DB, else edge.sqlite3 in the state directory."""
        return self.db_path or self.state_dir / "edge.sqlite3"

    def token_problems(self) -> dict[str, str]:
        """field -> why that token cannot be used (only with `require_tokens=False`)."""
        return {name: secret.problem for name in ("app_token", "bot_token")
                if (secret := getattr(self, name)).problem}

    def redacted(self) -> dict[str, Any]:
        """What `config` prints: every setting, tokens masked (None when not usable), URLs without
        their userinfo."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                out[f.name] = None if value.problem else value.masked()
            elif isinstance(value, Path):
                out[f.name] = str(value)
            else:
                out[f.name] = value
        for name in ("api_url", "store_url"):  # a Redis URL carries its password, a proxy-ish URL may too
            if out[name]:
                out[name] = mask_url_password(out[name])
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
    "BUIDL_HTTP_PORT": ("http_port", int),
}


def load_settings(env: Mapping[str, str] | None = None, require_tokens: bool = True,
                  **overrides: Any) -> Settings:
    """Build Settings from `env` (default os.environ); keyword overrides win (CLI flags).

    `require_tokens=False` is for commands that never call Slack: a missing or malformed token
    loads as a MissingSecret carrying its reason instead of failing the whole load.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {
        "app_token": _token_or_missing(env, "SLACK_APP_TOKEN", "xapp-", "an app-level token", require_tokens),
        "bot_token": _token_or_missing(env, "SLACK_BOT_TOKEN", "xoxb-", "a bot token", require_tokens),
        "bot_user_id": env.get("BOT_USER_ID") or None,
        "api_url": env.get("SLACK_API_URL") or DEFAULT_API_URL,
        "app_spec": (env.get("BUIDL_APP") or "").strip() or DEFAULT_APP,
        "websocket_debug": env.get("WEBSOCKET_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"),
        "log_level": _LEVEL_ALIASES.get(level := (env.get("BUIDL_LOG_LEVEL") or "INFO").strip().upper(), level),
        "log_format": (env.get("BUIDL_LOG_FORMAT") or "logfmt").strip().lower(),
        "state_dir": absolute(env["BUIDL_STATE_DIR"]) if env.get("BUIDL_STATE_DIR") else default_state_dir(env),
        "store_url": _store_url(env),
        "db_path": absolute(env["BUIDL_DB"]) if env.get("BUIDL_DB") else None,
        "http_host": (env.get("BUIDL_HTTP_HOST") or "").strip() or "0.0.0.0",
    }
    for name, (attr, parse) in _NUMBERS.items():
        raw = env.get(name)
        if raw not in (None, ""):
            try:
                values[attr] = parse(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw[:20]!r}") from None
            if not math.isfinite(values[attr]):
                raise ConfigError(f"{name} must be a finite number, got {raw[:20]!r}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    validate(settings)
    return settings


def _token_or_missing(env: Mapping[str, str], name: str, prefix: str, what: str, required: bool) -> Secret:
    try:
        return _token(env, name, prefix, what)
    except ConfigError as exc:
        if required:
            raise
        return MissingSecret(str(exc))


def _store_url(env: Mapping[str, str]) -> str | None:
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
    if not url.startswith(("sqlite:///", "memory://", "redis://", "rediss://")):
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


def check_app_spec(spec: str) -> None:
    """BUIDL_APP as `package.module:attribute`; a relative or empty module cannot be imported by name."""
    if _APP_SPEC.fullmatch(spec):
        return
    module, sep, attr = spec.partition(":")
    if module.startswith("."):
        raise ConfigError(f"BUIDL_APP names a relative module ({module[:40]!r}): give the full dotted "
                          f"path, like my_package{module}:{attr or 'app'}")
    shown = spec[:60].encode("unicode_escape").decode()
    if not sep or not module or not attr:
        raise ConfigError(f"BUIDL_APP must look like module:attribute (e.g. my_bot:app), got {shown!r}")
    raise ConfigError(f"BUIDL_APP must be a dotted module path and an attribute name made of letters, "
                      f"digits and _ (e.g. my_bot.app:app), got {shown!r}")


def validate(settings: Settings) -> None:
    if not 1 <= settings.connections <= MAX_CONNECTIONS_PER_PROCESS:
        raise ConfigError(
            f"BUIDL_CONNECTIONS must be 1..{MAX_CONNECTIONS_PER_PROCESS} (Slack allows {SLACK_MAX_CONNECTIONS} "
            f"per app, and each process keeps one spare for a refresh), got {settings.connections}"
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
    if settings.http_port is not None and not 0 <= settings.http_port <= 65535:
        raise ConfigError(f"BUIDL_HTTP_PORT must be a TCP port (1..65535, or 0 for any free one), "
                          f"got {settings.http_port}")
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
    if settings.store_url:
        check_store_url(settings.store_url)
    check_app_spec(settings.app_spec)
    if settings.log_level not in LOG_LEVELS:
        raise ConfigError(f"BUIDL_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {settings.log_level[:20]!r}")
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError(f"BUIDL_LOG_FORMAT must be logfmt or json, got {settings.log_format[:20]!r}")
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
