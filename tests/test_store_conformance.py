"""One contract, two shared stores: every test here runs against SQLite and against a real Redis.

Claims (both dedup keys or neither), finish + outbox, leases and sweeps of dead
owners (also from racing processes), prune, heartbeats and connection slots.
The tests at the end are about Redis alone: cooperative I/O under gevent,
failures as StoreError with a fast-failing backoff, and a restarted server.
The outbox contract of tests/test_outbox_store.py is run against Redis too.
"""
from __future__ import annotations

import inspect
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import test_outbox_store as outbox_contract
from buidl_edge.delivery.ratelimit import PostLimits
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import MIN_RETENTION_S, DeliveryOutcome, Reply
from buidl_edge.store.errors import StoreError, StoreUnavailable
from buidl_edge.store.redis import RedisStore
from buidl_edge.store.sqlite import SqliteStore
from redis_support import DroppingPort, RedisServer
from support import HOST, ME, dead_pid, envelope as env

FAST = PostLimits(rate=1000.0, burst=1000.0)
PROJECT = Path(__file__).resolve().parent.parent
_prefixes = itertools.count(1)


class Backend:
    """Opens stores on one backend: a SQLite file, or a Redis key prefix of this test's own."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str | None) -> None:
        self.kind = kind
        self.path = tmp_path / "edge.db"
        self.url = f"{redis_url}?prefix=t{os.getpid()}x{next(_prefixes)}:" if redis_url else ""
        self.opened: list[Any] = []

    def open(self, **kwargs: Any) -> Any:
        store = SqliteStore(self.path, **kwargs) if self.kind == "sqlite" else RedisStore(self.url, **kwargs)
        self.opened.append(store)
        return store

    def code(self) -> str:
        """Python that opens the same store in another process, as `s`."""
        if self.kind == "sqlite":
            return (f"from buidl_edge.store.sqlite import SqliteStore; "
                    f"s = SqliteStore({str(self.path)!r}, busy_timeout_s=10)")
        return f"from buidl_edge.store.redis import RedisStore; s = RedisStore({self.url!r})"

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    b = Backend(request.param, tmp_path, url)
    yield b
    b.close()


@pytest.fixture
def store(backend: Backend) -> Any:
    return backend.open()


def race(backend: Backend, body: str, procs: int = 4, timeout: float = 30) -> list[Any]:
    """Run `body` (with `s` open) in `procs` processes released at once; their JSON results."""
    # Released by a start time, not by the order their stdin is written: all go at one instant.
    code = "import json, os, sys, time\n" + backend.code() + "\nprint('ready', flush=True)\n" + \
        "time.sleep(max(0.0, float(sys.stdin.readline()) - time.time()))\n" + textwrap.dedent(body)
    children = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=PROJECT) for _ in range(procs)]
    for child in children:  # every one has imported and opened its store...
        assert child.stdout is not None and child.stdout.readline().strip() == "ready", child.stderr
    start = time.time() + 0.2
    for child in children:  # ...then all go at once
        assert child.stdin is not None
        child.stdin.write(f"{start!r}\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, err = child.communicate(timeout=timeout)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    return results


# ---------------------------------------------------------------- claims


def test_claim_new_then_duplicate(store: Any) -> None:
    assert store.claim(env("E1", "Ev1"), ME) is True
    assert store.claim(env("E1", "Ev1"), ME) is False
    row = store.inbox_row("E1")
    assert row and row["state"] == "processing" and row["owner"] == ME and row["attempts"] == 1
    assert row["lease_until"] > time.time() + 20


def test_redelivery_with_a_new_envelope_id_is_a_duplicate_by_event_id(store: Any) -> None:
    assert store.claim(env("E1", "Ev1"), ME)
    assert not store.claim(env("E2", "Ev1"), ME)
    assert store.inbox_row("E2") is None  # nothing of the loser was written
    assert store.claim_key("env:E2")  # not even its envelope key
    assert store.claim(env("E3", "Ev2"), ME)


def test_both_keys_or_neither(store: Any) -> None:
    assert store.claim_key("evt:Ev9")  # the event id is taken first...
    assert not store.claim(env("E9", "Ev9"), ME)
    assert store.claim_key("env:E9")  # ...so the envelope key was not set either


def test_claim_key_is_once_only_and_shares_the_key_space(store: Any) -> None:
    assert store.claim_key("job:42")
    assert not store.claim_key("job:42")
    assert store.claim(env("E1"), ME)
    assert not store.claim_key("env:E1")


def assert_one_winner_each(backend: Backend, count: int, envelope_id: str, procs: int) -> None:
    """`procs` processes claim `count` events, each in its own order, so they collide all along;
    every event is won exactly once. `envelope_id` is an f-string body over `round_no` and `i` (and
    `os.getpid()`, to give each process's envelope of one event an id of its own, as Slack's retries
    have). On a loaded machine one process can finish before the others run; then race again."""
    backend.open().close()  # schema first, so the race is about claims only
    for round_no in range(3):
        results = race(backend, f"""
            import random
            from buidl_edge.socketmode.protocol import Envelope
            round_no = {round_no}
            order = list(range({count}))
            random.shuffle(order)
            won = []
            for i in order:
                if s.claim(Envelope("events_api", f"{envelope_id}",
                                    {{"event_id": f"R{{round_no}}Ev{{i}}", "event": {{"type": "message"}}}}),
                           "h:%d" % os.getpid()):
                    won.append(i)
                # A pause between claims, as between envelopes: a writer that never lets go of the
                # lock between its own commits could take all of them while the others sleep in
                # SQLite's busy handler, and no race would happen at all.
                time.sleep(0.0002)
            s.close()
            print(json.dumps(won))
        """, procs=procs)
        wins = sorted(i for won in results for i in won)
        assert wins == list(range(count))
        if sum(1 for won in results if won) >= 2:
            return
    raise AssertionError("no actual race happened in 3 rounds")


def test_concurrent_claims_from_four_processes_have_one_winner_each(backend: Backend) -> None:
    assert_one_winner_each(backend, 600, "R{round_no}E{i}", procs=4)


def test_retries_of_one_event_with_new_envelope_ids_racing_in_processes_are_one_claim(
        backend: Backend) -> None:
    """Slack's retries carry a new envelope id and the same event id: across processes (and so
    across connections) only one of them is claimed, whichever process gets it."""
    assert_one_winner_each(backend, 300, "R{round_no}P{os.getpid()}E{i}", procs=3)


# ---------------------------------------------------------------- finish / outbox


def test_finish_marks_done_and_queues_the_replies_once(store: Any) -> None:
    store.claim(env("E1"), ME)
    store.finish("E1", [Reply("C1", "one"), Reply("C2", blocks=[{"type": "divider"}], thread_ts="1.2")])
    assert store.inbox_row("E1")["state"] == "done" and store.inbox_row("E1")["lease_until"] is None
    rows = sorted(store.outbox_list(), key=lambda r: r.id)
    assert [(r.channel, r.text, r.idempotency_key, r.state, r.envelope_id) for r in rows] == [
        ("C1", "one", "E1:0", "pending", "E1"), ("C2", None, "E1:1", "pending", "E1")]
    assert rows[1].blocks == [{"type": "divider"}] and rows[1].thread_ts == "1.2"
    store.finish("E1", [Reply("C1", "one")])  # a re-run after a sweep queues nothing twice
    assert len(store.outbox_list()) == 2
    assert [r.text for r in store.outbox_claim(ME, 10, FAST).rows] == ["one", None]


def test_finish_with_an_error_marks_failed_and_stats_count_it(store: Any) -> None:
    store.claim(env("E1", "Ev1"), ME)
    store.claim(env("E2"), ME)
    store.finish("E2", [], error="ValueError")
    assert [(r["envelope_id"], r["state"], r["error"]) for r in store.inbox_list(state="failed")] == [
        ("E2", "failed", "ValueError")]
    stats = store.inbox_stats()
    # SQLite takes one key a claim (the event id, else the envelope id); Redis both of E1's.
    assert (stats["processing"], stats["failed"], stats["keys"]) == (1, 1, 2 if isinstance(store, SqliteStore) else 3)
    assert 0 <= stats["oldest_processing_age_s"] < 5


# ---------------------------------------------------------------- hostile text

LONE = "\udc00"  # a lone surrogate: valid in JSON (and so from Slack), not encodable as UTF-8


def test_ids_holding_a_lone_surrogate_are_kept_exactly_and_dedup_one_to_one(store: Any) -> None:
    eid, event_id = f"E{LONE}1", f"Ev{LONE}1"
    assert store.claim(env(eid, event_id, text=f"broken {LONE}"), ME) is True
    assert store.claim(env(eid, event_id), ME) is False
    assert store.claim(env("E-retry", event_id), ME) is False  # Slack's retry: same event id
    # Near misses are other ids: another surrogate, its escape spelled out, its replacement.
    for other in ("E\udc011", "E\\udc001", "E\ufffd1"):
        assert store.claim(env(other, other.replace("E", "Ev", 1)), ME) is True
    row = store.inbox_row(eid)
    assert row is not None and row["envelope_id"] == eid and row["state"] == "processing"
    assert eid in {r["envelope_id"] for r in store.inbox_list()}
    assert store.claim_key(f"mention:C{LONE}:1.2") is True and store.claim_key(f"mention:C{LONE}:1.2") is False
    store.finish(eid, [Reply("C1", "seen")], error=None)
    assert store.inbox_row(eid)["state"] == "done"
    (reply,) = [r for r in store.outbox_list() if r.envelope_id == eid]
    assert reply.idempotency_key == f"{eid}:0" and reply.text == "seen"
    store.finish(eid, [Reply("C1", "seen")])  # a re-run queues nothing twice: the key matched
    assert len(store.outbox_list()) == 1


def test_an_envelope_with_a_lone_surrogate_is_swept_back_exactly_as_received(store: Any) -> None:
    frame = ('{"type":"events_api","envelope_id":"E\\udc00raw","accepts_response_payload":false,'
             '"payload":{"event_id":"Ev\\udc00raw","event":{"type":"message","text":"x\\udc00y"},'
             '"unmodelled":[1,2]},"retry_attempt":0,"retry_reason":""}')
    from buidl_edge.socketmode.protocol import parse_frame
    envelope = parse_frame(frame)
    assert isinstance(envelope, Envelope), envelope
    assert envelope.envelope_id == f"E{LONE}raw"
    store.claim(envelope, f"{HOST}:{dead_pid()}")
    (taken,) = store.sweep(ME)
    assert taken.envelope_id == f"E{LONE}raw" and taken.event_id == f"Ev{LONE}raw"
    assert taken.payload["event"]["text"] == f"x{LONE}y" and taken.raw_text == frame


def test_a_claim_the_store_cannot_take_fails_alone_as_a_store_error_and_the_store_goes_on(store: Any) -> None:
    from buidl_edge.store.errors import StoreRejected

    unstorable = Envelope("events_api", "E-set", {"event_id": "Ev-set", "event": {"type": "m", "text": {1, 2}}})
    with pytest.raises(StoreRejected) as caught:  # a bug's kind of failure (a set is no JSON), not an outage
        store.claim(unstorable, ME)
    assert caught.value.kind == "TypeError" and isinstance(caught.value, StoreError)
    assert store.inbox_row("E-set") is None
    assert store.claim(env("E1", "Ev-set"), ME) is True  # its keys were not left behind


def test_claim_many_is_the_claim_of_each_in_order_and_a_bad_one_fails_alone(store: Any) -> None:
    from buidl_edge.store.errors import StoreRejected

    assert store.claim(env("E0", "Ev0"), ME)
    unstorable = Envelope("events_api", "E-set", {"event_id": "Ev-set", "event": {"type": "m", "text": {1, 2}}})
    burst = [env("E1", "Ev1"), env("E2", "Ev0"), env("E1", "Ev1"), unstorable, env("E3", "Ev3")]
    outcomes = store.claim_many(burst, ME)
    # new; a redelivery of an event claimed before; the same envelope twice in one read; the rest
    assert outcomes[:3] == [True, False, False] and outcomes[4] is True
    assert isinstance(outcomes[3], StoreRejected) and outcomes[3].kind == "TypeError"
    assert store.inbox_row("E1")["state"] == "processing" and store.inbox_row("E3") is not None
    assert store.inbox_row("E2") is None and store.inbox_row("E-set") is None
    assert store.claim(env("E4", "Ev-set"), ME) is True  # the bad one left no key behind
    assert store.claim_many([], ME) == []


def test_a_reply_text_with_a_lone_surrogate_is_stored_and_read_back_as_it_was(store: Any) -> None:
    # message.py replaces lone surrogates in what handlers say; the store still keeps what it is given.
    store.claim(env("E1"), ME)
    store.finish("E1", [Reply("C1", f"raw {LONE}")])
    assert [r.text for r in store.outbox_list()] == [f"raw {LONE}"]


# ---------------------------------------------------------------- leases / sweep


def test_sweep_takes_the_envelope_of_a_dead_local_process_at_once(store: Any) -> None:
    store.claim(env("E1", "Ev1"), f"{HOST}:{dead_pid()}")  # lease still 30 s away
    taken = store.sweep(ME)
    assert [e.envelope_id for e in taken] == ["E1"] and taken[0].event_id == "Ev1"
    row = store.inbox_row("E1")
    assert row["owner"] == ME and row["attempts"] == 2 and row["lease_until"] > time.time() + 20
    assert store.sweep(ME) == []  # ours now


def test_sweep_takes_an_expired_lease_of_a_live_owner_on_another_host(backend: Backend) -> None:
    short = backend.open(lease_s=0.05)
    short.claim(env("E1"), f"elsewhere:{os.getpid()}")  # a live pid, but a host we cannot check
    time.sleep(0.15)
    assert [e.envelope_id for e in short.sweep(ME)] == ["E1"]


def test_sweep_leaves_live_leases_live_owners_and_its_own(store: Any) -> None:
    store.claim(env("E1"), f"{HOST}:{os.getppid()}")
    store.claim(env("E2"), f"elsewhere:{dead_pid()}")  # other host: only the lease counts
    store.claim(env("E3"), ME)
    assert store.sweep(ME) == []
    assert store.sweep(f"{HOST}:1") == []


def test_finished_envelopes_are_not_swept(store: Any) -> None:
    ghost = f"{HOST}:{dead_pid()}"
    store.claim(env("E1"), ghost)
    store.finish("E1", [])
    assert store.sweep(ME) == []


def test_renew_extends_the_lease_so_sweep_leaves_it(backend: Backend) -> None:
    store = backend.open(lease_s=0.6)
    store.claim(env("E1"), "otherhost:1")
    before = store.inbox_row("E1")["lease_until"]
    time.sleep(0.4)
    assert store.renew("otherhost:1") == 1
    assert store.inbox_row("E1")["lease_until"] > before
    time.sleep(0.4)  # past the first lease, within the renewed one
    assert store.sweep(ME) == []
    assert store.renew("nobody:2") == 0
    time.sleep(0.3)
    assert [e.envelope_id for e in store.sweep(ME)] == ["E1"]


def test_retry_hands_a_finished_envelope_back_to_the_sweepers(store: Any) -> None:
    store.claim(env("E1"), ME)
    store.finish("E1", [], error="boom")
    assert store.retry("E1") and not store.retry("nope")
    assert not store.retry("E1")  # already queued again
    assert [e.envelope_id for e in store.sweep(ME)] == ["E1"]


def test_two_sweepers_never_take_the_same_envelope(backend: Backend) -> None:
    setup = backend.open()
    ghost = f"{HOST}:{dead_pid()}"
    for i in range(200):
        setup.claim(env(f"E{i}"), ghost)
    results = race(backend, """
        got = []
        while True:
            batch = s.sweep("h:%d" % os.getpid(), limit=7)
            if not batch:
                break
            got += [e.envelope_id for e in batch]
        s.close()
        print(json.dumps(got))
    """, procs=3)
    got = [e for batch in results for e in batch]
    assert sorted(got) == sorted(f"E{i}" for i in range(200))  # each once, none lost


# ---------------------------------------------------------------- prune / workers


def test_prune_drops_old_handled_rows_and_sent_replies_but_keeps_work_in_flight(store: Any) -> None:
    for name in ("Old", "Live", "Fresh"):
        store.claim(env(name, f"Ev{name}"), ME)
    store.finish("Old", [Reply("C", "x")])
    (row,) = store.outbox_claim(ME, 10, FAST).rows
    store.outbox_settle(row.id, ME, DeliveryOutcome("sent", ts="1.1"))
    store.finish("Fresh", [])
    assert store.prune(3600) == 0  # nothing is old yet
    dropped = store.prune(3600, now=time.time() + 2 * 3600)
    assert dropped >= 3  # inbox Old + Fresh, the sent reply (SQLite also counts its keys)
    assert store.inbox_row("Old") is None and store.inbox_row("Fresh") is None
    assert store.inbox_row("Live")["state"] == "processing"
    assert store.outbox_row(row.id) is None
    assert not store.claim(env("Live2", "EvLive"), ME)  # a processing envelope keeps its keys


def test_prune_never_goes_below_the_retention_floor(store: Any) -> None:
    store.claim(env("E1", "Ev1"), ME)
    store.finish("E1", [])
    assert store.prune(0, now=time.time() + MIN_RETENTION_S / 2) == 0
    assert store.inbox_row("E1")["state"] == "done"
    assert store.prune(0, now=time.time() + MIN_RETENTION_S + 5) >= 1
    assert store.inbox_row("E1") is None


def test_heartbeats_of_every_worker_read_back_newest_first(store: Any) -> None:
    store.heartbeat("h1:10", {"acks": 1})
    store.heartbeat("h1:10", {"acks": 2, "degraded": True})
    store.heartbeat("h2:20", {"acks": 0})
    workers = {w["owner"]: w for w in store.workers()}
    assert workers["h1:10"]["stats"] == {"acks": 2, "degraded": True}
    assert (workers["h1:10"]["pid"], workers["h1:10"]["host"], workers["h1:10"]["degraded"]) == (10, "h1", True)
    assert not workers["h2:20"]["degraded"]
    time.sleep(0.6)  # h1's heartbeat ages; the read below may come late on a loaded machine
    store.heartbeat("h2:20", {})
    assert [w["owner"] for w in store.workers(max_age_s=0.5)] == ["h2:20"]


# ---------------------------------------------------------------- connection slots


def test_slots_never_go_past_the_limit_and_free_up_on_release(store: Any) -> None:
    assert store.acquire_slot("a:1/c0", 2, 30) and store.acquire_slot("b:2/c0", 2, 30)
    assert store.acquire_slot("a:1/c0", 2, 30)  # a holder renewing its own lease
    assert not store.acquire_slot("c:3/c0", 2, 30)
    store.release_slot("a:1/c0")
    assert store.acquire_slot("c:3/c0", 2, 30)
    assert not store.acquire_slot("a:1/c0", 2, 30)
    assert sorted(h["holder"] for h in store.slots()) == ["b:2/c0", "c:3/c0"]


def test_a_lapsed_lease_frees_its_slot_and_renew_keeps_one(store: Any) -> None:
    assert store.acquire_slot("a:1/c0", 2, 0.4) and store.acquire_slot("b:2/c0", 2, 0.4)
    time.sleep(0.25)
    assert store.renew_slots(["b:2/c0"], 2, 0.4) == []
    time.sleep(0.25)  # a:1 lapsed, b:2 renewed
    assert store.acquire_slot("c:3/c0", 2, 30)
    assert not store.acquire_slot("d:4/c0", 2, 30)
    assert sorted(h["holder"] for h in store.slots()) == ["b:2/c0", "c:3/c0"]


def test_slots_of_a_dead_local_process_are_freed_at_once(store: Any) -> None:
    ghost = f"{HOST}:{dead_pid()}"
    assert store.acquire_slot(f"{ghost}/c0", 1, 30)
    assert store.acquire_slot(f"{ME}/c0", 1, 30)
    assert not store.acquire_slot(f"elsewhere:{os.getpid()}/c0", 1, 30)


def test_renew_takes_back_a_forgotten_lease_when_there_is_room_and_reports_it_lost_when_not(store: Any) -> None:
    assert store.acquire_slot("a:1/c0", 2, 30)
    store.release_slot("a:1/c0")  # as if the store forgot it (a Redis restart without persistence)
    assert store.renew_slots(["a:1/c0"], 2, 30) == []  # room: taken back
    store.release_slot("a:1/c0")
    assert store.acquire_slot("b:2/c0", 2, 30) and store.acquire_slot("c:3/c0", 2, 30)
    assert store.renew_slots(["a:1/c0", "b:2/c0"], 2, 30) == ["a:1/c0"]


# ---------------------------------------------------------------- Redis alone


@pytest.fixture
def redis_store(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisStore]:
    b = Backend("redis", tmp_path, redis_server.url)
    yield b.open()
    b.close()


def _redis_contract(fn: Callable[[Any], None]) -> Callable[[RedisStore], None]:
    def test(redis_store: RedisStore) -> None:
        fn(redis_store)

    test.__doc__ = fn.__doc__
    return test


# tests/test_outbox_store.py's contract (the tests that take just a `store`), on Redis.
for _name, _fn in list(vars(outbox_contract).items()):
    if _name.startswith("test_") and list(inspect.signature(_fn).parameters) == ["store"]:
        globals()[f"test_redis_outbox_{_name[5:]}"] = _redis_contract(_fn)


def test_redis_keys_expire_with_the_retention_so_an_old_event_is_new_again(redis_server: RedisServer,
                                                                          tmp_path: Path) -> None:
    b = Backend("redis", tmp_path, redis_server.url)
    store = b.open(retention_s=1)
    try:
        assert store.claim(env("E1", "Ev1"), ME)
        store.finish("E1", [])
        assert not store.claim(env("E2", "Ev1"), ME)
        time.sleep(1.2)
        assert store.claim(env("E2", "Ev1"), ME)
        assert store.inbox_row("E1") is None  # the handled row expired with it
    finally:
        b.close()


def test_redis_inbox_is_a_stream_with_a_consumer_group(redis_store: RedisStore) -> None:
    store = redis_store
    store.claim(env("E1"), ME)
    store.claim(env("E2"), ME)
    stream = store.prefix + "inbox:stream"
    assert store.r.xlen(stream) == 2
    assert store.r.xpending(stream, "edge")["pending"] == 2  # delivered to the claiming consumer
    store.finish("E1", [])
    pending = store.r.xpending_range(stream, "edge", "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(ME, 1)]


def test_redis_claims_are_cooperative_under_gevent_without_a_thread_pool(redis_server: RedisServer,
                                                                         tmp_path: Path) -> None:
    url = f"{redis_server.url}?prefix=coop{os.getpid()}:"
    code = textwrap.dedent(f"""
        from gevent import monkey; monkey.patch_all()
        import json, threading, gevent, gevent.pool
        from buidl_edge.config import load_settings
        from buidl_edge.socketmode.protocol import Envelope
        from buidl_edge.sandbox.stallprobe import HubTicker
        from buidl_edge.store import open_store
        settings = load_settings({{"SLACK_APP_TOKEN": "xapp-1-A-1-{'a' * 20}", "SLACK_BOT_TOKEN": "xoxb-1-{'b' * 20}",
                                   "BUIDL_STORE_URL": {url!r}, "BUIDL_STATE_DIR": {str(tmp_path)!r}}})
        store = open_store(settings, threaded=True)
        probe = HubTicker().start()
        def claim(i):
            return store.claim(Envelope("events_api", f"E{{i % 200}}", {{"event": {{"type": "m"}}}}), "h:1")
        wins = sum(gevent.pool.Pool(16).map(claim, range(800)))
        probe.stop()
        print(json.dumps({{"wins": wins, "ticks": probe.ticks, "max_gap": probe.max_gap, "kind": type(store).__name__,
                           "threads": threading.active_count(), "conns": len(store._pool._connections)}}))
        store.close()
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["kind"] == "RedisStore"  # not wrapped in ThreadedStore
    assert out["wins"] == 200
    assert out["threads"] == 1  # no pool thread: the greenlets wait on sockets
    # Several connections in use at once: greenlets yielded while waiting on Redis (a blocking
    # client would have run the claims one by one on one connection), within the pool's bound.
    assert 1 < out["conns"] <= 8
    # The hub kept ticking meanwhile; how long its longest stall is, scripts/bench_store.py measures.
    assert out["ticks"] > 5


