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
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import gevent.event

from buidl_edge.config import Secret
from buidl_edge.delivery.loop import Delivered, DeliveryLoop, RetryPolicy
from buidl_edge.observability.latency import LatencyHistogram
from buidl_edge.relay.client import Answer, BackendClient
from buidl_edge.relay.late import post_late_answer
from buidl_edge.relay.request import build_request
from buidl_edge.relay.stats import BACKEND_BUCKETS_S, RECENT, Outage, RelayStats, attempts_made, percentile_ms
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import Claimed, DeliveryOutcome, EdgeStore, RelayRow, why_taken_over
from buidl_edge.store.errors import StoreError
from buidl_edge.store.failover import Failover

log = logging.getLogger("buidl_edge.relay")

POLL_INTERVAL_S = 0.25  # how soon rows queued by another process (or retried by hand) are noticed
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
    """One per worker process in relay mode: answers within the deadline, and deliveries from the
    inbox on a `DeliveryLoop` (this is its `Delivery`)."""

    name = "relay"
    log = log

    def __init__(self, store: EdgeStore, client: BackendClient, signing_secret: Secret, owner: str, *,
                 ack_deadline: float, max_attempts: int = 25, backoff_base: float = 1.0, backoff_cap: float = 60.0,
                 lease_s: float = 30.0, concurrency: int = 16, failover: Failover | None = None,
                 on_failed: FailedHook | None = None) -> None:
        self.store = store
        self.client = client
        self._secret = signing_secret
        self.owner = owner
        self.ack_deadline = ack_deadline
        self.retry = RetryPolicy(max_attempts, backoff_base, backoff_cap)
        self.lease_s = lease_s
        self.failover = failover or Failover(store, owner=owner)
        self.on_failed = on_failed  # each envelope that failed for good (Sentry hooks in here)
        self.stats = RelayStats()
        self.latency = LatencyHistogram(BACKEND_BUCKETS_S)
        # Its companions are the answers within the ack deadline and the late answers: the drain
        # lets them finish. inbox_stats reads the whole file: the drain counts every 0.25 s, not 50 ms.
        self.loop = DeliveryLoop(self, self.failover, self.stats, concurrency=concurrency,
                                 poll_s=POLL_INTERVAL_S, drain_poll_s=POLL_INTERVAL_S)
        self._recent: deque[float] = deque(maxlen=RECENT)
        self._outage = Outage()

    # ------------------------------------------------------------ the dispatcher's side

    def answer(self, envelope: Envelope, received_at: float) -> dict[str, Any] | None:
        """Post an envelope that accepts a response payload now; the backend's answer if it
        comes within the ack deadline (from `received_at`, monotonic), else None (ack plain)."""
        acked_without = gevent.event.Event()
        job = self.loop.companions.spawn(self._answer_now, envelope, received_at, acked_without)
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
                post_late_answer(envelope, answer.ack_payload(), time.monotonic() - received_at)
        elif answer.kind == "failed":
            self._failed(envelope, answer.error or "failed", 1)
            self._finish(envelope, answer.error or "failed")
        else:
            self._count_retry(answer)
            delay = answer.retry_after if answer.kind == "ratelimited" else self.retry.delay(1)
            log.warning("delivering %s to the app failed (%s): acked without an answer, queued to be delivered "
                        "again in %.1fs", envelope.kind, answer.error, delay, extra={"envelope_id": eid})
            self._enqueue(envelope, not_before=time.time() + delay, error=answer.error)
        return answer

    # ------------------------------------------------------------ the delivery loop

    def start(self, own_chores: bool = True) -> Relay:
        """`own_chores=False`: a worker runs `loop.chore_round` on its chores' timer."""
        self.loop.start(own_chores)
        return self

    def wake(self) -> None:
        self.loop.wake()

    def stop(self, timeout: float) -> bool:
        """Deliver what waits in a store that dies with the dyno (memory, or the SQLite file on
        this dyno's disk: a restarted Heroku dyno starts with a fresh one), then stop taking rows
        and let deliveries and late answers in flight finish; False on timeout. What is left stays
        in the inbox (processing or pending) for another worker or the next start on that disk;
        in Redis, for the workers of the other dynos."""
        drained = self.loop.stop(timeout)
        if drained.in_flight:
            log.warning("%d delivery(ies) to the app still in flight at exit; they stay in the inbox, and a live "
                        "worker's sweeper (or the next start) delivers them again", drained.in_flight)
        if drained.left:
            log.warning("%d envelope(s) not yet delivered to the app at exit: a start on the same disk delivers "
                        "them, a fresh dyno or a memory store does not (raise BUIDL_DRAIN_TIMEOUT, or use a "
                        "Redis store)", drained.left)
        self.client.close()
        return drained.clean

    def claim(self, store: EdgeStore, limit: int) -> Claimed[RelayRow]:
        return store.relay_claim(self.owner, limit, self.lease_s)

    def deliver(self, row: RelayRow) -> Delivered:
        attempts = attempts_made(row)
        gave_up = self.retry.gave_up(attempts, row.error)  # its last attempts died with their workers
        if gave_up is not None:
            return Delivered(gave_up)
        answer = self._post(row.envelope)
        outcome = self._outcome(answer, attempts)
        if outcome.kind != "sent":
            return Delivered(outcome)
        # Delivered from the queue, so after its ack: the answer goes to the response_url.
        return Delivered(outcome, lambda: self.loop.companions.spawn(
            post_late_answer, row.envelope, answer.ack_payload(), time.time() - row.received_at))

    def settle(self, store: EdgeStore, row: RelayRow, outcome: DeliveryOutcome) -> bool:
        return store.relay_settle(row.envelope.envelope_id, self.owner, outcome)

    def waiting(self, store: EdgeStore) -> int:
        """Envelopes waiting for their delivery."""
        return int(store.inbox_stats().get("pending", 0))

    def chores(self) -> None:
        """None of its own: its rows are inbox rows, renewed by the worker's heartbeat and taken
        back by its sweeper."""

    def _outcome(self, answer: Answer, attempts: int) -> DeliveryOutcome:
        if answer.kind == "ok":
            return DeliveryOutcome("sent")
        if answer.kind == "failed":
            return DeliveryOutcome("failed", answer.error)
        if answer.kind == "ratelimited":
            return DeliveryOutcome("ratelimited", answer.error, time.time() + answer.retry_after)
        return self.retry.retry_or_fail(answer.error, attempts)

    def record(self, row: RelayRow, outcome: DeliveryOutcome, settled: bool) -> None:
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
                self.client.shown, outcome.error, attempts_made(row), self.retry.max_attempts,
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
        """A 429's Retry-After holds every delivery of this process."""
        if self.loop.pause_until(time.time() + seconds):
            log.info("the app answered 429: no deliveries from this process for %.0fs", seconds)

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
        shared, fallback = self.loop.stores()
        try:
            if shared.relay_enqueue(eid, self.owner, key, not_before, error):
                self.wake()
                return
        except StoreError as exc:
            self.loop.store_failed("relay_enqueue", exc)
        # The claim went to the fallback (the store was failing), or the store fails now: deliver
        # it from this process's memory rather than drop it.
        fallback.claim(envelope, self.owner)
        if not fallback.relay_enqueue(eid, self.owner, key, not_before, error):
            log.error("could not queue %s for delivery (not a row this worker holds)", envelope.kind,
                      extra={"envelope_id": eid})
        self.wake()

    def _finish(self, envelope: Envelope, error: str | None) -> None:
        """Mark an answered envelope done (or failed), where its claim put it."""
        eid = envelope.envelope_id
        shared, fallback = self.loop.stores()
        fallback.finish(eid, [], error)  # a no-op unless it was claimed there

        def again() -> None:
            shared.finish(eid, [], error)

        try:
            again()
        except StoreError as exc:  # still ours and processing: retried each chore round until it works
            self.loop.store_failed("finish", exc)
            self.loop.settle_later(again)

    # ------------------------------------------------------------ figures

    def stats_dict(self) -> dict[str, Any]:
        recent = sorted(self._recent)
        return {**asdict(self.stats), "backend": self.client.shown, "latency": self.latency.as_dict(),
                "latency_p50_ms": percentile_ms(recent, 0.50), "latency_p99_ms": percentile_ms(recent, 0.99),
                "paused_for_s": round(max(0.0, self.loop.paused_until - time.time()), 3)}

