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
KINDS = ("message", "app_mention", "file_shared", "slash_command", "block_action")
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


def build(kind: str, fields: dict[str, Any], ts: str) -> Spec:
    """One event of `kind`; raises ValueError for an unknown kind."""
    channel = str(fields.get("channel") or "C0GENERAL")
    user = str(fields.get("user") or "U0HUMAN")
    text = str(fields.get("text") or "")
    if kind in ("message", "app_mention"):
        event: dict[str, Any] = {"type": kind, "channel": channel, "user": user, "text": text, "ts": ts}
        if kind == "message":
            event["channel_type"] = "channel"
        if fields.get("bot_id"):
            event["bot_id"] = str(fields["bot_id"])
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
    if kind == "slash_command":
        payload = {
            "token": "sim-verification",
            "command": str(fields.get("command") or "/buidl"),
            "text": text,
            "channel_id": channel,
            "user_id": user,
            "team_id": TEAM_ID,
            "api_app_id": APP_ID,
            "response_url": f"https://sim.slack.test/commands/{secrets.token_hex(6)}",
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
            "actions": [{"action_id": "buidl_action", "value": text or "clicked"}],
            "trigger_id": _trigger_id(),
        }
        return Spec("interactive", payload, _accepts(fields, False), None)
    raise ValueError(f"unknown kind: {kind}")


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