def test_redis_down_raises_store_unavailable_fast_and_never_shows_the_password() -> None:
    down = DroppingPort()
    store = RedisStore(f"redis://edge:s3cr3t-pw@127.0.0.1:{down.port}/0")
    try:
        with pytest.raises(StoreUnavailable) as first:
            store.claim(env("E1"), ME)
        # Fast: one try and redis-py's one quick retry on a fresh connection, no loop of them.
        assert 1 <= down.accepted <= 2, down.accepted
        tried = down.accepted
        with pytest.raises(StoreUnavailable, match="retrying in") as second:
            store.claim_key("k")  # within the backoff: no new connection attempt
        assert down.accepted == tried
        for message in (str(first.value), str(second.value)):
            assert "s3cr3t" not in message and "\n" not in message and "127.0.0.1" in message
        for method in (lambda: store.heartbeat(ME, {}), lambda: store.acquire_slot("h:1/c0", 10, 15)):
            with pytest.raises(StoreError):
                method()
    finally:
        store.close()
        down.close()


def test_redis_restarted_the_store_reconnects_and_marks_done_what_was_handled_meanwhile(tmp_path: Path) -> None:
    with RedisServer(appendonly=True) as server:
        b = Backend("redis", tmp_path, server.url)
        store = b.open()
        try:
            assert store.claim(env("E1", "Ev1"), ME)
            server.stop()
            with pytest.raises(StoreUnavailable):
                store.finish("E1", [Reply("C1", "sent from memory meanwhile")])
            with pytest.raises(StoreUnavailable):
                store.claim(env("E2", "Ev2"), ME)
            server.start()

            def back() -> bool:
                try:
                    return store.claim(env("E3", "Ev3"), ME)
                except StoreUnavailable:
                    time.sleep(0.1)
                    return False

            deadline = time.monotonic() + 10
            while not back():
                assert time.monotonic() < deadline, "the store never came back"
            assert not store.claim(env("E1b", "Ev1"), ME)  # the keys survived (appendonly)
            assert store.inbox_row("E1")["state"] == "done"  # finished once Redis was back...
            assert store.outbox_list() == []  # ...without queueing its replies a second time
            assert store.sweep(f"{HOST}:1") == []
        finally:
            b.close()


