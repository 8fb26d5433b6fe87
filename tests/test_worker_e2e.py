"""Real worker processes against the real simulator process, over loopback WebSockets.

Each test starts `python -m buidl_edge worker` with test-sized timings from the
environment, drives the simulator's control API, and asserts on what the
simulator saw (acks, payloads, posted messages, connections) and on what the
worker logged. The worker's log is printed at teardown, so a failure shows it.
"""
from __future__ import annotations

import calendar
import re
import signal
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from buidl_edge.api.bot import GREETING, HELP_TEXT
from buidl_edge.sandbox.harness import fake_tokens, wait_until
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from support import Workers, app_folder, keys, log_lines, wait_acked

pytestmark = pytest.mark.timeout(60)

# Issue 2's dedup is the in-process store; the shared SQLite store is proven by its own tests.
STORE_URL = "memory://"

# A handler app for behaviours the default bot does not have: payloads, slow and failing handlers.
TEST_APP = textwrap.dedent('''
    import time
    from buidl_edge import EdgeApp

    app = EdgeApp("e2e")

    @app.event("message")
    def on_message(event, ctx):
        text = event.get("text", "")
        if text.startswith("boom"):
            raise RuntimeError("handler bug on purpose")
        if text.startswith("slow"):
            time.sleep(float(text.split()[1]))
        ctx.say("seen: " + text)
        return {"text": "never on an events_api ack unless accepted"}

    @app.command("/echo")
    def echo(payload, ctx):
        return {"text": "echo: " + payload["text"]}

    @app.command("/slow")
    def slow(payload, ctx):
        time.sleep(float(payload["text"]))
        return {"text": "too late"}

    @app.command("/big")
    def big(payload, ctx):
        return {"text": "x" * 25000}

    @app.interactive("block_actions")
    def clicked(payload, ctx):
        return {"text": "clicked " + payload["actions"][0]["value"]}
''')
TEST_APP_SPEC = "e2e_test_app:app"


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return app_folder(tmp_path_factory, "e2e_test_app", TEST_APP)


@pytest.fixture
def workers(fresh_simulator: SimulatorProcess, tmp_path: Path, app_dir: Path) -> Iterator[Workers]:
    pool = e2e_workers(fresh_simulator, tmp_path, app_dir)
    yield pool
    pool.stop_all()


def e2e_workers(sim: SimulatorProcess, tmp_path: Path, app_dir: Path) -> Workers:
    # The outbox paces replies at Slack's 1 msg/s per channel by default; these tests raise the
    # simulator's limit (see `sim`), so the workers may match it. The in-process store's handlers
    # and replies show on /metrics only: a free port for it, to wait until the workers are idle.
    return Workers(sim, tmp_path, app_dir, BUIDL_POST_RATE=100, BUIDL_POST_BURST=100, BUIDL_STORE_URL=STORE_URL,
                   BUIDL_HTTP_PORT=0, BUIDL_HTTP_HOST="127.0.0.1")


@pytest.fixture
def sim(fresh_simulator: SimulatorProcess) -> SimulatorClient:
    client = fresh_simulator.client
    client.configure(post_rate=100.0, post_burst=100)  # replies are not what these tests measure
    return client


# -- helpers -----------------------------------------------------------------------------------


