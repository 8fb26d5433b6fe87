"""In-process store: dedup across one worker's connections. Lost on exit, by design."""
from __future__ import annotations

import time
from typing import Any, Sequence

from buidl_edge.protocol import Envelope
from buidl_edge.store.base import DEFAULT_RETENTION_S, MIN_RETENTION_S, Reply


class MemoryStore:
    def __init__(self) -> None:
        self._claims: dict[str, tuple[str, float]] = {}
        self._inbox: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, dict[str, Any]] = {}

    def claim(self, envelope: Envelope, owner: str) -> bool:
        keys = envelope.dedup_keys
        if any(key in self._claims for key in keys):
            return False
        now = time.time()
        for key in keys:
            self._claims[key] = (envelope.envelope_id, now)
        self._inbox[envelope.envelope_id] = {"state": "processing", "owner": owner, "at": now,
                                             "envelope": envelope}
        return True

    def claim_key(self, key: str) -> bool:
        if key in self._claims:
            return False
        self._claims[key] = ("", time.time())
        return True

    def finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None = None) -> None:
        row = self._inbox.get(envelope_id)
        if row is not None:
            row.update(state="failed" if error else "done", error=error, replies=list(replies),
                       at=time.time())

    def renew(self, owner: str) -> int:
        return 0

    def sweep(self, owner: str, limit: int = 100) -> list[Envelope]:
        return []  # nothing outlives this process, so nothing is left to take over

    def heartbeat(self, owner: str, stats: dict[str, Any]) -> None:
        self.stats[owner] = stats

    def prune(self, retention_s: float = DEFAULT_RETENTION_S) -> int:
        cutoff = time.time() - max(retention_s, MIN_RETENTION_S)
        old_keys = [k for k, (_, at) in self._claims.items() if at < cutoff]
        for key in old_keys:
            del self._claims[key]
        old_rows = [e for e, row in self._inbox.items() if row["state"] != "processing" and row["at"] < cutoff]
        for envelope_id in old_rows:
            del self._inbox[envelope_id]
        return len(old_keys) + len(old_rows)

    def close(self) -> None:
        pass
