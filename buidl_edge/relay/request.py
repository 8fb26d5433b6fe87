"""The HTTP-mode request Slack would have sent for an envelope: its body, and its signed headers.

Slack's HTTP mode (https://api.slack.com/authentication/verifying-requests-from-slack):
- Events API: the payload as a JSON body;
- slash commands: the payload's fields, form-encoded;
- interactivity: one form field, `payload=<the payload as JSON>`;
- `X-Slack-Request-Timestamp` (Unix seconds) and `X-Slack-Signature`, which is `v0=` and the hex
  HMAC-SHA256, keyed with the app's Signing Secret, of `v0:{timestamp}:{raw body}`;
- on Slack's retries of an event, `X-Slack-Retry-Num` and `X-Slack-Retry-Reason`.

Every attempt is signed when it is made: apps refuse a timestamp more than 5 minutes off their
clock (Bolt and slack_sdk's SignatureVerifier do), and a delivery may be retried for longer.
No I/O here.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from buidl_edge.api.message import utf8_text
from buidl_edge.socketmode.protocol import Envelope

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
USER_AGENT = "buidl-edge-relay/1"


@dataclass(frozen=True)
class SignedRequest:
    body: bytes
    headers: dict[str, str]


def signature(secret: str, timestamp: int, body: bytes) -> str:
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def http_body(envelope: Envelope) -> tuple[bytes, str]:
    """The body and its content type. ASCII throughout: JSON escapes what is not ASCII (a lone
    surrogate too, losslessly), and form fields are percent-encoded UTF-8."""
    if envelope.type == "events_api":
        return _json(envelope.payload).encode("ascii"), JSON_TYPE
    if envelope.type == "slash_commands":
        fields = [(str(name), _form_value(value)) for name, value in envelope.payload.items()]
        return urlencode(fields).encode("ascii"), FORM_TYPE
    return urlencode([("payload", _json(envelope.payload))]).encode("ascii"), FORM_TYPE


def build_request(envelope: Envelope, secret: str, now: float) -> SignedRequest:
    body, content_type = http_body(envelope)
    headers = signed_headers(body, content_type, secret, now)
    if envelope.type == "events_api" and envelope.retry_attempt > 0:  # Slack's own retry, as HTTP mode says it
        headers["X-Slack-Retry-Num"] = str(envelope.retry_attempt)
        if envelope.retry_reason:
            headers["X-Slack-Retry-Reason"] = utf8_text(envelope.retry_reason)[:100]
    return SignedRequest(body, headers)


def url_verification(challenge: str, secret: str, now: float) -> SignedRequest:
    """The signed `url_verification` event Slack sends to a new Request URL: an HTTP-mode app
    answers it with the challenge, after its signature check (`check` uses it as a harmless ping)."""
    body = _json({"token": "buidl-edge-check", "challenge": challenge, "type": "url_verification"}).encode("ascii")
    return SignedRequest(body, signed_headers(body, JSON_TYPE, secret, now))


def signed_headers(body: bytes, content_type: str, secret: str, now: float) -> dict[str, str]:
    timestamp = int(now)
    return {"Content-Type": content_type, "User-Agent": USER_AGENT,
            "X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature(secret, timestamp, body)}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _form_value(value: Any) -> str:
    """A slash command's field as Slack form-encodes it (they are strings; anything else, kept readable)."""
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    return _json(value)
