"""The dispatcher's figures, published with the worker's heartbeat (status, /metrics)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DispatchStats:
    envelopes_new: int = 0
    duplicates: int = 0
    handled: int = 0
    handler_errors: int = 0
    unhandled_kinds: int = 0
    recovered: int = 0
    store_errors: int = 0
    # Calls the store failed alone (StoreRejected): acked and handled on local dedup, not degraded.
    store_rejected: int = 0
    # Acks sent at once, without the payload the handler might have returned, as the pool was full.
    acks_pool_full: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)
