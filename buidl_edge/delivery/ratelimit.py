"""Token buckets for chat.postMessage and the stream methods, as pure functions over plain records.

The buckets live in the shared store (one row per channel, one for the
workspace) so that every worker process spends the same tokens. The store
loads them inside the transaction that claims outbox rows, calls `plan`, and
writes back what `plan` changed: one transaction per send decision, so two
processes can never spend the same token. Nothing here does I/O or imports
anything of ours.

Why a headroom: Slack (and the simulator) run their own bucket on the time a
request *arrives*; ours runs on the time we decide to send. Requests take a
few milliseconds more or less each, so with both buckets drained to the last
token the next request could land a hair early and get a 429 that costs a
whole `Retry-After` second. We therefore wait until the bucket holds
`1 + rate * jitter_s` tokens (never more than the burst) before spending one.
That only delays the *start* of a burst; the sustained rate stays exactly
`rate`, and Slack's bucket keeps `jitter_s` seconds of slack behind ours.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

GLOBAL_KEY = "*"
# Arrival jitter our bucket absorbs before Slack's bucket would see us early (see above).
DEFAULT_JITTER_S = 0.1


@dataclass(frozen=True)
class PostLimits:
    """Per-channel rate and burst, plus an optional workspace-wide cap (0 = none)."""

    rate: float = 1.0
    burst: float = 3.0
    global_rate: float = 0.0
    global_burst: float = 0.0  # 0: one second's worth of global_rate (at least 1)
    jitter_s: float = DEFAULT_JITTER_S

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"post rate must be > 0 and burst >= 1 (got {self.rate}, {self.burst})")
        if self.global_rate < 0 or self.global_burst < 0 or self.jitter_s < 0:
            raise ValueError("global rate, global burst and jitter must not be negative")

    @property
    def effective_global_burst(self) -> float:
        return self.global_burst or max(1.0, self.global_rate)


def channel_key(channel: str) -> str:
    return f"c:{channel}"


@dataclass(frozen=True)
class Bucket:
    """Tokens at `updated` (wall clock, shared by processes); no sends before `paused_until`."""

    tokens: float
    updated: float
    paused_until: float = 0.0


def level(bucket: Bucket | None, now: float, rate: float, burst: float) -> float:
    """Tokens held at `now`; a bucket never seen is full."""
    if bucket is None:
        return burst
    return min(burst, bucket.tokens + max(0.0, now - bucket.updated) * rate)


def need(rate: float, burst: float, jitter_s: float) -> float:
    """Tokens the bucket must hold before one is spent (see the module docstring)."""
    return max(1.0, min(burst, 1.0 + rate * jitter_s))


def ready_at(bucket: Bucket | None, now: float, rate: float, burst: float, jitter_s: float) -> float:
    """Earliest time (>= now) at which this bucket lets one message through."""
    start = max(now, bucket.paused_until if bucket else 0.0)
    have = level(bucket, start, rate, burst)
    want = need(rate, burst, jitter_s)
    return start if have >= want else start + (want - have) / rate


def spend(bucket: Bucket | None, now: float, rate: float, burst: float) -> Bucket:
    return Bucket(level(bucket, now, rate, burst) - 1.0, now, bucket.paused_until if bucket else 0.0)


def pause(bucket: Bucket | None, now: float, until: float) -> Bucket:
    """After a 429: empty the bucket now and send nothing before `until` (Retry-After)."""
    return Bucket(0.0, now, max(until, bucket.paused_until if bucket else 0.0))


class Head(Protocol):
    """The oldest unsent row of a channel, as `plan` needs it."""

    @property
    def channel(self) -> str: ...

    @property
    def next_attempt_at(self) -> float: ...


H = TypeVar("H", bound=Head)


@dataclass
class Plan:
    chosen: list  # the heads to send now, in the order given
    changed: dict[str, Bucket]  # buckets to write back
    next_at: float | None  # earliest time a head not chosen may go; None: nothing waits on time


def plan(heads: Sequence[H], buckets: dict[str, Bucket], now: float, limits: PostLimits,
         limit: int) -> Plan:
    """Pick up to `limit` channel heads (oldest first) that their bucket and the global one allow.

    `buckets` holds what the store has for the heads' channel keys and GLOBAL_KEY
    (missing keys are full buckets). A global bucket without a global rate still
    carries a workspace-wide pause after a global 429.
    """
    state = dict(buckets)
    changed: dict[str, Bucket] = {}
    chosen: list[H] = []
    next_at: float | None = None

    def later(at: float) -> None:
        nonlocal next_at
        next_at = at if next_at is None else min(next_at, at)

    for head in heads:
        if len(chosen) >= limit:
            later(now)
            break
        key = channel_key(head.channel)
        at = max(head.next_attempt_at,
                 ready_at(state.get(key), now, limits.rate, limits.burst, limits.jitter_s))
        glob = state.get(GLOBAL_KEY)
        if limits.global_rate > 0:
            at = max(at, ready_at(glob, now, limits.global_rate, limits.effective_global_burst, 0.0))
        elif glob is not None:
            at = max(at, glob.paused_until)
        if at > now:
            later(at)
            continue
        changed[key] = state[key] = spend(state.get(key), now, limits.rate, limits.burst)
        if limits.global_rate > 0:
            changed[GLOBAL_KEY] = state[GLOBAL_KEY] = spend(glob, now, limits.global_rate,
                                                            limits.effective_global_burst)
        chosen.append(head)
    return Plan(chosen, changed, next_at)


# -- streamed answers: one bucket per method for the whole app (chat.appendStream is Tier 4,
# chat.startStream and chat.stopStream Tier 2), spent one call at a time.

START_STREAM, APPEND_STREAM, STOP_STREAM = "chat.startStream", "chat.appendStream", "chat.stopStream"
STREAM_METHODS = (START_STREAM, APPEND_STREAM, STOP_STREAM)


@dataclass(frozen=True)
class StreamLimits:
    """Calls a minute and burst of each stream method, for the app across every process."""

    append_per_minute: float = 100.0
    append_burst: float = 5.0
    start_stop_per_minute: float = 20.0
    start_stop_burst: float = 3.0
    jitter_s: float = DEFAULT_JITTER_S

    def __post_init__(self) -> None:
        if min(self.append_per_minute, self.start_stop_per_minute) <= 0 or \
                min(self.append_burst, self.start_stop_burst) < 1:
            raise ValueError("stream rates must be > 0 and bursts >= 1")

    def of(self, method: str) -> tuple[float, float]:
        """(tokens a second, burst) of `method`'s bucket."""
        if method == APPEND_STREAM:
            return self.append_per_minute / 60.0, self.append_burst
        return self.start_stop_per_minute / 60.0, self.start_stop_burst


def method_key(method: str) -> str:
    return f"m:{method}"


def take_calls(methods: Sequence[str], buckets: dict[str, Bucket], now: float,
               limits: StreamLimits) -> tuple[list[bool], dict[str, Bucket], float | None]:
    """Which of the wanted calls (in order) their method's bucket allows now; the buckets to write
    back; the earliest time a call refused may go. `buckets` holds the store's `method_key`s."""
    state = dict(buckets)
    changed: dict[str, Bucket] = {}
    granted: list[bool] = []
    next_at: float | None = None
    for method in methods:
        key = method_key(method)
        rate, burst = limits.of(method)
        at = ready_at(state.get(key), now, rate, burst, limits.jitter_s)
        if at > now:
            granted.append(False)
            next_at = at if next_at is None else min(next_at, at)
            continue
        changed[key] = state[key] = spend(state.get(key), now, rate, burst)
        granted.append(True)
    return granted, changed, next_at
