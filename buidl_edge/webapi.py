"""Slack Web API over one requests.Session. Every call has a timeout; errors are exceptions."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from buidl_edge.config import Secret, check_transport_url

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


@dataclass(frozen=True)
class AuthInfo:
    user_id: str
    bot_id: str | None
    team_id: str | None


class WebApi:
    def __init__(self, api_url: str, timeout: float = 10.0, session: requests.Session | None = None) -> None:
        self.api_url = check_transport_url(api_url, "https", "http", "SLACK_API_URL")
        self.timeout = timeout
        self.session = session or requests.Session()

    def call(self, method: str, token: Secret, data: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token.reveal()}"}
        try:
            response = self.session.post(
                self.api_url + method, headers=headers, json=data or {}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            # The exception text can hold the URL but never the header; keep only its type.
            raise TransientApiError(method, f"network:{type(exc).__name__}", 0) from None
        if response.status_code == 429:
            raise RateLimited(method, _retry_after(response.headers.get("Retry-After")))
        if response.status_code >= 500:
            raise TransientApiError(method, f"http_{response.status_code}", response.status_code)
        try:
            body = response.json()
        except ValueError:
            raise TransientApiError(method, "bad_json", response.status_code) from None
        if not isinstance(body, dict):
            raise TransientApiError(method, "bad_json", response.status_code)
        if not body.get("ok"):
            error = str(body.get("error") or "unknown_error")
            if error == "ratelimited":
                raise RateLimited(method, _retry_after(response.headers.get("Retry-After")))
            cls = FatalAuthError if error in FATAL_AUTH_ERRORS else SlackApiError
            raise cls(method, error, response.status_code)
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
    """A WebApi whose connection pool fits `pool_size` posts at once (requests keeps 10 by default):
    the outbox sender's."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return WebApi(api_url, timeout=timeout, session=session)


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0
