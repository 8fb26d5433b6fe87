"""The ack path: a read burst in, the acks to write out, each new envelope handed to the target.

It decides a burst's claims (`AckClaims`: the store's word within BUIDL_CLAIM_WAIT_S, else acked
undecided and handed on once the store decides) and returns the acks decided now for the link's
reader to write with its burst. Acks that wait (a handler's answer for the ack, a claim the store
takes its time over) are written later through the link's `LaterAcks`. It never calls the link.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import gevent.pool

from buidl_edge.dispatch.ack_claims import AckClaims
from buidl_edge.dispatch.stats import DispatchStats
from buidl_edge.dispatch.targets import Answer, Target
from buidl_edge.socketmode.link import Ack, LaterAcks
from buidl_edge.socketmode.protocol import Envelope

log = logging.getLogger("buidl_edge.dispatch")

Burst = Sequence[tuple[Envelope, float]]


class AckPath:
    """Acks go through `inflight`, never capped; the target's submit never waits: no ack ever
    waits for handler capacity."""

    def __init__(self, claims: AckClaims, target: Target, stats: DispatchStats, ack_payload_deadline: float) -> None:
        self.claims = claims
        self.target = target
        self.stats = stats
        self.ack_payload_deadline = ack_payload_deadline
        self.inflight = gevent.pool.Group()

    def accept(self, burst: Burst, later: LaterAcks) -> list[Ack]:
        """The envelopes of one read (each with when it was read) in, the acks decided now out.

        When the store decides the claims without waiting (SQLite's write lock free, the memory
        store), the whole burst is claimed in one commit right here, in the reader; else one
        greenlet of `inflight` claims it in one commit or round trip (Redis) and acks later.
        """
        new = self.claims.now([envelope for envelope, _ in burst])
        if new is None:
            self.inflight.spawn(self._claim_then_ack, burst, later)
            return []
        return self._acks(burst, new, later)

    def _claim_then_ack(self, burst: Burst, later: LaterAcks) -> None:
        new = self.claims.within_bound([envelope for envelope, _ in burst],
                                       lambda envelope, is_new: self._decided_later(envelope, is_new, later))
        if new is None:  # acked undecided: each is handed on by _decided_later
            acks = [Ack(envelope.envelope_id, None, received_at) for envelope, received_at in burst]
        else:
            acks = self._acks(burst, new, later)
        for ack in acks:
            later.put(ack)

    def _acks(self, burst: Burst, new: Sequence[bool], later: LaterAcks) -> list[Ack]:
        """The acks of a decided burst; each new envelope handed on. An answer the target may give
        is waited for on a greenlet of `inflight`: the burst's next acks must not wait behind it."""
        acks: list[Ack] = []
        for (envelope, received_at), is_new in zip(burst, new):
            if not is_new:
                self._duplicate(envelope, later, "acked and dropped")
            else:
                self.stats.envelopes_new += 1
                if self.target.answers(envelope):
                    answer = self.target.start(envelope, later.connection, received_at)
                    if answer is not None:
                        self.inflight.spawn(self._ack_when_answered, answer, envelope, received_at, later)
                        continue
                else:
                    self.target.start(envelope, later.connection, None)
            acks.append(Ack(envelope.envelope_id, None, received_at))
        return acks

    def _ack_when_answered(self, answer: Answer, envelope: Envelope, received_at: float, later: LaterAcks) -> None:
        """Wait for the target's answer up to the ack deadline, then ack with it (or without)."""
        remaining = self.ack_payload_deadline - (time.monotonic() - received_at)
        answered = answer.wait(max(0.0, remaining))
        if not answered:
            log.warning("handler missed the %.1fs ack deadline; acked without payload", self.ack_payload_deadline,
                        extra={"connection": later.connection, "envelope_id": envelope.envelope_id})
        later.put(Ack(envelope.envelope_id, answer.value if answered else None, received_at))

    def _decided_later(self, envelope: Envelope, new: bool, later: LaterAcks) -> None:
        """The store decided an envelope acked before it could (an answer is too late for the ack
        by now: a command answers through response_url)."""
        if not new:
            self._duplicate(envelope, later, "dropped; it was acked while the store decided")
            return
        self.stats.envelopes_new += 1
        self.target.start(envelope, later.connection, None)

    def _duplicate(self, envelope: Envelope, later: LaterAcks, fate: str) -> None:
        self.stats.duplicates += 1
        log.info("duplicate %s (retry %d) %s", envelope.kind, envelope.retry_attempt, fate,
                 extra={"connection": later.connection, "envelope_id": envelope.envelope_id})

    def finish(self, timeout: float) -> bool:
        """Wait for the claims and acks in flight (never capped, never long); False on timeout."""
        return bool(self.inflight.join(timeout=timeout))