def test_redis_without_persistence_restarted_recreates_the_stream_group(tmp_path: Path) -> None:
    with RedisServer() as server:
        b = Backend("redis", tmp_path, server.url)
        store = b.open()
        try:
            assert store.claim(env("E1"), ME)
            server.restart()
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert store.claim(env("E2"), ME)
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert store.renew(ME) == 1
            store.finish("E2", [])
            assert store.r.xpending(store.prefix + "inbox:stream", "edge")["pending"] == 0
        finally:
            b.close()


# ---------------------------------------------------------------- relay mode's delivery queue

from buidl_edge.store.memory import MemoryStore  # noqa: E402


def message_in(envelope_id: str, channel: str, text: str = "hi") -> Envelope:
    payload = {"event_id": f"Ev-{envelope_id}", "event": {"type": "message", "channel": channel, "text": text}}
    return Envelope(type="events_api", envelope_id=envelope_id, payload=payload)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def relay_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    b = Backend(request.param, tmp_path, url)
    yield b.open()
    b.close()


def queued(store: Any, owner: str, *envelopes: Envelope) -> None:
    """Claimed (in arrival order) and queued for delivery, as a relaying worker does."""
    for envelope in envelopes:
        assert store.claim(envelope, owner)
        assert store.relay_enqueue(envelope.envelope_id, owner, f"ch:{envelope.payload['event']['channel']}")
        time.sleep(0.002)  # distinct arrival times


