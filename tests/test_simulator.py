"""The fake Slack, driven over real sockets like the edge will drive it."""
from __future__ import annotations

import json
import secrets
import socket
import time
from typing import Any

import pytest
import requests
import websocket

from buidl_edge.sandbox.simulator.client import SimulatorError, SimulatorProcess

pytestmark = pytest.mark.timeout(30)

# The simulator reports seconds rounded to the millisecond.
ROUNDING_S = 0.001


def app_token() -> str:
    return "xapp-" + "1-" + secrets.token_hex(8)


def bot_token() -> str:
    return "xoxb-" + "1-" + secrets.token_hex(8)


def open_call(sim: SimulatorProcess, token: str | None = None, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(sim.api_url + "apps.connections.open", headers=headers, timeout=5, **kwargs)


def connect(sim: SimulatorProcess) -> tuple[websocket.WebSocket, dict[str, Any]]:
    """Open a link the way a client does; returns the socket and its hello."""
    resp = open_call(sim, app_token())
    assert resp.status_code == 200, resp.text
    ws = websocket.create_connection(resp.json()["url"], timeout=5)
    return ws, recv_json(ws)


def recv_json(ws: websocket.WebSocket) -> dict[str, Any]:
    return json.loads(ws.recv())


def recv_close(ws: websocket.WebSocket) -> bool:
    """True when the next thing on the socket is a close frame (server pings are skipped)."""
    while True:
        opcode, _ = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return True
        if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            return False


def ack(ws: websocket.WebSocket, envelope: dict[str, Any], payload: dict[str, Any] | None = None) -> None:
    frame: dict[str, Any] = {"envelope_id": envelope["envelope_id"]}
    if payload is not None:
        frame["payload"] = payload
    ws.send(json.dumps(frame))


# -- apps.connections.open and auth.test ---------------------------------------


def test_open_reads_token_only_from_bearer_header(simulator: SimulatorProcess) -> None:
    as_form = requests.post(simulator.api_url + "apps.connections.open", data={"token": app_token()}, timeout=5)
    assert as_form.json() == {"ok": False, "error": "not_authed"}
    assert open_call(simulator, bot_token()).json() == {"ok": False, "error": "not_allowed_token_type"}
    good = open_call(simulator, app_token()).json()
    assert good["ok"] is True
    assert good["url"].startswith(f"ws://127.0.0.1:{simulator.port}/link/?ticket=")
    assert simulator.client.summary()["connections_open_calls"] == 3


def test_open_error_knob_is_returned(simulator: SimulatorProcess) -> None:
    simulator.client.configure(open_error="token_revoked")
    assert open_call(simulator, app_token()).json() == {"ok": False, "error": "token_revoked"}


def test_open_ratelimit_knob_answers_429_with_retry_after(simulator: SimulatorProcess) -> None:
    simulator.client.configure(open_ratelimit={"count": 2, "retry_after": 7})
    for _ in range(2):
        resp = open_call(simulator, app_token())
        assert resp.status_code == 429
        assert resp.headers["Retry-After"] == "7"
        assert resp.json() == {"ok": False, "error": "ratelimited"}
    assert open_call(simulator, app_token()).status_code == 200
    assert simulator.client.summary()["open_429s"] == 2


def test_auth_test_identity_and_errors(simulator: SimulatorProcess) -> None:
    url = simulator.api_url + "auth.test"
    ok = requests.post(url, headers={"Authorization": f"Bearer {bot_token()}"}, timeout=5).json()
    assert ok["ok"] and ok["team_id"] == "T0SIM" and ok["user_id"] == "U0BUIDL" and ok["bot_id"] == "B0BUIDL"
    assert requests.post(url, timeout=5).json() == {"ok": False, "error": "not_authed"}
    simulator.client.configure(auth_error="account_inactive")
    resp = requests.post(url, headers={"Authorization": f"Bearer {bot_token()}"}, timeout=5)
    assert resp.json() == {"ok": False, "error": "account_inactive"}


# -- the /link/ handshake ---------------------------------------------------------


def test_hello_carries_connection_count_lifetime_and_app_id(simulator: SimulatorProcess) -> None:
    simulator.client.configure(connection_time=360)
    first, hello1 = connect(simulator)
    second, hello2 = connect(simulator)
    assert hello1["type"] == "hello"
    assert hello1["num_connections"] == 1 and hello2["num_connections"] == 2
    assert hello2["debug_info"]["approximate_connection_time"] == 360
    assert hello2["connection_info"]["app_id"] == "A0SIM"
    first.close()
    second.close()


def test_malformed_handshake_is_plain_400(simulator: SimulatorProcess) -> None:
    ticket_url = open_call(simulator, app_token()).json()["url"].replace("ws://", "http://")
    plain = requests.get(ticket_url, timeout=5)
    assert plain.status_code == 400
    bad_version = requests.get(ticket_url, timeout=5, headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "99",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    })
    assert bad_version.status_code == 400
    # A bare request line with garbage headers gets an HTTP answer, not a hang.
    with socket.create_connection(("127.0.0.1", simulator.port), timeout=5) as raw:
        raw.sendall(b"GET /link/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")


