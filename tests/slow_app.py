"""A handler app for the stack tests: a mention saying `slow N` sleeps N seconds before replying.

Workers started by the tests import it as `slow_app:app` (tests/ is put on PYTHONPATH),
so a test can kill a worker while it holds an envelope mid-handler.
"""
from __future__ import annotations

import time
from typing import Any

from buidl_edge.api.app import Context, EdgeApp

app = EdgeApp("slow-test-app")


@app.event("app_mention")
def reply_after_a_while(event: dict[str, Any], ctx: Context) -> None:
    words = str(event.get("text", "")).split()
    if len(words) >= 2 and words[0] == "slow":
        time.sleep(float(words[1]))  # cooperative: workers are monkey-patched
    ctx.say(f"done: {event.get('text', '')}")
