"""Socket Mode frames in and out: parse, validate, build acks. No I/O.

Frames are small typed objects so that the connection code branches on a
type, not on dict keys, and so that the simulator speaks the same shapes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ENVELOPE_TYPES = frozenset({"events_api", "slash_commands", "interactive"})
DISCONNECT_REASONS = frozenset(
    {"warning", "refresh_requested", "link_disabled", "too_many_websockets"}
)
# Slack drops an ack whose payload is 20 KB or more.
MAX_ACK_BYTES = 20_000
_encode_compact = json.JSONEncoder(separators=(",", ":")).encode
# Generous ceiling for one inbound frame; Slack's own payloads are far below it.
MAX_FRAME_BYTES = 1_000_000
# Slack's deepest payloads (rich text in a view's state) nest some 15 levels. Far below Python's
# recursion limit, so that whatever is accepted can be encoded again (the store does) and walked.
MAX_DEPTH = 100


class ProtocolError(ValueError):
    """A frame that cannot be used. `reason` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Hello:
    num_connections: int
    app_id: str | None
    approximate_connection_time: int | None
    host: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Disconnect:
    reason: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # Each reason is exactly one of fatal, too_many and refresh.
    @property
    def is_fatal(self) -> bool:
        """Socket Mode was turned off for the app: stop, never reconnect."""
        return self.reason == "link_disabled"

    @property
    def is_too_many(self) -> bool:
        """Over the app's connections: close this link first, then back off."""
        return self.reason == "too_many_websockets"

    @property
    def is_refresh(self) -> bool:
        """Slack will close this link soon (warning, refresh_requested, or a reason it added
        since): open the next one first."""
        return not (self.is_fatal or self.is_too_many)


@dataclass(frozen=True)
class Envelope:
    type: str
    envelope_id: str
    payload: dict[str, Any]
    accepts_response_payload: bool = False
    retry_attempt: int = 0
    retry_reason: str = ""
    # The frame exactly as received (None when built in code): what the store keeps, losslessly.
    raw_text: str | None = field(default=None, repr=False, compare=False)

    @property
    def event_id(self) -> str | None:
        """Slack keeps `event_id` across redeliveries that carry a new envelope id."""
        value = self.payload.get("event_id") if self.type == "events_api" else None
        return value if isinstance(value, str) and value else None

    @property
    def dedup_keys(self) -> tuple[str, ...]:
        keys = [f"env:{self.envelope_id}"]
        if self.event_id:
            keys.append(f"evt:{self.event_id}")
        return tuple(keys)

    @property
    def claim_key(self) -> str:
        """The one dedup key a SQLite claim takes: the event id for `events_api` (Slack's retries
        carry it with a new envelope id), the envelope id otherwise. A redelivery of the same
        events_api envelope carries the same event id, so the envelope id adds nothing there."""
        return f"evt:{self.event_id}" if self.event_id else f"env:{self.envelope_id}"

    @property
    def kind(self) -> str:
        """The name handlers are registered under: event type, command or interaction type."""
        if self.type == "events_api":
            event = self.payload.get("event") or {}
            return str(event.get("type", ""))
        if self.type == "slash_commands":
            return str(self.payload.get("command", ""))
        return str(self.payload.get("type", ""))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.type,
            "envelope_id": self.envelope_id,
            "payload": self.payload,
            "accepts_response_payload": self.accepts_response_payload,
        }
        if self.type == "events_api":
            data["retry_attempt"] = self.retry_attempt
            data["retry_reason"] = self.retry_reason
        return data


Frame = Hello | Disconnect | Envelope


def parse_frame(text: str | bytes) -> Frame:
    """Turn one text frame into a typed frame, or raise ProtocolError."""
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError("oversized", f"{len(text)} bytes")
    data = _loads(text, "frame")
    if not isinstance(data, dict):
        raise ProtocolError("not_object", type(data).__name__)
    frame_type = data.get("type")
    if frame_type == "hello":
        return _parse_hello(data)
    if frame_type == "disconnect":
        reason = data.get("reason")
        if not isinstance(reason, str) or not reason:
            raise ProtocolError("bad_disconnect", "missing reason")
        return Disconnect(reason=reason, raw=data)
    if frame_type in ENVELOPE_TYPES:
        return _parse_envelope(data, text if isinstance(text, str) else None)
    raise ProtocolError("unknown_type", repr(frame_type)[:40])


