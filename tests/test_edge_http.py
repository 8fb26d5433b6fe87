"""The edge's own HTTP calls (webapi, ctx.respond, the relay's posts): one pooled stack whose
connections are kept across calls, requests' proxy variables, and one Retry-After reading.

Each test talks to a real loopback HTTP/1.1 server that counts the TCP connections it accepts.
"""
from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from buidl_edge.api.respond import ResponseUrl
from buidl_edge.config import Secret
from buidl_edge.relay.client import MAX_ANSWER_BYTES, BackendClient
from buidl_edge.relay.request import build_request
from buidl_edge.sandbox.harness import fake_tokens
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.webapi.client import RateLimited, WebApi
from buidl_edge.webapi.retry_after import DEFAULT_RETRY_AFTER_S, MAX_RETRY_AFTER_S, parse_retry_after
from http_support import write_answer

pytestmark = pytest.mark.timeout(60)

COMMAND = Envelope("slash_commands", "E1", {"command": "/deploy", "text": "now", "channel_id": "C1",
                                            "response_url": "https://hooks.slack.com/commands/T1/1/x"},
                   accepts_response_payload=True)


class CountingServer(ThreadingHTTPServer):
    """Answers every request with `answer` (status, headers, body) over keep-alive HTTP/1.1;
    counts the TCP connections it accepted and records each request line."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CountingHandler)
        self.connections = 0
        self.request_lines: list[str] = []
        self.answer: tuple[int, dict[str, str], bytes] = (200, {"Content-Type": "application/json"}, b'{"ok":true}')
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]


class _CountingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingServer

    def setup(self) -> None:  # once per TCP connection; handle() then serves every request on it
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.request_lines.append(self.requestline)
        write_answer(self, self.server.answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[CountingServer]:
    srv = CountingServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# -- one Retry-After reading ---------------------------------------------------------------------


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize("value,expected", [
    (None, DEFAULT_RETRY_AFTER_S), ("", DEFAULT_RETRY_AFTER_S), ("soon", DEFAULT_RETRY_AFTER_S),
    ("nan", DEFAULT_RETRY_AFTER_S), ("7", 7.0), (" 30 ", 30.0), ("0", 0.0), ("-5", 0.0), ("1.5", 1.5),
    ("86400", MAX_RETRY_AFTER_S), ("inf", MAX_RETRY_AFTER_S),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date gone by: now
    ("Mon, 01 Jan 99999999999 00:00:00 GMT", DEFAULT_RETRY_AFTER_S),  # no clock holds that year
])
def test_retry_after_reads_seconds_or_an_http_date_capped(value: str | None, expected: float) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_as_an_http_date_is_the_time_left_until_it() -> None:
    assert 100.0 <= parse_retry_after(http_date(120)) <= 120.0
    assert parse_retry_after(http_date(10 * 3600)) == MAX_RETRY_AFTER_S


def test_the_web_api_reads_a_retry_after_date_and_caps_it_as_the_relay_does(
        server: CountingServer, no_proxy_env: None) -> None:
    token = Secret(fake_tokens()["SLACK_BOT_TOKEN"])
    api = WebApi(f"http://127.0.0.1:{server.port}/api/", timeout=5)
    for retry_after, expected in ((http_date(10 * 3600), MAX_RETRY_AFTER_S), ("999999", MAX_RETRY_AFTER_S)):
        server.answer = (429, {"Retry-After": retry_after, "Content-Type": "application/json"},
                         b'{"ok":false,"error":"ratelimited"}')
        with pytest.raises(RateLimited) as caught:
            api.post_message(token, "C1", "hi")
        assert caught.value.retry_after == expected


# -- pooled connections --------------------------------------------------------------------------


def test_web_api_calls_share_one_connection(server: CountingServer, no_proxy_env: None) -> None:
    token = Secret(fake_tokens()["SLACK_BOT_TOKEN"])
    api = WebApi(f"http://127.0.0.1:{server.port}/api/", timeout=5)
    for n in range(5):
        api.post_message(token, "C1", f"reply {n}")
    assert (len(server.request_lines), server.connections) == (5, 1)


def test_respond_posts_share_one_connection_across_envelopes(server: CountingServer, no_proxy_env: None) -> None:
    url = f"http://127.0.0.1:{server.port}/commands/T1/1/x"
    for _ in range(2):  # two envelopes' response_urls to one host: one pool for the process
        response_url = ResponseUrl.of({"response_url": url}, time.monotonic())
        for n in range(3):
            response_url.post({"text": f"answer {n}", "response_type": "ephemeral"})
    assert (len(server.request_lines), server.connections) == (6, 1)


def test_relay_posts_share_one_connection(server: CountingServer, no_proxy_env: None) -> None:
    server.answer = (200, {"Content-Type": "application/json"}, json.dumps({"text": "deployed"}).encode())
    client = BackendClient(f"http://127.0.0.1:{server.port}/slack/events", timeout=5)
    try:
        answers = [client.post(build_request(COMMAND, "s3cr3t-signing", time.time())) for _ in range(5)]
    finally:
        client.close()
    assert [a.kind for a in answers] == ["ok"] * 5
    assert answers[-1].ack_payload() == {"text": "deployed"}
    assert (len(server.request_lines), server.connections) == (5, 1)


def test_an_answer_cut_at_the_cap_closes_its_connection_and_the_next_post_still_works(
        server: CountingServer, no_proxy_env: None) -> None:
    client = BackendClient(f"http://127.0.0.1:{server.port}/slack/events", timeout=5)
    try:
        server.answer = (200, {"Content-Type": "text/plain"}, b"x" * (MAX_ANSWER_BYTES * 2))
        cut = client.post(build_request(COMMAND, "s3cr3t-signing", time.time()))
        server.answer = (200, {"Content-Type": "text/plain"}, b"fine")
        after = client.post(build_request(COMMAND, "s3cr3t-signing", time.time()))
    finally:
        client.close()
    assert (cut.kind, len(cut.body)) == ("ok", MAX_ANSWER_BYTES)
    assert (after.kind, after.body) == ("ok", b"fine")  # not the unread rest of the long answer
    assert server.connections == 2


# -- requests' proxy variables -------------------------------------------------------------------


def test_respond_goes_through_http_proxy_unless_no_proxy_names_the_host(
        server: CountingServer, no_proxy_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The counting server plays the proxy: a proxied request names the whole URL in its request line.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    behind_proxy = "http://127.0.0.2:9/commands/T1/1/x"  # nothing listens there: only the proxy can answer
    ResponseUrl.of({"response_url": behind_proxy}, time.monotonic()).post({"text": "via proxy"})
    assert server.request_lines == [f"POST {behind_proxy} HTTP/1.1"]

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.2:9")  # a dead proxy: NO_PROXY must skip it
    ResponseUrl.of({"response_url": f"http://127.0.0.1:{server.port}/commands/T1/1/y"},
                   time.monotonic()).post({"text": "direct"})
    assert server.request_lines[-1] == "POST /commands/T1/1/y HTTP/1.1"
