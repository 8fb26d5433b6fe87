"""Socket Mode frames: typed parsing, one exception type for bad frames, ack building."""
from __future__ import annotations

import json
from typing import Any

import pytest

from buidl_edge.socketmode import protocol
from buidl_edge.socketmode.protocol import (
    MAX_ACK_BYTES,
    MAX_DEPTH,
    MAX_FRAME_BYTES,
    Disconnect,
    Envelope,
    Hello,
    ProtocolError,
    build_ack,
    build_disconnect,
    build_hello,
    parse_ack,
    parse_frame,
)


def events_api_frame(**overrides: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "events_api",
        "envelope_id": "57d6a792-4d35-4d0b-b6aa-3361493e1caf",
        "payload": {
            "type": "event_callback",
            "event_id": "Ev01ABCDEF",
            "event": {"type": "app_mention", "channel": "C1", "user": "U1", "text": "<@U0BOT> hi", "ts": "1.000100"},
        },
        "accepts_response_payload": False,
        "retry_attempt": 2,
        "retry_reason": "timeout",
    }
    frame.update(overrides)
    return frame


# -- good frames ---------------------------------------------------------------------


def test_hello_is_parsed_with_count_lifetime_app_and_host() -> None:
    frame = parse_frame(build_hello(3, "A0APP", 360, "applink-7"))
    assert frame == Hello(num_connections=3, app_id="A0APP", approximate_connection_time=360, host="applink-7")


def test_hello_without_debug_info_still_parses_with_defaults() -> None:
    frame = parse_frame('{"type": "hello"}')
    assert isinstance(frame, Hello)
    assert (frame.num_connections, frame.app_id, frame.approximate_connection_time) == (1, None, None)


@pytest.mark.parametrize("reason,is_refresh,is_fatal", [
    ("warning", True, False),
    ("refresh_requested", True, False),
    ("link_disabled", False, True),
    ("too_many_websockets", False, False),
])
def test_each_disconnect_reason_is_classified(reason: str, is_refresh: bool, is_fatal: bool) -> None:
    frame = parse_frame(build_disconnect(reason))
    assert frame == Disconnect(reason=reason)
    assert (frame.is_refresh, frame.is_fatal) == (is_refresh, is_fatal)


def test_events_api_envelope_carries_retry_fields_event_id_and_kind() -> None:
    frame = parse_frame(json.dumps(events_api_frame()))
    assert isinstance(frame, Envelope)
    assert frame.type == "events_api"
    assert frame.envelope_id == "57d6a792-4d35-4d0b-b6aa-3361493e1caf"
    assert (frame.retry_attempt, frame.retry_reason) == (2, "timeout")
    assert frame.accepts_response_payload is False
    assert frame.event_id == "Ev01ABCDEF"
    assert frame.kind == "app_mention"
    assert frame.dedup_keys == ("env:57d6a792-4d35-4d0b-b6aa-3361493e1caf", "evt:Ev01ABCDEF")


def test_slash_command_envelope_is_keyed_by_command_and_only_by_envelope_id() -> None:
    text = json.dumps({"type": "slash_commands", "envelope_id": "e-1", "accepts_response_payload": True,
                       "payload": {"command": "/buidl", "text": "help", "channel_id": "C1"}})
    frame = parse_frame(text)
    assert isinstance(frame, Envelope)
    assert (frame.kind, frame.accepts_response_payload) == ("/buidl", True)
    assert frame.event_id is None and frame.dedup_keys == ("env:e-1",)
    assert (frame.retry_attempt, frame.retry_reason) == (0, "")


def test_interactive_envelope_is_keyed_by_interaction_type() -> None:
    frame = parse_frame(json.dumps({"type": "interactive", "envelope_id": "e-2",
                                    "payload": {"type": "block_actions", "actions": []}}))
    assert isinstance(frame, Envelope)
    assert frame.kind == "block_actions" and frame.accepts_response_payload is False


def test_bytes_frames_parse_like_text() -> None:
    assert isinstance(parse_frame(json.dumps(events_api_frame()).encode()), Envelope)


def test_envelope_to_dict_round_trips_through_the_parser() -> None:
    original = parse_frame(json.dumps(events_api_frame(accepts_response_payload=True)))
    assert isinstance(original, Envelope)
    assert parse_frame(json.dumps(original.to_dict())) == original


def test_non_integer_retry_attempt_falls_back_to_zero() -> None:
    frame = parse_frame(json.dumps(events_api_frame(retry_attempt="2", retry_reason=None)))
    assert isinstance(frame, Envelope)
    assert (frame.retry_attempt, frame.retry_reason) == (0, "")


# -- bad frames: one exception type, a reason each ---------------------------------------


def nested(depth: int, inner: str = "1") -> str:
    """`depth` levels of objects and lists, alternating: {"a": [{"a": [ … ]}]}."""
    opening = "".join('{"a": ' if level % 2 == 0 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 == 0 else "]" for level in reversed(range(depth)))
    return opening + inner + closing


def deep_envelope(depth: int) -> str:
    """An events_api envelope whose payload holds `depth` more levels (the frame itself is one)."""
    frame = json.dumps(events_api_frame(payload={"event": "HOLE"}))
    return frame.replace('"HOLE"', nested(depth - 2))

