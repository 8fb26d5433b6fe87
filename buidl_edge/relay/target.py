"""The relay as the dispatcher's target: every new envelope goes to the HTTP-mode app behind it.

An envelope that takes an ack payload (a slash command, a view submission) is posted to the app at
once and its answer rides on the ack when it comes within the deadline; every other one is acked
and queued for durable delivery from the inbox (relay.py).
"""
from __future__ import annotations

import time
from typing import Any

import gevent.pool

from buidl_edge.dispatch.targets import GreenletAnswer
from buidl_edge.relay.relay import Relay
from buidl_edge.socketmode.protocol import Envelope


class RelayTarget:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        # Answers and enqueues started and not yet through: the drain waits for them first.
        self._starting = gevent.pool.Group()

    def answers(self, envelope: Envelope) -> bool:
        return envelope.accepts_response_payload

    def start(self, envelope: Envelope, connection: str | None, received_at: float | None) -> GreenletAnswer | None:
        if received_at is not None:
            return GreenletAnswer(self._starting.spawn(self.relay.answer, envelope, received_at))
        self._starting.spawn(self.relay.enqueue, envelope)  # a store write: never in the reader
        return None

    def rerun(self, envelope: Envelope) -> None:
        self.relay.recover(envelope)

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        started = bool(self._starting.join(timeout=timeout))
        return self.relay.stop(timeout=max(0.1, deadline - time.monotonic())) and started

    def describe(self, greenlet: Any) -> tuple[str, dict[str, Any]] | None:
        return None

    def stats(self) -> dict[str, Any]:
        return {}
