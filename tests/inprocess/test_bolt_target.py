"""The Bolt target in this (gevent-patched) process, with a real slack_bolt App aimed at the simulator.

An event's listener runs after its dispatch in the dispatch's own greenlet only once Bolt acked the
request: a listener that must call `ack()` itself (a custom function's, `auto_acknowledge=False`)
still runs beside the dispatch, which waits for that ack.
"""
from __future__ import annotations

import logging
import secrets
from typing import Any

import gevent
import pytest
from slack_bolt import App
from slack_sdk import WebClient

from buidl_edge.api.app import EdgeApp
from buidl_edge.bolt.target import BoltTarget
from buidl_edge.dispatch.dispatcher import Dispatcher
from buidl_edge.sandbox.harness import fake_tokens
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from buidl_edge.socketmode.link import Ack
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.memory import MemoryStore


class Acks:
    connection = "test"

    def put(self, ack: Ack) -> bool:
        return True


def function_executed(envelope_id: str) -> Envelope:
    event = {"type": "function_executed", "function": {"callback_id": "sum_up"}, "inputs": {"n": 2},
             "function_execution_id": f"Fx{secrets.token_hex(4).upper()}"}
    payload = {"type": "event_callback", "team_id": "T0SIM", "api_app_id": "A0SIM", "event": event,
               "event_id": f"Ev{secrets.token_hex(4).upper()}", "event_time": 1796591572}
    return Envelope(type="events_api", envelope_id=envelope_id, payload=payload)


def test_an_event_listener_that_acks_itself_runs_beside_its_dispatch(
        fresh_simulator: SimulatorProcess, caplog: pytest.LogCaptureFixture) -> None:
    app = App(client=WebClient(token=fake_tokens()["SLACK_BOT_TOKEN"], base_url=fresh_simulator.api_url))
    ran: list[Any] = []

    @app.function("sum_up", auto_acknowledge=False)
    def sum_up(ack: Any, inputs: dict[str, Any]) -> None:
        ack()
        ran.append(inputs["n"])

    dispatcher = Dispatcher(EdgeApp("bolt"), MemoryStore(), None, "test", 2.5, None,
                            make_target=lambda hooks: BoltTarget(app, hooks, 4))
    with caplog.at_level(logging.WARNING):
        assert dispatcher.accept([(function_executed("E-fn"), 0.0)], Acks())  # acked at its claim
        with gevent.Timeout(10):
            while dispatcher.stats.handled < 1:
                gevent.sleep(0.01)
    assert ran == [2]
    # Run after the dispatch instead, its ack would come only once the dispatch gave up waiting.
    assert not [r for r in caplog.records if "ack()" in r.getMessage()], caplog.text
