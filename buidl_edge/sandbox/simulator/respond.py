"""The response_urls this simulator hands out with slash commands and interactions.

Slack takes up to 5 posts to one response_url within 30 minutes of the user's action, as
JSON, and answers in plain text: `ok`, or `expired_url` (HTTP 404) once it is used up or too
old. Every post is recorded for tests; `respond_failures` makes the next ones answer 500.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import events
from .http import Request, Response, json_param
from .knobs import Knobs

MessageLookup = Callable[[str, str], "dict[str, Any] | None"]
RESPONSE_TYPES = ("ephemeral", "in_channel")


@dataclass
class Issued:
    channel: str | None
    message_ts: str | None  # the message an interaction came from (replace/delete_original act on it)
    issued_at: float  # monotonic
    uses: int = 0


class ResponseUrls:
    def __init__(self, knobs: Knobs, counters: Counter[str], bot_message: MessageLookup) -> None:
        self.knobs = knobs
        self.counters = counters
        self.bot_message = bot_message
        self.issued: dict[str, Issued] = {}
        self.posts: list[dict[str, Any]] = []

    def note(self, spec: events.Spec) -> None:
        url = spec.payload.get("response_url")
        if not isinstance(url, str) or events.RESPOND_PATH not in url:
            return
        payload = spec.payload
        channel = payload.get("channel_id") or (payload.get("channel") or {}).get("id")
        message_ts = (payload.get("container") or {}).get("message_ts")
        self.issued[url.rsplit("/", 1)[1]] = Issued(channel, message_ts, time.monotonic())

    def handle(self, url_id: str, req: Request) -> Response:
        if req.method != "POST":
            return _text(405, "invalid_method")
        issued = self.issued.get(url_id)
        if issued is None:
            return _text(404, "invalid_url")
        if self.knobs.respond_failures > 0:  # a server error uses nothing up
            self.knobs.respond_failures -= 1
            self.counters["respond_500s"] += 1
            return _text(500, "internal_error")
        if issued.uses >= self.knobs.response_url_uses or \
                time.monotonic() - issued.issued_at > self.knobs.response_url_ttl:
            self.counters["respond_expired"] += 1
            return _text(404, "expired_url")
        if req.body_error or "json" not in req.environ.get("CONTENT_TYPE", ""):
            return _text(400, "invalid_payload")
        post = _read_post(req.params)
        if post is None:
            return _text(400, "invalid_payload")
        if not post["delete_original"] and not post["text"] and not post["blocks"]:
            return _text(400, "no_text")
        issued.uses += 1
        self.posts.append({"url_id": url_id, "channel": issued.channel, "use": issued.uses,
                           **post, "at": time.time()})
        self.counters["responses_posted"] += 1
        self._apply_to_original(issued, post)
        return _text(200, "ok")

    def _apply_to_original(self, issued: Issued, post: dict[str, Any]) -> None:
        if not issued.channel or not issued.message_ts:
            return
        original = self.bot_message(issued.channel, issued.message_ts)
        if original is None:
            return
        if post["delete_original"]:
            original["deleted"] = True
        elif post["replace_original"]:
            original.update(text=post["text"] or "", blocks=post["blocks"])
            original["edits"] = original.get("edits", 0) + 1

    def to_dict(self) -> list[dict[str, Any]]:
        return list(self.posts)

    def reset(self) -> None:
        self.issued.clear()
        self.posts.clear()


def _read_post(params: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of a response_url post, or None when one has the wrong type."""
    text, response_type, thread_ts = params.get("text"), params.get("response_type"), params.get("thread_ts")
    try:
        blocks = json_param(params.get("blocks"))
    except ValueError:
        return None
    flags = {name: params.get(name, False) for name in ("replace_original", "delete_original")}
    if (text is not None and not isinstance(text, str)) or (blocks is not None and not isinstance(blocks, list)) \
            or (response_type is not None and response_type not in RESPONSE_TYPES) \
            or (thread_ts is not None and not isinstance(thread_ts, str)) \
            or not all(isinstance(v, bool) for v in flags.values()):
        return None
    return {"text": text, "blocks": blocks, "response_type": response_type or "ephemeral",
            "thread_ts": thread_ts, **flags}


def _text(status: int, text: str) -> Response:
    return Response(status, {}, text=text)
