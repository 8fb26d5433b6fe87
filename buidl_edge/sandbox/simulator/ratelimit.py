"""Token bucket used for chat.postMessage's per-channel limit."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    tokens: float
    updated: float

    def take(self, now: float, rate: float, burst: float) -> float:
        """Spend one token; returns 0 when allowed, else seconds until one is available."""
        if rate > 0:
            self.tokens = min(burst, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate if rate > 0 else 60.0
