"""`ctx.respond`: answer a slash command or an interaction through its payload's response_url.

Slack takes up to 5 posts to one response_url within 30 minutes; then it answers 404
`expired_url`. Both limits are also counted here (from when this worker began handling the
envelope), so a sixth answer fails at once with a clear error instead of a round trip.

Choices:
- The URL must be https://, or http:// to loopback (the simulator); anything else is refused
  before any connection. A redirect is never followed: Slack's response_url does not redirect,
  and following one could carry the answer to another host. This is why it is the edge's own
  HTTP stack (webapi.http, redirects off) and not slack_sdk's WebhookClient, whose urllib
  follows redirects.
- One pool for the process: every response_url is on the same host (hooks.slack.com), so
  answers to different envelopes reuse the connections kept open, instead of a TLS handshake
  each; the proxy is chosen per URL as for the Web API (HTTPS_PROXY, NO_PROXY).
- Retried on 5xx and network errors (ATTEMPTS in all); any other refusal is an error at once.
- The URL is a credential of sorts (anyone holding it can post as the app): no error or log
  line names it.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import urllib3

from buidl_edge.api.app import AppError
from buidl_edge.api.message import validate_content
from buidl_edge.config import ConfigError, check_transport_url
from buidl_edge.observability.redaction import one_line
from buidl_edge.webapi.http import PoolsByProxy, network_failure

RESPONSE_URL_USES = 5
RESPONSE_URL_TTL_S = 30 * 60.0
RESPONSE_TYPES = ("ephemeral", "in_channel")
ATTEMPTS = 3
JSON_HEADERS = {"Content-Type": "application/json"}
RETRY_DELAYS_S = (0.5, 1.0)
TIMEOUT_S = 10.0
# Kept connections to the response_url host: answers in flight at once beyond this open their own.
POOL_SIZE = 8

_pools = PoolsByProxy(POOL_SIZE)


class ResponseUrlError(AppError):
    """The answer could not be posted to the response_url; the text says why."""


class ResponseUrlExpired(ResponseUrlError):
    """The response_url is used up (5 posts) or older than 30 minutes."""


def response_body(text: str | None, blocks: list[dict[str, Any]] | None, response_type: str,
                  replace_original: bool, delete_original: bool, thread_ts: str | None) -> dict[str, Any]:
    """The JSON a response_url takes, checked as ctx.say checks a reply (MessageError if not)."""
    if response_type not in RESPONSE_TYPES:
        raise AppError(f"response_type must be 'ephemeral' or 'in_channel', not {str(response_type)[:40]!r}")
    body: dict[str, Any] = {"response_type": response_type, "replace_original": bool(replace_original),
                            "delete_original": bool(delete_original)}
    if delete_original and text is None and blocks is None:
        return body
    text, blocks = validate_content(text, blocks, thread_ts)
    body.update({k: v for k, v in (("text", text), ("blocks", blocks), ("thread_ts", thread_ts)) if v is not None})
    return body


@dataclass
class ResponseUrl:
    """One payload's response_url and how much of Slack's allowance this worker has used."""

    url: str
    first_seen: float  # time.monotonic() when the envelope's handling began
    uses: int = 0
    expired: str | None = None  # why no more posts can go, once that is known

    @classmethod
    def of(cls, payload: Mapping[str, Any], first_seen: float) -> ResponseUrl:
        url = payload.get("response_url")
        if not isinstance(url, str) or not url:
            raise AppError("ctx.respond needs a response_url, and this payload has none (slash commands "
                           "and interactions on messages carry one; events do not: use ctx.say)")
        try:
            check_transport_url(url, "https", "http", "response_url")
        except ConfigError as exc:
            raise ResponseUrlError(str(exc)) from None
        return cls(url, first_seen)

    def post(self, body: dict[str, Any]) -> None:
        """Post `body`; retried on 5xx and network errors; ResponseUrlError when it cannot go."""
        if self.expired is None and self.uses >= RESPONSE_URL_USES:
            self.expired = f"response_url already used {RESPONSE_URL_USES} times (Slack's limit)"
        if self.expired is None and time.monotonic() - self.first_seen > RESPONSE_URL_TTL_S:
            self.expired = "response_url is over 30 minutes old (Slack's limit)"
        if self.expired is not None:
            raise ResponseUrlExpired(f"{self.expired}; answer with ctx.say instead")
        problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(RETRY_DELAYS_S[min(attempt - 1, len(RETRY_DELAYS_S) - 1)])
            try:
                response = _pools.for_url(self.url).request(
                    "POST", self.url, body=json.dumps(body).encode(), headers=JSON_HEADERS, timeout=TIMEOUT_S,
                    retries=False, redirect=False)
            except urllib3.exceptions.HTTPError as exc:  # its text can hold the URL: never repeated
                problem = f"network error ({network_failure(exc).code})"
                continue
            status = response.status
            if 200 <= status < 300:
                self.uses += 1
                return
            if status == 404:
                self.expired = (f"Slack says the response_url has expired ({_said(response)}): it takes "
                                f"{RESPONSE_URL_USES} posts within 30 minutes")
                raise ResponseUrlExpired(f"{self.expired}; answer with ctx.say instead")
            if 300 <= status < 400:
                raise ResponseUrlError(f"response_url answered with a redirect (HTTP {status}); not followed")
            if status < 500:
                raise ResponseUrlError(f"response_url refused the answer: HTTP {status} {_said(response)}")
            problem = f"HTTP {status}"
        raise ResponseUrlError(f"response_url failed {ATTEMPTS} times; last: {problem}")


def _said(response: urllib3.BaseHTTPResponse) -> str:
    """What Slack answered, short and on one line (it is `expired_url`, `no_text` …)."""
    return one_line(response.data[:400].decode("utf-8", "replace")[:100]) or "no body"
