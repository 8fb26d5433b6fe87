"""Delivery bookkeeping: which envelope carried which event, acks, deadlines.

No I/O and no clock of its own: callers pass `now` (monotonic seconds), so
the hot path is a few dict operations and the rules are easy to test.
"""
from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from .events import Spec


@dataclass(slots=True)
class Delivery:
    envelope_id: str
    key: str
    conn_id: str
    sent_at: float
    deadline: float
    attempt: int
    acked: bool = False


@dataclass(eq=False)
class TrackedEvent:
    key: str
    kind: str
    spec: Spec
    first_envelope_id: str
    envelope_ids: list[str] = field(default_factory=list)
    deliveries: int = 0
    acked: bool = False
    missed: bool = False
    ack_payloads: list[dict[str, Any]] = field(default_factory=list)
    first_ack_latency_ms: float | None = None

    @property
    def retryable(self) -> bool:
        # Slack only retries Events API deliveries; commands and actions just fail.
        return self.spec.envelope_type == "events_api"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "envelope_type": self.spec.envelope_type,
            "event_id": self.spec.event_id,
            "envelope_ids": list(self.envelope_ids),
            "deliveries": self.deliveries,
            "acked": self.acked,
            "missed": self.missed,
            "ack_payloads": list(self.ack_payloads),
            "first_ack_latency_ms": self.first_ack_latency_ms,
        }


class Tracker:
    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters
        self.events: dict[str, TrackedEvent] = {}
        self.deliveries: dict[str, Delivery] = {}
        self.acks: list[dict[str, Any]] = []
        self.latencies_ms: list[float] = []
        self._deadlines: deque[Delivery] = deque()
        self._retries: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()

    def add(self, event: TrackedEvent) -> None:
        self.events[event.key] = event
        self.counters["events_injected"] += 1

    def record_send(self, event: TrackedEvent, envelope_id: str, conn_id: str, attempt: int,
                    now: float, ack_deadline: float) -> None:
        delivery = Delivery(envelope_id, event.key, conn_id, now, now + ack_deadline, attempt)
        self.deliveries[envelope_id] = delivery
        self._deadlines.append(delivery)
        event.envelope_ids.append(envelope_id)
        event.deliveries += 1
        self.counters["envelopes_sent"] += 1

    def record_ack(self, envelope_id: str, payload: dict[str, Any] | None, conn_id: str,
                   now: float) -> Delivery | None:
        """Returns the delivery acked, or None for an unknown or repeated ack (counted)."""
        delivery = self.deliveries.get(envelope_id)
        if delivery is None:
            self.counters["unknown_acks"] += 1
            return None
        if delivery.acked:
            self.counters["duplicate_acks"] += 1
            return None
        delivery.acked = True
        latency = round((now - delivery.sent_at) * 1000, 3)
        self.latencies_ms.append(latency)
        self.counters["acks_total"] += 1
        if now > delivery.deadline:
            self.counters["late_acks"] += 1
        event = self.events[delivery.key]
        if not event.acked:
            event.acked = True
            event.first_ack_latency_ms = latency
            self.counters["acked"] += 1
        if payload is not None:
            event.ack_payloads.append(payload)
        self.acks.append({
            "envelope_id": envelope_id, "key": delivery.key, "connection": conn_id,
            "latency_ms": latency, "payload": payload, "at": time.time(),
        })
        return delivery

    def expire(self, now: float, max_retries: int, retry_delays: list[float]) -> None:
        """Count deliveries past their deadline and schedule Slack-style retries."""
        while self._deadlines and self._deadlines[0].deadline <= now:
            delivery = self._deadlines.popleft()
            if delivery.acked:
                continue
            self.counters["missed_deadlines"] += 1
            event = self.events.get(delivery.key)
            if event is None or event.acked:
                continue
            if event.retryable and delivery.attempt < max_retries:
                delay = retry_delays[min(delivery.attempt, len(retry_delays) - 1)]
                heapq.heappush(self._retries, (now + delay, next(self._seq), event.key, delivery.attempt + 1))
            elif not event.missed:
                event.missed = True
                self.counters["events_missed"] += 1

    def due_retries(self, now: float) -> list[tuple[TrackedEvent, int]]:
        due: list[tuple[TrackedEvent, int]] = []
        while self._retries and self._retries[0][0] <= now:
            _, _, key, attempt = heapq.heappop(self._retries)
            event = self.events.get(key)
            if event is not None and not event.acked:  # a late ack cancels the retry
                due.append((event, attempt))
        return due

    def outstanding(self) -> int:
        return sum(1 for d in self._deadlines if not d.acked)

    def latency_summary(self) -> dict[str, float | int | None]:
        values = sorted(self.latencies_ms)
        if not values:
            return {"count": 0, "p50": None, "p99": None, "max": None}

        def pct(p: float) -> float:
            return values[min(len(values) - 1, int(p * len(values)))]

        return {"count": len(values), "p50": pct(0.50), "p99": pct(0.99), "max": values[-1]}

    def clear(self) -> None:
        self.events.clear()
        self.deliveries.clear()
        self.acks.clear()
        self.latencies_ms.clear()
        self._deadlines.clear()
        self._retries.clear()
