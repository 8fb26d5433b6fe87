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
from dataclasses import dataclass
from typing import Callable, Sequence

import gevent
import gevent.event
import gevent.pool

from buidl_edge.socketmode.backoff import backoff_delay
from buidl_edge.config import OutboxConfig, Secret
from buidl_edge.api.message import validate_reply
from buidl_edge.store.base import EdgeStore, OutboxRow, PostOutcome, Reply, left_on_this_dyno
from buidl_edge.store.errors import StoreError
from buidl_edge.store.health import StoreHealth
from buidl_edge.webapi.client import RateLimited, SlackApiError, TransientApiError, WebApi

log = logging.getLogger("buidl_edge.outbox")

# ok:false codes that say "try again later" rather than "this message is wrong". Not
# `fatal_error`: Slack says part of the operation may have succeeded, so a retry could post twice.
RETRYABLE_ERRORS = frozenset({"internal_error", "service_unavailable", "request_timeout"})
# Settling a post's outcome is retried this often before it is kept for the next chore round.
SETTLE_DELAYS_S = (0.0, 0.1, 0.5)
CHORE_INTERVAL_S = 1.0
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
    """One per worker process: a claiming greenlet, a pool of posting greenlets, and chores."""

    def __init__(self, store: EdgeStore, webapi: WebApi, bot_token: Secret, owner: str,
                 config: OutboxConfig | None = None, backoff_base: float = 1.0, backoff_cap: float = 30.0,
                 lease_s: float = 30.0, on_failed: FailedHook | None = None,
                 health: StoreHealth | None = None) -> None:
        self.store = store
        self.webapi = webapi
        self.bot_token = bot_token
        self.owner = owner
        self.config = config or OutboxConfig()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.lease_s = lease_s
        self.on_failed = on_failed  # called with each row that failed for good (Sentry hooks in here)
        # Shared with the dispatcher and the heartbeat. Replies whose envelope could not be finished
        # in the shared store (it is failing) still go out from its fallback, under this process's
        # own buckets.
        self.health = health or StoreHealth()
        self.stats = OutboxStats()
        self._history_refusals: set[str] = set()  # said once each
        self._posts = gevent.pool.Pool(self.config.concurrency)
        self._wake = gevent.event.Event()
        self._claiming = False
        self._unsettled: list[tuple[EdgeStore, OutboxRow, PostOutcome]] = []
        self._greenlets: list[gevent.Greenlet] = []
        self._last_renew = 0.0

    # ------------------------------------------------------------ producers

    def enqueue(self, replies: Sequence[Reply], envelope_id: str = "", keys: Sequence[str] | None = None) -> list[int]:
        """Validate and queue; MessageError for bad input (nothing queued then)."""
        replies = [validate_reply(r) for r in replies]
        try:
            ids = self.store.outbox_enqueue(replies, envelope_id, keys)
        except StoreError as exc:
            self._store_failed("enqueue", exc)
            ids = self.health.fallback.outbox_enqueue(replies, envelope_id, keys)
        self.wake()
        return ids

    def send_reply(self, reply: Reply) -> None:
        """`app.send_message`'s sink."""
        self.enqueue([reply])

    def enqueue_local(self, envelope_id: str, replies: Sequence[Reply]) -> None:
        """A handler's replies whose `finish` failed: send them from this process's memory."""
        if replies:
            self.health.fallback.outbox_enqueue(replies, envelope_id, [f"{envelope_id}:{i}" for i in range(len(replies))])
            self.wake()

    def wake(self) -> None:
        """Look for sendable rows now (new rows, or a post just finished)."""
        self._wake.set()

    # ------------------------------------------------------------ running

    def start(self) -> "Outbox":
        self._claiming = True
        self._greenlets = [gevent.spawn(self._run), gevent.spawn(self._chores)]
        return self

    def stop(self, timeout: float) -> bool:
        """Drain: flush rows that would die with us, finish posts in flight, stop. False on timeout.

        Rows in memory, and in the SQLite file on this dyno's disk (a restarted Heroku dyno
        starts with a fresh one), get the drain time to go out; rows in Redis are left for the
        workers of the other dynos.
        """
        if not self._greenlets:  # never started
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._depth_lost_with_the_dyno() > 0:
            gevent.sleep(0.05)
        self._claiming = False
        self._wake.set()
        runner, chores = self._greenlets
        runner.join(timeout=max(0.1, deadline - time.monotonic()))  # a claim in progress ends cleanly
        posted = self._posts.join(timeout=max(0.0, deadline - time.monotonic()))
        self._settle_leftovers()
        gevent.killall([runner, chores], timeout=1.0)
        left = self._depth_lost_with_the_dyno()
        clean = bool(posted) and not self._unsettled and left == 0
        if not posted:
            log.warning("%d post(s) still in flight at exit; another worker re-sends them", len(self._posts))
        if left:
            log.warning("%d message(s) left unsent at exit: a start on the same disk sends them, a fresh "
                        "dyno does not (raise BUIDL_DRAIN_TIMEOUT, or use a Redis store)", left)
        return clean

    def _depth_lost_with_the_dyno(self) -> int:
        return left_on_this_dyno((self.store, self.health.fallback), lambda store: store.outbox_stats()["depth"])

    def _run(self) -> None:
        poll = self.config.poll_interval
        while self._claiming:
            self._wake.clear()
            try:
                next_at = self._fill()
            except Exception:  # a bug here must not silently stop all sending
                log.exception("outbox claim loop failed; retrying")
                next_at = None
            if self._posts.full() or next_at is None:
                timeout = poll
            else:
                timeout = min(poll, max(0.002, next_at - time.time()))
            self._wake.wait(timeout)

    def _fill(self) -> float | None:
        """Claim as many sendable rows as there are free posting greenlets; earliest next chance."""
        next_at: float | None = None
        for store in (self.store, self.health.fallback):
            free = self._posts.free_count()
            if free <= 0 or not self._claiming:
                break
            try:
                claimed = store.outbox_claim(self.owner, free, self.config.limits, self.lease_s)
            except StoreError as exc:
                self._store_failed("claim", exc)
                continue
            if store is self.store and claimed.rows:  # rows taken: a write (a read would prove nothing)
                self.health.wrote()
            for row in claimed.rows:
                self._posts.spawn(self._post, store, row)
            if claimed.next_at is not None:
                next_at = claimed.next_at if next_at is None else min(next_at, claimed.next_at)
        return next_at

    # ------------------------------------------------------------ one post

    def _post(self, store: EdgeStore, row: OutboxRow) -> None:
        self.stats.in_flight += 1
        try:
            if row.attempts > self.config.max_attempts:  # its last tries died with their workers
                outcome = PostOutcome("failed", error=f"gave up after {row.attempts - 1} attempts "
                                                      f"(last: {row.error or 'lost in flight'})")
            else:
                outcome = self._attempt(row)
        finally:
            self.stats.in_flight -= 1
        self._settle(store, row, outcome)
        self._wake.set()

    def _attempt(self, row: OutboxRow) -> PostOutcome:
        try:
            if row.attempts > 1:  # an earlier try may have reached Slack before it failed or its sender died
                landed = self._find_landed(row)
                if landed:
                    self.stats.found_posted += 1
                    log.info("row %d to %s had reached Slack already (ts %s); not posting it again",
                             row.id, row.channel, landed)
                    return PostOutcome("sent", ts=landed)
            body = self.webapi.post_message(self.bot_token, row.channel, row.text, row.blocks, row.thread_ts,
                                            reply_key=row.idempotency_key)
        except RateLimited as exc:
            self.stats.rate_limited += 1
            scope = self.config.ratelimit_scope
            log.info("429 on %s: waiting %.0fs (%s)", row.channel, exc.retry_after, scope)
            return PostOutcome("ratelimited", error="ratelimited", retry_at=time.time() + exc.retry_after,
                               pause="global" if scope == "global" else "channel")
        except TransientApiError as exc:
            return self._retry_or_fail(row, exc.error)
        except SlackApiError as exc:
            if exc.error in RETRYABLE_ERRORS:
                return self._retry_or_fail(row, exc.error)
            return PostOutcome("failed", error=exc.error)
        except Exception as exc:  # a bug must not kill the sender; the row is retried, then failed
            log.exception("posting row %d raised", row.id)
            return self._retry_or_fail(row, f"exception:{type(exc).__name__}")
        ts = body.get("ts")
        return PostOutcome("sent", ts=ts if isinstance(ts, str) else None)

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

    def _retry_or_fail(self, row: OutboxRow, error: str) -> PostOutcome:
        if row.attempts >= self.config.max_attempts:
            return PostOutcome("failed", error=f"{error} (after {row.attempts} attempts)")
        delay = backoff_delay(row.attempts - 1, self.backoff_base, self.backoff_cap)
        return PostOutcome("retry", error=error, retry_at=time.time() + delay)

    def _settle(self, store: EdgeStore, row: OutboxRow, outcome: PostOutcome) -> None:
        error: StoreError | None = None
        for delay in SETTLE_DELAYS_S:
            if delay:
                gevent.sleep(delay)
            try:
                final = store.outbox_settle(row.id, self.owner, outcome)
            except StoreError as exc:
                error = exc
                continue
            self._record(row, outcome, final)
            return
        # Still ours and `sending` in the store: the chores keep renewing its lease and retry this.
        self._store_failed("settle", error)  # type: ignore[arg-type]
        self._unsettled.append((store, row, outcome))

    def _record(self, row: OutboxRow, outcome: PostOutcome, final: OutboxRow | None) -> None:
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

    def _chores(self) -> None:
        while True:
            gevent.sleep(CHORE_INTERVAL_S)
            self._settle_leftovers()
            try:
                now = time.monotonic()
                if (self.stats.in_flight or self._unsettled) and now - self._last_renew >= self.lease_s / 3:
                    self.store.outbox_renew(self.owner, self.lease_s)
                    self._last_renew = now
                recovered = self.store.outbox_recover(self.owner)
            except StoreError as exc:
                self._store_failed("recover", exc)
                continue
            except Exception:
                log.exception("outbox chores failed; retrying")
                continue
            if recovered:
                self.stats.recovered += recovered
                log.warning("%d message(s) left in flight by a dead worker queued again", recovered)
                self.wake()

    def _settle_leftovers(self) -> None:
        leftovers, self._unsettled = self._unsettled, []
        for store, row, outcome in leftovers:
            try:
                final = store.outbox_settle(row.id, self.owner, outcome)
            except StoreError:
                self._unsettled.append((store, row, outcome))
                continue
            self._record(row, outcome, final)

    def _store_failed(self, operation: str, exc: StoreError) -> None:
        """Counted every time; StoreHealth says it once per episode. The call is retried next round."""
        self.stats.store_errors += 1
        self.health.failed(f"outbox_{operation}", exc)
