"""The relay: what the dispatcher calls in relay mode instead of running an EdgeApp.

- An envelope that `accepts_response_payload` (a slash command, a view submission) is posted at
  once; the backend's answer within the ack deadline becomes the ack payload. Otherwise it is acked
  plain on time, and the answer, late or from a retry, goes to the response_url (late.py).
- Every other envelope is acked first and delivered from the inbox: `relay_enqueue` queues it
  under its channel, and a delivery loop hands each channel's oldest row to the backend, one at
  a time per channel, in arrival order. Connection errors, timeouts and 5xx are retried with
  exponential backoff and full jitter until the attempt budget runs out; a 429 waits for its
  Retry-After (and holds this process's deliveries that long, the attempt not counted); any
  other 4xx (a 401 for a signature the app refuses) is the app's verdict and is not retried.
  A row that fails for good stays in the inbox as `failed` (logged, reported to Sentry), listed
  by `buidl-edge inbox list` and sent again by `buidl-edge inbox retry`.
- A row in flight when its worker dies comes back from the sweeper (`recover`) and is queued
  again in its place: nothing is lost, and the backend may see that one request twice.

Each attempt is signed when it is made (request.py), so a delivery retried for minutes still
passes the app's 5-minute timestamp check. Our own redeliveries carry no X-Slack-Retry-Num:
apps commonly drop retries as duplicates, and the app never saw this request.
"""
from __future__ import annotations

import logging
import socket
import time
from collections import deque
from dataclasses import asdict
from typing import Any, Callable

import gevent
import gevent.event
import gevent.pool

from buidl_edge.socketmode.backoff import backoff_delay
from buidl_edge.config import Secret
from buidl_edge.observability.latency import LatencyHistogram
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.relay.client import Answer, BackendClient
from buidl_edge.relay.late import post_late_answer
from buidl_edge.relay.request import build_request
from buidl_edge.relay.stats import BACKEND_BUCKETS_S, RECENT, Outage, RelayStats, attempts_made, percentile_ms
from buidl_edge.store.base import DeliveryOutcome, EdgeStore, RelayRow, left_on_this_dyno, why_taken_over
from buidl_edge.store.errors import StoreError
from buidl_edge.store.health import StoreHealth

log = logging.getLogger("buidl_edge.relay")

POLL_INTERVAL_S = 0.25  # how soon rows queued by another process (or retried by hand) are noticed
SETTLE_DELAYS_S = (0.0, 0.1, 0.5)
SIGNATURE_HINT = ("the app refused the request's signature or timestamp: check that SLACK_SIGNING_SECRET is "
                  "the app's Signing Secret, and this host's clock")

FailedHook = Callable[[Envelope, str, int], None]


def order_key(envelope: Envelope) -> str:
    """The queue an envelope waits in: its channel, so a channel's events reach the app in order;
    one of its own when it names none (deliveries of those are unordered)."""
    payload = envelope.payload
    event = payload.get("event") if envelope.type == "events_api" else None
    candidates: list[Any] = []
    if isinstance(event, dict):
        item = event.get("item")
        candidates += [event.get("channel"), event.get("channel_id"), item.get("channel") if isinstance(item, dict)
                       else None]
    else:
        container = payload.get("container")
        candidates += [payload.get("channel"), payload.get("channel_id"),
                       container.get("channel_id") if isinstance(container, dict) else None]
    for value in candidates:
        if isinstance(value, dict):
            value = value.get("id")
        if isinstance(value, str) and value:
            return f"ch:{value[:100]}"
    return f"env:{envelope.envelope_id}"


