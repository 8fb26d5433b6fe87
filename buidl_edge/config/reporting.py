"""The settings of what leaves a process about itself: the log level and format, the name each
log line carries, and Sentry's options.

None of these may stop a process: a bad value falls back to its default (Sentry's say so in a
warning, which `sentry.init_sentry` logs). The strict check of the log settings is
`load_settings`'s, for the commands that load settings.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from buidl_edge.config.env import environ, flag

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("logfmt", "json")
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
# One event per window carries the count of bad frames, however many arrive.
PROTOCOL_WINDOW_S = 60.0


def log_level(raw: str | None) -> str:
    """BUIDL_LOG_LEVEL's value, upper-cased, its aliases resolved (INFO when unset)."""
    level = (raw or "INFO").strip().upper()
    return _LEVEL_ALIASES.get(level, level)


def log_format(raw: str | None) -> str:
    return (raw or "logfmt").strip().lower()


def log_options(env: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(level, JSON lines?) for a process that logs without settings; a bad value is the default."""
    env = environ(env)
    level = log_level(env.get("BUIDL_LOG_LEVEL"))
    return (level if level in LOG_LEVELS else "INFO"), log_format(env.get("BUIDL_LOG_FORMAT")) == "json"


def process_name(env: Mapping[str, str] | None = None) -> str:
    """Heroku's dyno and supervisord's program name (web.1/worker_00), else the pid."""
    env = environ(env)
    parts = [env.get("DYNO", ""), env.get("SUPERVISOR_PROCESS_NAME", "")]
    return "/".join(p for p in parts if p) or f"pid{os.getpid()}"


class SentryOptions(NamedTuple):
    """A NamedTuple, not a dataclass: this module is all of config that supervisord's process
    loads (for its log lines), and dataclasses would bring it inspect and ast, 0.7 MB for good."""

    dsn: str
    environment: str | None
    release: str | None
    sample_rate: float
    include_local_variables: bool
    protocol_window_s: float = PROTOCOL_WINDOW_S
    warnings: tuple[str, ...] = ()  # values replaced by their defaults, to log once Sentry is on


def sentry_options(env: Mapping[str, str] | None = None) -> SentryOptions | None:
    """SENTRY_* (and Heroku's commit variables for the release); None when SENTRY_DSN is unset."""
    env = environ(env)
    dsn = (env.get("SENTRY_DSN") or "").strip()
    if not dsn:
        return None
    warnings: list[str] = []
    rate = _positive(env.get("SENTRY_SAMPLE_RATE"), 1.0)
    if rate is None or rate > 1.0:
        warnings.append("SENTRY_SAMPLE_RATE must be a number from 0 to 1; using 1.0")
        rate = 1.0
    release = (env.get("SENTRY_RELEASE") or env.get("HEROKU_SLUG_COMMIT")
               or env.get("SOURCE_VERSION") or "").strip() or None
    return SentryOptions(
        dsn=dsn,
        environment=(env.get("SENTRY_ENVIRONMENT") or "").strip() or None,
        release=release,
        sample_rate=rate,
        include_local_variables=flag(env, "SENTRY_INCLUDE_LOCALS"),
        protocol_window_s=_positive(env.get("BUIDL_SENTRY_PROTOCOL_WINDOW_S"), PROTOCOL_WINDOW_S,
                                    allow_zero=False) or PROTOCOL_WINDOW_S,
        warnings=tuple(warnings),
    )


def _positive(raw: str | None, default: float, allow_zero: bool = True) -> float | None:
    """`raw` as a number of at least 0 (above 0 without `allow_zero`), `default` when unset,
    None when it is not such a number."""
    raw = (raw or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if (value >= 0 if allow_zero else value > 0) else None
