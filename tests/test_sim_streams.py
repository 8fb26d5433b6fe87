"""The simulator's streamed messages: chat.startStream, chat.appendStream, chat.stopStream.

Driven by the real slack_sdk WebClient against the real simulator process; each test reads back
what the simulator recorded for the thread.
"""
from __future__ import annotations

import secrets
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from buidl_edge.sandbox.simulator.client import SimulatorProcess

pytestmark = pytest.mark.timeout(30)
THREAD = "1700000000.000100"
FOR_USER: dict[str, Any] = {"recipient_user_id": "U0HUMAN", "recipient_team_id": "T0SIM"}


def client(sim: SimulatorProcess) -> WebClient:
    token = "xoxb-" + "-".join(secrets.token_hex(4) for _ in range(3))  # made up now, for the simulator
    return WebClient(token=token, base_url=sim.api_url, timeout=5)


def refusal(call: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(SlackApiError) as caught:
        call(**kwargs)
    return caught.value.response.status_code, str(caught.value.response["error"])


def test_a_stream_grows_in_its_thread_in_order_until_stopped(fresh_simulator: SimulatorProcess) -> None:
    sim, web = fresh_simulator, client(fresh_simulator)
    started = web.chat_startStream(channel="C0TALK", thread_ts=THREAD, markdown_text="Hel", **FOR_USER)
    ts = started["ts"]
    web.chat_appendStream(channel="C0TALK", ts=ts, markdown_text="lo, ")
    web.chat_appendStream(channel="C0TALK", ts=ts, chunks=[{"type": "markdown_text", "text": "world"}])
    stopped = web.chat_stopStream(channel="C0TALK", ts=ts, markdown_text="!",
                                  blocks=[{"type": "context", "elements": []}])
    assert stopped["message"]["text"] == "Hello, world!"
    [stream] = sim.client.state()["streams"]
    assert (stream["thread_ts"], stream["state"]) == (THREAD, "stopped")
    assert stream["pieces"] == ["Hel", "lo, ", "world", "!"]
    assert stream["recipient_user_id"] == "U0HUMAN" and stream["blocks"]
    [message] = sim.client.state()["messages"]
    assert (message["thread_ts"], message["text"], message["streamed"]) == (THREAD, "Hello, world!", True)
    assert refusal(web.chat_appendStream, channel="C0TALK", ts=ts, markdown_text="late") == (
        200, "message_not_in_streaming_state")
    summary = sim.client.summary()
    assert (summary["streams_started"], summary["stream_appends"], summary["streams_stopped"]) == (1, 2, 1)


def test_stream_calls_answer_slacks_argument_errors(fresh_simulator: SimulatorProcess) -> None:
    web = client(fresh_simulator)
    assert refusal(web.chat_startStream, channel="C0TALK", thread_ts=THREAD) == (200, "invalid_arguments")
    assert refusal(web.chat_startStream, channel="C0TALK", thread_ts="soon", **FOR_USER) == (
        200, "invalid_thread_ts")
    assert web.chat_startStream(channel="D0DM", thread_ts=THREAD)["ok"]  # a DM needs no recipient
    ts = web.chat_startStream(channel="C0TALK", thread_ts=THREAD, **FOR_USER)["ts"]
    assert refusal(web.chat_appendStream, channel="C0TALK", ts=ts, markdown_text="x" * 12_001) == (
        200, "msg_too_long")
    assert web.chat_appendStream(channel="C0TALK", ts=ts, markdown_text="x" * 12_000)["ok"]
    assert refusal(web.chat_appendStream, channel="C0TALK", ts=ts) == (200, "no_text")
    assert refusal(web.chat_appendStream, channel="C0TALK", ts="1.000001", markdown_text="x") == (
        200, "message_not_found")
    assert refusal(web.chat_appendStream, channel="C0TALK", ts=ts, chunks=[{"text": "no type"}]) == (
        200, "invalid_chunks")
    assert refusal(web.chat_stopStream, channel="", ts=ts) == (200, "channel_not_found")


def test_slack_ends_a_stream_after_the_expiry(fresh_simulator: SimulatorProcess) -> None:
    sim, web = fresh_simulator, client(fresh_simulator)
    sim.client.configure(stream_expiry=1)
    ts = web.chat_startStream(channel="C0TALK", thread_ts=THREAD, markdown_text="before", **FOR_USER)["ts"]
    sim.client.wait_for(lambda s: s["streams"][0]["state"] == "expired", 5, "the stream to expire",
                        source="state")
    assert refusal(web.chat_appendStream, channel="C0TALK", ts=ts, markdown_text="after") == (
        200, "message_not_in_streaming_state")
    assert refusal(web.chat_stopStream, channel="C0TALK", ts=ts) == (200, "message_not_in_streaming_state")
    [stream] = sim.client.state()["streams"]
    assert stream["text"] == "before"
    assert sim.client.summary()["streams_expired"] == 1


def test_start_and_stop_are_tier_2_and_append_tier_4(fresh_simulator: SimulatorProcess) -> None:
    sim, web = fresh_simulator, client(fresh_simulator)
    web.retry_handlers.clear()  # see the 429s themselves
    sim.client.configure(stream_start_stop_burst=2, stream_append_burst=3)
    tss = [web.chat_startStream(channel="C0TALK", thread_ts=THREAD, **FOR_USER)["ts"] for _ in range(2)]
    status, error = refusal(web.chat_startStream, channel="C0TALK", thread_ts=THREAD, **FOR_USER)
    assert (status, error) == (429, "ratelimited")
    for _ in range(3):
        web.chat_appendStream(channel="C0TALK", ts=tss[0], markdown_text="a")
    with pytest.raises(SlackApiError) as caught:
        web.chat_appendStream(channel="C0TALK", ts=tss[0], markdown_text="b")
    assert caught.value.response.status_code == 429
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert web.chat_stopStream(channel="C0TALK", ts=tss[0])["ok"]  # its own bucket, not start's
    summary = sim.client.summary()
    assert summary["stream_429s"] == 2
    assert summary["method_429s"] == {"chat.startStream": 1, "chat.appendStream": 1}
