#!/usr/bin/env python
"""The peer clients scripts/bench.py races against buidl-edge, one per process.

    python scripts/_bench_peers.py {raw,sdk-builtin,sdk-websocket-client,bolt}

Reads SLACK_API_URL, SLACK_APP_TOKEN and SLACK_BOT_TOKEN from the environment
(the bench points them at the simulator) and serves until SIGTERM. Every
client acks each envelope and does nothing else: no Web API calls, so the
figures measure the Socket Mode path only. Each is used the way its
documentation shows, with its defaults.

- raw: the practical floor of this WebSocket stack. A bare websocket-client
  loop: apps.connections.open via requests, read a frame, write its ack.
  It reconnects when its socket ends and ignores `disconnect` frames (the
  server closes a warned link itself), which is the least a client can do.
- sdk-builtin: slack_sdk's SocketModeClient on its builtin WebSocket code.
- sdk-websocket-client: slack_sdk's SocketModeClient on websocket-client.
- bolt: slack_bolt's App + SocketModeHandler (builtin client underneath)
  serving scripts/bolt_bench_app.py: one `app.event("message")` listener
  that does nothing.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from typing import Any

STOP = threading.Event()


def _on_term(signum: int, frame: Any) -> None:
    STOP.set()


def run_raw(api_url: str, app_token: str, bot_token: str) -> None:
    import requests
    import websocket

    session = requests.Session()
    while not STOP.is_set():
        try:
            resp = session.post(api_url + "apps.connections.open",
                                headers={"Authorization": f"Bearer {app_token}"}, timeout=10)
            body = resp.json()
            if not body.get("ok"):
                STOP.wait(float(resp.headers.get("Retry-After", "1")))
                continue
            ws = websocket.create_connection(body["url"], timeout=10, skip_utf8_validation=True)
            ws.settimeout(None)
        except (OSError, ValueError, requests.RequestException, websocket.WebSocketException):
            STOP.wait(0.2)
            continue
        try:
            while not STOP.is_set():
                text = ws.recv()  # answers server pings itself
                if not text:
                    break
                if '"envelope_id"' in text:
                    ws.send(f'{{"envelope_id":"{json.loads(text)["envelope_id"]}"}}')
        except (OSError, websocket.WebSocketException):
            pass
        finally:
            try:
                ws.close(timeout=0.5)
            except Exception:
                pass


def _sdk_listener():
    from slack_sdk.socket_mode.response import SocketModeResponse

    def ack(client, req):
        client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))

    return ack


def run_sdk(kind: str, api_url: str, app_token: str, bot_token: str) -> None:
    from slack_sdk import WebClient

    if kind == "sdk-builtin":
        from slack_sdk.socket_mode.builtin import SocketModeClient
    else:
        from slack_sdk.socket_mode.websocket_client import SocketModeClient  # type: ignore[assignment]
    client = SocketModeClient(app_token=app_token, web_client=WebClient(token=bot_token, base_url=api_url))
    client.socket_mode_request_listeners.append(_sdk_listener())
    client.connect()
    STOP.wait()
    client.close()


def run_bolt(api_url: str, app_token: str, bot_token: str) -> None:
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    from bolt_bench_app import app  # the same app bench.py's edge_bolt runs behind a worker

    handler = SocketModeHandler(app, app_token)
    handler.connect()
    STOP.wait()
    handler.close()


def main() -> int:
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    logging.basicConfig(level=os.environ.get("BENCH_PEER_LOG", "WARNING"))
    api_url = os.environ["SLACK_API_URL"]
    app_token = os.environ["SLACK_APP_TOKEN"]
    bot_token = os.environ["SLACK_BOT_TOKEN"]
    runners = {"raw": run_raw, "bolt": run_bolt,
               "sdk-builtin": lambda *a: run_sdk("sdk-builtin", *a),
               "sdk-websocket-client": lambda *a: run_sdk("sdk-websocket-client", *a)}
    if kind not in runners:
        print(f"unknown peer {kind!r}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    # The client runs on a daemon thread: a blocking read must not keep SIGTERM from ending us.
    worker = threading.Thread(target=runners[kind], args=(api_url, app_token, bot_token), daemon=True)
    worker.start()
    while not STOP.wait(0.5):
        if not worker.is_alive():
            return 1
    worker.join(timeout=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