BAD_FRAMES = [
    ("not json {", "not_json"),
    (b"\xff\xfe\x00garbage", "not_json"),
    ("", "not_json"),
    ("[1, 2, 3]", "not_object"),
    ('"just a string"', "not_object"),
    ("42", "not_object"),
    ("null", "not_object"),
    ('{"type": "reaction"}', "unknown_type"),
    ('{"no_type": true}', "unknown_type"),
    ('{"type": "events_api", "payload": {}}', "missing_envelope_id"),
    ('{"type": "slash_commands", "envelope_id": "", "payload": {}}', "missing_envelope_id"),
    ('{"type": "interactive", "envelope_id": 17, "payload": {}}', "missing_envelope_id"),
    ('{"type": "events_api", "envelope_id": "e-3", "payload": "text"}', "bad_payload"),
    ('{"type": "events_api", "envelope_id": "e-3"}', "bad_payload"),
    ('{"type": "disconnect"}', "bad_disconnect"),
    ("x" * (MAX_FRAME_BYTES + 1), "oversized"),
    # 100k levels is only 200 KB: json's C decoder raises RecursionError, not ValueError.
    ("[" * 100_000 + "]" * 100_000, "too_deep"),
    (b"{\"a\": " * 100_000 + b"1" + b"}" * 100_000, "too_deep"),
    (deep_envelope(100_000), "too_deep"),
    # Decodable, but too deep to encode again or walk safely downstream.
    (deep_envelope(MAX_DEPTH + 1), "too_deep"),
    ("1" * 5000, "not_json"),  # past Python's limit on integer digits: a ValueError of its own
    (json.dumps(events_api_frame(payload={"blob": "x" * MAX_FRAME_BYTES})), "oversized"),
]


@pytest.mark.parametrize("text,reason", BAD_FRAMES, ids=[r + f"-{i}" for i, (_, r) in enumerate(BAD_FRAMES)])
def test_bad_frame_raises_protocol_error_with_reason(text: str | bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_frame(text)
    assert caught.value.reason == reason
    assert str(caught.value).startswith(reason)
    assert isinstance(caught.value, ValueError)


def test_frame_as_deep_as_allowed_parses_and_encodes_again() -> None:
    frame = parse_frame(deep_envelope(MAX_DEPTH))
    assert isinstance(frame, Envelope)
    json.dumps(frame.payload)  # what the store does with it


def test_brackets_inside_strings_are_not_nesting() -> None:
    frame = parse_frame(json.dumps(events_api_frame(payload={"text": "[{" * 5000})))
    assert isinstance(frame, Envelope) and frame.payload["text"] == "[{" * 5000


def test_oversized_check_comes_before_json_decoding() -> None:
    # Valid JSON, but too big: refused for its size, so a huge frame is never decoded.
    huge = json.dumps({"type": "hello", "pad": "y" * MAX_FRAME_BYTES})
    with pytest.raises(ProtocolError) as caught:
        parse_frame(huge)
    assert caught.value.reason == "oversized"


def test_unknown_type_detail_is_truncated() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_frame(json.dumps({"type": "z" * 500}))
    assert len(str(caught.value)) < 80


# -- acks ------------------------------------------------------------------------------------


def test_ack_without_payload_is_just_the_envelope_id() -> None:
    text = build_ack("e-1")
    assert json.loads(text) == {"envelope_id": "e-1"}
    assert parse_ack(text) == ("e-1", None)


def test_ack_with_payload_carries_it() -> None:
    payload = {"response_type": "ephemeral", "text": "help"}
    text = build_ack("e-1", payload)
    assert json.loads(text) == {"envelope_id": "e-1", "payload": payload}
    assert parse_ack(text) == ("e-1", payload)


def test_ack_with_empty_dict_payload_keeps_it() -> None:
    assert json.loads(build_ack("e-1", {})) == {"envelope_id": "e-1", "payload": {}}


def _payload_of_frame_size(size: int) -> dict[str, str]:
    base = len(build_ack("e-1", {"text": ""}))
    return {"text": "a" * (size - base)}


def test_ack_just_under_20k_is_built() -> None:
    payload = _payload_of_frame_size(MAX_ACK_BYTES - 1)
    text = build_ack("e-1", payload)
    assert len(text.encode()) == MAX_ACK_BYTES - 1


@pytest.mark.parametrize("size", [MAX_ACK_BYTES, MAX_ACK_BYTES + 1, 5 * MAX_ACK_BYTES])
def test_ack_of_20k_or_more_is_refused(size: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        build_ack("e-1", _payload_of_frame_size(size))
    assert caught.value.reason == "ack_too_large"
    assert "e-1" in str(caught.value)


def test_non_ascii_ack_payload_is_measured_as_sent() -> None:
    # json.dumps escapes non-ASCII (6 bytes a snowman): 3,400 of them are over 20 KB on the wire.
    with pytest.raises(ProtocolError):
        build_ack("e-1", {"text": "\u2603" * 3400})


@pytest.mark.parametrize("text", ["nope", "[]", '{"payload": {}}', '{"envelope_id": 5}', "[" * 100_000])
def test_parse_ack_refuses_frames_without_envelope_id(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_ack(text)


def test_envelope_types_and_reasons_are_slacks() -> None:
    assert protocol.ENVELOPE_TYPES == {"events_api", "slash_commands", "interactive"}
    assert protocol.DISCONNECT_REASONS == {"warning", "refresh_requested", "link_disabled", "too_many_websockets"}
