"""Slack Web API over one pooled urllib3 connection manager (webapi.http, the edge's one HTTP
stack: why urllib3 is said there). Every call has a timeout; errors are exceptions. The proxy is
chosen as for the WebSocket (config.proxy_for), so both always agree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import urllib3

from buidl_edge.config import Secret, check_transport_url, mask_url_password
from buidl_edge.webapi.http import NetworkFailure, http_pool, network_failure
from buidl_edge.webapi.retry_after import parse_retry_after

# Errors that no retry can fix: stop and tell the operator.
FATAL_AUTH_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "token_revoked", "token_expired",
     "account_inactive", "not_allowed_token_type"}
)


REPLY_EVENT_TYPE = "buidl_edge_reply"
FIND_REPLY_PAGES = 5  # up to 1,000 messages since the lost post


class SlackApiError(Exception):
    """Slack answered `ok: false`. `error` is Slack's code."""

    def __init__(self, method: str, error: str, status: int = 200) -> None:
        self.method = method
        self.error = error
        self.status = status
        super().__init__(f"{method} failed: {error} (HTTP {status})")


class FatalAuthError(SlackApiError):
    """The token is wrong, revoked or of the wrong type: never retry."""


class RateLimited(SlackApiError):
    def __init__(self, method: str, retry_after: float) -> None:
        super().__init__(method, "ratelimited", 429)
        self.retry_after = retry_after


class TransientApiError(SlackApiError):
    """5xx or a network failure: worth retrying later."""


class SlackUnreachable(TransientApiError):
    """The call never got an answer from Slack (refused, unresolvable, timed out, TLS): Slack
    refused nothing. `error` stays a short code (`network:ConnectionRefused`) for logs and rows;
    the message says what happened, where."""

    def __init__(self, method: str, code: str, said: str) -> None:
        super().__init__(method, f"network:{code}", 0)
        self.args = (f"{said} ({method})",)


@dataclass(frozen=True)
class AuthInfo:
    user_id: str
    bot_id: str | None
    team_id: str | None


