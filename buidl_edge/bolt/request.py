"""An envelope as the BoltRequest Bolt's own Socket Mode adapters make, and the BoltResponse back
as the ack's payload."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from buidl_edge.socketmode.protocol import Envelope, ack_payload_of_answer

if TYPE_CHECKING:
    from slack_bolt import BoltRequest, BoltResponse

log = logging.getLogger("buidl_edge.bolt")


def bolt_request(envelope: Envelope) -> BoltRequest:
    """A socket-mode BoltRequest for `envelope`. Slack's `retry_attempt` and `retry_reason` (sent
    with every event) become the `x-slack-retry-num` and `x-slack-retry-reason` headers, as in
    HTTP mode, so that listeners and middleware can tell Slack's retries."""
    from slack_bolt import BoltRequest

    headers: dict[str, str | Sequence[str]] | None = None
    if envelope.type == "events_api":
        headers = {"x-slack-retry-num": str(envelope.retry_attempt), "x-slack-retry-reason": envelope.retry_reason}
    return BoltRequest(body=envelope.payload, mode="socket_mode", headers=headers)


def ack_payload(response: BoltResponse, envelope: Envelope) -> dict[str, Any] | None:
    """The ack's payload: a 200's JSON object, its text as {"text": …}, nothing for an empty
    body. Any other status (no listener matched, a middleware that stopped it) is acked plainly."""
    if response.status != 200:
        # An event was acked at its claim already, and Bolt itself warns of what no listener took.
        level = logging.INFO if envelope.accepts_response_payload else logging.DEBUG
        log.log(level, "the Bolt app answered %s with status %d: acked without payload", envelope.kind,
                response.status, extra={"envelope_id": envelope.envelope_id})
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    body = response.body if isinstance(response.body, str) else ""
    return ack_payload_of_answer(body, content_type)
