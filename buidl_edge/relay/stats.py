"""Relay mode's figures: what a worker counts of its deliveries (for `status` and /metrics), and
the app's outages, said once per episode."""
from __future__ import annotations

import time
from dataclasses import dataclass

from buidl_edge.store.base import RelayRow

BACKEND_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RECENT = 1000  # deliveries the p50/p99 of `status` are taken over


@dataclass
class RelayStats:
    """This process's figures, published with its heartbeat."""

    sent: int = 0  # delivered (any 2xx), queued or answered alike
    retried: int = 0  # attempts that failed and will be tried again
    failed: int = 0  # failed for good
    rate_limited: int = 0  # 429s from the backend
    answered: int = 0  # ack payloads the backend gave in time
    late_answers: int = 0  # answers that came after the ack deadline
    lease_lost: int = 0
    in_flight: int = 0
    store_errors: int = 0


class Outage:
    """The app not taking deliveries, said once per episode: a warning when it starts, a line when
    it ends; the retries in between are DEBUG (one per attempt per channel would drown the log)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.failures = 0

    def failed(self) -> bool:
        """Count a retryable failure; True when it starts an episode."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            self.failures = 1
            return True
        return False

    def answered(self) -> tuple[float, int] | None:
        """The app answered: (seconds, failures) of the episode this ends, if one was on."""
        if self.since is None:
            return None
        ended = (time.monotonic() - self.since, self.failures)
        self.since = None
        return ended


def attempts_made(row: RelayRow) -> int:
    """How many times a queued envelope has been posted to the app, this delivery included: the
    queue's deliveries, and the post at ack time of one whose answer could ride on the ack (every
    such envelope is posted then, and queued only when that failed)."""
    return row.attempts + (1 if row.envelope.accepts_response_payload else 0)


def percentile_ms(ordered: list[float], fraction: float) -> float | None:
    """The value at `fraction` of sorted seconds, in milliseconds; None for no values."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 3)
