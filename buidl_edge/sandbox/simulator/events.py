"""Slack-shaped payloads for injected events. Pure functions, no I/O."""
from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any

TEAM_ID = "T0SIM"
APP_ID = "A0SIM"
BOT_USER_ID = "U0BUIDL"
BOT_ID = "B0BUIDL"
KINDS = ("message", "app_mention", "file_shared", "slash_command", "block_action", "assistant_thread_started",
         "shortcut", "view_submission", "block_suggestion")
# Message subtypes an injection may ask for (a person's message has none).
MESSAGE_SUBTYPES = ("bot_message", "message_changed", "message_deleted", "thread_broadcast", "channel_join")
RESPOND_PATH = "/_sim/respond/"
# Fields of an injection that set an id instead of letting the simulator make one up.
ID_OVERRIDES = ("envelope_id", "event_id")

_ids = itertools.count(1)


@dataclass(frozen=True)
class Spec:
    """What the hub needs to send one injected event."""

    envelope_type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    event_id: str | None


class TsClock:
    """Slack message timestamps: unique and increasing, even within one microsecond."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> str:
        micros = max(int(time.time() * 1_000_000), self._last + 1)
        self._last = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def build(kind: str, fields: dict[str, Any], ts: str, base_url: str | None = None) -> Spec:
    """One event of `kind`; raises ValueError for an unknown kind or subtype.

    `base_url` is where this simulator serves (its response_urls point there).
    """
    channel = str(fields.get("channel") or "C0GENERAL")
    user = str(fields.get("user") or "U0HUMAN")
    text = str(fields.get("text") or "")
    if kind in ("message", "app_mention"):
        return _events_api(_message(kind, channel, user, text, ts, fields), fields)
    if kind == "assistant_thread_started":
        event = {
            "type": "assistant_thread_started",
            "assistant_thread": {"user_id": user, "channel_id": str(fields.get("channel") or "D0ASSIST"),
                                 "thread_ts": str(fields.get("thread_ts") or ts),
                                 "context": {"channel_id": str(fields.get("context_channel") or "C0GENERAL"),
                                             "team_id": TEAM_ID}},
            "event_ts": ts,
        }
        return _events_api(event, fields)
    if kind == "file_shared":
        file_id = f"F{next(_ids):08d}"
        name = str(fields.get("file_name") or "file.txt")
        event = {
            "type": "file_shared",
            "file_id": file_id,
            "user_id": user,
            "channel_id": channel,
            "file": {"id": file_id, "name": name},
            "event_ts": ts,
        }
        return _events_api(event, fields)
    payload: dict[str, Any]  # each kind's own JSON shape
    if kind == "slash_command":
        payload = {
            "token": "sim-verification",
            "command": str(fields.get("command") or "/buidl"),
            "text": text,
            "channel_id": channel,
            "user_id": user,
            "team_id": TEAM_ID,
            "api_app_id": APP_ID,
            "response_url": _response_url(base_url, "commands"),
            "trigger_id": _trigger_id(),
        }
        return Spec("slash_commands", payload, _accepts(fields, True), None)
    if kind == "block_action":
        payload = {
            "type": "block_actions",
            "team": {"id": TEAM_ID},
            "api_app_id": APP_ID,
            "user": {"id": user},
            "channel": {"id": channel},
            "actions": [{"action_id": str(fields.get("action_id") or "buidl_action"), "value": text or "clicked"}],
            "trigger_id": _trigger_id(),
            "response_url": _response_url(base_url, "actions"),
        }
        if fields.get("message_ts"):  # clicked on a message: replace_original/delete_original act on it
            message_ts = str(fields["message_ts"])
            payload["container"] = {"type": "message", "message_ts": message_ts, "channel_id": channel}
            payload["message"] = {"type": "message", "ts": message_ts}
        return Spec("interactive", payload, _accepts(fields, False), None)
    if kind in ("shortcut", "view_submission", "block_suggestion"):
        return _interaction(kind, user, text, fields)
    raise ValueError(f"unknown kind: {kind}")


def _interaction(kind: str, user: str, text: str, fields: dict[str, Any]) -> Spec:
    """A global shortcut, a modal's submission (its answer rides on the ack: `response_action`),
    or an external select's options request (its `options` ride on the ack)."""
    base: dict[str, Any] = {"type": kind, "token": "sim-verification", "api_app_id": APP_ID,
                            "team": {"id": TEAM_ID, "domain": "sim"},
                            "user": {"id": user, "username": "human", "team_id": TEAM_ID}}
    if kind == "shortcut":
        return Spec("interactive", {**base, "callback_id": str(fields.get("callback_id") or "buidl_shortcut"),
                                    "trigger_id": _trigger_id(), "action_ts": str(time.time())},
                    _accepts(fields, False), None)
    if kind == "view_submission":
        view = {"id": f"V{next(_ids):08d}", "team_id": TEAM_ID, "type": "modal",
                "callback_id": str(fields.get("callback_id") or "buidl_view"), "private_metadata": "",
                "state": {"values": fields.get("values") if isinstance(fields.get("values"), dict) else {}},
                "hash": secrets.token_hex(6), "title": {"type": "plain_text", "text": "Sim"}, "blocks": []}
        return Spec("interactive", {**base, "trigger_id": _trigger_id(), "view": view, "response_urls": []},
                    _accepts(fields, True), None)
    return Spec("interactive", {**base, "action_id": str(fields.get("action_id") or "buidl_select"),
                                "block_id": str(fields.get("block_id") or "buidl_block"), "value": text,
                                "container": {"type": "view", "view_id": f"V{next(_ids):08d}"}},
                _accepts(fields, True), None)


