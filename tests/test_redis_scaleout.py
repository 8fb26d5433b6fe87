"""Scale-out for real: two "dynos" (two `buidl-edge run` stacks, each with its own state dir)
share one redis-server and one simulator, as two Heroku dynos share Heroku Redis and Slack.

What is checked is what the simulator saw (acks, replies, connections open at once),
what each stack's supervisord says (no restarts), and what the workers reported.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterator

import pytest

from buidl_edge.harness import wait_until
from buidl_edge.store.redis import RedisStore
from redis_support import RedisServer
from stack_support import Stack, messages_by_channel, stacks  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)
_prefixes = itertools.count(1)


def redis_env(url: str, **extra: Any) -> dict[str, Any]:
    """A dyno's settings: the shared Redis (a key prefix of this test's own), the test app, quick leases."""
    return {"BUIDL_STORE_URL": f"{url}?prefix=so{os.getpid()}x{next(_prefixes)}:", "BUIDL_APP": "slow_app:app",
            "BUIDL_PROCESSES": 2, "BUIDL_CONNECTIONS": 1, "BUIDL_DRAIN_TIMEOUT": 5, **extra}


@pytest.fixture
def dynos(stacks: Callable[..., Stack], redis_server: RedisServer) -> Iterator[Callable[..., tuple[Stack, Stack]]]:
    """Two stacks on one Redis prefix; started together (they come up in parallel)."""

    def make(url: str | None = None, **extra: Any) -> tuple[Stack, Stack]:
        settings = redis_env(url or redis_server.url, **extra)
        return stacks(**settings).start(), stacks(**settings).start()

    yield make


def running(stack: Stack, count: int) -> dict[str, int] | None:
    """{process name: pid} once `count` workers are RUNNING in the stack's supervisord."""
    try:
        infos = stack.processes()
    except Exception:
        return None
    live = {p.name: p.pid for p in infos if p.state == "RUNNING"}
    return live if len(live) == count else None


def mentions(sim: Any, prefix: str, count: int, text: str = "hi") -> dict[str, dict[str, str]]:
    """`count` app_mentions, each in a channel of its own (no per-channel rate limit); channel -> event."""
    out = {}
    for i in range(count):
        channel = f"C{prefix}{i:03d}"
        (event,) = sim.client.inject("app_mention", channel=channel, text=f"{text} {channel}")
        out[channel] = event
    return out


def worker_stats(store: RedisStore) -> list[dict[str, Any]]:
    return [w["stats"] for w in store.workers(max_age_s=15)]


def test_two_dynos_handle_every_event_once_and_never_exceed_the_slot_limit(dynos, fresh_simulator) -> None:
    sim = fresh_simulator
    sim.client.configure(warning_close_delay=2.0)
    # 2 dynos x 2 workers x 1 connection want 4 slots; the app may hold 3.
    a, b = dynos(BUIDL_MAX_APP_CONNECTIONS=3)
    wait_until(lambda: running(a, 2) and running(b, 2), 40, "both dynos' workers RUNNING", interval=0.2)
    sim.client.wait_for(lambda s: s["open_connections"] == 3, 30, "3 connections, the slot limit")

    def one_waiting() -> dict[str, Any] | None:
        report = a.status_json()
        waiting = [row for row in report["processes"] if row["slot_wait"]]
        return report if len(report["processes"]) == 4 and len(waiting) == 1 else None

    report = wait_until(one_waiting, 20, "dyno A's status to show all 4 workers, one waiting for a slot",
                        interval=0.5)
    assert report["slots"]["held"] == 3 and report["slots"]["limit"] == 3
    assert sum(1 for row in report["processes"] if row["state"] == "RUNNING (elsewhere)") == 2  # dyno B's

    # Every event once, across dynos: Slack's redeliveries (new envelope id, same event id)
    # land on another connection, often in the other dyno, and are acked and dropped there.
    sent = mentions(sim, "SO", 24)
    sim.client.wait_for(lambda s: s["acked"] == 24, 20, "24 acks")
    acked_on = {ack["envelope_id"]: ack["connection"] for ack in sim.client.state()["acks"]}
    links = [c["id"] for c in sim.client.state()["connections"] if c.get("state", "open") == "open"]
    for event in sent.values():
        other = next(link for link in links if link != acked_on.get(event["envelope_id"]))
        sim.client.fault("redeliver", key=event["key"], target=other)

    # A refresh at the limit: no slot is free for the overlap, so the new link waits for the old to close.
    sim.client.fault("disconnect", reason="warning", target="oldest")
    sim.client.wait_for(lambda s: s["messages_posted"] >= 24 and s["acks_total"] >= 48, 30,
                        "24 replies and 48 acks")
    sim.client.wait_for(lambda s: s["open_connections"] == 3, 30, "the refreshed link back")
    time.sleep(1.0)  # room for a wrong second reply to show up

    replies = messages_by_channel(sim)
    assert replies == {channel: [f"done: hi {channel}"] for channel in sent}
    summary = sim.client.summary()
    assert summary["max_open_connections_seen"] == 3, summary
    assert summary["too_many_websockets"] == 0
    store = RedisStore(a.env["BUIDL_STORE_URL"])
    try:
        def counted() -> list[dict[str, Any]] | None:  # heartbeats come every 2 s
            stats = worker_stats(store)
            counts = [sum(s["dispatch"][k] for s in stats) for k in ("envelopes_new", "duplicates")]
            return stats if len(stats) == 4 and counts == [24, 24] else None

        # exactly 24 new (no more: nothing was handled twice) and 24 duplicates, over the 4 workers
        stats = wait_until(counted, 15, "heartbeats counting 24 new envelopes and 24 duplicates", interval=0.5)
        assert all(not s["degraded"] for s in stats)
        assert len(store.slots()) <= 3
    finally:
        store.close()


