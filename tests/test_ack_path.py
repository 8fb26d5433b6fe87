"""The ack path's routing, table-driven: which ack goes now (with the reader's burst) or later, with
or without a payload, and whether the handler runs, for every mix of new or duplicate, a payload
taken or not, handler capacity free or full, and the store deciding, busy or failed.

Real parts: AckClaims over a real MemoryStore (its timing held back as a held write lock holds it,
or failing), the real EdgeApp handler target with its real handler pool. No clock is read.
"""
from __future__ import annotations

from dataclasses import dataclass

import gevent
import gevent.event
import pytest

from buidl_edge.api.app import EdgeApp
from buidl_edge.dispatch.ack_claims import AckClaims
from buidl_edge.dispatch.ack_path import AckPath
from buidl_edge.dispatch.handlers import HandlerTarget
from buidl_edge.dispatch.stats import DispatchStats
from buidl_edge.socketmode.link import Ack
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import Reply
from buidl_edge.store.failover import Failover
from buidl_edge.store.health import StoreHealth
from held_store import HeldStore

OWNER = "host:1"


class LaterAcks:
    connection = "c0.1"

    def __init__(self) -> None:
        self.acks: list[Ack] = []

    def put(self, ack: Ack) -> None:
        self.acks.append(ack)


def message(envelope_id: str) -> Envelope:
    return Envelope("events_api", envelope_id, {"event_id": f"Ev{envelope_id}",
                                                "event": {"type": "message", "text": "hi", "user": "U1"}})


def command(envelope_id: str) -> Envelope:
    return Envelope("slash_commands", envelope_id, {"command": "/echo", "text": "hi", "user_id": "U1"},
                    accepts_response_payload=True)


@dataclass(frozen=True)
class Case:
    store: str  # "deciding", "busy" (its answer comes after the bound), "failed" (then recovers)
    kind: str  # "message" (no payload taken) or "command" (a payload taken)
    duplicate: bool
    pool_full: bool
    # What must happen:
    acked_now: bool  # in the reader's burst
    payload: bool  # the handler's answer rides on the ack
    handled: bool


CASES = [
    Case("deciding", "message", False, False, acked_now=True, payload=False, handled=True),
    Case("deciding", "message", True, False, acked_now=True, payload=False, handled=False),
    Case("deciding", "command", False, False, acked_now=False, payload=True, handled=True),
    Case("deciding", "command", False, True, acked_now=True, payload=False, handled=True),
    Case("deciding", "command", True, False, acked_now=True, payload=False, handled=False),
    Case("busy", "message", False, False, acked_now=False, payload=False, handled=True),
    Case("busy", "message", True, False, acked_now=False, payload=False, handled=False),
    Case("busy", "command", False, False, acked_now=False, payload=False, handled=True),
    Case("failed", "message", False, False, acked_now=False, payload=False, handled=True),
    Case("failed", "command", True, False, acked_now=False, payload=False, handled=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.store}-{c.kind}-{'dup' if c.duplicate else 'new'}"
                                                      f"{'-pool-full' if c.pool_full else ''}")
def test_ack_routing(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    import buidl_edge.dispatch.ack_claims as ack_claims

    monkeypatch.setattr(ack_claims, "RETRY_S", 0.01)
    store = HeldStore()
    health = StoreHealth()
    handled: list[str] = []
    release = gevent.event.Event()
    app = EdgeApp("table")

    @app.event("message")
    def on_message(event: dict, ctx: object) -> None:
        handled.append(event["text"])

    @app.command("/echo")
    def echo(payload: dict, ctx: object) -> dict:
        handled.append(payload["text"])
        return {"text": "echo"}

    @app.command("/block")
    def block(payload: dict, ctx: object) -> None:
        release.wait()

    def finish(envelope_id: str, replies: list[Reply], error: str | None) -> bool:
        store.finish(envelope_id, replies, error)
        return True  # it landed in the shared store (finish does not fail here)

    stats = DispatchStats()
    claims = AckClaims(Failover(store, health, OWNER), OWNER, wait_s=0.05, on_failure=health.failed)
    target = HandlerTarget(app, None, stats, None, claim_key=store.claim_key, finish=finish, pool_size=1)
    path = AckPath(claims, target, stats, ack_payload_deadline=2.0)
    make = message if case.kind == "message" else command
    if case.duplicate:  # another delivery of it was claimed before (by another process)
        assert store.claim(make("E1"), "other:2")
    if case.pool_full:  # the one handler place is taken by a handler that waits
        path.accept([(Envelope("slash_commands", "B0", {"command": "/block", "text": ""},
                               accepts_response_payload=True), 0.0)], LaterAcks())
        gevent.sleep(0)
    if case.store == "busy":
        store.gate.clear()
    if case.store == "failed":
        store.failing = True

    later = LaterAcks()
    envelope = make("E1")
    now = path.accept([(envelope, 0.0)], later)
    if case.store == "busy":
        gevent.sleep(0.1)  # past the bound: the ack went without the store's word
        store.gate.set()
    if case.store == "failed":
        gevent.sleep(0.1)
        store.failing = False
    path.finish(timeout=5)
    claims.late.join(timeout=5)

    acks = now + [a for a in later.acks if a.envelope_id == "E1"]
    assert [a.envelope_id for a in acks] == ["E1"]  # acked exactly once, whatever happened
    assert (acks[0] in now) is case.acked_now
    assert (acks[0].payload == {"text": "echo"}) is case.payload
    release.set()  # a handler queued behind the full pool runs now
    assert target.pool.join(timeout=5)
    assert (handled == ["hi"]) is case.handled, handled
