"""A fixed-bucket ack-latency histogram, cheap enough to update on every ack.

It lives in the worker's snapshot (plain numbers), so `/metrics` can be served
from the snapshots alone: by the worker itself, or for every worker of a dyno
by `buidl-edge run`. No prometheus_client here: the read-ack path imports nothing heavy.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Seconds. Slack's deadline is 3 s; the interesting part is well under it.
ACK_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0)


class LatencyHistogram:
    __slots__ = ("buckets", "counts", "sum_s", "total")

    def __init__(self, buckets: tuple[float, ...] = ACK_BUCKETS_S) -> None:
        self.buckets = buckets  # the relay's backend latency has wider ones
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += 1
        self.sum_s += seconds

    def as_dict(self) -> dict[str, Any]:
        """Per-bucket counts (not cumulative), the count and the sum, in seconds."""
        return {"buckets": list(self.buckets), "counts": list(self.counts), "count": self.total,
                "sum": round(self.sum_s, 6)}
