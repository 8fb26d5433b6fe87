"""A real MemoryStore whose timing a test holds back, as a held write lock or a paused Redis does."""
from __future__ import annotations

from collections.abc import Sequence

import gevent.event

from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.errors import StoreError, StoreUnavailable
from buidl_edge.store.memory import MemoryStore


class HeldStore(MemoryStore):
    """A real MemoryStore whose claim_many (this process's path) waits for `gate` (a held lock) or
    fails (`failing`); `claim` stays as it is, for what other processes do meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = gevent.event.Event()
        self.gate.set()
        self.failing = False
        self.refused = 0  # claim_many calls that failed: a test waits for a retry by them
        self.finished: list[tuple[str, str | None]] = []

    def claim_many_now(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError] | None:
        if not self.gate.is_set() or self.failing:  # as SQLite says when its write lock is taken
            return None
        return super().claim_many_now(envelopes, owner)

    def claim_many(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError]:
        self.gate.wait()
        if self.failing:
            self.refused += 1
            raise StoreUnavailable("disk full")
        return super().claim_many(envelopes, owner)

    def finish(self, envelope_id: str, replies, error=None) -> None:
        self.finished.append((envelope_id, error))
        super().finish(envelope_id, replies, error)


