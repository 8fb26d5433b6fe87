"""The reply sender's settings (BUIDL_POST_*), and the stream sender's budgets (BUIDL_STREAM_*).
Read by each worker at start, and by `check`, not by `load_settings`: a bad value stops the
workers with their reason, which is how `run` reports it (tests/test_run_stack.py)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from buidl_edge.config.env import ConfigError, at_least, environ
from buidl_edge.delivery.ratelimit import PostLimits, StreamLimits

RATELIMIT_SCOPES = ("channel", "global")


@dataclass(frozen=True)
class OutboxConfig:
    limits: PostLimits = field(default_factory=PostLimits)
    max_attempts: int = 5
    concurrency: int = 32
    ratelimit_scope: str = "channel"  # where a 429 applies: "channel" or "global"
    # How soon rows queued by another process are noticed while posts go on; an idle outbox
    # sleeps until a wake, and the worker's chores look for such rows every 2 s (delivery/loop.py).
    poll_interval: float = 0.25
    stream_limits: StreamLimits = field(default_factory=StreamLimits)  # ctx.stream's budgets

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OutboxConfig:
        """BUIDL_POST_RATE, _BURST, _GLOBAL_RATE, _GLOBAL_BURST, _MAX_ATTEMPTS, _CONCURRENCY, _429_SCOPE;
        and the stream methods' budgets (`stream_limits_from_env`)."""
        env = environ(env)
        rate = at_least(env, "BUIDL_POST_RATE", 1.0, float, 0.0)
        if rate <= 0:
            raise ConfigError("BUIDL_POST_RATE must be above 0 (messages per second per channel)")
        scope = (env.get("BUIDL_POST_429_SCOPE") or "channel").strip().lower()
        if scope not in RATELIMIT_SCOPES:
            raise ConfigError(f"BUIDL_POST_429_SCOPE must be channel or global, got {scope[:20]!r}")
        limits = PostLimits(rate=rate, burst=at_least(env, "BUIDL_POST_BURST", 3.0, float, 1.0),
                            global_rate=at_least(env, "BUIDL_POST_GLOBAL_RATE", 0.0, float, 0.0),
                            global_burst=at_least(env, "BUIDL_POST_GLOBAL_BURST", 0.0, float, 0.0))
        return cls(limits=limits, max_attempts=at_least(env, "BUIDL_POST_MAX_ATTEMPTS", 5, int, 1),
                   concurrency=at_least(env, "BUIDL_POST_CONCURRENCY", 32, int, 1), ratelimit_scope=scope,
                   stream_limits=stream_limits_from_env(env))


def stream_limits_from_env(env: Mapping[str, str] | None = None) -> StreamLimits:
    """BUIDL_STREAM_APPEND_RATE and _BURST (chat.appendStream, calls a minute for the app),
    BUIDL_STREAM_START_STOP_RATE and _BURST (chat.startStream and chat.stopStream, each)."""
    env = environ(env)
    defaults = StreamLimits()
    limits = {name: at_least(env, f"BUIDL_STREAM_{name.upper()}", getattr(defaults, field_name), float, minimum)
              for name, field_name, minimum in (("append_rate", "append_per_minute", 0.0),
                                                ("append_burst", "append_burst", 1.0),
                                                ("start_stop_rate", "start_stop_per_minute", 0.0),
                                                ("start_stop_burst", "start_stop_burst", 1.0))}
    if limits["append_rate"] <= 0 or limits["start_stop_rate"] <= 0:
        raise ConfigError("BUIDL_STREAM_APPEND_RATE and BUIDL_STREAM_START_STOP_RATE must be above 0 (calls a minute)")
    return StreamLimits(limits["append_rate"], limits["append_burst"], limits["start_stop_rate"],
                        limits["start_stop_burst"])
