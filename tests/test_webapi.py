"""The Web API client against the real simulator: results, and errors mapped to exceptions."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from buidl_edge.config import ConfigError, Secret
from buidl_edge.sandbox.harness import fake_tokens
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from buidl_edge.webapi.client import (
    FATAL_AUTH_ERRORS,
    AuthInfo,
    FatalAuthError,
    RateLimited,
    SlackApiError,
    TransientApiError,
    WebApi,
)
from support import assert_no_secret

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tokens() -> dict[str, Secret]:
    raw = fake_tokens()
    return {"app": Secret(raw["SLACK_APP_TOKEN"]), "bot": Secret(raw["SLACK_BOT_TOKEN"])}


@pytest.fixture
def api(fresh_simulator: SimulatorProcess) -> WebApi:
    return WebApi(fresh_simulator.api_url, timeout=5)


def assert_no_token(exc: BaseException, tokens: dict[str, Secret]) -> None:
    assert_no_secret(f"{exc} {exc!r} {exc.args}", [secret.reveal() for secret in tokens.values()], "the exception")


# -- success ----------------------------------------------------------------------------


def test_open_connection_returns_a_loopback_ws_url(api: WebApi, tokens: dict[str, Secret],
                                                   fresh_simulator: SimulatorProcess) -> None:
    url = api.open_connection(tokens["app"])
    assert url.startswith(f"ws://127.0.0.1:{fresh_simulator.port}/link/?ticket=")
    assert fresh_simulator.client.summary()["connections_open_calls"] == 1


def test_auth_test_returns_the_bot_identity(api: WebApi, tokens: dict[str, Secret]) -> None:
    assert api.auth_test(tokens["bot"]) == AuthInfo(user_id="U0BUIDL", bot_id="B0BUIDL", team_id="T0SIM")


def test_post_message_sends_text_blocks_and_thread(api: WebApi, tokens: dict[str, Secret],
                                                   fresh_simulator: SimulatorProcess) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    body = api.post_message(tokens["bot"], "C0WEB", "hi there", blocks=blocks, thread_ts="1.000001")
    assert body["ok"] is True and body["channel"] == "C0WEB"
    [posted] = fresh_simulator.client.state()["messages"]
    assert (posted["channel"], posted["text"], posted["blocks"], posted["thread_ts"]) == \
        ("C0WEB", "hi there", blocks, "1.000001")


def test_find_reply_reads_the_channel_or_thread_metadata_for_the_key(api: WebApi, tokens: dict[str, Secret],
                                                                     fresh_simulator: SimulatorProcess) -> None:
    fresh_simulator.client.configure(post_rate=1000.0, post_burst=1000)
    since = time.time() - 1
    first = api.post_message(tokens["bot"], "C0FIND", "the lost one", reply_key="E1:0")["ts"]
    for n in range(250):  # the tagged message ends up on the second page of history
        api.post_message(tokens["bot"], "C0FIND", f"chatter {n}", reply_key=f"E2:{n}")
    in_thread = api.post_message(tokens["bot"], "C0FIND", "threaded", thread_ts=first, reply_key="E3:0")["ts"]
    api.post_message(tokens["bot"], "C0OTHER", "same key, other channel", reply_key="E4:0")
    [posted] = [m for m in fresh_simulator.client.state()["messages"] if m["text"] == "the lost one"]
    assert posted["metadata"] == {"event_type": "buidl_edge_reply", "event_payload": {"key": "E1:0"}}

    assert api.find_reply(tokens["bot"], "C0FIND", "E1:0", oldest=since) == first
    assert api.find_reply(tokens["bot"], "C0FIND", "E3:0", oldest=since, thread_ts=first) == in_thread
    assert api.find_reply(tokens["bot"], "C0FIND", "E3:0", oldest=since) is None  # replies stay in their thread
    assert api.find_reply(tokens["bot"], "C0FIND", "E4:0", oldest=since) is None
    assert api.find_reply(tokens["bot"], "C0FIND", "E1:0", oldest=float(first)) is None  # only after `oldest`


def test_find_reply_without_history_scope_raises_slacks_error(api: WebApi, tokens: dict[str, Secret],
                                                              fresh_simulator: SimulatorProcess) -> None:
    fresh_simulator.client.configure(history_error="missing_scope")
    with pytest.raises(SlackApiError) as caught:
        api.find_reply(tokens["bot"], "C0FIND", "E1:0", oldest=0)
    assert caught.value.error == "missing_scope" and caught.value.method == "conversations.history"


# -- errors ---------------------------------------------------------------------------------


def test_open_429_becomes_rate_limited_with_retry_after(api: WebApi, tokens: dict[str, Secret],
                                                        fresh_simulator: SimulatorProcess) -> None:
    fresh_simulator.client.configure(open_ratelimit={"count": 1, "retry_after": 7})
    with pytest.raises(RateLimited) as caught:
        api.open_connection(tokens["app"])
    assert caught.value.retry_after == 7.0
    assert (caught.value.error, caught.value.status, caught.value.method) == \
        ("ratelimited", 429, "apps.connections.open")
    assert_no_token(caught.value, tokens)
    assert api.open_connection(tokens["app"]).startswith("ws://")


def test_post_message_429_becomes_rate_limited(api: WebApi, tokens: dict[str, Secret],
                                               fresh_simulator: SimulatorProcess) -> None:
    fresh_simulator.client.configure(post_rate=0.5, post_burst=1)
    api.post_message(tokens["bot"], "C0BUSY", "one")
    with pytest.raises(RateLimited) as caught:
        api.post_message(tokens["bot"], "C0BUSY", "two")
    assert caught.value.retry_after >= 1.0
    assert fresh_simulator.client.summary()["messages_posted"] == 1


@pytest.mark.parametrize("error", sorted(FATAL_AUTH_ERRORS))
def test_fatal_auth_errors_raise_fatal_auth_error(api: WebApi, tokens: dict[str, Secret],
                                                   fresh_simulator: SimulatorProcess, error: str) -> None:
    fresh_simulator.client.configure(open_error=error)
    with pytest.raises(FatalAuthError) as caught:
        api.open_connection(tokens["app"])
    assert caught.value.error == error
    assert error in str(caught.value)
    assert_no_token(caught.value, tokens)


def test_bot_token_sent_to_connections_open_is_fatal(api: WebApi, tokens: dict[str, Secret]) -> None:
    with pytest.raises(FatalAuthError) as caught:
        api.open_connection(tokens["bot"])
    assert caught.value.error == "not_allowed_token_type"


def test_auth_test_fatal_error(api: WebApi, tokens: dict[str, Secret], fresh_simulator: SimulatorProcess) -> None:
    fresh_simulator.client.configure(auth_error="account_inactive")
    with pytest.raises(FatalAuthError) as caught:
        api.auth_test(tokens["bot"])
    assert caught.value.error == "account_inactive"


@pytest.mark.parametrize("error", ["channel_not_found", "not_in_channel", "is_archived", "msg_too_long"])
def test_other_ok_false_is_a_plain_slack_api_error(api: WebApi, tokens: dict[str, Secret],
                                                   fresh_simulator: SimulatorProcess, error: str) -> None:
    fresh_simulator.client.configure(post_errors={"C0BAD": error})
    with pytest.raises(SlackApiError) as caught:
        api.post_message(tokens["bot"], "C0BAD", "hi")
    assert type(caught.value) is SlackApiError
    assert (caught.value.error, caught.value.status, caught.value.method) == (error, 200, "chat.postMessage")
    assert_no_token(caught.value, tokens)


def test_non_fatal_open_error_is_not_fatal(api: WebApi, tokens: dict[str, Secret],
                                           fresh_simulator: SimulatorProcess) -> None:
    fresh_simulator.client.configure(open_error="internal_error")
    with pytest.raises(SlackApiError) as caught:
        api.open_connection(tokens["app"])
    assert not isinstance(caught.value, (FatalAuthError, RateLimited))
    assert caught.value.error == "internal_error"


def test_unknown_method_is_an_error_not_a_crash(api: WebApi, tokens: dict[str, Secret]) -> None:
    with pytest.raises(SlackApiError) as caught:
        api.call("no.such.method", tokens["bot"])
    assert caught.value.error == "unknown_method" and caught.value.status == 404


def test_token_travels_only_in_the_authorization_header(tokens: dict[str, Secret],
                                                        fresh_simulator: SimulatorProcess) -> None:
    # Slack wants the token as a Bearer header; a body field would end up in proxies' and servers' logs.
    seen: list[dict[str, Any]] = []

    class Recorder(BaseHTTPRequestHandler):  # what arrives on the wire, headers and body
        def do_POST(self) -> None:
            seen.append({"headers": dict(self.headers), "body": self.rfile.read(int(self.headers["Content-Length"]))})
            data = b'{"ok": true, "ts": "1.2"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        api = WebApi(f"http://127.0.0.1:{server.server_address[1]}/api/", timeout=5)
        api.post_message(tokens["bot"], "C0HDR", "hi")
    finally:
        server.server_close()
    [request] = seen
    assert request["headers"]["Authorization"] == f"Bearer {tokens['bot'].reveal()}"
    assert tokens["bot"].reveal() not in (request["body"] or b"").decode()
    assert json.loads(request["body"]) == {"channel": "C0HDR", "text": "hi"}


# -- transport and timeouts ----------------------------------------------------------------


def test_non_loopback_http_api_url_is_refused() -> None:
    with pytest.raises(ConfigError):
        WebApi("http://slack.com/api/")


def test_network_failure_is_transient_and_token_free(tokens: dict[str, Secret]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = WebApi(f"http://127.0.0.1:{port}/api/", timeout=2)
    with pytest.raises(TransientApiError) as caught:
        api.auth_test(tokens["bot"])
    assert caught.value.error.startswith("network:")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert_no_token(caught.value, tokens)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never answers: a hung Slack."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    listener.close()


def test_every_call_has_a_timeout(silent_server: int, tokens: dict[str, Secret]) -> None:
    api = WebApi(f"http://127.0.0.1:{silent_server}/api/", timeout=0.3)
    for call in (lambda: api.open_connection(tokens["app"]), lambda: api.auth_test(tokens["bot"]),
                 lambda: api.post_message(tokens["bot"], "C1", "hi")):
        with pytest.raises(TransientApiError) as caught:  # the server never answers: only a timeout ends it
            call()
        assert caught.value.error == "network:ReadTimeout"
