"""An app's answer that comes after its envelope was acked: posted to the payload's response_url,
so that the user sees it.

A slash command or an interaction whose answer can ride on the ack gets the app's answer there
when it comes within the ack deadline. When it does not (a slow app, or an app that was down and
got the envelope later from the queue), the ack went out plain, and without this the app's
`ack("hi")` would go nowhere. The response_url takes the same message (Slack allows 5 posts within
30 minutes of the user's action, counted from when the envelope arrived); an answer that cannot go
(no response_url, used up, too old, not a message) is a warning naming why. Neither line carries
the answer's text: it is what users wrote and read.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from buidl_edge.api.app import AppError
from buidl_edge.api.message import MessageError
from buidl_edge.api.respond import RESPONSE_TYPES, ResponseUrl, ResponseUrlExpired, response_body
from buidl_edge.socketmode.protocol import Envelope

log = logging.getLogger("buidl_edge.relay")


def post_late_answer(envelope: Envelope, payload: dict[str, Any] | None, age_s: float) -> bool:
    """Post an answer (as the ack payload it would have been) given `age_s` seconds after `envelope`
    arrived, after its ack went without it, to the payload's response_url; True when it went.
    Envelopes whose answer could never be an ack payload (events), and empty answers, have nothing
    to post. The relay's late HTTP answers and a Bolt app's late `ack(…)` both come here."""
    if not envelope.accepts_response_payload or payload is None:
        return False
    extra = {"envelope_id": envelope.envelope_id}
    what = {"slash_commands": "command", "interactive": "interaction"}.get(envelope.type, "envelope")
    late = f"came {age_s:.1f}s after the {what} arrived, once its ack had gone without it"
    url: ResponseUrl | None = None
    try:
        if not isinstance(envelope.payload.get("response_url"), str):
            raise AppError("its payload has no response_url")
        url = ResponseUrl.of(envelope.payload, time.monotonic() - age_s)
        kind = payload.get("response_type")
        url.post(response_body(payload.get("text"), payload.get("blocks"),
                               kind if kind in RESPONSE_TYPES else "ephemeral",
                               bool(payload.get("replace_original")), bool(payload.get("delete_original")),
                               payload.get("thread_ts")))
    except (AppError, MessageError) as exc:
        # An expired URL's own reason, without the advice to EdgeApp handlers that follows it.
        why = url.expired if isinstance(exc, ResponseUrlExpired) and url is not None and url.expired else str(exc)
        log.warning("the app's answer to %s %s, and could not be posted to its response_url: %s; the user "
                    "sees no answer", envelope.kind, late, why, extra=extra)
        return False
    log.info("posted the app's answer to %s to its response_url: it %s", envelope.kind, late, extra=extra)
    return True