class Relay:
    """One per worker process in relay mode: answers within the deadline, and the delivery loop."""

    def __init__(self, store: EdgeStore, client: BackendClient, signing_secret: Secret, owner: str, *,
                 ack_deadline: float, max_attempts: int = 25, backoff_base: float = 1.0, backoff_cap: float = 60.0,
                 lease_s: float = 30.0, concurrency: int = 16, health: StoreHealth | None = None,
                 on_failed: FailedHook | None = None) -> None:
        self.store = store
        self.client = client
        self._secret = signing_secret
        self.owner = owner
        self.ack_deadline = ack_deadline
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.lease_s = lease_s
        self.health = health or StoreHealth()
        self.on_failed = on_failed  # each envelope that failed for good (Sentry hooks in here)
        self.stats = RelayStats()
        self.latency = LatencyHistogram(BACKEND_BUCKETS_S)
        self._recent: deque[float] = deque(maxlen=RECENT)
        self._posts = gevent.pool.Pool(concurrency)
        self._answers = gevent.pool.Group()  # answers still coming for envelopes acked without them
        self._wake = gevent.event.Event()
        self._running = False
        self._loop: gevent.Greenlet | None = None
        self._paused_until = 0.0  # a 429's Retry-After, for every delivery of this process
        self._outage = Outage()
        self._unsettled: list[tuple[str, Callable[[], Any]]] = []

    # ------------------------------------------------------------ the dispatcher's side

    def answer(self, envelope: Envelope, received_at: float) -> dict[str, Any] | None:
        """Post an envelope that accepts a response payload now; the backend's answer if it
        comes within the ack deadline (from `received_at`, monotonic), else None (ack plain)."""
        acked_without = gevent.event.Event()
        job = self._answers.spawn(self._answer_now, envelope, received_at, acked_without)
        job.join(timeout=max(0.0, self.ack_deadline - (time.monotonic() - received_at)))
        if not job.ready():
            acked_without.set()  # no switch since join returned: the job cannot have finished meanwhile
            return None
        answer: Answer | None = job.value
        payload = answer.ack_payload() if answer is not None else None
        if payload is not None:
            self.stats.answered += 1
        return payload

    def enqueue(self, envelope: Envelope) -> None:
        """Queue an acked envelope for delivery (its claim made it this process's processing row)."""
        self._enqueue(envelope)

    def recover(self, envelope: Envelope) -> None:
        """An envelope the sweeper took over (its worker died, or `inbox retry`): queue it again."""
        log.info("delivering %s again: %s", envelope.kind, why_taken_over(envelope, socket.gethostname()),
                 extra={"envelope_id": envelope.envelope_id})
        self._enqueue(envelope)

    def _answer_now(self, envelope: Envelope, received_at: float, acked_without: gevent.event.Event) -> Answer:
        answer = self._post(envelope)
        eid = envelope.envelope_id
        if answer.kind == "ok":
            self._finish(envelope, None)
            self.stats.sent += 1
            if acked_without.is_set():  # acked plain meanwhile: the answer goes to the response_url
                self.stats.late_answers += 1
                post_late_answer(envelope, answer, time.monotonic() - received_at)
        elif answer.kind == "failed":
            self._failed(envelope, answer.error or "failed", 1)
            self._finish(envelope, answer.error or "failed")
        else:
            self._count_retry(answer)
            delay = answer.retry_after if answer.kind == "ratelimited" else \
                backoff_delay(0, self.backoff_base, self.backoff_cap)
            log.warning("delivering %s to the app failed (%s): acked without an answer, queued to be delivered "
                        "again in %.1fs", envelope.kind, answer.error, delay, extra={"envelope_id": eid})
            self._enqueue(envelope, not_before=time.time() + delay, error=answer.error)
        return answer

    # ------------------------------------------------------------ the delivery loop

    def start(self) -> "Relay":
        self._running = True
        self._loop = gevent.spawn(self._run)
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Deliver what waits in a store that dies with the dyno (memory, or the SQLite file on
        this dyno's disk: a restarted Heroku dyno starts with a fresh one), then stop taking rows
        and let deliveries and late answers in flight finish; False on timeout. What is left stays
        in the inbox (processing or pending) for another worker or the next start on that disk;
        in Redis, for the workers of the other dynos."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._backlog_lost_with_the_dyno() > 0:
            gevent.sleep(POLL_INTERVAL_S)  # inbox_stats reads the whole file: not every 50 ms
        self._running = False
        self._wake.set()
        if self._loop is not None:
            self._loop.join(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        posted = self._posts.join(timeout=max(0.0, deadline - time.monotonic()))
        answered = self._answers.join(timeout=max(0.0, deadline - time.monotonic()))
        self._settle_leftovers()
        if self._loop is not None:
            self._loop.kill(block=True, timeout=1.0)
        if not posted or not answered:
            log.warning("%d delivery(ies) to the app still in flight at exit; they stay in the inbox, and a live "
                        "worker's sweeper (or the next start) delivers them again",
                        len(self._posts) + len(self._answers))
        lost = self._backlog_lost_with_the_dyno()
        if lost:
            log.warning("%d envelope(s) not yet delivered to the app at exit: a start on the same disk delivers "
                        "them, a fresh dyno or a memory store does not (raise BUIDL_DRAIN_TIMEOUT, or use a "
                        "Redis store)", lost)
        self.client.close()
        return bool(posted and answered) and not self._unsettled and not lost

    def _run(self) -> None:
        while self._running:
            self._wake.clear()
            try:
                self._settle_leftovers()
                next_at = self._fill()
            except Exception:  # a bug here must not silently stop every delivery
                log.exception("relay delivery loop failed; retrying")
                next_at = None
            timeout = POLL_INTERVAL_S
            if next_at is not None and not self._posts.full():
                timeout = min(POLL_INTERVAL_S, max(0.002, next_at - time.time()))
            self._wake.wait(timeout)

    def _fill(self) -> float | None:
        """Hand due rows to free delivery greenlets; the earliest time another may be due."""
        if time.time() < self._paused_until:
            return self._paused_until
        next_at: float | None = None
        for store in (self.store, self.health.fallback):
            free = self._posts.free_count()
            if free <= 0 or not self._running:
                break
            try:
                batch = store.relay_claim(self.owner, free, self.lease_s)
            except StoreError as exc:
                self._store_failed("relay_claim", exc)
                continue
            for row in batch.rows:
                self._posts.spawn(self._deliver, store, row)
            if batch.next_at is not None:
                next_at = batch.next_at if next_at is None else min(next_at, batch.next_at)
        return next_at

    def _deliver(self, store: EdgeStore, row: RelayRow) -> None:
        self.stats.in_flight += 1
        answer: Answer | None = None
        try:
            if attempts_made(row) > self.max_attempts:  # its last attempts died with their workers
                outcome = DeliveryOutcome("failed", f"gave up after {attempts_made(row) - 1} attempts "
                                                    f"(last: {row.error or 'lost in flight'})")
            else:
                answer = self._post(row.envelope)
                outcome = self._outcome(answer, attempts_made(row))
        finally:
            self.stats.in_flight -= 1
        self._settle(store, row, outcome)
        if answer is not None and outcome.kind == "sent":  # delivered from the queue: after its ack
            self._answers.spawn(post_late_answer, row.envelope, answer, time.time() - row.received_at)
        self._wake.set()

    def _outcome(self, answer: Answer, attempts: int) -> DeliveryOutcome:
        if answer.kind == "ok":
            return DeliveryOutcome("sent")
        if answer.kind == "failed":
            return DeliveryOutcome("failed", answer.error)
        if answer.kind == "ratelimited":
            return DeliveryOutcome("ratelimited", answer.error, time.time() + answer.retry_after)
        if attempts >= self.max_attempts:
            return DeliveryOutcome("failed", f"{answer.error} (after {attempts} attempts)")
        delay = backoff_delay(attempts - 1, self.backoff_base, self.backoff_cap)
        return DeliveryOutcome("retry", answer.error, time.time() + delay)

    def _settle(self, store: EdgeStore, row: RelayRow, outcome: DeliveryOutcome) -> None:
        eid = row.envelope.envelope_id
        for delay in SETTLE_DELAYS_S:
            if delay:
                gevent.sleep(delay)
            try:
                settled = store.relay_settle(eid, self.owner, outcome)
            except StoreError as exc:
                self._store_failed("relay_settle", exc)
                continue
            self._record(row, outcome, settled)
            return

        def again() -> None:  # still ours and processing: the heartbeat renews its lease meanwhile
            self._record(row, outcome, store.relay_settle(eid, self.owner, outcome))

        self._unsettled.append((eid, again))

    def _record(self, row: RelayRow, outcome: DeliveryOutcome, settled: bool) -> None:
        envelope = row.envelope
        extra = {"envelope_id": envelope.envelope_id}
        if not settled:
            self.stats.lease_lost += 1
            log.warning("%s was taken over while being delivered (lease lost); outcome %s not recorded",
                        envelope.kind, outcome.kind, extra=extra)
        elif outcome.kind == "sent":
            self.stats.sent += 1
            if attempts_made(row) > 1:
                log.info("delivered %s to the app after %d attempts (%d failed, by any worker)", envelope.kind,
                         attempts_made(row), attempts_made(row) - 1, extra=extra)
        elif outcome.kind == "retry":
            self.stats.retried += 1
            starts = self._outage.failed()
            (log.warning if starts else log.debug)(
                "delivering %s to the app at %s failed (%s); attempt %d of %d, next in %.1fs%s", envelope.kind,
                self.client.shown, outcome.error, attempts_made(row), self.max_attempts,
                max(0.0, outcome.retry_at - time.time()),
                "; every envelope is kept and retried with backoff (said once until the app answers again)"
                if starts else "", extra=extra)
        elif outcome.kind == "ratelimited":
            self.stats.rate_limited += 1
        else:
            self._failed(envelope, outcome.error or "failed", attempts_made(row))

    def _count_retry(self, answer: Answer) -> None:
        if answer.kind == "ratelimited":
            self.stats.rate_limited += 1
        else:
            self.stats.retried += 1
            self._outage.failed()

    def _failed(self, envelope: Envelope, error: str, attempts: int) -> None:
        self.stats.failed += 1
        hint = f"; {SIGNATURE_HINT}" if error.startswith(("HTTP 401", "HTTP 403")) else ""
        log.error("delivering %s to the app at %s failed for good: %s%s; it stays in the inbox as failed "
                  "(`buidl-edge inbox retry %s` sends it again)", envelope.kind, self.client.shown, error, hint,
                  envelope.envelope_id, extra={"envelope_id": envelope.envelope_id})
        if self.on_failed is not None:
            try:
                self.on_failed(envelope, error, attempts)
            except Exception:  # a reporting hook must never stop deliveries
                log.exception("on_failed hook raised")

    def _pause(self, seconds: float) -> None:
        until = time.time() + seconds
        if until > self._paused_until:
            log.info("the app answered 429: no deliveries from this process for %.0fs", seconds)
            self._paused_until = until

    # ------------------------------------------------------------ one POST, and the store

    def _post(self, envelope: Envelope) -> Answer:
        answer = self.client.post(build_request(envelope, self._secret.reveal(), time.time()))
        if answer.status is not None:  # the app answered: how long it took
            self.latency.observe(answer.elapsed)
            self._recent.append(answer.elapsed)
        if answer.status is not None and answer.status < 500:
            ended = self._outage.answered()
            if ended:
                log.info("the app at %s takes deliveries again, after %.0fs down and %d failed attempts by "
                         "this worker", self.client.shown, *ended)
        if answer.kind == "ratelimited":
            self._pause(answer.retry_after)
        return answer

    def _enqueue(self, envelope: Envelope, not_before: float | None = None, error: str | None = None) -> None:
        eid, key = envelope.envelope_id, order_key(envelope)
        try:
            if self.store.relay_enqueue(eid, self.owner, key, not_before, error):
                self.wake()
                return
        except StoreError as exc:
            self._store_failed("relay_enqueue", exc)
        # The claim went to the fallback (the store was failing), or the store fails now: deliver
        # it from this process's memory rather than drop it.
        fallback = self.health.fallback
        fallback.claim(envelope, self.owner)
        if not fallback.relay_enqueue(eid, self.owner, key, not_before, error):
            log.error("could not queue %s for delivery (not a row this worker holds)", envelope.kind,
                      extra={"envelope_id": eid})
        self.wake()

    def _finish(self, envelope: Envelope, error: str | None) -> None:
        """Mark an answered envelope done (or failed), where its claim put it."""
        eid = envelope.envelope_id
        self.health.fallback.finish(eid, [], error)  # a no-op unless it was claimed there

        def again() -> None:
            self.store.finish(eid, [], error)

        try:
            again()
        except StoreError as exc:  # still ours and processing: retried each round until it works
            self._store_failed("finish", exc)
            self._unsettled.append((eid, again))

    def _settle_leftovers(self) -> None:
        leftovers, self._unsettled = self._unsettled, []
        for eid, again in leftovers:
            try:
                again()
            except StoreError:
                self._unsettled.append((eid, again))

    def _backlog_lost_with_the_dyno(self) -> int:
        """Envelopes waiting for their delivery in the stores that do not outlive this dyno."""
        return left_on_this_dyno((self.store, self.health.fallback),
                                 lambda store: int(store.inbox_stats().get("pending", 0)))

    def _store_failed(self, operation: str, exc: StoreError) -> None:
        """Counted every time; StoreHealth says it once per episode. The call is retried next round."""
        self.stats.store_errors += 1
        self.health.failed(operation, exc)

    # ------------------------------------------------------------ figures

    def stats_dict(self) -> dict[str, Any]:
        recent = sorted(self._recent)
        return {**asdict(self.stats), "backend": self.client.shown, "latency": self.latency.as_dict(),
                "latency_p50_ms": percentile_ms(recent, 0.50), "latency_p99_ms": percentile_ms(recent, 0.99),
                "paused_for_s": round(max(0.0, self._paused_until - time.time()), 3)}

