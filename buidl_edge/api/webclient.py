"""`ctx.client` and `app.client`: slack_sdk's WebClient with the bot token and SLACK_API_URL,
one per worker process, shared by every handler.

slack_sdk is imported when a handler first uses the client, never before: a worker whose
handlers never call it does not carry the library in memory.

Why one shared client is safe here:
- Under gevent: a WebClient keeps nothing between calls. Each call is its own urllib request
  (a new connection, and its own retry state), over the worker's patched sockets, so many
  greenlets can call one client at once (tests/test_web_client.py does, with threaded handlers
  among them).
- From a threaded handler: the HTTP of each call (and of a file upload) is carried to the hub
  by HubCall, like ctx.once and ctx.logger; only the calling thread waits for it.
- Logging: its logger is ours, `buidl_edge.webclient`, held at INFO or above. slack_sdk formats request
  bodies and responses only when its logger's own level is DEBUG or lower, so neither
  BUIDL_LOG_LEVEL=DEBUG nor WEBSOCKET_DEBUG=1 makes it log a message body. The token travels in
  the Authorization header only; every log line is redacted anyway.
- Retries: Retry-After on 429 (RATE_LIMIT_RETRIES times), and one retry after a connection
  error, with slack_sdk's own handlers.
- Proxies: HTTPS_PROXY and NO_PROXY as the rest of the edge reads them (slack_sdk alone reads
  HTTPS_PROXY but ignores NO_PROXY).
"""
from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from buidl_edge.config import Secret, check_transport_url, proxy_for
from buidl_edge.observability.redaction import register_tokens

if TYPE_CHECKING:
    from slack_sdk import WebClient

T = TypeVar("T")


class HubCall(Protocol):
    """Runs a call on the hub's thread from any thread (dispatch/handler_threads.HubCall is one;
    named here so that the handler API needs nothing from the dispatcher)."""

    def __call__(self, fn: Callable[..., T], *args: Any) -> T: ...

    def on_hub_thread(self) -> bool: ...

RATE_LIMIT_RETRIES = 2
CONNECTION_RETRIES = 1
LOGGER_NAME = "buidl_edge.webclient"

_client_class: type | None = None


def build_client(api_url: str, bot_token: Secret, timeout: float, hub_call: HubCall | None = None) -> WebClient:
    """A WebClient for the bot; with `hub_call`, its HTTP always runs on that hub."""
    check_transport_url(api_url, "https", "http", "SLACK_API_URL")
    token = bot_token.reveal()
    register_tokens(token)
    from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

    logger = logging.getLogger(LOGGER_NAME)
    # Never DEBUG (slack_sdk would format request and response bodies); never below the root's level.
    logger.setLevel(max(logging.INFO, logging.getLogger().getEffectiveLevel()))
    client = _edge_client_class()(
        token=token, base_url=api_url, timeout=timeout, logger=logger,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
                        ConnectionErrorRetryHandler(max_retry_count=CONNECTION_RETRIES)])
    proxy = proxy_for(api_url)
    client.proxy = proxy.url() if proxy else None
    client.hub_call = hub_call
    return client


def client_factory(api_url: str, bot_token: Secret, timeout: float, hub_call: HubCall) -> Callable[[], WebClient]:
    """What a worker binds to its app: builds the process's client when a handler first asks."""
    return lambda: build_client(api_url, bot_token, timeout, hub_call)


def client_from_env() -> WebClient:
    """app.client outside a worker (a script, a shell): SLACK_BOT_TOKEN and SLACK_API_URL."""
    from buidl_edge.config import load_settings

    settings = load_settings(require_tokens=False)
    return build_client(settings.api_url, settings.bot_token, settings.http_timeout)



def _edge_client_class() -> type:
    """WebClient, with its HTTP carried to the hub when called from a native thread."""
    global _client_class
    if _client_class is not None:
        return _client_class
    from slack_sdk import WebClient

    class EdgeWebClient(WebClient):
        hub_call: HubCall | None = None

        # The two places where slack_sdk's WebClient does HTTP: every API method, and uploads.
        def _perform_urllib_http_request(self, *, url: str, args: dict[str, Any]) -> dict[str, Any]:
            return self._on_hub(super()._perform_urllib_http_request, url=url, args=args)

        def _upload_file(self, **kwargs: Any) -> Any:
            return self._on_hub(super()._upload_file, **kwargs)

        def _on_hub(self, call: Callable[..., Any], **kwargs: Any) -> Any:
            hub_call = self.hub_call
            if hub_call is None or hub_call.on_hub_thread():
                return call(**kwargs)
            context = contextvars.copy_context()  # its log lines still name the envelope
            return hub_call(lambda: context.run(call, **kwargs))

    _client_class = EdgeWebClient
    return _client_class
