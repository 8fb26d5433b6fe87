"""What every store backend (memory, SQLite, Redis) holds, and the protocols callers use.

`InboxStore` is what the dispatcher and the worker's chores need, `OutboxStore` the sender's,
`SlotStore` the connection gate's, `RelayStore` relay mode's delivery loop, `StreamStore` the
streamed answers', `AdminStore` what
`status`, `check`, the admin commands and the dyno's health endpoint read. Every backend
implements all of them; `EdgeStore` is the whole.
"""
from __future__ import annotations

import json
import os
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Generic, Literal, Protocol, TypeVar

from buidl_edge.config.settings import MIN_RETENTION_S
from buidl_edge.delivery.ratelimit import PostLimits, StreamLimits
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.errors import BadCall, StoreError
from buidl_edge.store.owners import is_dead_local

DEFAULT_RETENTION_S = 3600.0


@dataclass(frozen=True)
class Reply:
    """One outbound message a handler asked for."""

    channel: str
    text: str | None = None
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None


OUTBOX_STATES = ("pending", "sending", "sent", "failed")
PURGEABLE_STATES = ("failed", "sent")
# The error of a reply an operator cancelled (`outbox cancel`): failed, and never sent.
CANCELLED = "cancelled by an operator"


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


RowT = TypeVar("RowT")


@dataclass(frozen=True)
class Claimed(Generic[RowT]):
    """What a claim (`outbox_claim`, `relay_claim`) handed to one deliverer: rows now in flight
    under its lease (`sending` outbox rows, `processing` relayed envelopes)."""

    rows: list[RowT]
    next_at: float | None  # earliest time a row left behind may be due; None: none waits on time


@dataclass(frozen=True)
class DeliveryOutcome:
    """How one delivery ended (a post, a relayed request), for `outbox_settle` and `relay_settle`.

    sent: done (`ts`: Slack's, for a post). retry: back to pending, not before `retry_at`.
    failed: for good, `error` recorded. ratelimited: back to pending not before `retry_at`,
    the attempt not counted; for a post, its `pause` bucket ("channel" or "global") sends
    nothing before then either.
    """

    kind: Literal["sent", "retry", "failed", "ratelimited"]
    error: str | None = None
    retry_at: float = 0.0
    ts: str | None = None
    pause: Literal["channel", "global"] = "channel"


class Lifespan(Enum):
    """How long a store's rows last: the one answer to "is what waits here lost if this process,
    or this dyno, goes?" (the drain, `send`, the drain's warnings ask it)."""

    PROCESS = "process"  # memory: rows die with the worker process
    DYNO = "dyno"  # a file on this dyno's disk: a start on that disk finds them, a fresh dyno does not
    BEYOND_THE_DYNO = "beyond the dyno"  # a server (Redis): the workers of the other dynos take them

    @property
    def outlives_the_process(self) -> bool:
        return self is not Lifespan.PROCESS

    @property
    def outlives_the_dyno(self) -> bool:
        return self is Lifespan.BEYOND_THE_DYNO


# -- rules every backend applies the same way


@dataclass(frozen=True)
class Swept(Envelope):
    """An envelope a sweep took over, with the owner it was taken from ('' when an operator handed
    it back with `inbox retry`): what its re-run's log line says."""

    taken_from: str = field(default="", compare=False)

    @classmethod
    def of(cls, envelope: Envelope, taken_from: str) -> Swept:
        return cls(**{f.name: getattr(envelope, f.name) for f in fields(Envelope)}, taken_from=taken_from)


def why_taken_over(envelope: Envelope, host: str) -> str:
    """Why the sweep took `envelope` over, as far as it can tell on `host`."""
    previous = envelope.taken_from if isinstance(envelope, Swept) else None
    if previous is None:
        return "a sweep took it over"
    if not previous:
        return "an operator retried it (`buidl-edge inbox retry`)"
    if is_dead_local(previous, host):
        return f"its worker {previous} is gone (killed, crashed, or stopped when its drain timed out)"
    return f"its worker {previous} stopped renewing its lease (gone, or cut off from the store)"


# Relay mode: an inbox row waiting for its (next) delivery to the backend is `pending`; one being
# delivered is `processing` under the deliverer's lease, as a handled one is; then `done` or `failed`.


@dataclass(frozen=True)
class RelayRow:
    """One envelope handed to a deliverer by `relay_claim`: now `processing` under its lease."""

    envelope: Envelope
    order_key: str  # deliveries of one key (a channel) go one at a time, in arrival order
    attempts: int  # delivery attempts started, this one included (429s excluded)
    received_at: float
    error: str | None = None  # how the last attempt ended


@dataclass(frozen=True)
class StreamRow:
    """A streamed answer as the store keeps it: which Slack message streams it now and how far it
    got, so that the re-run of its envelope after a crash can stop what was left open."""

    stream_id: str
    envelope_id: str
    owner: str
    channel: str
    thread_ts: str
    ts: str | None = None  # the streamed message open in Slack now; None before the first start
    sent_chars: int = 0  # characters of the answer that reached Slack
    messages: int = 0  # streamed messages started (one more after each roll-over past Slack's expiry)
    state: Literal["open", "stopped"] = "open"
    updated_at: float = 0.0


