"""Relay mode's request and settings, checked with Slack's and Bolt's own code (no mocks).

The request the relay builds must pass slack_sdk's SignatureVerifier (what Bolt's request
verification runs) and parse, with Bolt's own body parser, into the very payload the envelope
carried. The settings refuse a backend URL the relay may not post to, in one line.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from slack_bolt.request import BoltRequest
from slack_sdk.signature import SignatureVerifier

from buidl_edge.config import ConfigError, load_settings
from buidl_edge.relay.client import Answer
from buidl_edge.relay.relay import order_key
from buidl_edge.relay.request import build_request, signature
from buidl_edge.sandbox.harness import fake_tokens
from buidl_edge.socketmode.protocol import Envelope, parse_frame

SECRET = secrets.token_hex(16)
LONE = "\udc00"

EVENT = Envelope("events_api", "E1", {"type": "event_callback", "event_id": "Ev1", "team_id": "T1",
                                      "event": {"type": "app_mention", "channel": "C1", "text": "héllo <@U1> & = +"}})
COMMAND = Envelope("slash_commands", "E2", {"command": "/deploy", "text": "prod now & then = +1", "channel_id": "C2",
                                            "user_id": "U2", "team_id": "T1", "is_enterprise_install": False,
                                            "response_url": "https://hooks.slack.com/commands/T1/1/x"},
                   accepts_response_payload=True)
ACTION = Envelope("interactive", "E3", {"type": "block_actions", "user": {"id": "U3"}, "channel": {"id": "C3"},
                                        "actions": [{"action_id": "a", "value": "x&y=z"}], "team": {"id": "T1"}})


def as_bolt_sees_it(envelope: Envelope, secret: str = SECRET, now: float | None = None) -> BoltRequest:
    request = build_request(envelope, secret, time.time() if now is None else now)
    return BoltRequest(body=request.body.decode("utf-8"), headers=dict(request.headers))


@pytest.mark.parametrize("envelope", [EVENT, COMMAND, ACTION], ids=["events_api", "slash_commands", "interactive"])
def test_each_envelope_becomes_a_signed_request_bolt_parses_into_the_same_payload(envelope: Envelope) -> None:
    request = build_request(envelope, SECRET, time.time())
    assert SignatureVerifier(SECRET).is_valid_request(request.body, request.headers)
    assert not SignatureVerifier(secrets.token_hex(16)).is_valid_request(request.body, request.headers)
    parsed = as_bolt_sees_it(envelope).body
    if envelope.type == "slash_commands":  # form fields are strings, as Slack sends them
        assert parsed == {k: ("false" if v is False else v) for k, v in envelope.payload.items()}
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    else:
        assert parsed == envelope.payload
    assert "X-Slack-Retry-Num" not in request.headers


def test_the_signature_is_v0_hmac_sha256_of_the_version_timestamp_and_raw_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), b"v0:1700000000:" + body, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, body) == "v0=" + expected


def test_a_request_is_signed_when_it_is_made_so_bolt_refuses_one_older_than_five_minutes() -> None:
    stale = build_request(EVENT, SECRET, time.time() - 301)
    assert not SignatureVerifier(SECRET).is_valid_request(stale.body, stale.headers)
    fresh = build_request(EVENT, SECRET, time.time())
    assert SignatureVerifier(SECRET).is_valid_request(fresh.body, fresh.headers)


def test_slacks_retries_carry_the_retry_headers_and_first_deliveries_none() -> None:
    retried = Envelope("events_api", "E9", EVENT.payload, retry_attempt=2, retry_reason="timeout")
    headers = build_request(retried, SECRET, time.time()).headers
    assert (headers["X-Slack-Retry-Num"], headers["X-Slack-Retry-Reason"]) == ("2", "timeout")
    assert "X-Slack-Retry-Num" not in build_request(EVENT, SECRET, time.time()).headers


def test_lone_surrogates_travel_losslessly_in_json_and_as_replacement_characters_in_forms() -> None:
    frame = ('{"type":"events_api","envelope_id":"E5","payload":{"event_id":"Ev5","event":'
             '{"type":"message","channel":"C5","text":"x\\udc00y"}},"accepts_response_payload":false}')
    event = parse_frame(frame)
    assert isinstance(event, Envelope)
    assert as_bolt_sees_it(event).body["event"]["text"] == f"x{LONE}y"
    command = Envelope("slash_commands", "E6", {"command": "/c", "text": f"a{LONE}b"})
    assert as_bolt_sees_it(command).body["text"] == "a\ufffdb"


def test_the_apps_answer_becomes_the_ack_payload_as_bolt_s_socket_mode_adapter_makes_it() -> None:
    assert Answer("ok", 200, body=b'{"text":"hi","response_type":"in_channel"}',
                  content_type="application/json;charset=utf-8").ack_payload() == {
        "text": "hi", "response_type": "in_channel"}
    assert Answer("ok", 200, body=b"echo: hi", content_type="text/plain;charset=utf-8").ack_payload() == {
        "text": "echo: hi"}
    assert Answer("ok", 200, body=b"", content_type="text/plain").ack_payload() is None  # a plain ack
    assert Answer("ok", 200, body=b"[1]", content_type="application/json").ack_payload() == {"text": "[1]"}
    assert Answer("failed", 401, body=b'{"error":"invalid request"}').ack_payload() is None


def test_rows_queue_under_their_channel_and_channel_less_ones_alone() -> None:
    assert order_key(EVENT) == "ch:C1" and order_key(COMMAND) == "ch:C2" and order_key(ACTION) == "ch:C3"
    reaction = Envelope("events_api", "E7", {"event": {"type": "reaction_added", "item": {"channel": "C7"}}})
    created = Envelope("events_api", "E8", {"event": {"type": "channel_created", "channel": {"id": "C8"}}})
    view = Envelope("interactive", "E9", {"type": "view_submission", "view": {"id": "V1"}})
    assert (order_key(reaction), order_key(created), order_key(view)) == ("ch:C7", "ch:C8", "env:E9")


# ---------------------------------------------------------------- settings


def settings(**env: str) -> Any:
    return load_settings({**fake_tokens(), "SLACK_SIGNING_SECRET": SECRET, **env})


@pytest.mark.parametrize("url", ["http://127.0.0.1:3000/slack/events", "http://localhost/x", "http://[::1]:8/e",
                                 "https://bolt.example.com/slack/events"])
def test_relay_urls_to_loopback_or_over_tls_are_taken(url: str) -> None:
    assert settings(BUIDL_RELAY_URL=url).relay_url == url


@pytest.mark.parametrize("url, private, said", [
    ("http://bolt:3000/slack/events", "", ("http:// to bolt is refused; use https://, a loopback address, or name "
                                           "the host in BUIDL_RELAY_PRIVATE_HOSTS")),
    ("http://8.8.8.8/slack/events", "8.8.8.8", "8.8.8.8 is refused: it is a public address"),
    ("ftp://127.0.0.1/x", "", "must be the app's Request URL"),
    ("http://127.0.0.1:99999/x", "", "not a valid URL"),
])
def test_relay_urls_the_relay_may_not_post_to_are_refused_in_one_line(url: str, private: str, said: str) -> None:
    with pytest.raises(ConfigError, match="BUIDL_RELAY_URL") as caught:
        settings(BUIDL_RELAY_URL=url, BUIDL_RELAY_PRIVATE_HOSTS=private)
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_a_private_host_named_by_the_user_is_taken_over_plain_http() -> None:
    named = settings(BUIDL_RELAY_URL="http://Bolt-App:3000/slack/events", BUIDL_RELAY_PRIVATE_HOSTS="db, bolt-app")
    assert named.relay_private_hosts == ("db", "bolt-app")
    assert settings(BUIDL_RELAY_URL="http://10.1.2.3/e", BUIDL_RELAY_PRIVATE_HOSTS="10.1.2.3").relay


def test_relay_mode_needs_the_signing_secret_and_shows_it_masked() -> None:
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET is not set"):
        load_settings({**fake_tokens(), "BUIDL_RELAY_URL": "http://127.0.0.1:3000/e"})
    loose = load_settings({**fake_tokens(), "BUIDL_RELAY_URL": "http://127.0.0.1:3000/e"}, require_tokens=False)
    assert "signing_secret" in loose.token_problems()
    shown = settings(BUIDL_RELAY_URL="http://user:pw@127.0.0.1:3000/e").redacted()
    assert shown["signing_secret"] == f"…{SECRET[-4:]}" and shown["relay_url"] == "http://user:***@127.0.0.1:3000/e"
    assert SECRET not in repr(settings(BUIDL_RELAY_URL="http://127.0.0.1:3000/e"))
    assert load_settings(fake_tokens()).signing_secret is None  # not relaying: not read at all


@pytest.mark.parametrize("address, private", [
    ("10.0.0.7", True), ("172.16.3.4", True), ("192.168.1.9", True), ("100.64.0.1", True), ("fd00::1", True),
    ("169.254.1.1", True), ("127.0.0.1", True), ("8.8.8.8", False), ("2606:4700::1111", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("not-an-ip", False)])
def test_only_addresses_off_the_public_internet_count_as_private(address: str, private: bool) -> None:
    from buidl_edge.config.relay import is_private_address

    assert is_private_address(address) is private
