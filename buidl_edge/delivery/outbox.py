"""The outbox sender: drains queued messages to chat.postMessage within Slack's limits.

Messages are rows in the shared store (see `EdgeStore.outbox_*`): handlers'
replies enter in the same transaction that marks their envelope done, and
`app.send_message` / `buidl-edge send` enqueue directly. Every worker runs one
`Outbox`, and all of them drain the same rows:

- per channel, strictly in enqueue order: only a channel's oldest unsent row
  may be taken, and only when no row of that channel is in flight;
- channels in parallel, up to `BUIDL_POST_CONCURRENCY` posts at once;
- never the same row twice: a row is claimed (`pending` → `sending`, with a
  lease naming this process) in the transaction that also spends a token from
  the channel's bucket (and the global one), so N processes together send at
  most `BUIDL_POST_RATE` per channel;
- rows left `sending` by a process that died (same host) or whose lease ran
  out go back to `pending`. Every post carries the row's idempotency key as
  message metadata, and any second try of a row first reads the channel
  (`conversations.history`, or `.replies` in a thread) for that key, so a post
  that Slack accepted before its sender died or timed out is not made twice.
  Without the history scopes the check is skipped, and the re-send is the
  window for a double post.

Outcomes: 429 → wait `Retry-After` on that channel (or on the whole workspace
with `BUIDL_POST_429_SCOPE=global`) without counting an attempt; 5xx, network
errors and Slack's transient codes → retry with exponential backoff and full
jitter, up to `BUIDL_POST_MAX_ATTEMPTS`, then `failed`; any other `ok:false`
(`channel_not_found`, `is_archived`, `msg_too_long`, …) → `failed` at once.
Failed rows go to the `on_failed` hook (Sentry) and stay for `outbox retry`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from buidl_edge.api.message import validate_reply
from buidl_edge.config import OutboxConfig, Secret
from buidl_edge.delivery.loop import Delivered, DeliveryLoop, RetryPolicy
from buidl_edge.store.base import Claimed, DeliveryOutcome, EdgeStore, OutboxRow, Reply
from buidl_edge.store.errors import StoreError
from buidl_edge.store.failover import Failover
from buidl_edge.webapi.client import RateLimited, SlackApiError, TransientApiError, WebApi

log = logging.getLogger("buidl_edge.outbox")

# ok:false codes that say "try again later" rather than "this message is wrong". Not
# `fatal_error`: Slack says part of the operation may have succeeded, so a retry could post twice.
RETRYABLE_ERRORS = frozenset({"internal_error", "service_unavailable", "request_timeout"})
# How far before a row's enqueue time a check for its earlier post looks (Slack's clock vs ours).
CLOCK_SKEW_S = 60.0

FailedHook = Callable[[OutboxRow], None]

@dataclass
class OutboxStats:
    """This process's figures, published with its heartbeat for `status`."""

    sent: int = 0
    failed: int = 0
    rate_limited: int = 0
    retried: int = 0
    recovered: int = 0
    found_posted: int = 0  # re-sent rows that had reached Slack already: not posted twice
    lease_lost: int = 0
    in_flight: int = 0
    store_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Outbox:
    """One per worker process: posts on a `DeliveryLoop` (this is its `Delivery`), and the
    producers' way in."""

    name = "outbox"
    log = log

    def __init__(self, store: EdgeStore, webapi: WebApi, bot_token: Secret, owner: str,
                 config: OutboxConfig | None = None, backoff_base: float = 1.0, backoff_cap: float = 30.0,
                 lease_s: float = 30.0, on_failed: FailedHook | None = None,
                 failover: Failover | None = None) -> None:
        self.store = store
        self.webapi = webapi
        self.bot_token = bot_token
        self.owner = owner
        self.config = config or OutboxConfig()
        self.retry = RetryPolicy(self.config.max_attempts, backoff_base, backoff_cap)
        self.lease_s = lease_s
        self.on_failed = on_failed  # called with each row that failed for good (Sentry hooks in here)
        # Shared with the dispatcher and the chores. Replies queued while the shared store failed
        # go out from its fallback, under this process's own buckets.
        self.failover = failover or Failover(store, owner=owner)
        self.health = self.failover.health
        self.stats = OutboxStats()
        self.loop = DeliveryLoop(self, self.failover, self.stats, concurrency=self.config.concurrency,
                                 poll_s=self.config.poll_interval)
        self._history_refusals: set[str] = set()  # said once each
        self._last_renew = 0.0
        self.recovers_itself = True

    # ------------------------------------------------------------ producers

    def enqueue(self, replies: Sequence[Reply], envelope_id: str = "", keys: Sequence[str] | None = None) -> list[int]:
        """Validate and queue; MessageError for bad input (nothing queued then)."""
        replies = [validate_reply(r) for r in replies]
        ids, _ = self.failover.write("outbox_enqueue", lambda store: store.outbox_enqueue(replies, envelope_id, keys))
        self.wake()
        return ids

    def send_reply(self, reply: Reply) -> None:
        """`app.send_message`'s sink."""
        self.enqueue([reply])

    def wake(self) -> None:
        """Look for sendable rows now (new rows, or a post just finished)."""
        self.loop.wake()

    # ------------------------------------------------------------ running

    def start(self, own_chores: bool = True) -> Outbox:
        """`own_chores=False`: a worker runs `loop.chore_round` on its chores' timer, and calls
        `recover` from its sweep when a dead worker's rows can be there."""
        self.recovers_itself = own_chores
        self.loop.start(own_chores)
        return self

    def stop(self, timeout: float) -> bool:
        """Drain: flush rows that would die with us, finish posts in flight, stop. False on timeout.

        Rows in memory, and in the SQLite file on this dyno's disk (a restarted Heroku dyno
        starts with a fresh one), get the drain time to go out; rows in Redis are left for the
        workers of the other dynos.
        """
        drained = self.loop.stop(timeout)
        if drained.in_flight:
            log.warning("%d post(s) still in flight at exit; another worker re-sends them", drained.in_flight)
        if drained.left:
            log.warning("%d message(s) left unsent at exit: a start on the same disk sends them, a fresh "
                        "dyno does not (raise BUIDL_DRAIN_TIMEOUT, or use a Redis store)", drained.left)
        return drained.clean

    # ------------------------------------------------------------ the loop's side: one post

    def claim(self, store: EdgeStore, limit: int) -> Claimed[OutboxRow]:
        return store.outbox_claim(self.owner, limit, self.config.limits, self.lease_s)

    def deliver(self, row: OutboxRow) -> Delivered:
        # Its last tries may have died with their workers: then it is not tried again.
        return Delivered(self.retry.gave_up(row.attempts, row.error) or self._attempt(row))

    def settle(self, store: EdgeStore, row: OutboxRow, outcome: DeliveryOutcome) -> OutboxRow | None:
        return store.outbox_settle(row.id, self.owner, outcome)

    def waiting(self, store: EdgeStore) -> int:
        return int(store.outbox_stats()["depth"])

    def _attempt(self, row: OutboxRow) -> DeliveryOutcome:
        try:
            if row.attempts > 1:  # an earlier try may have reached Slack before it failed or its sender died
                landed = self._find_landed(row)
                if landed:
                    self.stats.found_posted += 1
                    log.info("row %d to %s had reached Slack already (ts %s); not posting it again",
                             row.id, row.channel, landed)
                    return DeliveryOutcome("sent", ts=landed)
            body = self.webapi.post_message(self.bot_token, row.channel, row.text, row.blocks, row.thread_ts,
                                            reply_key=row.idempotency_key)
        except RateLimited as exc:
            self.stats.rate_limited += 1
            scope = self.config.ratelimit_scope
            log.info("429 on %s: waiting %.0fs (%s)", row.channel, exc.retry_after, scope)
            return DeliveryOutcome("ratelimited", error="ratelimited", retry_at=time.time() + exc.retry_after,
                                   pause="global" if scope == "global" else "channel")
        except TransientApiError as exc:
            return self.retry.retry_or_fail(exc.error, row.attempts)
        except SlackApiError as exc:
            if exc.error in RETRYABLE_ERRORS:
                return self.retry.retry_or_fail(exc.error, row.attempts)
            return DeliveryOutcome("failed", error=exc.error)
        except Exception as exc:  # a bug must not kill the sender; the row is retried, then failed
            log.exception("posting row %d raised", row.id)
            return self.retry.retry_or_fail(f"exception:{type(exc).__name__}", row.attempts)
        ts = body.get("ts")
        return DeliveryOutcome("sent", ts=ts if isinstance(ts, str) else None)

    def _find_landed(self, row: OutboxRow) -> str | None:
        """The ts of this row's message if an earlier try posted it; None when unknown (post again)."""
        try:
            return self.webapi.find_reply(self.bot_token, row.channel, row.idempotency_key,
                                          oldest=row.created_at - CLOCK_SKEW_S, thread_ts=row.thread_ts)
        except (RateLimited, TransientApiError):
            raise
        except SlackApiError as exc:  # e.g. missing_scope: without history, a double beats a loss
            if exc.error not in self._history_refusals:
                self._history_refusals.add(exc.error)
                log.warning("cannot read %s to check for an earlier post (%s); re-sent rows may post twice",
                            exc.method, exc.error)
            return None

    def record(self, row: OutboxRow, outcome: DeliveryOutcome, final: OutboxRow | None) -> None:
        if final is not None and outcome.kind in ("sent", "failed"):
            self.failover.reply_settled(row.idempotency_key)  # one posted from memory is not posted again
        if final is None:
            self.stats.lease_lost += 1
            log.warning("row %d to %s was taken over while in flight (lease lost); outcome %s not recorded",
                        row.id, row.channel, outcome.kind)
        elif outcome.kind == "sent":
            self.stats.sent += 1
        elif outcome.kind == "retry":
            self.stats.retried += 1
            log.warning("chat.postMessage to %s failed (%s); attempt %d of %d, retry in %.1fs", row.channel,
                        outcome.error, row.attempts, self.config.max_attempts, outcome.retry_at - time.time())
        elif outcome.kind == "failed":
            self.stats.failed += 1
            log.error("chat.postMessage to %s failed for good: %s (outbox row %d)", row.channel, outcome.error, row.id)
            if self.on_failed is not None:
                try:
                    self.on_failed(final)
                except Exception:  # a reporting hook must never stop the sender
                    log.exception("on_failed hook raised")

    # ------------------------------------------------------------ chores

    def chores(self) -> None:
        """Renew the leases of rows in flight (or not yet settled); unless the worker's sweep does
        it, queue again the rows of dead workers."""
        try:
            now = time.monotonic()
            if (self.stats.in_flight or self.loop.unsettled) and now - self._last_renew >= self.lease_s / 3:
                self.store.outbox_renew(self.owner, self.lease_s)
                self._last_renew = now
        except StoreError as exc:
            self.loop.store_failed("outbox_renew", exc)
            return
        if self.recovers_itself:
            self.recover()

    def recover(self) -> None:
        """Queue again the rows a dead worker (or one whose lease ran out) left in flight."""
        try:
            recovered = self.store.outbox_recover(self.owner)
        except StoreError as exc:
            self.loop.store_failed("outbox_recover", exc)
            return
        if recovered:
            self.stats.recovered += recovered
            log.warning("%d message(s) left in flight by a dead worker queued again", recovered)
            self.wake()