def test_unknown_and_used_tickets_are_refused(simulator: SimulatorProcess) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as unknown:
        websocket.create_connection(f"ws://127.0.0.1:{simulator.port}/link/?ticket=nope", timeout=5)
    assert unknown.value.status_code == 401
    url = open_call(simulator, app_token()).json()["url"]
    websocket.create_connection(url, timeout=5).close()
    with pytest.raises(websocket.WebSocketBadStatusException) as used:
        websocket.create_connection(url, timeout=5)
    assert used.value.status_code == 401


def test_too_many_websockets_past_max_connections(simulator: SimulatorProcess) -> None:
    simulator.client.configure(max_connections=2)
    links = [connect(simulator)[0] for _ in range(2)]
    resp = open_call(simulator, app_token())
    extra = websocket.create_connection(resp.json()["url"], timeout=5)
    assert recv_json(extra) == {"type": "disconnect", "reason": "too_many_websockets", "debug_info": {"host": "sim"}}
    assert recv_close(extra)
    summary = simulator.client.summary()
    assert summary["too_many_websockets"] == 1
    assert summary["open_connections"] == 2 and summary["max_open_connections_seen"] == 2
    for ws in links:
        ws.close()


# -- delivery ---------------------------------------------------------------------


def test_envelopes_go_round_robin_over_open_connections(simulator: SimulatorProcess) -> None:
    a, _ = connect(simulator)
    b, _ = connect(simulator)
    simulator.client.inject("message", text="hello", count=4)
    got_a = [recv_json(a) for _ in range(2)]
    got_b = [recv_json(b) for _ in range(2)]
    ids = {e["payload"]["event_id"] for e in got_a + got_b}
    assert len(ids) == 4
    state = simulator.client.state()
    assert [c["envelopes_sent"] for c in state["connections"]] == [2, 2]


def test_events_wait_for_a_connection_then_are_delivered(simulator: SimulatorProcess) -> None:
    [event] = simulator.client.inject("app_mention", text="<@U0BUIDL> hi")
    assert simulator.client.summary()["pending"] == 1
    ws, _ = connect(simulator)
    envelope = recv_json(ws)
    assert envelope["envelope_id"] == event["envelope_id"]
    assert envelope["payload"]["event"]["type"] == "app_mention"
    assert simulator.client.summary()["pending"] == 0


def test_ack_records_latency_connection_and_payload(simulator: SimulatorProcess) -> None:
    ws, _ = connect(simulator)
    [event] = simulator.client.inject("slash_command", command="/buidl", text="status")
    envelope = recv_json(ws)
    assert envelope["type"] == "slash_commands" and envelope["accepts_response_payload"] is True
    time.sleep(0.05)
    ack(ws, envelope, {"text": "on it"})
    summary = simulator.client.wait_for(lambda s: s["acked"] == 1, 5, "the ack")
    assert summary["ack_latency_ms"]["count"] == 1 and summary["ack_latency_ms"]["max"] >= 50
    tracked = simulator.client.state()["events"][event["key"]]
    assert tracked["acked"] and tracked["first_ack_latency_ms"] >= 50
    assert tracked["ack_payloads"] == [{"text": "on it"}]
    ws.send(json.dumps({"envelope_id": "not-ours"}))
    ack(ws, envelope)
    summary = simulator.client.wait_for(lambda s: s["unknown_acks"] == 1 and s["duplicate_acks"] == 1, 5,
                                        "unknown and duplicate acks counted")
    assert summary["acks_total"] == 1


