"""What the bot did in the simulator, as rows a person reads; and one injected event followed
until it is acked and the bot has answered. Used by `buidl-edge sim`.

Plain code over the control API (client.py): no gevent, so the CLI runs it unpatched.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .client import SimulatorClient

POLL_S = 0.1
# The bot's answer is taken as complete once nothing new happened for this long: a handler's
# replies go out one after another (a reaction at once, then the queued ctx.say), well inside it.
ANSWER_QUIET_S = 1.0


@dataclass(frozen=True)
class Row:
    """One thing the bot did: posted, responded, reacted, acked with a payload …"""

    at: float
    what: str
    channel: str | None
    ts: str | None
    thread: str | None
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bot_rows(state: dict[str, Any]) -> list[Row]:
    """Everything in `GET /_sim/state` that the bot did, oldest first."""
    rows = [_message_row(m) for m in state.get("messages", [])]
    rows += [_response_row(r) for r in state.get("responses", [])]
    rows += [Row(r["at"], "reacted", r["channel"], r["ts"], None, f":{r['name']}:")
             for r in state.get("reactions", [])]
    rows += [Row(v["at"], "opened view", None, None, None, _view_title(v["view"])) for v in state.get("views", [])]
    assistant = state.get("assistant", {})
    rows += [Row(s["at"], "set status" if s["status"] else "cleared status", s["channel_id"], None,
                 s["thread_ts"], s["status"]) for s in assistant.get("statuses", []) if s.get("by") != "message"]
    rows += [Row(p["at"], "suggested", p["channel_id"], None, p.get("thread_ts"),
                 " | ".join(prompt["title"] for prompt in p["prompts"])) for p in assistant.get("prompts", [])]
    rows += [Row(a["at"], "acked with", None, None, None, json.dumps(a["payload"], ensure_ascii=False))
             for a in state.get("acks", []) if a.get("payload") is not None]
    return sorted(rows, key=lambda row: row.at)


def _message_row(m: dict[str, Any]) -> Row:
    """A message the bot posted, as it is now: `edited` or `deleted` since, with its last text."""
    what = "deleted" if m.get("deleted") else "edited" if m.get("edits") else "posted"
    text = m["text"] or ("[blocks]" if m.get("blocks") else "")
    return Row(m["received_at"], what, m["channel"], m["ts"], m.get("thread_ts"), text)


def _response_row(r: dict[str, Any]) -> Row:
    if r.get("delete_original"):
        text = "(deleted the original)"
    else:
        text = f"({r['response_type']}{', replacing the original' if r.get('replace_original') else ''}) " \
               + (r.get("text") or "[blocks]")
    return Row(r["at"], "responded", r.get("channel"), None, r.get("thread_ts"), text)


def _view_title(view: dict[str, Any]) -> str:
    title = view.get("title")
    return str(title.get("text", "")) if isinstance(title, dict) else ""


@dataclass
class Followed:
    """An injection, and what happened to it within the wait."""

    events: list[dict[str, str]]  # key and envelope_id of each event injected
    linked: bool  # a worker's link was open when it was injected
    acked: bool = False
    ack_ms: float | None = None
    connection: str | None = None
    answer: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"events": self.events, "linked": self.linked, "acked": self.acked, "ack_ms": self.ack_ms,
                "connection": self.connection, "answer": [row.to_dict() for row in self.answer]}


def inject_and_follow(client: SimulatorClient, injections: list[tuple[str, dict[str, Any]]],
                      wait: float) -> Followed:
    """Inject each (kind, fields), then wait up to `wait` seconds for every one to be acked and for
    the bot's answer to the first: its first new row, then ANSWER_QUIET_S without another."""
    before = client.state()
    baseline = Counter(bot_rows(before))
    injected = [client.inject(kind, **fields)[0] for kind, fields in injections]
    followed = Followed(injected, linked=any(link["state"] in ("open", "warned") for link in before["connections"]))
    deadline = time.monotonic() + wait
    answer: list[Row] = []
    changed_at = time.monotonic()
    while time.monotonic() < deadline:
        state = client.state()
        tracked = [state["events"].get(event["key"], {}) for event in injected]
        if not followed.acked and all(event.get("acked") for event in tracked):
            followed.acked = True
            followed.ack_ms = tracked[0].get("first_ack_latency_ms")
            followed.connection = next((a["connection"] for a in state["acks"] if a["key"] == injected[0]["key"]),
                                       None)
        now_answer = sorted((Counter(bot_rows(state)) - baseline).elements(), key=lambda row: row.at)
        if now_answer != answer:
            answer, changed_at = now_answer, time.monotonic()
        if followed.acked and answer and time.monotonic() - changed_at >= ANSWER_QUIET_S:
            break
        time.sleep(POLL_S)
    followed.answer = answer
    return followed