def _message(kind: str, channel: str, user: str, text: str, ts: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A `message` or `app_mention` event, as a person, a bot, or an edit/deletion sends it."""
    subtype = fields.get("subtype")
    if subtype is not None and (kind != "message" or subtype not in MESSAGE_SUBTYPES):
        raise ValueError(f"unknown subtype: {subtype}")
    event: dict[str, Any] = {"type": kind, "channel": channel, "user": user, "text": text, "ts": ts}
    if kind == "message":
        event["channel_type"] = str(fields.get("channel_type") or "channel")
    if fields.get("thread_ts"):
        event["thread_ts"] = str(fields["thread_ts"])
    if fields.get("bot_id"):
        event["bot_id"] = str(fields["bot_id"])
    if subtype == "bot_message":  # an integration's post: a bot id and a name, no user
        del event["user"]
        event.update(subtype=subtype, bot_id=str(fields.get("bot_id") or "B0OTHER"), username="other-bot")
    elif subtype in ("message_changed", "message_deleted"):
        # The changed message is nested; the event itself has no user or text of its own.
        original_ts = str(fields.get("original_ts") or ts)
        inner = {"type": "message", "user": user, "text": text, "ts": original_ts}
        event = {"type": "message", "subtype": subtype, "hidden": True, "channel": channel, "ts": ts,
                 "channel_type": event["channel_type"]}
        if subtype == "message_changed":
            event["message"] = {**inner, "edited": {"user": user, "ts": ts}}
            event["previous_message"] = {**inner, "text": str(fields.get("previous_text") or "")}
        else:
            event["deleted_ts"] = original_ts
            event["previous_message"] = inner
    elif subtype:
        event["subtype"] = subtype
    return event


def _response_url(base_url: str | None, kind: str) -> str:
    """A response_url this simulator serves and records (5 posts within 30 minutes, as Slack)."""
    return f"{base_url or 'http://127.0.0.1'}{RESPOND_PATH}{kind}-{secrets.token_hex(8)}"


def _events_api(event: dict[str, Any], fields: dict[str, Any]) -> Spec:
    event_id = str(fields.get("event_id") or f"Ev{next(_ids):06d}{secrets.token_hex(3).upper()}")
    payload = {
        "token": "sim-verification",
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
    }
    return Spec("events_api", payload, _accepts(fields, False), event_id)


def _accepts(fields: dict[str, Any], default: bool) -> bool:
    value = fields.get("accepts_response_payload")
    return default if value is None else bool(value)


def _trigger_id() -> str:
    return f"{next(_ids)}.{secrets.randbelow(10**9)}.{secrets.token_hex(8)}"