def replies(state: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for message in state["messages"]:
        out[message["channel"]].append(message["text"])
    return dict(out)


def settled_replies(workers: Workers, expected_channels: set[str], timeout: float = 10) -> dict[str, list[str]]:
    """Wait for a reply in every expected channel, then until the workers are idle (every envelope
    acked and decided, no handler left, no reply unsent), so a double answer shows up."""
    workers.client.wait_for(lambda s: expected_channels <= replies(s).keys(), timeout,
                            f"replies in {sorted(expected_channels)}", source="state")
    return replies(workers.wait_idle())


def fresh_activity(sim: SimulatorClient) -> dict[str, Any]:
    """Wait until the one open link shows client traffic from the last 0.7 s, long after it opened:
    a pong or a ping the client sent. A link the client keeps quiet never shows it."""
    def seen() -> dict[str, Any] | None:
        [link] = open_links(sim)
        return link if link["last_client_activity_s_ago"] < 0.7 else None

    return wait_until(seen, 5, "client traffic on the link within the last 0.7 s", interval=0.1)


def log_time(line: str) -> float:
    """The epoch seconds of a logfmt line's `ts=` field (UTC, milliseconds)."""
    stamp = re.search(r"ts=(\S+)Z", line)
    assert stamp, line
    whole, _, millis = stamp.group(1).partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000


def connections(sim: SimulatorClient) -> list[dict[str, Any]]:
    return sim.state()["connections"]


def open_links(sim: SimulatorClient) -> list[dict[str, Any]]:
    return [c for c in connections(sim) if c["state"] in ("open", "warned")]


# -- acks ----------------------------------------------------------------------------------------


def test_ack_carries_handler_payload_only_when_accepted(sim: SimulatorClient, workers: Workers) -> None:
    workers.start(TEST_APP_SPEC)
    message = keys(sim.inject("message", channel="C0ACK", text="hello"))
    echo = keys(sim.inject("slash_command", command="/echo", text="ping"))
    accepted_click = keys(sim.inject("block_action", text="blue", accepts_response_payload=True))
    plain_click = keys(sim.inject("block_action", text="red"))
    state = wait_acked(sim, message + echo + accepted_click + plain_click)
    events = state["events"]
    assert events[message[0]]["ack_payloads"] == []
    assert events[echo[0]]["ack_payloads"] == [{"text": "echo: ping"}]
    assert events[accepted_click[0]]["ack_payloads"] == [{"text": "clicked blue"}]
    assert events[plain_click[0]]["ack_payloads"] == []
    assert all(events[k]["deliveries"] == 1 and not events[k]["missed"] for k in events)
    assert settled_replies(workers, {"C0ACK"}) == {"C0ACK": ["seen: hello"]}


def test_slow_or_oversized_payload_is_dropped_but_the_ack_still_goes(sim: SimulatorClient, workers: Workers) -> None:
    worker = workers.start(TEST_APP_SPEC, BUIDL_ACK_DEADLINE="0.5")
    slow = keys(sim.inject("slash_command", command="/slow", text="1.5"))
    big = keys(sim.inject("slash_command", command="/big", text=""))
    quick = keys(sim.inject("slash_command", command="/echo", text="still fine"))
    events = wait_acked(sim, slow + big + quick)["events"]
    assert events[slow[0]]["ack_payloads"] == [] and events[big[0]]["ack_payloads"] == []
    assert events[quick[0]]["ack_payloads"] == [{"text": "echo: still fine"}]
    # The slow one waited for the 0.5 s payload deadline, not for the 1.5 s handler (whose "too late"
    # would then have ridden on the ack), and beat Slack's 3 s (no late ack).
    assert events[slow[0]]["first_ack_latency_ms"] >= 400
    assert sim.summary()["late_acks"] == 0
    assert log_lines(worker, r"missed the 0\.5s ack deadline")
    [refused] = log_lines(worker, r"ack payload refused \(ack_too_large\)")
    assert "level=error" in refused and events[big[0]]["envelope_ids"][0] in refused


# -- exactly once ------------------------------------------------------------------------------


def test_redelivered_event_is_acked_again_but_handled_once(sim: SimulatorClient, workers: Workers) -> None:
    worker = workers.start(TEST_APP_SPEC, connections=2)
    [key] = keys(sim.inject("message", channel="C0ONCE", text="only once"))
    wait_acked(sim, [key])
    first_link = sim.state()["acks"][0]["connection"]
    other_link = next(c["id"] for c in open_links(sim) if c["id"] != first_link)
    sim.fault("redeliver", key=key, target=other_link)  # the other connection: dedup across connections
    sim.fault("redeliver", key=key, target=first_link)
    summary = sim.wait_for(lambda s: s["acks_total"] == 3, 10, "all three deliveries acked")
    assert summary["redeliveries"] == 2 and summary["late_acks"] == 0
    state = sim.state()
    assert {a["connection"] for a in state["acks"]} == {first_link, other_link}
    assert len(set(state["events"][key]["envelope_ids"])) == 3
    assert settled_replies(workers, {"C0ONCE"}) == {"C0ONCE": ["seen: only once"]}
    assert len(log_lines(worker, r"duplicate message \(retry [12]\) acked and dropped")) == 2


def test_redelivery_after_a_missed_deadline_is_handled_once(sim: SimulatorClient, workers: Workers) -> None:
    # The handler holds the ack (it may return a payload) past the simulator's 0.5 s deadline:
    # Slack sends the event again with a new envelope id while the first is still being handled.
    sim.configure(ack_deadline=0.5, retry_delays=[0.0])
    worker = workers.start(TEST_APP_SPEC)
    [key] = keys(sim.inject("message", channel="C0LATE", text="slow 1.2", accepts_response_payload=True))
    sim.wait_for(lambda s: s["acks_total"] == 2, 10, "the retry and the late original both acked")
    event = sim.state()["events"][key]
    assert event["deliveries"] == 2 and event["acked"]
    summary = sim.summary()
    assert summary["missed_deadlines"] >= 1 and summary["redeliveries"] == 1 and summary["late_acks"] == 1
    assert settled_replies(workers, {"C0LATE"}) == {"C0LATE": ["seen: slow 1.2"]}
    assert log_lines(worker, r"duplicate message \(retry 1\)")


# -- disconnect reasons ------------------------------------------------------------------------


def test_warning_opens_the_new_link_first_and_the_old_one_acks_until_closed(
        sim: SimulatorClient, workers: Workers) -> None:
    sim.configure(warning_close_delay=2.0)
    worker = workers.start(TEST_APP_SPEC)
    sim.reset()  # count gaps and links from here, with the worker connected
    [old] = open_links(sim)
    warned_at = time.time()
    sim.fault("disconnect", reason="warning", target=old["id"])
    right_after = keys(sim.inject("message", channel="C0WARN", text="in the window", count=3))
    sim.wait_for(lambda s: s["open_connections"] == 2, 5, "the replacement link while the old one is open")
    during = keys(sim.inject("message", channel="C0WARN", text="overlap", count=3))
    # A redelivery sent down the warned link must still be read and acked there.
    sim.fault("redeliver", key=right_after[0], target=old["id"])
    wait_acked(sim, right_after + during)
    sim.wait_for(lambda s: s["acks_total"] == 7, 5, "the redelivery acked on the old link")
    sim.wait_for(lambda s: s["open_connections"] == 1, 10, "the old link closed by the simulator")
    links = {c["id"]: c for c in connections(sim)}
    new = next(c for c in links.values() if c["id"] != old["id"])
    closed_at = links[old["id"]]["closed_at"]
    assert closed_at is not None and new["opened_at"] < closed_at
    acks_on_old = [a for a in sim.state()["acks"] if a["connection"] == old["id"]]
    assert acks_on_old and all(warned_at <= a["at"] <= closed_at for a in acks_on_old)
    summary = sim.summary()
    assert summary["longest_no_connection_gap_s"] == 0.0
    assert summary["max_open_connections_seen"] == 2 and summary["connections_opened"] == 1
    assert summary["missed_deadlines"] == 0
    assert settled_replies(workers, {"C0WARN"})["C0WARN"].count("seen: overlap") == 3
    assert log_lines(worker, r"disconnect frame: warning")


def test_refresh_requested_replaces_the_link_without_a_gap(sim: SimulatorClient, workers: Workers) -> None:
    sim.configure(refresh_close_delay=0.5)
    worker = workers.start(TEST_APP_SPEC)
    sim.reset()  # count gaps and links from here, with the worker connected
    sim.fault("disconnect", reason="refresh_requested", target="oldest")
    injected = keys(sim.inject("message", channel="C0REFRESH", text="refresh", count=4))
    sim.wait_for(lambda s: s["connections_opened"] == 1 and s["open_connections"] == 1, 10,
                 "one new link, the old one gone")
    wait_acked(sim, injected)
    old, new = connections(sim)
    assert old["closed_at"] is not None and new["opened_at"] < old["closed_at"]
    summary = sim.summary()
    assert summary["longest_no_connection_gap_s"] == 0.0 and summary["missed_deadlines"] == 0
    assert summary["connections_open_calls"] == 1
    assert log_lines(worker, r"disconnect frame: refresh_requested")


def test_warning_on_every_connection_leaves_no_gap(sim: SimulatorClient, workers: Workers) -> None:
    sim.configure(warning_close_delay=1.5)
    workers.start(TEST_APP_SPEC, connections=2)
    sim.reset()
    sim.fault("disconnect", reason="warning", target="all")
    injected = keys(sim.inject("message", channel="C0ALL", text="during a full refresh", count=6))
    sim.wait_for(lambda s: s["connections_opened"] >= 2 and s["open_connections"] == 2, 15,
                 "two fresh links and the warned ones gone")
    wait_acked(sim, injected)
    summary = sim.summary()
    assert summary["longest_no_connection_gap_s"] == 0.0 and summary["missed_deadlines"] == 0
    assert summary["max_open_connections_seen"] <= 4


def test_link_is_refreshed_before_hello_says_it_expires(sim: SimulatorClient, workers: Workers) -> None:
    sim.configure(connection_time=2)  # hello: about 2 s of life left
    worker = workers.start(TEST_APP_SPEC)
    [first] = open_links(sim)
    sim.wait_for(lambda s: s["connections_opened"] >= 2, 5, "a replacement opened before expiry")
    second = connections(sim)[1]
    assert second["opened_at"] - first["opened_at"] < 2.0
    assert [c["state"] for c in connections(sim)[:2]] == ["open", "open"]  # the old link still reads
    wait_acked(sim, keys(sim.inject("message", channel="C0EXPIRY", text="x", count=3)))
    assert not log_lines(worker, r"disconnect frame")


def test_link_disabled_stops_the_worker_with_exit_3_and_no_reconnect(sim: SimulatorClient,
                                                                     workers: Workers) -> None:
    worker = workers.start(TEST_APP_SPEC, connections=2)
    sim.fault("disconnect", reason="link_disabled", target="oldest")
    assert worker.wait(timeout=15) == 3
    # Gone: nothing more can come from it once the simulator has seen its links close.
    summary = sim.wait_for(lambda s: s["open_connections"] == 0, 10, "the worker's links closed")
    assert summary["connections_open_calls"] == 2 and summary["connections_opened"] == 2
    assert summary["open_connections"] == 0
    fatal = [line for line in worker.output().splitlines() if line.startswith("buidl-edge worker: fatal:")]
    assert len(fatal) == 1 and "link_disabled" in fatal[0]
    assert "Traceback" not in worker.output()


def test_too_many_websockets_backs_off_and_retries(sim: SimulatorClient, workers: Workers,
                                                   fresh_simulator: SimulatorProcess) -> None:
    # Someone else holds the only connection the app may have.
    sim.configure(max_connections=1)
    ticket_url = requests.post(fresh_simulator.api_url + "apps.connections.open", timeout=5, headers={
        "Authorization": f"Bearer {fake_tokens()['SLACK_APP_TOKEN']}"}).json()["url"]
    blocker = websocket.create_connection(ticket_url, timeout=5)
    worker = workers.start(TEST_APP_SPEC, wait_connected=False)
    started = time.monotonic()
    sim.wait_for(lambda s: s["too_many_websockets"] >= 3, 15, "the worker refused and retrying")
    time.sleep(1.0)
    refused, elapsed = sim.summary()["too_many_websockets"], time.monotonic() - started
    # Backing off (0.2 s base, 2 s cap, full jitter), not hammering.
    assert refused <= 4 + 3 * elapsed, (refused, elapsed)
    retries = log_lines(worker, r"connect failed \(HelloMissing\); retrying in")
    assert len(retries) >= 3
    blocker.close()
    sim.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker connected once the slot was free")
    wait_acked(sim, keys(sim.inject("message", channel="C0TMW", text="through")))
    # Told so on a link it already has: it closes that link, backs off, and comes back.
    opened = sim.summary()["connections_opened"]
    sim.configure(max_connections=10)
    sim.fault("disconnect", reason="too_many_websockets", target="oldest")
    sim.wait_for(lambda s: s["connections_opened"] == opened + 1 and s["open_connections"] == 1, 10,
                 "the worker back after too_many_websockets")
    assert log_lines(worker, r"too_many; reconnecting in")


# -- keepalive, drops, rate limits ---------------------------------------------------------------


def test_silent_link_is_replaced_as_stale(simulator: SimulatorProcess, tmp_path: Path, app_dir: Path) -> None:
    # Its own simulator: the silenced link stays open on the server side until the silence ends.
    sim = simulator.client
    pool = e2e_workers(simulator, tmp_path, app_dir)
    try:
        worker = pool.start(TEST_APP_SPEC, BUIDL_PING_INTERVAL="0.2", BUIDL_STALE_TIMEOUT="0.8")
        [old] = open_links(sim)
        sim.fault("silence", seconds=5, target=old["id"])
        sim.wait_for(lambda s: s["connections_opened"] == 2, 10, "a replacement link")
        # Replaced by the worker's own stale check, so before the simulator spoke again: traffic
        # on the link after the silence would have kept it from going stale.
        assert log_lines(worker, r"link stale for")
        wait_acked(sim, keys(sim.inject("message", channel="C0STALE", text="after")))
        [ack] = sim.state()["acks"]
        assert ack["connection"] != old["id"]
    finally:
        pool.stop_all()


def test_abrupt_drop_reconnects_after_a_jittered_backoff(sim: SimulatorClient, workers: Workers) -> None:
    worker = workers.start(TEST_APP_SPEC, BUIDL_BACKOFF_BASE="0.2", BUIDL_BACKOFF_CAP="1")

    def drop_and_come_back(n: int) -> None:
        sim.fault("drop", target="oldest")
        pending = keys(sim.inject("message", channel="C0DROP", text=f"while down {n}"))
        sim.wait_for(lambda s: s["connections_opened"] == n + 1 and s["open_connections"] == 1, 10,
                     f"reconnect after drop {n}")
        wait_acked(sim, pending)

    drop_and_come_back(1)
    drop_and_come_back(2)  # right after the reconnect: the failure streak goes on
    time.sleep(1.2)  # a link that outlives the backoff cap was healthy
    drop_and_come_back(3)  # so this drop starts a new streak
    waits = [(float(wait), int(attempt)) for line in log_lines(worker, r"closed; reconnecting in")
             for wait, attempt in re.findall(r"reconnecting in ([0-9.]+)s \(attempt (\d+)\)", line)]
    assert [attempt for _, attempt in waits] == [1, 2, 1]
    # Full jitter: uniform(0, min(cap, base * 2**(attempt - 1))).
    assert all(0.0 <= wait <= min(1.0, 0.2 * 2 ** (attempt - 1)) for wait, attempt in waits), waits
    assert sim.summary()["missed_deadlines"] == 0


def test_open_rate_limit_waits_retry_after(sim: SimulatorClient, workers: Workers) -> None:
    sim.configure(open_ratelimit={"count": 1, "retry_after": 2})
    worker = workers.start(TEST_APP_SPEC)
    [limited] = log_lines(worker, r"apps.connections.open rate limited; retrying in")
    [link] = connections(sim)
    waited = link["opened_at"] - log_time(limited)
    assert waited >= 2.0 - 0.01, waited
    summary = sim.summary()
    assert summary["open_429s"] == 1 and summary["connections_open_calls"] == 2


@pytest.mark.parametrize("knob,error,message", [
    ("open_error", "invalid_auth", "Slack refused the app token: invalid_auth"),
    ("auth_error", "token_revoked", "Slack refused the bot token: token_revoked"),
])
def test_fatal_auth_stops_with_one_clear_line_and_no_loop(sim: SimulatorClient, workers: Workers,
                                                          knob: str, error: str, message: str) -> None:
    sim.configure(**{knob: error})
    worker = workers.start(TEST_APP_SPEC, connections=2, wait_connected=False)
    assert worker.wait(timeout=15) == 3
    # Exited 3 at the first refusal: it starts no call any more (a loop of them would not have exited).
    output = worker.output()
    fatal = [line for line in output.splitlines() if line.startswith("buidl-edge worker: fatal:")]
    assert fatal == [f"buidl-edge worker: fatal: {message}"]
    assert "Traceback" not in output
    assert sim.summary()["connections_open_calls"] <= 2
    for token in (worker.env["SLACK_APP_TOKEN"], worker.env["SLACK_BOT_TOKEN"]):
        assert token not in output


# -- handlers and shutdown -----------------------------------------------------------------------


def test_handler_exception_and_bad_frame_are_logged_and_the_connection_goes_on(
        sim: SimulatorClient, workers: Workers) -> None:
    # The --app flag wins over BUIDL_APP (which names the default bot here).
    worker = workers.start("buidl_edge.api.bot:app", args=("--app", TEST_APP_SPEC))
    [boom] = sim.inject("message", channel="C0BOOM", text="boom now")
    sim.fault("bad_frame", text="{not json", target="oldest")
    sim.fault("bad_frame", text='{"type": "events_api", "payload": {}}', target="oldest")
    after = keys(sim.inject("message", channel="C0AFTER", text="after the boom"))
    wait_acked(sim, [boom["key"]] + after)
    assert settled_replies(workers, {"C0AFTER"}) == {"C0AFTER": ["seen: after the boom"]}
    [failed] = log_lines(worker, r"handler on_message failed")
    assert f"envelope_id={boom['envelope_id']}" in failed and "RuntimeError" in failed
    rejected = log_lines(worker, r"bad frame rejected")
    assert [r for r in rejected if "not_json" in r] and [r for r in rejected if "missing_envelope_id" in r]
    summary = sim.summary()
    assert summary["connections_opened"] == 1 and summary["open_connections"] == 1
    assert worker.proc is not None and worker.proc.poll() is None


def test_server_pings_are_answered(sim: SimulatorClient, workers: Workers) -> None:
    sim.configure(ping_interval=0.2)
    # Our own pings only every 30 s: what keeps the link fresh on the server side is our pongs.
    worker = workers.start(TEST_APP_SPEC, BUIDL_PING_INTERVAL="30", BUIDL_STALE_TIMEOUT="60")
    time.sleep(1.5)  # ages the link past its opening traffic (at least 1.5 s: longer changes nothing)
    fresh_activity(sim)
    assert sim.summary()["connections_opened"] == 1
    assert worker.proc is not None and worker.proc.poll() is None


def test_client_pings_keep_a_quiet_link(sim: SimulatorClient, workers: Workers) -> None:
    sim.configure(ping_interval=100.0)  # the server stays quiet
    worker = workers.start(TEST_APP_SPEC, BUIDL_PING_INTERVAL="0.2", BUIDL_STALE_TIMEOUT="0.8")
    time.sleep(2.0)  # ages the link past its opening traffic (at least 2 s: longer changes nothing)
    fresh_activity(sim)
    # The server's pongs count as traffic, so the link is not taken for stale.
    assert sim.summary()["connections_opened"] == 1
    assert not log_lines(worker, r"stale")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_the_handler_in_flight_and_exits_0(sim: SimulatorClient, workers: Workers,
                                                         signum: int) -> None:
    worker = workers.start(TEST_APP_SPEC)
    [key] = keys(sim.inject("message", channel="C0DRAIN", text="slow 1.2"))
    wait_acked(sim, [key])
    worker.signal(signum)
    time.sleep(0.1)
    worker.signal(signum)  # Heroku may send it twice
    assert worker.wait(timeout=12) == 0
    assert replies(sim.state()) == {"C0DRAIN": ["seen: slow 1.2"]}
    assert log_lines(worker, r'msg="worker stopped"')
    assert not log_lines(worker, r"drain timed out|Traceback")


# -- the default Buidl bot -----------------------------------------------------------------------


def test_default_bot_replies(sim: SimulatorClient, workers: Workers) -> None:
    workers.start(connections=2)
    injected: list[str] = []
    mention = "<@U0BUIDL> can you review my branch?"
    for kind in ("message", "app_mention"):  # one mention, as Slack sends it: twice, one ts
        injected += keys(sim.inject(kind, channel="C0MENTION", text=mention, ts="1700000000.000100"))
    injected += keys(sim.inject("message", channel="C0PLAIN", text="no mention here"))
    injected += keys(sim.inject("file_shared", channel="C0FILE", file_name="design.pdf"))
    injected += keys(sim.inject("message", channel="C0BOTS", text=mention, bot_id="B0OTHER"))
    injected += keys(sim.inject("app_mention", channel="C0BOTS", text=mention, bot_id="B0OTHER"))
    injected += keys(sim.inject("message", channel="C0SELF", text=mention, user="U0BUIDL"))
    command = keys(sim.inject("slash_command", command="/buidl", text="help", channel="C0CMD"))
    state = wait_acked(sim, injected + command)
    assert state["events"][command[0]]["ack_payloads"] == [{"response_type": "ephemeral", "text": HELP_TEXT}]
    assert settled_replies(workers, {"C0MENTION", "C0FILE"}) == {
        "C0MENTION": [GREETING],
        "C0FILE": ["File received: design.pdf"],
    }
