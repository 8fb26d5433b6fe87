"""The store interface every backend (memory, SQLite, later Redis) implements."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, Sequence

from buidl_edge.protocol import Envelope
from buidl_edge.ratelimit import PostLimits

# Slack retries for about 5 minutes; dedup keys must outlive that with room to spare.
MIN_RETENTION_S = 600.0
DEFAULT_RETENTION_S = 3600.0


@dataclass(frozen=True)
class Reply:
    """One outbound message a handler asked for."""

    channel: str
    text: str | None = None
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None


OUTBOX_STATES = ("pending", "sending", "sent", "failed")


@dataclass(frozen=True)
class OutboxRow:
    """One queued message. `attempts` counts posts tried (429s excluded); `error` is the last one."""

    id: int
    channel: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    idempotency_key: str
    state: str
    attempts: int
    next_attempt_at: float
    created_at: float
    envelope_id: str = ""
    error: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    sent_at: float | None = None
    ts: str | None = None
    rate_limited: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Claimed:
    """What `outbox_claim` handed to one sender: rows now `sending` under its lease."""

    rows: list[OutboxRow]
    next_at: float | None  # earliest time a row left behind may be sendable; None: none waits on time


@dataclass(frozen=True)
class PostOutcome:
    """How one post ended, for `outbox_settle`.

    sent: done (`ts` from Slack). retry: back to pending, not before `retry_at`.
    failed: for good, `error` recorded. ratelimited: back to pending without
    counting the attempt, and the `pause` bucket ("channel" or "global") sends
    nothing before `retry_at`.
    """

    kind: Literal["sent", "retry", "failed", "ratelimited"]
    error: str | None = None
    ts: str | None = None
    retry_at: float = 0.0
    pause: Literal["channel", "global"] = "channel"


class EdgeStore(Protocol):
    def claim(self, envelope: Envelope, owner: str) -> bool:
        """Record the envelope and its dedup keys atomically; True when it is new."""

    def claim_key(self, key: str) -> bool:
        """Claim one free-form dedup key (for handlers' own once-only logic)."""

    def finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None = None) -> None:
        """Mark the envelope handled, recording the replies with it."""

    def renew(self, owner: str) -> int:
        """Extend the leases of the envelopes this owner is still handling."""

    def sweep(self, owner: str, limit: int = 100) -> list[Envelope]:
        """Take over envelopes whose owner died or whose lease ran out; return them to re-run."""

    def heartbeat(self, owner: str, stats: dict[str, Any]) -> None:
        """Publish this worker's stats for `status`."""

    def forget_worker(self, owner: str) -> None:
        """Drop this worker's stats: it stopped, `status` must not show it alive."""

    def prune(self, retention_s: float = DEFAULT_RETENTION_S) -> int:
        """Forget handled envelopes and keys older than the retention; return rows dropped."""

    # -- outbox: see buidl_edge/outbox.py for the sender that drives these

    durable: bool  # False: rows die with the process (the sender flushes them before exit)

    def outbox_enqueue(self, replies: Sequence[Reply], envelope_id: str = "",
                       keys: Sequence[str] | None = None) -> list[int]:
        """Queue replies (a key seen before is not queued again); return their row ids."""

    def outbox_claim(self, owner: str, limit: int, limits: PostLimits, lease_s: float) -> Claimed:
        """In one transaction: take each channel's oldest unsent row if it is due and the
        channel's (and the global) bucket has a token; mark it sending under `owner`'s lease."""

    def outbox_settle(self, row_id: int, owner: str, outcome: PostOutcome) -> OutboxRow | None:
        """Record how a post ended; None when the row is no longer ours (lease lost)."""

    def outbox_renew(self, owner: str, lease_s: float) -> int:
        """Extend the lease of this owner's rows in flight."""

    def outbox_recover(self, owner: str) -> int:
        """Hand back to pending the rows in flight whose lease ran out or whose owner died."""

    def outbox_stats(self) -> dict[str, Any]:
        """Rows per state, depth, oldest pending age, 429s seen, paused buckets."""

    def outbox_list(self, state: str | None = None, channel: str | None = None,
                    limit: int = 50) -> list[OutboxRow]:
        """Newest rows first, optionally of one state or channel."""

    def outbox_row(self, row_id: int) -> OutboxRow | None: ...

    def outbox_retry(self, row_id: int) -> bool:
        """A failed row back to pending with a fresh attempt count."""

    def outbox_purge(self, state: str = "failed") -> int:
        """Delete every row in `state` (failed, or sent); return how many."""

    # -- connection slots: Slack allows 10 Socket Mode connections per app, across every dyno.
    # A holder is `owner/slot` (see store/slots.py); a lease lapses after `ttl` seconds unrenewed.

    def acquire_slot(self, holder: str, limit: int, ttl: float) -> bool:
        """Lease a slot to `holder` if fewer than `limit` are held (True if it holds one already)."""

    def renew_slots(self, holders: Sequence[str], limit: int, ttl: float) -> list[str]:
        """Extend these holders' leases, re-taking lapsed ones while there is room; return those lost."""

    def release_slot(self, holder: str) -> None: ...

    def close(self) -> None: ...