class WebApi:
    def __init__(self, api_url: str, timeout: float = 10.0, pool_size: int = 4) -> None:
        self.api_url = check_transport_url(api_url, "https", "http", "SLACK_API_URL")
        self.timeout = timeout
        self.pool = http_pool(self.api_url, pool_size)

    def call(self, method: str, token: Secret, data: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token.reveal()}", "Content-Type": "application/json; charset=utf-8"}
        try:
            response = self.pool.request("POST", self.api_url + method, body=json.dumps(data or {}).encode(),
                                         headers=headers, timeout=self.timeout, retries=False, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            # The exception's own text can hold the URL's userinfo (never the header): not repeated.
            code, said = _network_error(exc, self.timeout, mask_url_password(self.api_url))
            raise SlackUnreachable(method, code, said) from None
        status = response.status
        if status == 429:
            raise RateLimited(method, parse_retry_after(response.headers.get("Retry-After")))
        if status >= 500:
            raise TransientApiError(method, f"http_{status}", status)
        try:
            body = json.loads(response.data)
        except ValueError:
            raise TransientApiError(method, "bad_json", status) from None
        if not isinstance(body, dict):
            raise TransientApiError(method, "bad_json", status)
        if not body.get("ok"):
            error = str(body.get("error") or "unknown_error")
            if error == "ratelimited":
                raise RateLimited(method, parse_retry_after(response.headers.get("Retry-After")))
            cls = FatalAuthError if error in FATAL_AUTH_ERRORS else SlackApiError
            raise cls(method, error, status)
        return body

    def open_connection(self, app_token: Secret) -> str:
        body = self.call("apps.connections.open", app_token)
        url = body.get("url")
        if not isinstance(url, str):
            raise TransientApiError("apps.connections.open", "no_url")
        return check_transport_url(url, "wss", "ws", "Socket Mode URL")

    def auth_test(self, token: Secret) -> AuthInfo:
        body = self.call("auth.test", token)
        return AuthInfo(user_id=str(body.get("user_id", "")), bot_id=body.get("bot_id"),
                        team_id=body.get("team_id"))

    def post_message(self, bot_token: Secret, channel: str, text: str | None = None,
                     blocks: list[dict[str, Any]] | None = None,
                     thread_ts: str | None = None, reply_key: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": channel}
        if text is not None:
            data["text"] = text
        if blocks is not None:
            data["blocks"] = json.dumps(blocks)
        if thread_ts:
            data["thread_ts"] = thread_ts
        if reply_key:
            # Message metadata: lets find_reply tell later whether this post reached the channel.
            data["metadata"] = json.dumps({"event_type": REPLY_EVENT_TYPE, "event_payload": {"key": reply_key}})
        return self.call("chat.postMessage", bot_token, data)

    def start_stream(self, bot_token: Secret, channel: str, thread_ts: str, markdown_text: str = "",
                     recipient_user_id: str | None = None, recipient_team_id: str | None = None) -> str:
        """chat.startStream: a streamed message in the thread, with its first text; its ts."""
        data: dict[str, Any] = {"channel": channel, "thread_ts": thread_ts}
        if markdown_text:
            data["markdown_text"] = markdown_text
        if recipient_user_id and recipient_team_id:
            data.update(recipient_user_id=recipient_user_id, recipient_team_id=recipient_team_id)
        ts = self.call("chat.startStream", bot_token, data).get("ts")
        if not isinstance(ts, str) or not ts:
            raise TransientApiError("chat.startStream", "no_ts")
        return ts

    def append_stream(self, bot_token: Secret, channel: str, ts: str, markdown_text: str) -> None:
        self.call("chat.appendStream", bot_token, {"channel": channel, "ts": ts, "markdown_text": markdown_text})

    def stop_stream(self, bot_token: Secret, channel: str, ts: str, markdown_text: str = "",
                    blocks: list[dict[str, Any]] | None = None) -> None:
        data: dict[str, Any] = {"channel": channel, "ts": ts}
        if markdown_text:
            data["markdown_text"] = markdown_text
        if blocks is not None:
            data["blocks"] = blocks
        self.call("chat.stopStream", bot_token, data)

    def find_reply(self, bot_token: Secret, channel: str, reply_key: str, oldest: float,
                   thread_ts: str | None = None) -> str | None:
        """The ts of our message tagged `reply_key` posted since `oldest`, or None if there is none.

        Reads the channel (or the thread) with its metadata; needs the bot's history scopes.
        """
        method = "conversations.replies" if thread_ts else "conversations.history"
        data: dict[str, Any] = {"channel": channel, "oldest": f"{max(0.0, oldest):.6f}", "limit": 200,
                                "include_all_metadata": True}
        if thread_ts:
            data["ts"] = thread_ts
        for _ in range(FIND_REPLY_PAGES):
            body = self.call(method, bot_token, data)
            for message in body.get("messages") or []:
                metadata = message.get("metadata") or {}
                if metadata.get("event_type") == REPLY_EVENT_TYPE and \
                        (metadata.get("event_payload") or {}).get("key") == reply_key:
                    return message.get("ts") or None
            cursor = (body.get("response_metadata") or {}).get("next_cursor")
            if not body.get("has_more") or not cursor:
                return None
            data["cursor"] = cursor
        return None  # not in the newest pages: posting again risks a double, not a loss


def sender_webapi(api_url: str, timeout: float, pool_size: int) -> WebApi:
    """A WebApi whose connection pool keeps `pool_size` connections, for that many posts at
    once: the outbox sender's."""
    return WebApi(api_url, timeout=timeout, pool_size=pool_size)


def _network_error(exc: urllib3.exceptions.HTTPError, timeout: float, where: str) -> tuple[str, str]:
    """(code, what happened) of a call to `where` that got no answer."""
    failure = network_failure(exc)
    if failure is NetworkFailure.READ_TIMEOUT:
        return failure.code, f"Slack at {where} did not answer within {timeout:g}s"
    if failure is NetworkFailure.CLOSED:
        return failure.code, f"Slack at {where} closed the connection before answering"
    what = {NetworkFailure.PROXY: "the proxy failed (HTTPS_PROXY)",
            NetworkFailure.CONNECT_TIMEOUT: f"no connection within {timeout:g}s"}.get(failure, failure.value)
    return failure.code, f"cannot reach Slack at {where}: {what}"
