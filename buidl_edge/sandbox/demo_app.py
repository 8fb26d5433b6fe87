"""The app `buidl-edge demo` runs: the Buidl bot plus a slow `deploy` handler, a broken one,
an :eyes: reaction to each mention (ctx.client) and a `/review` command answered through its
response_url (ctx.respond).

The slow handler gives the demo a moment in which a worker can be killed
mid-handling, to show another worker taking the envelope over. The broken one
raises on `explode`, to show one Sentry event per failing event.
"""
from __future__ import annotations

import os
from typing import Any

import gevent

from buidl_edge.api import bot
from buidl_edge.api.app import Context, EdgeApp

DEPLOY_WORD = "deploy"
DEPLOYED = "Deployed."
FAIL_WORD = "explode"
REACTION = "eyes"
REVIEW_COMMAND = "/review"
REVIEW_QUEUED = "Review queued: Buidl will post its notes in this thread."

app = EdgeApp("buidl-demo").include(bot.app)


@app.event("message")
def slow_deploy(event: dict[str, Any], ctx: Context) -> None:
    if event.get("bot_id") or str(event.get("text", "")).strip() != DEPLOY_WORD:
        return
    gevent.sleep(float(os.environ.get("BUIDL_DEMO_DEPLOY_SECONDS", "3")))
    ctx.say(DEPLOYED)


@app.event("message")
def deliberately_failing(event: dict[str, Any], ctx: Context) -> None:
    if event.get("bot_id") or str(event.get("text", "")).strip() != FAIL_WORD:
        return
    raise RuntimeError("the demo's deliberately failing handler blew up, as scripted")


@app.event("app_mention")
def react_to_mention(event: dict[str, Any], ctx: Context) -> None:
    """At once, through the Web API: the user sees :eyes: before the queued answer arrives."""
    from slack_sdk.errors import SlackApiError

    try:
        ctx.client.reactions_add(channel=event["channel"], name=REACTION, timestamp=event["ts"])
    except SlackApiError as exc:  # a re-run of this event after a crash: the reaction is there
        if exc.response.get("error") != "already_reacted":
            raise


@app.command(REVIEW_COMMAND)
def review(payload: dict[str, Any], ctx: Context) -> None:
    ctx.respond(REVIEW_QUEUED, response_type="in_channel")
