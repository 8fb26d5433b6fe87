"""SlotGate in this process: app-wide connection slots leased from a real shared store (SQLite
threaded as in a worker, and a real redis-server that goes away), waited for cooperatively.

Two gates stand for two worker processes; a gate on another host is judged by its lease alone.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest

from buidl_edge.sandbox.harness import wait_until
from buidl_edge.store.base import SlotStore
from buidl_edge.store.redis import RedisStore
from buidl_edge.store.slots import SlotGate
from buidl_edge.store.sqlite import SqliteStore
from buidl_edge.store.threaded import ThreadedStore
from redis_support import RedisServer
from support import HOST, ME, CountedSlots, dead_pid

ELSEWHERE = "otherhost:4242"  # a worker on another dyno: its pid means nothing here
QUICK_RETRY = {"retry_base": 0.05, "retry_cap": 0.2}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ThreadedStore]:
    s = ThreadedStore(SqliteStore(tmp_path / "edge.db", checkpoint_interval_s=None))
    yield s
    s.close()


def gate(store: SlotStore, owner: str = ME, limit: int = 1, **options: Any) -> SlotGate:
    return SlotGate(store, owner, limit, **{**QUICK_RETRY, **options})


def test_the_last_slot_is_waited_for_said_once_and_taken_when_released(
        store: ThreadedStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="buidl_edge")
    counted = CountedSlots(store)
    here, there = gate(counted, ME), gate(store, ELSEWHERE)
    assert there.acquire("c0", gevent.event.Event())
    waiter = gevent.spawn(here.acquire, "c0", gevent.event.Event())
    wait_until(lambda: "c0" in here.waiting, 5, "the wait to show")
    wait_until(lambda: counted.asked[here.holder("c0")] >= 4, 5, "several refused tries")
    assert not waiter.ready() and here.status()["waiting"].keys() == {"c0"} and here.held == set()
    there.release("c0")
    assert waiter.get(timeout=5) is True
    assert here.held == {"c0"} and here.waiting == {} and here.status()["waits"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "buidl_edge.slots"]
    assert sum("connection slots of the app are taken" in m for m in messages) == 1  # once per episode
    assert any(m.startswith("c0 got a connection slot after") for m in messages)


def test_giving_up_ends_the_wait_and_leaves_nothing_held(store: ThreadedStore) -> None:
    here, there = gate(store, ME), gate(store, ELSEWHERE)
    assert there.acquire("c0", gevent.event.Event())
    stop = gevent.event.Event()
    waiter = gevent.spawn(here.acquire, "c0", stop)
    wait_until(lambda: "c0" in here.waiting, 5, "the wait to show")
    stop.set()
    assert waiter.get(timeout=2) is False
    assert here.held == set() and here.waiting == {}


def test_a_dead_process_on_this_host_frees_its_slot_at_once(store: ThreadedStore) -> None:
    corpse = gate(store, f"{HOST}:{dead_pid()}", ttl=600)  # a lease that would last ten minutes
    assert corpse.acquire("c0", gevent.event.Event())
    here = gate(store, ME)
    assert here.acquire("c0", gevent.event.Event())
    assert here.waits == 0


def test_a_lapsed_lease_taken_by_another_is_reported_lost_by_renew(
        store: ThreadedStore, caplog: pytest.LogCaptureFixture) -> None:
    here = gate(store, ME, ttl=0.3)
    assert here.acquire("c0", gevent.event.Event())
    gevent.sleep(0.5)  # the lease lapses (say the store lost it, or the process was stopped)
    there = gate(store, ELSEWHERE)
    assert there.acquire("c0", gevent.event.Event())
    assert here.renew() == ["c0"]
    assert here.held == set() and there.renew() == []
    assert any("connection slot of c0 was lost" in r.getMessage() for r in caplog.records)


def test_while_redis_is_down_a_held_slot_counts_as_held_and_no_new_one_is_granted() -> None:
    server = RedisServer().start()
    store = RedisStore(server.url + "?prefix=gate:", socket_timeout=0.5, connect_timeout=0.5)
    try:
        counted = CountedSlots(store)
        here = gate(counted, ME, limit=2)
        assert here.acquire("c0", gevent.event.Event())
        server.stop()  # a real outage: connections refused
        assert here.acquire("c0", gevent.event.Event()) is True  # a refresh of c0 goes on
        stop = gevent.event.Event()
        newcomer = gevent.spawn(here.acquire, "c1", stop)
        wait_until(lambda: counted.asked[here.holder("c1")] >= 4, 10, "several tries while Redis is away")
        assert not newcomer.ready() and "c1" in here.waiting  # an outage never lets an extra link in
        stop.set()
        assert newcomer.get(timeout=5) is False
        assert here.held == {"c0"}
    finally:
        store.close()
        server.cleanup()