def test_missed_deadline_redelivers_with_new_envelope_same_event(simulator: SimulatorProcess) -> None:
    simulator.client.configure(ack_deadline=0.3, retry_delays=[0.0])
    ws, _ = connect(simulator)
    simulator.client.inject("message", text="ack me late")
    first = recv_json(ws)
    retry = recv_json(ws)  # not acked: comes back after the deadline
    assert retry["envelope_id"] != first["envelope_id"]
    assert retry["payload"]["event_id"] == first["payload"]["event_id"]
    assert (first["retry_attempt"], first["retry_reason"]) == (0, "")
    assert (retry["retry_attempt"], retry["retry_reason"]) == (1, "timeout")
    ack(ws, retry)
    summary = simulator.client.wait_for(lambda s: s["acked"] == 1, 5, "the retry acked")
    assert summary["redeliveries"] == 1 and summary["missed_deadlines"] == 1


def test_slash_commands_are_not_redelivered(simulator: SimulatorProcess) -> None:
    simulator.client.configure(ack_deadline=0.2, retry_delays=[0.0])
    ws, _ = connect(simulator)
    simulator.client.inject("slash_command")
    recv_json(ws)
    summary = simulator.client.wait_for(lambda s: s["events_missed"] == 1, 5, "the command counted missed")
    assert summary["redeliveries"] == 0 and summary["envelopes_sent"] == 1


def test_redeliver_fault_resends_an_acked_event(simulator: SimulatorProcess) -> None:
    ws, _ = connect(simulator)
    [event] = simulator.client.inject("file_shared", file_name="plan.pdf")
    first = recv_json(ws)
    assert first["payload"]["event"]["file"]["name"] == "plan.pdf"
    ack(ws, first)
    simulator.client.wait_for(lambda s: s["acked"] == 1, 5, "the first ack")
    simulator.client.fault("redeliver", key=event["key"])
    again = recv_json(ws)
    assert again["envelope_id"] != first["envelope_id"]
    assert again["payload"]["event_id"] == event["key"]
    assert (again["retry_attempt"], again["retry_reason"]) == (1, "timeout")


# -- faults and keepalive -------------------------------------------------------------


@pytest.mark.parametrize("reason", ["warning", "refresh_requested", "link_disabled", "too_many_websockets"])
def test_disconnect_fault_sends_reason_then_closes(simulator: SimulatorProcess, reason: str) -> None:
    simulator.client.configure(warning_close_delay=0.3, refresh_close_delay=0.3)
    ws, _ = connect(simulator)
    result = simulator.client.fault("disconnect", reason=reason, target="oldest")
    assert result["connections"] == ["c1"]
    frame = recv_json(ws)
    assert frame["type"] == "disconnect" and frame["reason"] == reason
    assert recv_close(ws)
    summary = simulator.client.wait_for(lambda s: s["open_connections"] == 0, 5, "the link closed")
    assert summary["faults"]["disconnect"] == 1 and summary["faults"][f"disconnect:{reason}"] == 1


def test_warned_link_gets_no_new_envelopes_when_another_is_open(simulator: SimulatorProcess) -> None:
    simulator.client.configure(warning_close_delay=5)
    old, _ = connect(simulator)
    new, _ = connect(simulator)
    simulator.client.fault("disconnect", reason="warning", target="c1")
    assert recv_json(old)["reason"] == "warning"
    simulator.client.inject("message", count=3)
    assert [recv_json(new)["type"] for _ in range(3)] == ["events_api"] * 3
    assert simulator.client.state()["connections"][0]["envelopes_sent"] == 0