def taken(store: Any, owner: str = ME, limit: int = 10) -> list[str]:
    return [row.envelope.envelope_id for row in store.relay_claim(owner, limit).rows]


def test_relay_hands_out_one_row_per_channel_at_a_time_in_arrival_order(relay_store: Any) -> None:
    store = relay_store
    queued(store, ME, message_in("E1", "C1"), message_in("E2", "C1"), message_in("E3", "C2"))
    batch = store.relay_claim(ME, 10)
    assert [(r.envelope.envelope_id, r.order_key, r.attempts) for r in batch.rows] == [
        ("E1", "ch:C1", 1), ("E3", "ch:C2", 1)]
    assert batch.rows[0].envelope.payload["event"]["text"] == "hi" and batch.next_at is None
    assert taken(store) == []  # both heads are in flight: their channels wait
    assert store.relay_settle("E1", ME, DeliveryOutcome("sent"))
    assert store.inbox_row("E1")["state"] == "done"
    assert taken(store) == ["E2"]
    assert not store.relay_settle("E2", "someone:else", DeliveryOutcome("sent"))  # not theirs
    assert not store.relay_settle("E1", ME, DeliveryOutcome("sent"))  # not in flight any more


def test_relay_enqueue_takes_only_the_claimers_processing_row(relay_store: Any) -> None:
    store = relay_store
    assert store.claim(message_in("E1", "C1"), ME)
    assert not store.relay_enqueue("E1", "someone:else", "ch:C1")
    assert not store.relay_enqueue("nope", ME, "ch:C1")
    assert store.relay_enqueue("E1", ME, "ch:C1")
    assert not store.relay_enqueue("E1", ME, "ch:C1")  # pending now, no longer processing
    row = store.inbox_row("E1")
    assert (row["state"], row["deliveries"], row["order_key"]) == ("pending", 0, "ch:C1")
    stats = store.inbox_stats()
    assert (stats["pending"], stats["processing"]) == (1, 0) and 0 <= stats["oldest_pending_age_s"] < 5