def blocks_json(blocks: list[dict[str, Any]] | None) -> str | None:
    """A reply's blocks as a stored backend writes them: compact JSON, or nothing."""
    return None if blocks is None else json.dumps(blocks, separators=(",", ":"))


def random_id() -> str:
    """128 random bits as 32 hex digits, like uuid4().hex: os.urandom, without the uuid module a
    worker would otherwise keep loaded for this alone (issue 26: unused modules stay out)."""
    return os.urandom(16).hex()


def idempotency_keys(replies: Sequence[Reply], keys: Sequence[str] | None) -> list[str]:
    """The key of each reply to enqueue: the caller's, or a random one each (queued every time)."""
    chosen = list(keys) if keys is not None else [f"q:{random_id()}" for _ in replies]
    if len(chosen) != len(replies):
        raise BadCall("one idempotency key per reply")
    return chosen


def reply_key(envelope_id: str, index: int) -> str:
    """The idempotency key of a handler's reply, as every store's `finish` queues it: a second
    finish of the same envelope (a re-run, a recovery) queues nothing twice."""
    return f"{envelope_id}:{index}"


def check_purgeable(state: str) -> None:
    if state not in PURGEABLE_STATES:
        raise BadCall(f"only failed or sent rows can be purged, not {state!r}")


def retention_cutoff(now: float, retention_s: float) -> float:
    """Older than this is forgotten by `prune`; never less than Slack's retry window allows."""
    return now - max(retention_s, MIN_RETENTION_S)


# -- the protocols


class InboxStore(Protocol):
    """Dedup claims and the inbox: what the dispatcher and the worker's chores call."""

    def claim(self, envelope: Envelope, owner: str) -> bool:
        """Record the envelope and its dedup keys atomically; True when it is new."""

    def claim_many_now(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError] | None:
        """`claim` of each envelope (in one commit where the store has commits), if that can be
        decided without waiting (no I/O to wait on, no busy writer): a StoreError stands in the
        place of an envelope the store rejected alone. None when it cannot (nothing was written:
        call `claim_many` from a greenlet of its own)."""

    def claim_many(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError]:
        """`claim` of each envelope, in order, in as few commits or round trips as the store
        allows (one, for a read burst): a StoreError stands in the place of an envelope the store
        rejected alone; raises StoreError when the store failed as a whole."""

    def claim_key(self, key: str) -> bool:
        """Claim one free-form dedup key (for handlers' own once-only logic)."""

    def finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None = None) -> None:
        """Mark the envelope handled, recording the replies with it."""

    def renew(self, owner: str) -> int:
        """Extend the leases of the envelopes this owner is still handling."""

    def sweep(self, owner: str, limit: int = 100) -> list[Envelope]:
        """Take over envelopes whose owner died or whose lease ran out (or that an operator retried);
        return them to re-run, each a `Swept` naming the owner it was taken from."""

    def leases_elsewhere(self, owner: str) -> dict[str, float] | None:
        """The other owners holding rows in flight (envelopes processing, replies sending), each
        with its earliest lease (epoch seconds); None when the store cannot say cheaply (then
        every chore round sweeps). What tells a worker when a sweep can find anything."""

    def prune(self, retention_s: float = DEFAULT_RETENTION_S, now: float | None = None) -> int:
        """Forget handled envelopes, keys and sent replies older than the retention; return rows dropped."""


class OutboxStore(Protocol):
    """The durable outbox: what the sender (buidl_edge/delivery/outbox.py) drives."""

    def outbox_enqueue(self, replies: Sequence[Reply], envelope_id: str = "",
                       keys: Sequence[str] | None = None) -> list[int]:
        """Queue replies (a key seen before is not queued again); return their row ids."""

    def outbox_claim(self, owner: str, limit: int, limits: PostLimits,
                     lease_s: float | None = None) -> Claimed[OutboxRow]:
        """In one transaction: take each channel's oldest unsent row if it is due and the
        channel's (and the global) bucket has a token; mark it sending under `owner`'s lease."""

    def outbox_settle(self, row_id: int, owner: str, outcome: DeliveryOutcome) -> OutboxRow | None:
        """Record how a post ended; None when the row is no longer ours (lease lost)."""

    def outbox_renew(self, owner: str, lease_s: float | None = None) -> int:
        """Extend the lease of this owner's rows in flight."""

    def outbox_recover(self, owner: str) -> int:
        """Hand back to pending the rows in flight whose lease ran out or whose owner died."""

    def outbox_stats(self) -> dict[str, Any]:
        """Rows per state, depth, oldest pending age, 429s seen, paused buckets."""


class SlotStore(Protocol):
    """Connection slots: Slack allows 10 Socket Mode connections per app, across every dyno.

    A holder is `owner/slot` (see store/slots.py); a lease lapses after `ttl` seconds unrenewed.
    """

    def acquire_slot(self, holder: str, limit: int, ttl: float) -> bool:
        """Lease a slot to `holder` if fewer than `limit` are held (True if it holds one already)."""

    def renew_slots(self, holders: Sequence[str], limit: int, ttl: float) -> list[str]:
        """Extend these holders' leases, re-taking lapsed ones while there is room; return those lost."""

    def release_slot(self, holder: str) -> None: ...


