"""The streams' part of the store contract, on the memory store, a SQLite file and a real Redis:
each stream's progress for the re-run after a crash, and the app-wide budget of each stream
method, shared by every store object (every process) on the same backend."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.delivery.ratelimit import APPEND_STREAM, START_STREAM, STOP_STREAM, StreamLimits
from buidl_edge.store.base import StreamRow
from buidl_edge.store.memory import MemoryStore
from test_store_conformance import Backend

LIMITS = StreamLimits(append_per_minute=60.0, append_burst=3.0, start_stop_per_minute=6.0, start_stop_burst=1.0,
                      jitter_s=0.0)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """Two store objects on one backend (two processes' views); the memory store is one process."""
    if request.param == "memory":
        one = MemoryStore()
        yield one, one
        return
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    backend = Backend(request.param, tmp_path, url)
    yield backend.open(), backend.open()
    backend.close()


def row(stream_id: str, envelope_id: str = "E1", **fields: Any) -> StreamRow:
    return StreamRow(stream_id, envelope_id, "host:1", "C1", "1700000000.000100", **fields)


def test_open_streams_of_an_envelope_are_found_by_any_process_until_stopped(stores: tuple[Any, Any]) -> None:
    mine, other = stores
    mine.stream_save(row("s1", ts="1700000001.000001", sent_chars=120, messages=1))
    mine.stream_save(row("s2", ts=None))
    mine.stream_save(row("s3", envelope_id="E2", ts="1700000001.000002", messages=1))
    found = {r.stream_id: r for r in other.stream_orphans("E1")}
    assert set(found) == {"s1", "s2"}
    assert (found["s1"].ts, found["s1"].sent_chars, found["s1"].messages) == ("1700000001.000001", 120, 1)
    assert found["s2"].ts is None
    assert other.stream_stats()["open"] == 3
    mine.stream_save(row("s1", ts="1700000001.000001", sent_chars=300, messages=2, state="stopped"))
    assert [r.stream_id for r in other.stream_orphans("E1")] == ["s2"]
    assert other.stream_stats()["open"] == 2


def test_each_method_has_one_budget_for_every_process(stores: tuple[Any, Any]) -> None:
    mine, other = stores
    granted, _ = mine.stream_take([APPEND_STREAM, APPEND_STREAM, START_STREAM], LIMITS)
    assert granted == [True, True, True]
    granted, next_at = other.stream_take([APPEND_STREAM, APPEND_STREAM, STOP_STREAM, START_STREAM], LIMITS)
    # One append token left of the burst of 3; stop has its own bucket, start's is spent.
    assert granted == [True, False, True, False]
    assert next_at is not None and time.time() < next_at <= time.time() + 1.1


def test_a_429_pauses_the_method_for_every_process(stores: tuple[Any, Any]) -> None:
    mine, other = stores
    until = time.time() + 30
    mine.stream_pause(APPEND_STREAM, until)
    granted, next_at = other.stream_take([APPEND_STREAM, START_STREAM], LIMITS)
    assert granted == [False, True]
    assert next_at == pytest.approx(until, abs=0.01)
    assert [p["bucket"] for p in other.stream_stats()["paused"]] == [f"m:{APPEND_STREAM}"]


def test_prune_forgets_stopped_streams_but_keeps_open_ones(tmp_path: Path) -> None:
    for store in (MemoryStore(), Backend("sqlite", tmp_path, None).open()):
        store.stream_save(row("old", state="stopped"))
        store.stream_save(row("live", ts="1700000001.000001"))
        store.prune(retention_s=0, now=time.time() + 3600)
        assert [r.stream_id for r in store.stream_orphans("E1")] == ["live"]
        assert store.stream_stats()["open"] == 1