def test_a_retried_delivery_waits_for_its_time_and_holds_its_channel_back(relay_store: Any) -> None:
    store = relay_store
    queued(store, ME, message_in("E1", "C1"), message_in("E2", "C1"))
    assert taken(store, limit=1) == ["E1"]
    retry_at = time.time() + 0.4
    assert store.relay_settle("E1", ME, DeliveryOutcome("retry", "connection refused", retry_at))
    batch = store.relay_claim(ME, 10)
    assert batch.rows == [] and batch.next_at == pytest.approx(retry_at, abs=0.01)  # E2 may not overtake it
    time.sleep(max(0.0, retry_at - time.time()) + 0.05)
    (row,) = store.relay_claim(ME, 10).rows
    assert (row.envelope.envelope_id, row.attempts, row.error) == ("E1", 2, "connection refused")


def test_a_429_is_not_counted_and_a_failure_for_good_lets_the_channel_go_on(relay_store: Any) -> None:
    store = relay_store
    queued(store, ME, message_in("E1", "C1"), message_in("E2", "C1"))
    assert taken(store) == ["E1"]
    assert store.relay_settle("E1", ME, DeliveryOutcome("ratelimited", "HTTP 429", time.time()))
    (row,) = store.relay_claim(ME, 10).rows
    assert (row.envelope.envelope_id, row.attempts) == ("E1", 1)
    assert store.relay_settle("E1", ME, DeliveryOutcome("failed", "HTTP 401"))
    assert [(r["envelope_id"], r["error"], r["deliveries"]) for r in store.inbox_list(state="failed")] == [
        ("E1", "HTTP 401", 1)]
    assert taken(store) == ["E2"]


