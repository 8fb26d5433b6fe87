"""Connection security: proxies (HTTPS_PROXY/HTTP_PROXY/NO_PROXY) for the Web API and the WebSocket,
TLS certificate verification on wss://, and no plain ws:// outside loopback."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from buidl_edge.config import ConfigError, Proxy, bypass_proxy, proxy_for, websocket_options
from buidl_edge.sandbox.harness import WorkerProcess, fake_tokens, wait_until, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from buidl_edge.socketmode.protocol import build_disconnect

pytestmark = pytest.mark.timeout(60)


# -- proxy choice, unit --------------------------------------------------------------------------


def test_proxy_variables_are_read_like_requests_reads_them() -> None:
    env = {"HTTPS_PROXY": "http://u:p%40ss@proxy.corp:3128", "HTTP_PROXY": "proxy.corp:8080"}
    assert proxy_for("wss://wss-primary.slack.com/link/", env) == Proxy("proxy.corp", 3128, ("u", "p@ss"))
    assert proxy_for("https://slack.com/api/", env) == Proxy("proxy.corp", 3128, ("u", "p@ss"))
    assert proxy_for("ws://127.0.0.1:9/link/", env) == Proxy("proxy.corp", 8080)
    both = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}
    lower_case_first = proxy_for("wss://x.test/", both)
    assert lower_case_first is not None and lower_case_first.host == "lower"
    assert proxy_for("wss://x.test/", {}) is None
    assert proxy_for("wss://x.test/", {"HTTP_PROXY": "http://only-http:1"}) is None
    assert "p@ss" not in repr(proxy_for("wss://x.test/", env))
    with pytest.raises(ConfigError):
        proxy_for("wss://x.test/", {"HTTPS_PROXY": "socks5://s:1080"})


@pytest.mark.parametrize("host,port,no_proxy,bypass", [
    ("wss-primary.slack.com", 443, "slack.com", True),
    ("wss-primary.slack.com", 443, ".slack.com", True),
    ("slack.com", 443, ".slack.com", True),
    ("notslack.com", 443, "slack.com", False),
    ("10.1.2.3", 443, "10.0.0.0/8", True),
    ("11.1.2.3", 443, "10.0.0.0/8", False),
    ("127.0.0.1", 8765, "localhost, 127.0.0.1", True),
    ("example.org", 443, "example.org:8443", False),
    ("example.org", 8443, "example.org:8443", True),
    ("anything.test", 443, "*", True),
    ("anything.test", 443, "", False),
])
def test_no_proxy_matching(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypass_proxy(host, port, {"NO_PROXY": no_proxy}) is bypass


def test_websocket_options_make_the_choice_explicit_and_never_touch_tls() -> None:
    env = {"HTTPS_PROXY": "http://u:pw@proxy.corp:3128", "NO_PROXY": "internal.test"}
    assert websocket_options("wss://wss-primary.slack.com/link/", env) == {
        "http_proxy_host": "proxy.corp", "http_proxy_port": 3128, "http_proxy_auth": ("u", "pw"), "proxy_type": "http"}
    # NO_PROXY matched: go direct even though websocket-client would see HTTPS_PROXY itself.
    assert websocket_options("wss://a.internal.test/link/", env)["http_no_proxy"] == ["*"]
    assert websocket_options("wss://wss-primary.slack.com/link/", {}) == {}
    for options in (websocket_options("wss://x/", env), websocket_options("wss://a.internal.test/", env)):
        assert "sslopt" not in options


# -- a recording HTTP proxy, for real workers ----------------------------------------------------


class LoopbackListener:
    """A TCP listener on a free loopback port: each connection goes to `serve`, on a daemon thread
    (one thread for all of them, or one each when `concurrent`)."""

    concurrent = False

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.concurrent:
                threading.Thread(target=self.serve, args=(conn,), daemon=True).start()
            else:
                self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.server.close()


class RecordingProxy(LoopbackListener):
    """A loopback HTTP proxy: CONNECT tunnels and absolute-form requests, each one recorded."""

    concurrent = True

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (request line, Proxy-Authorization)
        super().__init__()

    def serve(self, client: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [line for line in lines[1:] if line]
        auth = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-authorization:")), None)
        self.requests.append((f"{method} {target}", auth))
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.sendall(rest)
        else:
            url = urlsplit(target)
            upstream = socket.create_connection((url.hostname, url.port or 80))
            path = url.path + (f"?{url.query}" if url.query else "")
            kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:"))]
            upstream.sendall("\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
                             .encode("latin-1") + rest)
        threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
        _pipe(upstream, client)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    p = RecordingProxy()
    yield p
    p.close()


def _proxy_free_env(api_url: str, **extra: Any) -> dict[str, str]:
    env = worker_env(api_url, **extra)
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
                 "all_proxy"):
        if name not in extra:
            env.pop(name, None)
    return env


@pytest.mark.parametrize("bypass", [False, True])
def test_a_worker_reaches_slack_through_the_proxy_for_both_web_api_and_websocket(
        simulator: SimulatorProcess, proxy: RecordingProxy, tmp_path: Path, bypass: bool) -> None:
    extra = {"NO_PROXY": "127.0.0.1"} if bypass else {}
    env = _proxy_free_env(simulator.api_url, HTTP_PROXY=f"http://edge:s3cret@127.0.0.1:{proxy.port}",
                          BUIDL_STATE_DIR=tmp_path / "state", **extra)
    with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
        simulator.client.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's connection")
        simulator.client.inject("app_mention", channel="C0PROXY", text="<@U0BUIDL> hi")
        simulator.client.wait_for(lambda s: s["messages_posted"] == 1, 10, "the reply")
        assert worker.stop() == 0
    assert "s3cret" not in worker.output()
    if bypass:
        assert proxy.requests == []
        return
    sim = f"127.0.0.1:{simulator.port}"
    lines = [line for line, _ in proxy.requests]
    assert f"POST http://{sim}/api/apps.connections.open" in lines
    assert f"POST http://{sim}/api/chat.postMessage" in lines
    assert f"CONNECT {sim}" in lines  # the WebSocket tunnelled through the proxy
    expected_auth = "Basic " + base64.b64encode(b"edge:s3cret").decode()
    assert all(auth == expected_auth for _, auth in proxy.requests)


# -- TLS verification and the ws:// rule, against a fake Slack we control --------------------------


class FakeSlack:
    """auth.test and apps.connections.open answering with a Socket Mode URL of our choosing."""

    def __init__(self, socket_url: str) -> None:
        self.socket_url = socket_url
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                method = self.path.rsplit("/", 1)[-1]
                body = ({"ok": True, "url": outer.socket_url} if method == "apps.connections.open"
                        else {"ok": True, "user_id": "U0BOT", "team_id": "T0"})
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TlsServer(LoopbackListener):
    """A TLS listener with a self-signed certificate: records failed handshakes and requests."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.handshake_failures = 0
        self.requests: list[str] = []
        super().__init__()

    def serve(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshake_failures += 1
            raw.close()
            return
        try:
            conn.settimeout(5)
            self.requests.append(conn.recv(65536).decode("latin-1").split("\r\n", 1)[0])
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass
        finally:
            conn.close()


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def test_wss_certificates_are_verified(self_signed: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = self_signed
    tls = TlsServer(cert, key)
    slack = FakeSlack(f"wss://localhost:{tls.port}/link/?ticket=t1")
    try:
        env = _proxy_free_env(slack.api_url, BUIDL_STATE_DIR=tmp_path / "a")
        with WorkerProcess(env, log_path=tmp_path / "untrusted.log") as worker:
            wait_until(lambda: "SSLCertVerificationError" in worker.output(), 15, "the refused certificate")
            assert worker.stop() == 0
        assert tls.handshake_failures >= 1 and tls.requests == []  # nothing was sent over the bad channel
        # Trusting that certificate is all it takes to get through: verification was what stopped it.
        env = _proxy_free_env(slack.api_url, BUIDL_STATE_DIR=tmp_path / "b", WEBSOCKET_CLIENT_CA_BUNDLE=cert)
        with WorkerProcess(env, log_path=tmp_path / "trusted.log") as worker:
            wait_until(lambda: tls.requests, 15, "the upgrade request over verified TLS")
            assert worker.stop() == 0
        assert tls.requests[0].startswith("GET /link/?ticket=t1 HTTP/1.1")
    finally:
        tls.close()
        slack.close()


def test_a_plain_ws_url_outside_loopback_stops_the_worker(tmp_path: Path) -> None:
    ticket = fake_tokens()["SLACK_APP_TOKEN"].rsplit("-", 1)[1]
    slack = FakeSlack(f"ws://wss-primary.slack.example/link/?ticket={ticket}")
    try:
        env = _proxy_free_env(slack.api_url, BUIDL_STATE_DIR=tmp_path / "state")
        with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
            assert worker.wait(timeout=15) == 3  # fatal: no restart would make it safe
    finally:
        slack.close()
    output = worker.output()
    assert "refusing to connect: Socket Mode URL must use wss:// outside loopback" in output
    assert ticket not in output


# -- a Slack that says link_disabled before hello, against the same fake Web API ---------------


class SocketModeOff(LoopbackListener):
    """A WebSocket endpoint whose first frame, before any hello, is `disconnect` link_disabled
    (RFC 6455 handshake, one text frame, a close). Counts the links it was asked for."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's suffix for Sec-WebSocket-Accept

    def __init__(self) -> None:
        self.links = 0
        super().__init__()
        self.url = f"ws://127.0.0.1:{self.port}/link/"

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            key = next((line.split(":", 1)[1].strip() for line in request.decode("latin-1").split("\r\n")
                        if line.lower().startswith("sec-websocket-key:")), "")
            accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
            frame = build_disconnect("link_disabled").encode()  # under 126 bytes: a one-byte length
            self.links += 1
            conn.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
                         + bytes([0x81, len(frame)]) + frame + b"\x88\x00")


def test_link_disabled_before_hello_stops_with_its_own_reason_not_a_token_error(tmp_path: Path) -> None:
    link = SocketModeOff()
    slack = FakeSlack(link.url)
    try:
        env = _proxy_free_env(slack.api_url, BUIDL_STATE_DIR=tmp_path / "state")
        with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
            assert worker.wait(timeout=15) == 3  # fatal: Socket Mode is off, no reconnect can help
    finally:
        link.close()
        slack.close()
    output = worker.output()
    fatal = [line for line in output.splitlines() if line.startswith("buidl-edge worker: fatal:")]
    assert fatal == ["buidl-edge worker: fatal: Slack disabled Socket Mode for this app (link_disabled)"]
    assert "token" not in output.lower() and "Traceback" not in output
    assert link.links == 1  # never reconnected
