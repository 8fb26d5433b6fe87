"""Runtime knobs of the fake Slack, changed through `POST /_sim/config`.

Defaults follow real Slack where that is cheap (3 s ack deadline, 10
connections, 1 msg/s per channel); retry delays are seconds instead of
Slack's minutes so that tests stay fast.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Knobs:
    ack_deadline: float = 3.0
    max_retries: int = 3
    retry_delays: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0])
    max_connections: int = 10
    connection_time: int = 3600
    ping_interval: float = 10.0
    warning_close_delay: float = 10.0
    refresh_close_delay: float = 1.0
    post_rate: float = 1.0
    post_burst: int = 3
    post_errors: dict[str, str] = field(default_factory=dict)
    open_error: str | None = None
    # {"count": N, "retry_after": S}; `count` goes down as 429s are served.
    open_ratelimit: dict[str, Any] | None = None
    auth_error: str | None = None
    # Slack's answer to conversations.history/.replies, e.g. "missing_scope"; None reads the channel.
    history_error: str | None = None
    ticket_ttl: float = 60.0
    # Any Web API method answering 429: {"reactions.add": {"count": N, "retry_after": S}};
    # `count` goes down as 429s are served.
    method_ratelimits: dict[str, dict[str, int]] = field(default_factory=dict)
    # response_url: Slack takes 5 posts within 30 minutes; the next N posts answer HTTP 500.
    response_url_uses: int = 5
    response_url_ttl: float = 1800.0
    respond_failures: int = 0
    # Streamed messages (streams.py): Slack ends a stream by itself after about 5 minutes; appendStream
    # is Tier 4 (about 100 a minute), startStream and stopStream Tier 2 (about 20 a minute), each with
    # a short burst.
    stream_expiry: float = 300.0
    stream_append_per_minute: int = 100
    stream_append_burst: int = 10
    stream_start_stop_per_minute: int = 20
    stream_start_stop_burst: int = 5
    # A trigger_id opens one view within 3 s, as in Slack.
    trigger_ttl: float = 3.0

    def update(self, changes: dict[str, Any]) -> None:
        """Apply all changes or none; raises ValueError naming the bad knob."""
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in _KINDS:
                raise ValueError(f"unknown knob: {name}")
            checked[name] = _check(name, _KINDS[name], value)
        for name, value in checked.items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_KINDS: dict[str, str] = {f.name: str(f.type) for f in fields(Knobs)}


def _check(name: str, kind: str, value: Any) -> Any:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is None and "None" in kind:
        return None
    if kind == "float" and is_number and value >= 0:
        return float(value)
    if kind == "int" and is_number and value >= 0 and int(value) == value:
        return int(value)
    if kind.startswith("list[float]") and isinstance(value, list) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        return [float(v) for v in value]
    if kind.startswith("dict[str, str]") and isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return dict(value)
    if kind.startswith("str") and isinstance(value, str) and value:
        return value
    if kind.startswith("dict[str, dict[str, int]]") and isinstance(value, dict):
        return {method: _check_ratelimit(name, limit) for method, limit in value.items()}
    if kind.startswith("dict[str, Any]") and isinstance(value, dict):
        count, retry_after = value.get("count"), value.get("retry_after", 1)
        if isinstance(count, int) and count >= 0 and isinstance(retry_after, int) and retry_after >= 0:
            return {"count": count, "retry_after": retry_after}
    raise ValueError(f"bad value for knob {name}: {value!r}")


def _check_ratelimit(name: str, value: Any) -> dict[str, int]:
    """One method's {"count": N, "retry_after": S}, whole numbers >= 0."""
    if isinstance(value, dict):
        count, retry_after = value.get("count"), value.get("retry_after", 1)
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (count, retry_after)):
            return {"count": count, "retry_after": retry_after}
    raise ValueError(f"bad value for knob {name}: {value!r}")
