"""The edge's own Web API calls: which HTTP stack, and webapi.py against slack_sdk's WebClient.

    .venv/bin/python scripts/bench_webapi.py                 # 3 interleaved runs each, plain http and TLS
    .venv/bin/python scripts/bench_webapi.py --clients urllib3,session   # the two stacks alone
    .venv/bin/python scripts/bench_webapi.py --runs 1 --posts 500 --modes http

What it decides:
- `urllib3` against `session`: which one HTTP stack the edge's own calls (webapi, ctx.respond,
  the relay's posts) stand on. Both post the same JSON with the same headers and read the whole
  answer; `urllib3` is a bare `urllib3.PoolManager`, `session` a bare `requests.Session` on an
  HTTPAdapter as big as the concurrency, `trust_env` off (proxies come from config.proxy_for
  either way, so requests' own environment lookups are not what is measured).
- `webapi` against `webclient`: whether the outbox sender and the connection slots should call
  Slack through slack_sdk's WebClient (what handlers get as ctx.client) instead of webapi.

Each run is a fresh gevent-patched child process (as a worker is) that sends `--posts`
chat.postMessage calls from `--concurrency` greenlets at once, spread over 50 channels, to a
fresh simulator (rate limits off). `tls` puts a TLS-terminating relay (a self-signed P-256
certificate the clients trust) in front of the simulator, as Slack is reached in production. It
reports calls/s, the latency of one call (p50/p99), the TCP connections opened, the client
process's CPU time per 1,000 calls (what the hub spends), and the resident memory that importing
the client adds. Prints each run, then the medians side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIENTS = ("urllib3", "session", "webapi", "webclient")
CHANNELS = 50


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(client_name: str, api_url: str, posts: int, concurrency: int, cafile: str | None) -> None:
    """One measured run, in a process of its own, patched as a worker is."""
    from buidl_edge.runtime.gevent_patch import patch

    patch()
    import socket
    import ssl

    import gevent
    import gevent.pool

    from buidl_edge.config import Secret
    from buidl_edge.sandbox.harness import fake_tokens

    token = Secret(fake_tokens()["SLACK_BOT_TOKEN"])
    connects = [0]
    original_connect = socket.socket.connect

    def counting_connect(self: socket.socket, address: Any) -> None:
        connects[0] += 1
        original_connect(self, address)

    socket.socket.connect = counting_connect  # type: ignore[method-assign,assignment]  # counted for the bench only
    before = rss_kb()
    call: Callable[[str, str], None]
    if client_name == "webapi":
        from buidl_edge.webapi.client import sender_webapi
        from buidl_edge.webapi.http import http_pool

        api = sender_webapi(api_url, 10.0, concurrency)
        if cafile:
            api.pool = http_pool(api_url, concurrency, {"SSL_CERT_FILE": cafile})

        def post_webapi(channel: str, text: str) -> None:
            api.post_message(token, channel, text)
        call = post_webapi
    elif client_name in ("urllib3", "session"):
        call = bare_stack(client_name, api_url, token.reveal(), concurrency, cafile)
    else:
        from buidl_edge.api.webclient import build_client

        web = build_client(api_url, token, 10.0)
        if cafile:
            web.ssl = ssl.create_default_context(cafile=cafile)

        def post_webclient(channel: str, text: str) -> None:
            web.chat_postMessage(channel=channel, text=text)
        call = post_webclient
    imported_kb = rss_kb() - before

    latencies: list[float] = []

    def one(n: int) -> None:
        started = time.perf_counter()
        call(f"C0BENCH{n % CHANNELS:02d}", f"reply {n}")
        latencies.append(time.perf_counter() - started)

    for n in range(min(20, posts)):  # warm up: imports, first connections
        one(n)
    latencies.clear()
    connects[0] = 0
    cpu_started, started = time.process_time(), time.perf_counter()
    pool = gevent.pool.Pool(concurrency)
    for n in range(posts):
        pool.spawn(one, n)
    pool.join(raise_error=True)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    latencies.sort()
    print(json.dumps({
        "calls_per_s": round(posts / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
        "connections": connects[0],
        "cpu_ms_per_call": round(cpu / posts * 1000, 3),
        "import_rss_mb": round(imported_kb / 1024, 1),
    }))


def bare_stack(name: str, api_url: str, token: str, concurrency: int, cafile: str | None) -> Callable[[str, str], None]:
    """chat.postMessage on a bare urllib3 pool or a bare requests.Session: the same JSON, the same
    headers, the whole answer read and decoded, no redirects, no retries."""
    url = api_url + "chat.postMessage"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"}
    if name == "urllib3":
        import certifi
        import urllib3

        pool = urllib3.PoolManager(num_pools=2, maxsize=concurrency, block=False, cert_reqs="CERT_REQUIRED",
                                   ca_certs=cafile or certifi.where())

        def post_urllib3(channel: str, text: str) -> None:
            response = pool.request("POST", url, body=json.dumps({"channel": channel, "text": text}).encode(),
                                    headers=headers, timeout=10.0, retries=False, redirect=False)
            assert json.loads(response.data)["ok"]
        return post_urllib3
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.trust_env = False
    session.verify = cafile or True
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=concurrency, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def post_session(channel: str, text: str) -> None:
        response = session.post(url, json={"channel": channel, "text": text}, headers=headers, timeout=10.0,
                                allow_redirects=False)
        assert response.json()["ok"]
    return post_session


def relay(certfile: str, keyfile: str, target_port: int, ready_file: str) -> None:
    """A TLS-terminating TCP relay in front of the simulator, in its own process."""
    from gevent import monkey

    monkey.patch_all()
    import socket

    import gevent
    from gevent.server import StreamServer

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, ValueError):  # the other direction closed the socket first
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle(client: socket.socket, _address: object) -> None:
        upstream = socket.create_connection(("127.0.0.1", target_port))
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        gevent.joinall([gevent.spawn(pipe, client, upstream), gevent.spawn(pipe, upstream, client)])
        client.close()
        upstream.close()

    server = StreamServer(("127.0.0.1", 0), handle, certfile=certfile, keyfile=keyfile)
    server.start()
    Path(ready_file).write_text(str(server.address[1]))
    gevent.wait()


def make_certificate(folder: Path) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


def one_run(client_name: str, mode: str, posts: int, concurrency: int, folder: Path) -> dict[str, float]:
    from buidl_edge.sandbox.simulator.client import SimulatorProcess

    with SimulatorProcess() as sim:
        sim.client.configure(post_rate=1e6, post_burst=1_000_000)
        relay_proc = None
        cafile = None
        api_url = sim.api_url
        try:
            if mode == "tls":
                cafile, key = make_certificate(folder)
                ready = folder / f"relay-{time.monotonic_ns()}"
                relay_proc = subprocess.Popen([sys.executable, __file__, "--relay", cafile, key, str(sim.port),
                                               str(ready)])
                deadline = time.monotonic() + 10
                while not ready.exists() or not ready.read_text():
                    if time.monotonic() > deadline or relay_proc.poll() is not None:
                        raise SystemExit("the TLS relay did not start")
                    time.sleep(0.02)
                api_url = f"https://127.0.0.1:{ready.read_text()}/api/"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}
            if cafile:  # requests prefers these to a Session's own `verify`
                env["REQUESTS_CA_BUNDLE"] = env["CURL_CA_BUNDLE"] = cafile
            args = [sys.executable, __file__, "--child", client_name, api_url, str(posts), str(concurrency)]
            if cafile:
                args.append(cafile)
            result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise SystemExit(f"{client_name} run failed:\n{result.stderr[-3000:]}")
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            posted = sim.client.summary()["messages_posted"]
            if posted != posts + min(20, posts):
                raise SystemExit(f"{client_name}: the simulator got {posted} posts, not {posts + min(20, posts)}")
            return figures
        finally:
            if relay_proc is not None:
                relay_proc.terminate()
                relay_proc.wait(timeout=5)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, url, posts, concurrency = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        child(name, url, posts, concurrency, sys.argv[6] if len(sys.argv) > 6 else None)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--relay":
        relay(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8, help="posts in flight at once (the outbox's default)")
    parser.add_argument("--modes", default="http,tls", help="http, tls or both")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"any of {', '.join(CLIENTS)}")
    args = parser.parse_args()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-webapi-") as tmp:
        for run in range(1, args.runs + 1):
            for mode in args.modes.split(","):
                for name in args.clients.split(","):
                    figures = one_run(name, mode, args.posts, args.concurrency, Path(tmp))
                    results.setdefault((mode, name), []).append(figures)
                    print(f"run {run} {mode:4} {name:9} {figures}", flush=True)
    print(f"\nmedians of {args.runs} run(s), {args.posts} chat.postMessage calls, {args.concurrency} at once")
    print(f"{'mode':5} {'client':10} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'conns':>6} "
          f"{'cpu ms/1k calls':>15} {'import MB':>9}")
    for (mode, name), runs in sorted(results.items()):
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{mode:5} {name:10} {med['calls_per_s']:>8.0f} {med['p50_ms']:>7.2f} {med['p99_ms']:>7.2f} "
              f"{med['connections']:>6.0f} {med['cpu_ms_per_call'] * 1000:>15.0f} {med['import_rss_mb']:>9.1f}")


if __name__ == "__main__":
    main()
