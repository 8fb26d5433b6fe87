"""The app `buidl-edge demo` runs: the Buidl bot plus a slow `deploy` handler and a broken one.

The slow handler gives the demo a moment in which a worker can be killed
mid-handling, to show another worker taking the envelope over. The broken one
raises on `explode`, to show one Sentry event per failing event.
"""
from __future__ import annotations

import os
from typing import Any

import gevent

from buidl_edge import bot
from buidl_edge.app import Context, EdgeApp

DEPLOY_WORD = "deploy"
DEPLOYED = "Deployed."
FAIL_WORD = "explode"

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
