"""`Settings`: everything a command or a worker reads from the environment, validated once
by `load_settings`, with one-line errors that never echo a token."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from buidl_edge.config.env import ConfigError, environ, flag, number
from buidl_edge.config.relay import check_relay_url, load_signing_secret, private_hosts
from buidl_edge.config.reporting import LOG_FORMATS, LOG_LEVELS, log_format, log_level
from buidl_edge.config.secret import MissingSecret, Secret, buidl_home, load_token
from buidl_edge.config.urls import absolute, check_store_url, check_transport_url, mask_url_password, store_url

DEFAULT_API_URL = "https://slack.com/api/"
DEFAULT_APP = "buidl_edge.api.bot:app"
# Slack retries for about 5 minutes; dedup keys must outlive that with room to spare.
MIN_RETENTION_S = 600.0
# How long an ack may wait for the shared store to decide a claim before local dedup decides it:
# well inside Slack's 3 s, with room for the ack's own write and a handler's payload.
DEFAULT_CLAIM_WAIT_S = 1.0
MAX_CLAIM_WAIT_S = 2.0
# How long a handler's finish may wait to ride a later commit (issue 26's bound), and its ceiling:
# the at-least-once window of what a handler did itself (ctx.client) widens by this much.
DEFAULT_FINISH_DELAY_S = 0.025
MAX_FINISH_DELAY_MS = 100
# Slack's ceiling on open Socket Mode connections per app.
SLACK_MAX_CONNECTIONS = 10
# The sizing rule: each process holds its connections plus one spare for a refresh overlap
# (the new link opens before the old one closes), so processes x (connections + 1) <= 10.
REFRESH_SPARE = 1
MAX_CONNECTIONS_PER_PROCESS = SLACK_MAX_CONNECTIONS - REFRESH_SPARE
MAX_PROCESSES = SLACK_MAX_CONNECTIONS // (1 + REFRESH_SPARE)
# module:attribute with an absolute, dotted module path (what importlib can import by name).
_APP_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """$BUIDL_HOME/state (~/.buidl/state): the same for every command, wherever it is run."""
    return absolute(buidl_home(env) / "state")


def state_dir_from_env(env: Mapping[str, str] | None = None) -> Path:
    """BUIDL_STATE_DIR (absolute from here on), else the default: for a worker that cannot load
    its settings but must still leave its reason where `run` reads it."""
    env = environ(env)
    return absolute(env["BUIDL_STATE_DIR"]) if env.get("BUIDL_STATE_DIR") else default_state_dir(env)


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
    claim_wait_s: float = DEFAULT_CLAIM_WAIT_S
    finish_delay_ms: float = DEFAULT_FINISH_DELAY_S * 1000
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
    # Relay mode (buidl_edge/relay/): every envelope goes, signed as Slack signs it, to the HTTP-mode
    # app at relay_url instead of to an EdgeApp. Off when relay_url is None.
    relay_url: str | None = None
    signing_secret: Secret | None = None
    relay_private_hosts: tuple[str, ...] = ()
    relay_max_attempts: int = 25
    relay_backoff_base: float = 1.0
    relay_backoff_cap: float = 60.0
    relay_timeout: float = 10.0
    relay_concurrency: int = 16

    @property
    def relay(self) -> bool:
        return self.relay_url is not None

    @property
    def database_path(self) -> Path:
        """BUIDL_DB, else edge.sqlite3 in the state directory."""
        return self.db_path or self.state_dir / "edge.sqlite3"

    def token_problems(self) -> dict[str, str]:
        """field -> why that token cannot be used (only with `require_tokens=False`)."""
        return {name: secret.problem for name in ("app_token", "bot_token", "signing_secret")
                if (secret := getattr(self, name)) is not None and secret.problem}

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
        for name in ("api_url", "store_url", "relay_url"):  # a Redis URL carries its password, others may too
            if out[name]:
                out[name] = mask_url_password(out[name])
        return out


# env var -> (field, parser)
_NUMBERS: dict[str, tuple[str, type]] = {
    "BUIDL_CONNECTIONS": ("connections", int),
    "BUIDL_PROCESSES": ("processes", int),
    "BUIDL_MAX_APP_CONNECTIONS": ("max_app_connections", int),
    "BUIDL_ACK_DEADLINE": ("ack_payload_deadline", float),
    "BUIDL_CLAIM_WAIT_S": ("claim_wait_s", float),
    "BUIDL_FINISH_DELAY_MS": ("finish_delay_ms", float),
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
    "BUIDL_RELAY_MAX_ATTEMPTS": ("relay_max_attempts", int),
    "BUIDL_RELAY_BACKOFF_BASE": ("relay_backoff_base", float),
    "BUIDL_RELAY_BACKOFF_CAP": ("relay_backoff_cap", float),
    "BUIDL_RELAY_TIMEOUT": ("relay_timeout", float),
    "BUIDL_RELAY_CONCURRENCY": ("relay_concurrency", int),
}


def load_settings(env: Mapping[str, str] | None = None, require_tokens: bool = True,
                  **overrides: Any) -> Settings:
    """Build Settings from `env` (default os.environ); keyword overrides win (CLI flags).

    `require_tokens=False` is for commands that never call Slack: a missing or malformed token
    loads as a MissingSecret carrying its reason instead of failing the whole load.
    """
    env = environ(env)
    values: dict[str, Any] = {
        "app_token": _token_or_missing(env, "app", require_tokens),
        "bot_token": _token_or_missing(env, "bot", require_tokens),
        "bot_user_id": env.get("BOT_USER_ID") or None,
        # Methods are appended to it: https://slack.com/api and https://slack.com/api/ are the same base.
        "api_url": (env.get("SLACK_API_URL") or DEFAULT_API_URL).rstrip("/") + "/",
        "app_spec": (env.get("BUIDL_APP") or "").strip() or DEFAULT_APP,
        "websocket_debug": flag(env, "WEBSOCKET_DEBUG"),
        "log_level": log_level(env.get("BUIDL_LOG_LEVEL")),
        "log_format": log_format(env.get("BUIDL_LOG_FORMAT")),
        "state_dir": state_dir_from_env(env),
        "store_url": store_url(env),
        "db_path": absolute(env["BUIDL_DB"]) if env.get("BUIDL_DB") else None,
        "http_host": (env.get("BUIDL_HTTP_HOST") or "").strip() or "0.0.0.0",
        "relay_url": (env.get("BUIDL_RELAY_URL") or "").strip() or None,
        "relay_private_hosts": private_hosts(env.get("BUIDL_RELAY_PRIVATE_HOSTS")),
    }
    for name, (attr, parse) in _NUMBERS.items():
        value = number(env, name, parse)
        if value is not None:
            values[attr] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("relay_url"):  # the secret matters (and is required) only in relay mode
        values["signing_secret"] = load_signing_secret(env, require_tokens)
    settings = Settings(**values)
    validate(settings)
    return settings


def _token_or_missing(env: Mapping[str, str], kind: str, required: bool) -> Secret:
    try:
        return load_token(kind, env)
    except ConfigError as exc:
        if required:
            raise
        return MissingSecret(str(exc))


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
    if not 0 < settings.claim_wait_s <= MAX_CLAIM_WAIT_S:
        raise ConfigError(f"BUIDL_CLAIM_WAIT_S must be more than 0 and at most {MAX_CLAIM_WAIT_S:g} (seconds an ack "
                          f"may wait for the store, well inside Slack's 3 s), got {settings.claim_wait_s:g}")
    if not 0 <= settings.finish_delay_ms <= MAX_FINISH_DELAY_MS:
        raise ConfigError(f"BUIDL_FINISH_DELAY_MS must be 0 (write at once) to {MAX_FINISH_DELAY_MS} (ms a handler's "
                          f"finish may wait to ride a later commit), got {settings.finish_delay_ms:g}")
    if settings.stale_timeout <= settings.ping_interval:
        raise ConfigError("BUIDL_STALE_TIMEOUT must be longer than BUIDL_PING_INTERVAL")
    if settings.retention_s < MIN_RETENTION_S:
        raise ConfigError(f"BUIDL_RETENTION_S must be at least {MIN_RETENTION_S:.0f}: Slack retries for about "
                          "5 minutes")
    if settings.store_url:
        check_store_url(settings.store_url)
    check_app_spec(settings.app_spec)
    if settings.log_level not in LOG_LEVELS:
        raise ConfigError(f"BUIDL_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {settings.log_level[:20]!r}")
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError(f"BUIDL_LOG_FORMAT must be logfmt or json, got {settings.log_format[:20]!r}")
    check_transport_url(settings.api_url, "https", "http", "SLACK_API_URL")
    if settings.relay_url is not None:
        check_relay_settings(settings)


def check_relay_settings(settings: Settings) -> None:
    check_relay_url(settings.relay_url or "", settings.relay_private_hosts)
    for env_name, attr in (("BUIDL_RELAY_MAX_ATTEMPTS", "relay_max_attempts"),
                           ("BUIDL_RELAY_CONCURRENCY", "relay_concurrency")):
        if getattr(settings, attr) < 1:
            raise ConfigError(f"{env_name} must be at least 1, got {getattr(settings, attr)}")
    for env_name, attr in (("BUIDL_RELAY_BACKOFF_BASE", "relay_backoff_base"),
                           ("BUIDL_RELAY_BACKOFF_CAP", "relay_backoff_cap"), ("BUIDL_RELAY_TIMEOUT", "relay_timeout")):
        if getattr(settings, attr) <= 0:
            raise ConfigError(f"{env_name} must be positive, got {getattr(settings, attr)}")