def test_more_due_rows_than_asked_for_say_come_back_at_once(relay_store: Any) -> None:
    store = relay_store
    queued(store, ME, *(message_in(f"E{i}", f"C{i}") for i in range(5)))
    batch = store.relay_claim(ME, 2)
    assert [r.envelope.envelope_id for r in batch.rows] == ["E0", "E1"]
    assert batch.next_at is not None and batch.next_at <= time.time()
    assert taken(store) == ["E2", "E3", "E4"]


def test_a_delivery_in_flight_when_its_worker_died_comes_back_in_its_place(store: Any) -> None:
    ghost = f"{HOST}:{dead_pid()}"
    queued(store, ghost, message_in("E1", "C1"), message_in("E2", "C1"))
    assert taken(store, ghost) == ["E1"]  # in flight when the ghost died
    assert taken(store) == []  # its channel still waits for it
    (swept,) = store.sweep(ME)
    assert swept.envelope_id == "E1" and store.inbox_row("E1")["owner"] == ME
    assert store.relay_enqueue("E1", ME, "ch:C1")
    (row,) = store.relay_claim(ME, 10).rows
    assert (row.envelope.envelope_id, row.attempts) == ("E1", 2)  # its place, and its attempts, kept


def test_renew_keeps_a_delivery_in_flight_from_the_sweepers(backend: Backend) -> None:
    store = backend.open(lease_s=0.5)
    queued(store, "otherhost:1", message_in("E1", "C1"))
    assert taken(store, "otherhost:1") == ["E1"]
    time.sleep(0.3)
    assert store.renew("otherhost:1") == 1
    time.sleep(0.3)  # past the first lease, within the renewed one
    assert store.sweep(ME) == []
    time.sleep(0.4)
    assert [e.envelope_id for e in store.sweep(ME)] == ["E1"]