def _loads(text: str | bytes, what: str) -> Any:
    """json.loads, with every way it can fail (RecursionError too) as a ProtocolError."""
    try:
        data = json.loads(text)
    except RecursionError:  # the C decoder gives up on deep nesting this way, not with ValueError
        raise ProtocolError("too_deep", what) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise ProtocolError("not_json", type(exc).__name__) from None
    if _brackets(text) > MAX_DEPTH and _nested_deeper_than(data, MAX_DEPTH):  # the count is the cheap check
        raise ProtocolError("too_deep", what)
    return data


def _brackets(text: str | bytes) -> int:
    """An upper bound of the nesting depth (brackets inside strings count too)."""
    if isinstance(text, bytes):
        return text.count(b"{") + text.count(b"[")
    return text.count("{") + text.count("[")


def _nested_deeper_than(data: Any, limit: int) -> bool:
    """Level by level, without recursion: a frame too deep must not be able to blow the stack here."""
    level = [data] if isinstance(data, (dict, list)) else []
    for _ in range(limit):
        if not level:
            return False
        level = [child for value in level for child in (value.values() if isinstance(value, dict) else value)
                 if isinstance(child, (dict, list))]
    return bool(level)


def _parse_hello(data: dict[str, Any]) -> Hello:
    debug = data.get("debug_info") or {}
    info = data.get("connection_info") or {}
    life = debug.get("approximate_connection_time") if isinstance(debug, dict) else None
    return Hello(
        num_connections=_int(data.get("num_connections"), 1),
        app_id=info.get("app_id") if isinstance(info, dict) else None,
        approximate_connection_time=life if isinstance(life, int) else None,
        host=debug.get("host") if isinstance(debug, dict) else None,
        raw=data,
    )


def _parse_envelope(data: dict[str, Any], raw_text: str | None = None) -> Envelope:
    envelope_id = data.get("envelope_id")
    if not isinstance(envelope_id, str) or not envelope_id:
        raise ProtocolError("missing_envelope_id", str(data.get("type")))
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise ProtocolError("bad_payload", envelope_id)
    return Envelope(
        type=data["type"],
        envelope_id=envelope_id,
        payload=payload,
        accepts_response_payload=bool(data.get("accepts_response_payload", False)),
        retry_attempt=_int(data.get("retry_attempt"), 0),
        retry_reason=str(data.get("retry_reason") or ""),
        raw_text=raw_text,
    )


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def build_ack(envelope_id: str, payload: dict[str, Any] | None = None) -> str:
    """The ack frame. Raises ProtocolError when the payload is too big for Slack."""
    if payload is None:  # every event's ack: no dict, no encoder made per call
        text = '{"envelope_id":' + _encode_compact(envelope_id) + "}"
    else:
        text = _encode_compact({"envelope_id": envelope_id, "payload": payload})
    if len(text) >= MAX_ACK_BYTES:  # bytes = characters: the encoder escapes all but ASCII
        raise ProtocolError("ack_too_large", f"{len(text)} bytes for {envelope_id}")
    return text


def ack_payload_of_answer(body: str, content_type: str) -> dict[str, Any] | None:
    """An app's HTTP-style answer as Socket Mode's ack payload, as Bolt's own Socket Mode adapter
    makes it: a JSON object as it is, other text as {"text": …}, nothing for an empty body (a
    plain ack). Used for the relay's HTTP answers and a Bolt app's BoltResponse alike."""
    if not body.strip():
        return None
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    return {"text": body}


def parse_ack(text: str | bytes) -> tuple[str, dict[str, Any] | None]:
    """The simulator's side of an ack: (envelope_id, payload or None)."""
    data = _loads(text, "ack")
    if not isinstance(data, dict) or not isinstance(data.get("envelope_id"), str):
        raise ProtocolError("missing_envelope_id", "ack")
    payload = data.get("payload")
    return data["envelope_id"], payload if isinstance(payload, dict) else None


def build_hello(num_connections: int, app_id: str, connection_time: int, host: str) -> str:
    return json.dumps(
        {
            "type": "hello",
            "num_connections": num_connections,
            "debug_info": {
                "host": host,
                "build_number": 1,
                "approximate_connection_time": connection_time,
            },
            "connection_info": {"app_id": app_id},
        }
    )


def build_disconnect(reason: str, host: str = "sim") -> str:
    return json.dumps({"type": "disconnect", "reason": reason, "debug_info": {"host": host}})