def test_a_killed_dynos_envelopes_in_flight_are_recovered_by_the_other(dynos, fresh_simulator) -> None:
    sim = fresh_simulator
    a, b = dynos(BUIDL_LEASE_S=5)
    wait_until(lambda: running(a, 2) and running(b, 2), 40, "both dynos' workers RUNNING", interval=0.2)
    sim.client.wait_for(lambda s: s["open_connections"] == 4, 30, "4 connections")
    a_pids = set(running(a, 2).values())  # type: ignore[union-attr]

    sent = mentions(sim, "KILL", 16, text="slow 2.5")  # each handler sleeps 2.5 s before replying
    sim.client.wait_for(lambda s: s["acked"] == 16, 20, "16 acks")
    store = RedisStore(a.env["BUIDL_STORE_URL"])
    try:
        def owners() -> Counter[int]:
            rows = store.inbox_list(limit=100)
            return Counter(int(r["owner"].rsplit(":", 1)[1]) for r in rows if r["state"] == "processing")

        in_flight = owners()
        on_a = sum(n for pid, n in in_flight.items() if pid in a_pids)
        assert on_a >= 2, in_flight  # round-robin over 4 links: about half landed on dyno A
        a.kill_everything()  # SIGKILL, every process of the dyno: nothing drains

        sim.client.wait_for(lambda s: s["messages_posted"] >= 16, 30, "16 replies")
        time.sleep(1.0)
        assert messages_by_channel(sim) == {channel: [f"done: slow 2.5 {channel}"] for channel in sent}
        def recovered() -> int | None:  # heartbeats come every 2 s
            n = sum(s["dispatch"]["recovered"] for s in worker_stats(store) if s["pid"] not in a_pids)
            return n if n >= on_a else None

        assert wait_until(recovered, 15, f"dyno B to report {on_a} envelopes recovered", interval=0.5) == on_a
        assert all(r["state"] == "done" for r in store.inbox_list(limit=100))
    finally:
        store.close()


def test_redis_restarted_mid_run_no_crash_loop_and_nothing_lost(stacks, fresh_simulator) -> None:
    sim = fresh_simulator
    with RedisServer(appendonly=True) as server:
        stack = stacks(**redis_env(server.url)).start()
        pids = wait_until(lambda: running(stack, 2), 40, "2 workers RUNNING", interval=0.2)
        sim.client.wait_for(lambda s: s["open_connections"] == 2, 30, "2 connections")
        sent = mentions(sim, "PRE", 6)
        sim.client.wait_for(lambda s: s["messages_posted"] >= 6, 20, "6 replies before the restart")

        # Events keep coming while Redis goes away for 2 s and comes back.
        during: dict[str, dict[str, str]] = {}

        def inject() -> None:
            for i in range(30):
                during.update(mentions(sim, f"R{i:02d}", 1))
                time.sleep(0.15)

        injector = threading.Thread(target=inject)
        injector.start()
        time.sleep(0.8)
        server.restart(down_for=2.0)
        back_at = time.time()
        injector.join()
        sent.update(during)
        # Each worker probes Redis again within its backoff (2 s at most) and beats again; from then
        # on new events are claimed in Redis again: the inbox shows them.
        store = RedisStore(stack.env["BUIDL_STORE_URL"])
        wait_until(lambda: len([w for w in store.workers() if w["updated_at"] > back_at + 0.5]) == 2, 15,
                   "both workers to reach Redis again", interval=0.2)
        after = mentions(sim, "POST", 4)
        sent.update(after)
        for event in after.values():
            wait_until(lambda: store.inbox_row(event["envelope_id"]), 15, "an event claimed in Redis again",
                       interval=0.2)

        sim.client.wait_for(lambda s: s["messages_posted"] >= 40, 30, "40 replies")
        time.sleep(1.0)
        assert messages_by_channel(sim) == {channel: [f"done: hi {channel}"] for channel in sent}
        summary = sim.client.summary()
        assert (summary["acked"], summary["redeliveries"], summary["events_missed"]) == (40, 0, 0)
        assert running(stack, 2) == pids  # the same processes: no crash, no restart
        try:
            def recovered() -> list[dict[str, Any]] | None:  # heartbeats written since Redis came back
                beats = [w for w in store.workers() if w["updated_at"] > back_at + 0.5]
                stats = [w["stats"] for w in beats]
                settled = len(stats) == 2 and sum(s["dispatch"]["envelopes_new"] for s in stats) == 40
                return stats if settled and not any(s["degraded"] for s in stats) else None

            stats = wait_until(recovered, 20, "both workers out of degraded mode, 40 envelopes counted",
                               interval=0.5)
            assert sum(s["dispatch"]["store_errors"] for s in stats) >= 1  # the outage was seen, and reported
            assert sim.client.summary()["open_connections"] == 2
        finally:
            store.close()
        logs = stack.logs()
        assert "degraded" in logs and "writable again" in logs
