"""A worker's Redis store in this (gevent-patched) process, against a real redis-server: the
claims of a burst and the finishes of handlers that end in one turn of the hub's loop each go
out in one round trip, and an item that cannot be sent fails alone.

Round trips are counted as the server counts them: `total_reads_processed`, one per command it
had to wait for (a pipeline arrives in one read, or a few for a big one).
"""
from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest

from buidl_edge.store.base import Reply
from buidl_edge.store.errors import StoreRejected
from buidl_edge.store.redis import RedisStore
from redis_support import RedisServer
from support import ME, envelope


@pytest.fixture
def store() -> Iterator[RedisStore]:
    server = RedisServer().start()
    s = RedisStore(server.url + "?prefix=turn:")
    s.batch_finishes()  # as open_store makes a worker's
    try:
        yield s
    finally:
        s.close()
        server.cleanup()


def server_reads(store: RedisStore) -> int:
    return int(store.r.info("stats")["total_reads_processed"])


def inbox_state(store: RedisStore, envelope_id: str) -> str | None:
    row = store.inbox_row(envelope_id)
    return None if row is None else row["state"]


def test_finishes_of_handlers_that_end_in_the_same_turn_share_one_round_trip(store: RedisStore) -> None:
    ids = [f"E{i}" for i in range(30)]
    assert store.claim_many([envelope(i, f"Ev{i}") for i in ids], ME) == [True] * 30
    before = server_reads(store)
    handlers = [gevent.spawn(store.finish, i, [Reply(f"C{i}", f"reply {i}")]) for i in ids]
    gevent.joinall(handlers, raise_error=True)
    reads = server_reads(store) - before
    assert reads <= 6, f"{reads} reads on the server for 30 finishes"  # one at a time: 30
    assert {inbox_state(store, i) for i in ids} == {"done"}
    assert sorted(row.channel for row in store.outbox_list(limit=100)) == sorted(f"C{i}" for i in ids)


def test_a_finish_that_cannot_be_sent_fails_alone_and_the_rest_of_its_turn_stands(store: RedisStore) -> None:
    assert store.claim_many([envelope("E-ok"), envelope("E-bad")], ME) == [True, True]
    bad_blocks = [{"type": "section", "fields": {1, 2}}]  # a set is no JSON: a bug's kind of failure
    ok = gevent.spawn(store.finish, "E-ok", [Reply("C-ok", "fine")])
    bad = gevent.spawn(store.finish, "E-bad", [Reply("C-bad", blocks=bad_blocks)])
    gevent.joinall([ok, bad])
    assert ok.successful() and inbox_state(store, "E-ok") == "done"
    assert isinstance(bad.exception, StoreRejected) and inbox_state(store, "E-bad") == "processing"