def test_inbox_retry_of_a_failed_delivery_starts_a_fresh_attempt_budget(store: Any) -> None:
    queued(store, ME, message_in("E1", "C1"))
    assert taken(store) == ["E1"]
    assert store.relay_settle("E1", ME, DeliveryOutcome("failed", "HTTP 401"))
    assert store.retry("E1")
    (again,) = store.sweep(ME)
    assert again.envelope_id == "E1" and store.relay_enqueue("E1", ME, "ch:C1")
    (row,) = store.relay_claim(ME, 10).rows
    assert (row.envelope.envelope_id, row.attempts) == ("E1", 1)


def test_prune_keeps_rows_waiting_for_delivery_and_their_keys(relay_store: Any) -> None:
    store = relay_store
    queued(store, ME, message_in("E1", "C1"), message_in("E2", "C2"))
    assert taken(store, limit=1) == ["E1"]
    store.relay_settle("E1", ME, DeliveryOutcome("sent"))
    store.prune(3600, now=time.time() + 2 * 3600)
    assert store.inbox_row("E1") is None  # delivered: forgotten
    assert store.inbox_row("E2")["state"] == "pending"  # a backend down for hours loses nothing
    assert not store.claim(Envelope("events_api", "E9", {"event_id": "Ev-E2", "event": {"type": "m"}}), ME)
    assert taken(store) == ["E2"]


