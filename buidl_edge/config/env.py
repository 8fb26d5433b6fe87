"""Raw values from the environment: the one error a bad setting raises, and the parsers of
numbers and on/off flags that every part of the configuration shares."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TypeVar

Number = TypeVar("Number", int, float)

# What turns a flag on (WEBSOCKET_DEBUG, SENTRY_INCLUDE_LOCALS); anything else is off.
TRUTHY = frozenset({"1", "true", "yes", "on"})


class ConfigError(ValueError):
    """A setting that cannot work. The message is one line and safe to print."""


def environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    """`env`, or the process environment when none is given."""
    return os.environ if env is None else env


def flag(env: Mapping[str, str], name: str) -> bool:
    return (env.get(name) or "").strip().lower() in TRUTHY


def number(env: Mapping[str, str], name: str, parse: type[Number]) -> Number | None:
    """`name` parsed as a finite number, None when unset or empty; a ConfigError otherwise."""
    raw = env.get(name)
    if raw in (None, ""):
        return None
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw[:20]!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw[:20]!r}")
    return value


def at_least(env: Mapping[str, str], name: str, default: Number, parse: type[Number],
             minimum: float) -> Number:
    """`number`, with a default and a floor."""
    value = number(env, name, parse)
    if value is None:
        return default
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {value}")
    return value
