"""Half-open links and hostile frames, against real workers and the real simulator (issue 10 §1, §6).

A half-open link is what a NAT or load-balancer drop leaves: the peer neither reads nor
writes and no FIN ever comes. The simulator's `blackhole` fault makes exactly that, for
good. A worker must replace such a link within BUIDL_STALE_TIMEOUT + 5 s (replacement
first, then the dead socket shut down without waiting on Slack), lose nothing, and still
drain and exit 0 on SIGTERM while Slack stays silent.
"""
from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.sandbox.harness import WorkerProcess, wait_until
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from buidl_edge.store.sqlite import SqliteStore
from stack_support import Stack
from support import Workers, wait_idle

pytestmark = pytest.mark.timeout(90)

TESTS_DIR = Path(__file__).resolve().parent
PING_S, STALE_S, DRAIN_S = 1, 3, 4
# The bound: a stale link is replaced within the stale timeout + 5 s.
REPLACED_WITHIN_S = STALE_S + 5
QUICK = {"BUIDL_PING_INTERVAL": PING_S, "BUIDL_STALE_TIMEOUT": STALE_S, "BUIDL_DRAIN_TIMEOUT": DRAIN_S,
         "BUIDL_APP": "slow_app:app"}
DEEP = 100_000  # levels: only 200 KB of brackets
_prefixes = itertools.count(1)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return ""  # the default: SQLite in the state dir
    redis = request.getfixturevalue("redis_server")
    return f"{redis.url}?prefix=ho{os.getpid()}x{next(_prefixes)}:"