def test_drop_fault_ends_the_socket_without_close_frame(simulator: SimulatorProcess) -> None:
    ws, _ = connect(simulator)
    simulator.client.fault("drop")
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        ws.recv()
    simulator.client.wait_for(lambda s: s["open_connections"] == 0, 5, "the drop seen")


def test_time_with_no_link_open_is_measured_from_the_drop_to_the_next_link(simulator: SimulatorProcess) -> None:
    # Each bound is causal, so it holds however slow the machine: the gap starts after the fault
    # call and before the test sees no link open; it ends after the next open call and before its hello.
    ws, _ = connect(simulator)
    assert simulator.client.summary()["longest_no_connection_gap_s"] == 0.0
    fault_called = time.monotonic()
    simulator.client.fault("drop")
    simulator.client.wait_for(lambda s: s["open_connections"] == 0, 5, "the drop seen")
    seen_down = time.monotonic()
    time.sleep(0.5)
    asked = time.monotonic()
    still_down = simulator.client.summary()["longest_no_connection_gap_s"]
    assert still_down >= asked - seen_down - ROUNDING_S, "the gap going on is not counted"
    reopened = time.monotonic()
    connect(simulator)
    greeted = time.monotonic()
    gap = simulator.client.summary()["longest_no_connection_gap_s"]
    assert reopened - seen_down - ROUNDING_S <= gap <= greeted - fault_called + ROUNDING_S
    ws.close()


def test_a_link_dropped_while_another_is_open_leaves_no_gap(simulator: SimulatorProcess) -> None:
    old, _ = connect(simulator)
    new, _ = connect(simulator)
    simulator.client.fault("drop", target="oldest")
    summary = simulator.client.wait_for(lambda s: s["open_connections"] == 1, 5, "the drop seen")
    time.sleep(0.2)  # a gap, if one were wrongly counted, would have grown meanwhile
    assert summary["longest_no_connection_gap_s"] == 0.0
    assert simulator.client.summary()["longest_no_connection_gap_s"] == 0.0
    old.close()
    new.close()


def test_server_pings_and_bad_frame_fault(simulator: SimulatorProcess) -> None:
    simulator.client.configure(ping_interval=0.1)
    ws, _ = connect(simulator)
    opcode, _ = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PING
    simulator.client.fault("bad_frame", text="{not json")
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            assert data == b"{not json"
            break


def test_silenced_link_holds_envelopes_until_it_resumes(simulator: SimulatorProcess) -> None:
    ws, _ = connect(simulator)
    simulator.client.fault("silence", seconds=0.5)
    started = time.monotonic()
    simulator.client.inject("message")
    recv_json(ws)
    assert time.monotonic() - started >= 0.4


def test_blackholed_link_neither_reads_nor_writes_nor_closes(simulator: SimulatorProcess) -> None:
    simulator.client.configure(ping_interval=0.1)
    ws, _ = connect(simulator)
    simulator.client.inject("message")
    envelope = recv_json(ws)
    simulator.client.fault("blackhole")
    simulator.client.inject("message")
    ack(ws, envelope)
    ws.ping(b"anyone?")
    ws.settimeout(1.0)
    # No server ping, no envelope, no pong, no close frame and no FIN: the read just times out.
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_data(control_frame=True)
    summary = simulator.client.summary()
    # Slack does not know: the link counts as open, the envelope went "out" on it, the ack was never read.
    assert summary["open_connections"] == 1 and summary["envelopes_sent"] == 2 and summary["acked"] == 0
    [link] = simulator.client.state()["connections"]
    assert link["blackholed"] and link["state"] == "open"
    assert ws.sock is not None
    ws.sock.shutdown(socket.SHUT_RDWR)  # the client goes: the simulator notices without reading
    simulator.client.wait_for(lambda s: s["open_connections"] == 0, 5, "the blackholed link to go")


def test_blackhole_with_seconds_ends_in_a_drop(simulator: SimulatorProcess) -> None:
    ws, _ = connect(simulator)
    simulator.client.fault("blackhole", seconds=0.3)
    ws.settimeout(5)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        ws.recv()  # EOF, without a close frame
    simulator.client.wait_for(lambda s: s["open_connections"] == 0, 5, "the blackhole's end")


