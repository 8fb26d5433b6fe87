"""Where `ctx.stream()` goes by default: the event's thread (its thread_ts, else its own ts), its
channel, and its user and team as the recipients Slack needs outside a DM."""
from __future__ import annotations

import pytest

from buidl_edge.api.stream import StreamError, StreamTarget, stream_target


def test_a_mention_streams_into_its_own_thread_for_its_user_and_team() -> None:
    payload = {"team_id": "T1", "event": {"type": "app_mention", "channel": "C1", "user": "U1", "ts": "1.000002"}}
    assert stream_target(payload, "C1", None, None, None, None) == StreamTarget("C1", "1.000002", "U1", "T1")


def test_a_reply_in_a_thread_streams_into_that_thread_and_the_caller_overrides_each_default() -> None:
    payload = {"team_id": "T1", "event": {"type": "message", "channel": "C1", "user": "U1", "ts": "1.000009",
                                          "thread_ts": "1.000001"}}
    assert stream_target(payload, "C1", None, None, None, None).thread_ts == "1.000001"
    assert stream_target(payload, "C1", "2.000001", "C2", "U2", "T2") == StreamTarget("C2", "2.000001", "U2", "T2")


def test_a_slash_command_names_no_thread_so_it_must_be_given_one() -> None:
    payload = {"channel_id": "C1", "user_id": "U1", "team_id": "T1", "command": "/ask"}
    with pytest.raises(StreamError, match="thread_ts="):
        stream_target(payload, "C1", None, None, None, None)
    assert stream_target(payload, "C1", "3.000001", None, None, None) == StreamTarget("C1", "3.000001", "U1", "T1")
