"""What an app does to the workspace besides posting: reactions, modals, and the status and
suggested prompts of AI assistant threads; and what the workspace knows that those need (the
people's messages and the trigger ids handed out with injected events).

Each method answers with Slack's arguments and error codes, and keeps a record that tests read
back through `/_sim/state`.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from . import events
from .http import Request, Response, json_param, slack_error
from .knobs import Knobs

TS = re.compile(r"\d{1,12}\.\d{1,9}")
# Emoji names as Slack takes them in reactions.add: without the colons.
EMOJI_NAME = re.compile(r"[a-z0-9_+'-]{1,100}")
MAX_PROMPTS = 4
MAX_LOADING_MESSAGES = 10
MAX_VIEW_BYTES = 250_000

Refusal = Callable[[Request, str], "Response | None"]
MessageLookup = Callable[[str, str], "dict[str, Any] | None"]


class Workspace:
    def __init__(self, knobs: Knobs, counters: Counter[str], bot_message: MessageLookup,
                 refused: Refusal) -> None:
        self.knobs = knobs
        self.counters = counters
        self.bot_message = bot_message  # the bot's own posted message at (channel, ts), if any
        self.refused = refused
        self.people_messages: dict[tuple[str, str], str] = {}  # (channel, ts) -> user, from injections
        self.triggers: dict[str, float] = {}  # trigger_id -> when it was handed out (monotonic)
        self.used_triggers: set[str] = set()
        self.reactions: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []  # every status change, in order
        self.current: dict[str, str] = {}  # "channel_id/thread_ts" -> its status now ("" once cleared)
        self.prompts: list[dict[str, Any]] = []

    def methods(self) -> dict[str, Callable[[Request], Response]]:
        return {
            "reactions.add": self.reactions_add,
            "views.open": self.views_open,
            "assistant.threads.setStatus": self.set_status,
            "assistant.threads.setSuggestedPrompts": self.set_suggested_prompts,
        }

    def note(self, spec: events.Spec) -> None:
        """Learn an injected event's person's message and trigger id."""
        payload = spec.payload
        event = payload.get("event")
        if isinstance(event, dict) and event.get("type") in ("message", "app_mention") and event.get("user") \
                and "subtype" not in event:
            self.people_messages[(event["channel"], event["ts"])] = event["user"]
        trigger = payload.get("trigger_id")
        if isinstance(trigger, str):
            self.triggers[trigger] = time.monotonic()

    def is_person_message(self, channel: str, ts: str) -> bool:
        return (channel, ts) in self.people_messages

    # -- reactions.add ---------------------------------------------------------------------

    def reactions_add(self, req: Request) -> Response:
        refused = self.refused(req, "xoxb-")
        if refused:
            return refused
        params = req.params
        channel, ts = str(params.get("channel") or ""), str(params.get("timestamp") or "")
        name = str(params.get("name") or "")
        if not channel or not ts:
            return slack_error("no_item_specified")
        if channel in self.knobs.post_errors:
            return slack_error(self.knobs.post_errors[channel])
        if not TS.fullmatch(ts):
            return slack_error("bad_timestamp")
        if not EMOJI_NAME.fullmatch(name):
            return slack_error("invalid_name")
        if not self.is_person_message(channel, ts) and self.bot_message(channel, ts) is None:
            return slack_error("message_not_found")
        if any(r["channel"] == channel and r["ts"] == ts and r["name"] == name for r in self.reactions):
            return slack_error("already_reacted")
        self.reactions.append({"channel": channel, "ts": ts, "name": name, "user": events.BOT_USER_ID,
                               "at": time.time()})
        self.counters["reactions_added"] += 1
        return Response(200, {"ok": True})

    # -- views.open ------------------------------------------------------------------------

    def views_open(self, req: Request) -> Response:
        refused = self.refused(req, "xoxb-")
        if refused:
            return refused
        trigger = str(req.params.get("trigger_id") or "")
        issued = self.triggers.get(trigger)
        if issued is None:
            return slack_error("invalid_trigger_id")
        if trigger in self.used_triggers:
            return slack_error("exchanged_trigger_id")
        if time.monotonic() - issued > self.knobs.trigger_ttl:
            return slack_error("expired_trigger_id")
        try:
            view = json_param(req.params.get("view"))
        except ValueError:
            return slack_error("invalid_arguments")
        if not isinstance(view, dict) or view.get("type") != "modal" or not isinstance(view.get("title"), dict) \
                or not isinstance(view.get("blocks"), list):
            return slack_error("invalid_arguments")
        if len(json.dumps(view)) > MAX_VIEW_BYTES:
            return slack_error("view_too_large")
        self.used_triggers.add(trigger)
        opened = {**view, "id": "V" + secrets.token_hex(5).upper(), "team_id": events.TEAM_ID,
                  "state": {"values": {}}, "hash": secrets.token_hex(8), "app_id": events.APP_ID,
                  "bot_id": events.BOT_ID}
        self.views.append({"trigger_id": trigger, "view": opened, "at": time.time()})
        self.counters["views_opened"] += 1
        return Response(200, {"ok": True, "view": opened})

    # -- AI assistant threads --------------------------------------------------------------

    def set_status(self, req: Request) -> Response:
        """An empty status clears it; so does the app's next post in the thread (message_posted)."""
        refused = self.refused(req, "xoxb-")
        if refused:
            return refused
        params = req.params
        problem = _thread_problem(params, self.knobs)
        if problem:
            return slack_error(problem)
        status = params.get("status")
        try:
            loading = json_param(params.get("loading_messages"))
        except ValueError:
            return slack_error("invalid_arguments")
        if not isinstance(status, str) or (loading is not None and not (
                isinstance(loading, list) and len(loading) <= MAX_LOADING_MESSAGES
                and all(isinstance(m, str) for m in loading))):
            return slack_error("invalid_arguments")
        self._status(params["channel_id"], params["thread_ts"], status, loading, "set_status")
        self.counters["statuses_set"] += 1
        return Response(200, {"ok": True})

    def message_posted(self, channel: str, thread_ts: str | None) -> None:
        """The app posted in a thread: Slack clears that thread's status."""
        if thread_ts and self.current.get(f"{channel}/{thread_ts}"):
            self._status(channel, thread_ts, "", None, "message")

    def _status(self, channel: str, thread_ts: str, status: str, loading: list[str] | None, by: str) -> None:
        self.statuses.append({"channel_id": channel, "thread_ts": thread_ts, "status": status,
                              "loading_messages": loading, "by": by, "at": time.time()})
        self.current[f"{channel}/{thread_ts}"] = status

    def set_suggested_prompts(self, req: Request) -> Response:
        refused = self.refused(req, "xoxb-")
        if refused:
            return refused
        params = req.params
        problem = _thread_problem(params, self.knobs, thread_required=False)
        if problem:
            return slack_error(problem)
        try:
            prompts = json_param(params.get("prompts"))
        except ValueError:
            return slack_error("invalid_arguments")
        if not isinstance(prompts, list) or not 1 <= len(prompts) <= MAX_PROMPTS or not all(
                isinstance(p, dict) and isinstance(p.get("title"), str) and isinstance(p.get("message"), str)
                and p["title"] and p["message"] for p in prompts):
            return slack_error("invalid_arguments")
        self.prompts.append({"channel_id": params["channel_id"], "thread_ts": params.get("thread_ts"),
                             "title": params.get("title"), "prompts": prompts, "at": time.time()})
        self.counters["prompts_set"] += 1
        return Response(200, {"ok": True})

    # -- reporting -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"reactions": list(self.reactions), "views": list(self.views),
                "assistant": {"statuses": list(self.statuses), "current": dict(self.current),
                              "prompts": list(self.prompts)}}

    def reset(self) -> None:
        self.people_messages.clear()
        self.triggers.clear()
        self.used_triggers.clear()
        self.reactions.clear()
        self.views.clear()
        self.statuses.clear()
        self.current.clear()
        self.prompts.clear()


def _thread_problem(params: dict[str, Any], knobs: Knobs, thread_required: bool = True) -> str | None:
    channel = str(params.get("channel_id") or "")
    if not channel:
        return "channel_not_found"
    if channel in knobs.post_errors:
        return knobs.post_errors[channel]
    thread = params.get("thread_ts")
    if (thread_required or thread is not None) and not (isinstance(thread, str) and TS.fullmatch(thread)):
        return "invalid_thread_ts"
    return None
