"""The default Buidl bot: answers mentions once, acknowledges files, explains /buidl."""
from __future__ import annotations

from typing import Any

from buidl_edge.api.app import Context, EdgeApp

GREETING = "Hello! How can I help?"
HELP_TEXT = ("Buidl is listening. Mention @buidl with what you need, "
             "share a file for a look, or run /buidl help.")

app = EdgeApp("buidl")


def _from_bot_or_self(event: dict[str, Any], ctx: Context) -> bool:
    return bool(event.get("bot_id") or event.get("subtype") == "bot_message"
                or (ctx.bot_user_id and event.get("user") == ctx.bot_user_id))


def _mentions_bot(event: dict[str, Any], ctx: Context) -> bool:
    if event.get("type") == "app_mention":
        return True
    return bool(ctx.bot_user_id) and f"<@{ctx.bot_user_id}>" in str(event.get("text", ""))


@app.event("app_mention")
@app.event("message")
def greet_mention(event: dict[str, Any], ctx: Context) -> None:
    if _from_bot_or_self(event, ctx) or not _mentions_bot(event, ctx):
        return
    # Slack sends one mention as both `message` and `app_mention`: answer whichever lands first.
    channel, ts = event.get("channel"), event.get("ts")
    if ctx.once(f"mention:{channel}:{ts}"):
        ctx.say(GREETING, thread_ts=event.get("thread_ts"))


@app.event("file_shared")
def acknowledge_file(event: dict[str, Any], ctx: Context) -> None:
    file = event.get("file") or {}
    name = file.get("name") or file.get("title") or event.get("file_id") or "a file"
    channel = event.get("channel_id") or event.get("channel")
    ctx.say(f"File received: {name}", channel=channel)


@app.command("/buidl")
def buidl_command(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"response_type": "ephemeral", "text": HELP_TEXT}