def test_reset_ends_a_blackhole(simulator: SimulatorProcess) -> None:
    _ws, _ = connect(simulator)  # held, so that only the reset can end the link
    simulator.client.fault("blackhole")
    simulator.client.reset()
    simulator.client.wait_for(lambda s: s["open_connections"] == 0, 5, "the blackholed link dropped")
    with pytest.raises(SimulatorError):
        simulator.client.fault("blackhole", seconds="soon")


def test_bad_frame_fault_can_send_a_reserved_opcode(simulator: SimulatorProcess) -> None:
    ws, _ = connect(simulator)
    simulator.client.fault("bad_frame", opcode=3, text="x")
    with pytest.raises(websocket.WebSocketProtocolException):
        ws.recv()


# -- chat.postMessage -------------------------------------------------------------------


def post(sim: SimulatorProcess, token: str | None = None, **fields: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token or bot_token()}"}
    return requests.post(sim.api_url + "chat.postMessage", headers=headers, data=fields, timeout=5)


def test_post_message_records_and_answers_like_slack(simulator: SimulatorProcess) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    body = post(simulator, channel="C0GENERAL", text="hi", blocks=json.dumps(blocks), thread_ts="1.000001").json()
    assert body["ok"] and body["channel"] == "C0GENERAL" and body["message"]["thread_ts"] == "1.000001"
    second = post(simulator, channel="C0GENERAL", text="again").json()
    assert second["ts"] != body["ts"]
    [message, _] = simulator.client.state()["messages"]
    assert message["blocks"] == blocks and message["text"] == "hi"
    assert post(simulator, token=app_token(), channel="C0GENERAL", text="x").json()["error"] == "not_allowed_token_type"
    assert post(simulator, text="x").json()["error"] == "channel_not_found"
    assert post(simulator, channel="C0GENERAL").json()["error"] == "no_text"


def test_post_message_rate_limit_answers_429_with_retry_after(simulator: SimulatorProcess) -> None:
    simulator.client.configure(post_rate=0.5, post_burst=2)
    assert [post(simulator, channel="C1", text=str(i)).status_code for i in range(2)] == [200, 200]
    limited = post(simulator, channel="C1", text="too fast")
    assert limited.status_code == 429 and limited.json() == {"ok": False, "error": "ratelimited"}
    assert int(limited.headers["Retry-After"]) >= 1
    assert post(simulator, channel="C2", text="other channel").status_code == 200
    summary = simulator.client.summary()
    assert summary["post_429s"] == 1 and summary["messages_posted"] == 3


def test_post_errors_knob_fails_that_channel(simulator: SimulatorProcess) -> None:
    simulator.client.configure(post_errors={"C0GONE": "channel_not_found"})
    resp = post(simulator, channel="C0GONE", text="hi")
    assert resp.status_code == 200 and resp.json() == {"ok": False, "error": "channel_not_found"}
    assert simulator.client.summary()["messages_posted"] == 0


# -- control API --------------------------------------------------------------------------


def test_control_api_rejects_unknown_knob_and_kind(simulator: SimulatorProcess) -> None:
    resp = requests.post(simulator.base_url + "/_sim/config", json={"no_such_knob": 1}, timeout=5)
    assert resp.status_code == 400 and "no_such_knob" in resp.json()["error"]
    with pytest.raises(SimulatorError):
        simulator.client.inject("reaction_added")
    assert requests.get(simulator.base_url + "/_sim/health", timeout=5).json() == {"ok": True}


def test_reset_clears_counters_but_keeps_connections(simulator: SimulatorProcess) -> None:
    ws, _ = connect(simulator)
    simulator.client.inject("message")
    ack(ws, recv_json(ws))
    simulator.client.wait_for(lambda s: s["acked"] == 1, 5, "the ack")
    simulator.client.reset()
    summary = simulator.client.summary()
    assert summary["acked"] == 0 and summary["events_injected"] == 0 and summary["open_connections"] == 1


def test_simulator_process_exits_zero_on_sigterm() -> None:
    sim = SimulatorProcess().start()
    try:
        assert sim.client.health()
    finally:
        assert sim.stop() == 0