def test_an_order_key_and_envelope_with_a_lone_surrogate_come_back_as_they_were(relay_store: Any) -> None:
    store = relay_store
    envelope = message_in(f"E{LONE}1", f"C{LONE}", text=f"x{LONE}y")
    assert store.claim(envelope, ME)
    assert store.relay_enqueue(envelope.envelope_id, ME, f"ch:C{LONE}")
    (row,) = store.relay_claim(ME, 10).rows
    assert row.order_key == f"ch:C{LONE}" and row.envelope.envelope_id == f"E{LONE}1"
    assert row.envelope.payload["event"]["text"] == f"x{LONE}y"
    assert store.relay_settle(envelope.envelope_id, ME, DeliveryOutcome("sent"))


def test_racing_deliverers_take_each_row_once_and_each_channel_in_order(backend: Backend) -> None:
    setup = backend.open()
    for i in range(60):
        queued(setup, ME, message_in(f"E{i:02d}", f"C{i % 3}"))
    results = race(backend, """
        import time
        from buidl_edge.store.base import DeliveryOutcome
        me, got, idle = "h:%d" % os.getpid(), [], 0
        while idle < 20:
            rows = s.relay_claim(me, 2).rows
            idle = 0 if rows else idle + 1
            for row in rows:
                got.append([time.time(), row.envelope.envelope_id, row.order_key])
                s.relay_settle(row.envelope.envelope_id, me, DeliveryOutcome("sent"))
            time.sleep(0 if rows else 0.01)
        s.close()
        print(json.dumps(got))
    """, procs=3)
    got = sorted(item for batch in results for item in batch)
    assert sorted(eid for _, eid, _ in got) == [f"E{i:02d}" for i in range(60)]  # each once, none lost
    for channel in ("ch:C0", "ch:C1", "ch:C2"):
        order = [eid for _, eid, key in got if key == channel]
        assert order == sorted(order)  # the claims of one channel never overtook each other


def test_redis_claims_a_read_burst_in_one_round_trip(redis_store: RedisStore) -> None:
    """Each claim is a script; a burst's 50 go out in one pipeline, not 50 round trips (which the
    server counts as reads: one per command it had to wait for)."""
    store = redis_store
    assert store.claim(env("E-warm"), ME)  # connection and script in place
    reads_before = int(store.r.info("stats")["total_reads_processed"])
    outcomes = store.claim_many([env(f"E{i}", f"Ev{i}") for i in range(50)], ME)
    reads = int(store.r.info("stats")["total_reads_processed"]) - reads_before
    assert outcomes == [True] * 50
    assert reads <= 8, f"{reads} reads on the server for one burst"  # 50 + 1 one claim at a time


def test_redis_claim_many_loads_its_script_again_after_a_script_flush(redis_store: RedisStore) -> None:
    store = redis_store
    assert store.claim_many([env("E1")], ME) == [True]
    store.r.script_flush()  # as after a Redis restart without persistence of scripts
    assert store.claim_many([env("E2"), env("E1")], ME) == [True, False]
