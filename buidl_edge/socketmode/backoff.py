"""Exponential backoff with full jitter: how long to wait before trying again.

One rule for every retry of the edge: reconnecting a link, `auth.test` at start-up,
and a reply the outbox posts again.
"""
from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(attempt: int, base: float, cap: float,
                  rng: Callable[[float, float], float] = random.uniform) -> float:
    """uniform(0, min(cap, base * 2**attempt)): full jitter spreads the retries of many clients."""
    return rng(0.0, min(cap, base * (2 ** min(attempt, 30))))
