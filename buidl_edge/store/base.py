"""The store interface every backend (memory, SQLite, later Redis) implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from buidl_edge.protocol import Envelope

# Slack retries for about 5 minutes; dedup keys must outlive that with room to spare.
MIN_RETENTION_S = 600.0
DEFAULT_RETENTION_S = 3600.0


@dataclass(frozen=True)
class Reply:
    """One outbound message a handler asked for."""

    channel: str
    text: str | None = None
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None


class EdgeStore(Protocol):
    def claim(self, envelope: Envelope, owner: str) -> bool:
        """Record the envelope and its dedup keys atomically; True when it is new."""

    def claim_key(self, key: str) -> bool:
        """Claim one free-form dedup key (for handlers' own once-only logic)."""

    def finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None = None) -> None:
        """Mark the envelope handled, recording the replies with it."""

    def renew(self, owner: str) -> int:
        """Extend the leases of the envelopes this owner is still handling."""

    def sweep(self, owner: str, limit: int = 100) -> list[Envelope]:
        """Take over envelopes whose owner died or whose lease ran out; return them to re-run."""

    def heartbeat(self, owner: str, stats: dict[str, Any]) -> None:
        """Publish this worker's stats for `status`."""

    def prune(self, retention_s: float = DEFAULT_RETENTION_S) -> int:
        """Forget handled envelopes and keys older than the retention; return rows dropped."""

    def close(self) -> None: ...