@pytest.fixture
def start_worker(fresh_simulator: SimulatorProcess, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    # tests/ on the path: slow_app. /metrics on a free port: what a memory:// worker has left shows there.
    workers = Workers(fresh_simulator, tmp_path, TESTS_DIR, **QUICK, BUIDL_HTTP_PORT=0, BUIDL_HTTP_HOST="127.0.0.1")

    def start(**extra: Any) -> WorkerProcess:
        if not extra.get("BUIDL_STORE_URL"):
            extra.pop("BUIDL_STORE_URL", None)
        return workers.start(**extra)

    yield start
    workers.stop_all()


def mentions(sim: SimulatorClient, prefix: str, count: int) -> dict[str, str]:
    """`count` app_mentions, one channel each; channel -> event key."""
    return {f"C{prefix}{i}": sim.inject("app_mention", channel=f"C{prefix}{i}", text=f"hi {prefix}{i}")[0]["key"]
            for i in range(count)}


def replies(sim: SimulatorClient) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for message in sim.state()["messages"]:
        out.setdefault(message["channel"], []).append(message["text"])
    return out


def open_links(sim: SimulatorClient) -> list[dict[str, Any]]:
    return [c for c in sim.state()["connections"] if c["state"] in ("open", "warned")]


def blackhole_is_replaced_and_nothing_lost(sim: SimulatorClient, stale_logged: Callable[[], bool],
                                           edge: WorkerProcess) -> None:
    """Blackhole the one link; a replacement opens in time, the old socket is shut down, all is handled once."""
    [old] = open_links(sim)
    sim.fault("blackhole", target=old["id"])
    # Slack still routes to the half-open link: these go unacked and come back after the ack deadline.
    during = mentions(sim, "HOLE", 2)
    sim.wait_for(lambda s: s["connections_opened"] == 2, REPLACED_WITHIN_S,
                 "a replacement link within the stale timeout + 5 s")
    # The worker shut the stale socket down: its FIN is what the simulator notices.
    sim.wait_for(lambda s: s["open_connections"] == 1, 5, "the stale link torn down")
    [new] = open_links(sim)
    assert new["id"] != old["id"] and not new["blackholed"]
    assert stale_logged()

    after = mentions(sim, "AFTER", 3)
    wanted = {**during, **after}
    state = sim.wait_for(lambda s: all(s["events"][k]["acked"] for k in wanted.values()), 20,
                         "every event acked", source="state")
    assert {ack["connection"] for ack in state["acks"]} == {new["id"]}
    sim.wait_for(lambda s: s["messages_posted"] >= len(wanted), 10, "a reply to every event")
    wait_idle(sim, edge)  # a second reply, if an event ran twice, would be in by then
    assert replies(sim) == {channel: [f"done: hi {channel[1:]}"] for channel in wanted}
    assert sim.summary()["events_missed"] == 0


def sigterm_while_blackholed_exits_0(sim: SimulatorClient, signal_it: Callable[[], object],
                                     wait: Callable[[float], int]) -> None:
    """Slack goes silent on the only link, then SIGTERM: the drain ends within its timeout, exit 0."""
    [link] = open_links(sim)
    sim.fault("blackhole", target=link["id"])
    mentions(sim, "GONE", 1)  # into the hole: nothing in flight on our side
    signal_it()
    assert wait(DRAIN_S + 4) == 0  # a hang here (TimeoutExpired) is the failure


def test_worker_replaces_a_half_open_link_and_drains_while_slack_is_silent(
        fresh_simulator: SimulatorProcess, start_worker: Callable[..., WorkerProcess], store_url: str) -> None:
    sim = fresh_simulator.client
    worker = start_worker(BUIDL_STORE_URL=store_url)
    blackhole_is_replaced_and_nothing_lost(sim, lambda: "link stale for" in worker.output(), worker)
    sigterm_while_blackholed_exits_0(sim, lambda: worker.signal(signal.SIGTERM), worker.wait)
    output = worker.output()
    assert 'msg="worker stopped"' in output and "drain timed out" not in output
    assert "Traceback" not in output


def test_silence_is_noticed_at_the_stale_timeout_not_at_a_later_ping(
        fresh_simulator: SimulatorProcess, start_worker: Callable[..., WorkerProcess]) -> None:
    sim = fresh_simulator.client
    # Pings far apart, as with the defaults (10 s, stale at 30 s): a check only at each ping
    # would notice the silence up to a ping interval late, past the stale timeout + 5 s.
    ping, stale = 7.0, 7.5
    start_worker(BUIDL_PING_INTERVAL=ping, BUIDL_STALE_TIMEOUT=stale)
    [old] = open_links(sim)
    sim.fault("blackhole", target=old["id"])
    sim.wait_for(lambda s: s["connections_opened"] == 2, stale + 5, "a replacement link within the stale timeout + 5 s")


def test_stale_link_at_the_slot_limit_goes_first_and_is_still_replaced(
        fresh_simulator: SimulatorProcess, start_worker: Callable[..., WorkerProcess]) -> None:
    sim = fresh_simulator.client
    # One slot for the whole app: no overlap can be had, and Slack will never close the stale link
    # to free one, so the worker must tear it down first rather than wait for it.
    worker = start_worker(BUIDL_MAX_APP_CONNECTIONS=1)
    [old] = open_links(sim)
    sim.fault("blackhole", target=old["id"])
    sim.wait_for(lambda s: s["connections_opened"] == 2, REPLACED_WITHIN_S,
                 "a replacement link within the stale timeout + 5 s")
    sim.wait_for(lambda s: s["open_connections"] == 1, 5, "the stale link torn down")
    after = mentions(sim, "LIMIT", 2)
    sim.wait_for(lambda s: all(s["events"][k]["acked"] for k in after.values()), 10, "events after acked",
                 source="state")
    assert "connection slots of the app are taken" in worker.output()


def test_sigterm_while_the_only_link_is_blackholed_exits_0(
        fresh_simulator: SimulatorProcess, start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker(BUIDL_STALE_TIMEOUT=60)  # the drain, not the stale check, meets the silence
    sigterm_while_blackholed_exits_0(fresh_simulator.client, lambda: worker.signal(signal.SIGTERM), worker.wait)
    assert 'msg="worker stopped"' in worker.output()


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_run_replaces_a_half_open_link_and_drains_while_slack_is_silent(
        stacks: Callable[..., Stack], fresh_simulator: SimulatorProcess, request: pytest.FixtureRequest,
        store: str) -> None:
    sim = fresh_simulator.client
    extra: dict[str, Any] = {**QUICK, "BUIDL_PROCESSES": 1, "BUIDL_CONNECTIONS": 1}
    if store == "redis":
        redis = request.getfixturevalue("redis_server")
        extra["BUIDL_STORE_URL"] = f"{redis.url}?prefix=hr{os.getpid()}x{next(_prefixes)}:"
    stack = stacks(**extra).start()
    stack.wait_up(processes=1, connections=1)
    blackhole_is_replaced_and_nothing_lost(sim, lambda: "link stale for" in stack.logs(), stack)
    assert stack.proc is not None
    proc = stack.proc
    sigterm_while_blackholed_exits_0(sim, lambda: stack.signal_every_process(signal.SIGTERM),
                                     lambda timeout: proc.wait(timeout=timeout))
    assert "Traceback" not in stack.logs()


# -- hostile frames: deep nesting, broken WebSocket frames --------------------------------------


def rejected_frames(state_dir: Path) -> int:
    """envelopes_rejected over the worker's connections, from its heartbeat in the SQLite store."""
    store = SqliteStore(state_dir / "edge.sqlite3", checkpoint_interval_s=None)
    try:
        return sum(c["envelopes_rejected"] for w in store.workers() for c in w["stats"]["connections"])
    finally:
        store.close()


def deep_frame() -> str:
    return "[" * DEEP + "]" * DEEP


def test_deeply_nested_frame_is_rejected_and_counted_and_the_link_goes_on(
        fresh_simulator: SimulatorProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    sim = fresh_simulator.client
    worker = start_worker()
    sim.fault("bad_frame", text=deep_frame())
    nested_object = ('{"type": "events_api", "envelope_id": "deep", "payload": '
                     + '{"a": ' * DEEP + "1" + "}" * (DEEP + 1))
    sim.fault("bad_frame", text=nested_object)
    after = mentions(sim, "DEEP", 2)
    sim.wait_for(lambda s: all(s["events"][k]["acked"] for k in after.values()), 10, "events after the frames acked",
                 source="state")
    # Counted in the heartbeat (every 2 s) and logged, and the same link read on.
    wait_until(lambda: rejected_frames(tmp_path / "state") == 2, 10, "2 rejected frames in the heartbeat",
               interval=0.2)
    assert len([line for line in worker.output().splitlines() if "bad frame rejected" in line]) == 2
    summary = sim.summary()
    assert summary["connections_opened"] == 1 and summary["open_connections"] == 1
    assert "Traceback" not in worker.output()


def retiring_link(sim: SimulatorClient) -> dict[str, Any]:
    """Warn the one link; once its replacement is open, the old one is retiring (Slack closes it late)."""
    sim.configure(warning_close_delay=30.0)
    [old] = open_links(sim)
    sim.fault("disconnect", reason="warning", target=old["id"])
    sim.wait_for(lambda s: s["open_connections"] == 2, 10, "the replacement next to the retiring link")
    return old


def test_retiring_link_reads_and_acks_on_after_a_deeply_nested_frame(
        fresh_simulator: SimulatorProcess, start_worker: Callable[..., WorkerProcess]) -> None:
    sim = fresh_simulator.client
    start_worker()
    old = retiring_link(sim)
    sim.fault("bad_frame", text=deep_frame(), target=old["id"])
    [event] = sim.inject("app_mention", channel="CRETIRE", text="hi")
    sim.wait_for(lambda s: s["events"][event["key"]]["acked"], 10, "the event acked", source="state")
    # Slack may route to the retiring link until it closes it: the envelope must still be acked there.
    sim.fault("redeliver", key=event["key"], target=old["id"])
    state = sim.wait_for(lambda s: len(s["acks"]) == 2, 5, "the redelivery acked on the retiring link",
                         source="state")
    assert state["acks"][1]["connection"] == old["id"]


def test_retiring_link_whose_reader_died_is_closed(
        fresh_simulator: SimulatorProcess, start_worker: Callable[..., WorkerProcess]) -> None:
    sim = fresh_simulator.client
    worker = start_worker()
    old = retiring_link(sim)
    # A reserved opcode: websocket-client's reader ends with a protocol error. The socket must go
    # with it, or Slack keeps routing envelopes to a link nobody reads until it closes it itself.
    sim.fault("bad_frame", opcode=3, text="x", target=old["id"])
    sim.wait_for(lambda s: s["open_connections"] == 1, 5, "the retiring link closed by the worker")
    assert [c["state"] for c in sim.state()["connections"] if c["id"] == old["id"]] == ["closed"]
    assert worker.proc is not None and worker.proc.poll() is None


def test_retiring_link_that_goes_half_open_is_closed_at_the_stale_timeout(
        fresh_simulator: SimulatorProcess, start_worker: Callable[..., WorkerProcess]) -> None:
    sim = fresh_simulator.client
    worker = start_worker()
    # Warned, replaced, waiting for Slack's close; then the path goes half-open, so that close never
    # comes. The link's keepalive sees the silence: the link must go then, not when the retiring
    # link's own patience (30 s) runs out, holding a slot of the app meanwhile.
    old = retiring_link(sim)
    sim.fault("blackhole", target=old["id"])
    sim.wait_for(lambda s: s["open_connections"] == 1, REPLACED_WITHIN_S,
                 "the half-open retiring link torn down within the stale timeout + 5 s")
    assert [c["state"] for c in sim.state()["connections"] if c["id"] == old["id"]] == ["closed"]
    [event] = sim.inject("app_mention", channel="CRETIRED", text="hi")
    sim.wait_for(lambda s: s["events"][event["key"]]["acked"], 10, "an event after it acked", source="state")
    assert worker.proc is not None and worker.proc.poll() is None
    assert "Traceback" not in worker.output()