class RelayStore(Protocol):
    """Relay mode: the inbox as a durable queue of deliveries to the backend, ordered per key.

    A row claimed by `claim` (processing, owned by the claimer) enters the queue with
    `relay_enqueue`; `relay_claim` hands out each key's oldest undelivered row when it is due and
    no row of that key is in flight; `relay_settle` records the outcome. A deliverer's leases are
    `renew`ed and `sweep`ed like a handler's, so a row in flight when its worker died comes back
    from `sweep` and is enqueued again, keeping its place and its attempt count.
    """

    def relay_enqueue(self, envelope_id: str, owner: str, order_key: str, not_before: float | None = None,
                      error: str | None = None) -> bool:
        """This owner's processing row becomes pending under `order_key`, due at `not_before`
        (now by default); False when it is not this owner's processing row."""

    def relay_claim(self, owner: str, limit: int, lease_s: float | None = None) -> Claimed[RelayRow]:
        """In one transaction: each key's oldest undelivered row, if it is pending and due,
        becomes processing under `owner`'s lease with one more attempt counted."""

    def relay_settle(self, envelope_id: str, owner: str, outcome: DeliveryOutcome) -> bool:
        """Record how a delivery ended; False when the row is no longer ours (lease lost)."""


class StreamStore(Protocol):
    """Streamed answers (buidl_edge/delivery/streams.py): their progress, and the app-wide budget
    of each stream method, kept as the outbox's buckets are."""

    def stream_save(self, row: StreamRow) -> None:
        """Record the stream's progress (insert or replace)."""

    def stream_orphans(self, envelope_id: str) -> list[StreamRow]:
        """The envelope's streams still open, whoever started them."""

    def stream_take(self, methods: Sequence[str], limits: StreamLimits) -> tuple[list[bool], float | None]:
        """In one transaction: spend a token of each wanted call's method bucket, in order, while
        the bucket allows; which were granted, and the earliest time a refused one may go."""

    def stream_pause(self, method: str, until: float) -> None:
        """After a 429: that method's bucket sends nothing before `until` (Retry-After)."""

    def stream_stats(self) -> dict[str, Any]:
        """Streams open now (`open`) and paused method buckets."""


class AdminStore(Protocol):
    """The workers' heartbeats and the reads and repairs behind `status`, `check`, `inbox`, `outbox`."""

    def describe(self) -> str:
        """Where the store is, for an operator (never a password)."""

    def ping(self) -> bool:
        """True when the store answers; StoreError when it does not."""

    def heartbeat(self, owner: str, stats: dict[str, Any]) -> None:
        """Publish this worker's stats for `status`."""

    def forget_worker(self, owner: str) -> None:
        """Drop this worker's stats: it stopped, `status` must not show it alive."""

    def workers(self, max_age_s: float | None = None) -> list[dict[str, Any]]:
        """Workers that reported, newest first; `max_age_s` hides ones gone quiet."""

    def slots(self) -> list[dict[str, Any]]:
        """Connection slot leases held now: holder and seconds left."""

    def inbox_stats(self) -> dict[str, Any]:
        """Inbox rows per state, the oldest one processing (and pending), dedup keys held."""

    def inbox_list(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent inbox rows, optionally of one state."""

    def inbox_row(self, envelope_id: str) -> dict[str, Any] | None: ...

    def retry(self, envelope_id: str) -> bool:
        """Hand a done or failed envelope back to the sweepers, to run again (a relayed one with
        a fresh delivery budget)."""

    def outbox_list(self, state: str | None = None, channel: str | None = None,
                    limit: int = 50) -> list[OutboxRow]:
        """Newest rows first, optionally of one state or channel."""

    def outbox_row(self, row_id: int) -> OutboxRow | None: ...

    def outbox_retry(self, row_id: int) -> bool:
        """A failed row back to pending with a fresh attempt count."""

    def outbox_cancel(self, row_id: int) -> bool:
        """A pending row out of its channel's queue: `failed` with error CANCELLED (kept, so a re-run
        of its envelope does not queue it again; `outbox_retry` undoes it). False unless pending."""

    def outbox_purge(self, state: str = "failed") -> int:
        """Delete every row in `state` (failed, or sent); return how many."""

    def close(self) -> None: ...


class EdgeStore(InboxStore, OutboxStore, SlotStore, RelayStore, StreamStore, AdminStore, Protocol):
    """All of them: what `open_store` returns and a worker holds."""

    @property
    def lifespan(self) -> Lifespan:
        """How long its rows last (every backend and every wrapper says)."""

    def change_token(self, others_only: bool = False) -> Hashable | None:
        """A value that changes whenever anything is committed (by any process), read without
        waiting; None when the store cannot tell cheaply. Equal tokens: nothing was written in
        between, so a poll or a chore that found nothing to do would find nothing again.
        `others_only`: a store may leave out this process's claims and finishes (SQLite does)."""
