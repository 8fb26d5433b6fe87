"""The outbox rows and token buckets in the store: the same contract for SQLite and memory,
plus what only a shared file can show (several processes spending one bucket, dead owners).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from buidl_edge.delivery.ratelimit import GLOBAL_KEY, Bucket, PostLimits, channel_key, need, plan, ready_at
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import DeliveryOutcome, OutboxRow, Reply
from buidl_edge.store.memory import MemoryStore
from buidl_edge.store.sqlite import SqliteStore
from support import HOST, ME, dead_pid

OTHER = "otherhost:4242"
FAST = PostLimits(rate=1000.0, burst=1000.0)  # the order tests are not about rates


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteStore | MemoryStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    s = SqliteStore(tmp_path / "edge.db")
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "edge.db")
    yield s
    s.close()


def texts(rows: Iterable[OutboxRow]) -> list[str | None]:
    return [r.text for r in rows]


def stored(store: SqliteStore, row_id: int) -> OutboxRow:
    """Row `row_id`, which the test expects to be still there."""
    row = store.outbox_row(row_id)
    assert row is not None, f"outbox row {row_id} is gone"
    return row


# ---------------------------------------------------------------- enqueue / order


def test_enqueue_returns_ids_and_an_idempotency_key_is_queued_once(store) -> None:
    ids = store.outbox_enqueue([Reply("C1", "a"), Reply("C1", blocks=[{"type": "divider"}], thread_ts="1.2")])
    again = store.outbox_enqueue([Reply("C1", "a, again")], keys=["k1"])
    assert store.outbox_enqueue([Reply("C1", "dup")], keys=["k1"]) == again
    assert len(set(ids + again)) == 3
    row = store.outbox_row(ids[1])
    assert (row.state, row.attempts, row.blocks, row.thread_ts) == ("pending", 0, [{"type": "divider"}], "1.2")
    assert store.outbox_stats()["depth"] == 3


def test_finish_queues_replies_that_the_sender_can_claim(store) -> None:
    store.claim(Envelope("events_api", "E1", {"event_id": "Ev1"}), ME)
    store.finish("E1", [Reply("C1", "one"), Reply("C1", "two")])
    store.finish("E1", [Reply("C1", "one"), Reply("C1", "two")])  # a re-run queues nothing twice
    assert texts(store.outbox_claim(ME, 10, FAST).rows) == ["one"]
    assert store.outbox_stats()["depth"] == 2


def test_only_the_oldest_unsent_row_of_a_channel_is_claimed_and_channels_go_in_parallel(store) -> None:
    store.outbox_enqueue([Reply("C1", "c1-a"), Reply("C2", "c2-a"), Reply("C1", "c1-b"), Reply("C2", "c2-b")])
    first = store.outbox_claim(ME, 10, FAST).rows
    assert texts(first) == ["c1-a", "c2-a"] and {r.state for r in first} == {"sending"}
    assert store.outbox_claim(ME, 10, FAST).rows == []  # both heads in flight: nothing else may go
    store.outbox_settle(first[0].id, ME, DeliveryOutcome("sent", ts="1.1"))
    assert texts(store.outbox_claim(ME, 10, FAST).rows) == ["c1-b"]
    assert store.outbox_row(first[0].id).ts == "1.1"


def test_claim_respects_its_limit_and_says_to_come_back_at_once(store) -> None:
    store.outbox_enqueue([Reply(f"C{i}", "x") for i in range(5)])
    claimed = store.outbox_claim(ME, 2, FAST)
    assert len(claimed.rows) == 2 and claimed.next_at is not None and claimed.next_at <= time.time()


def test_a_row_waiting_for_its_retry_holds_back_its_channel_only(store) -> None:
    store.outbox_enqueue([Reply("C1", "first"), Reply("C1", "second"), Reply("C2", "other")])
    rows = store.outbox_claim(ME, 10, FAST).rows
    retry_at = time.time() + 60
    store.outbox_settle(rows[0].id, ME, DeliveryOutcome("retry", error="http_503", retry_at=retry_at))
    store.outbox_settle(rows[1].id, ME, DeliveryOutcome("sent"))
    again = store.outbox_claim(ME, 10, FAST)
    assert again.rows == [] and again.next_at == pytest.approx(retry_at)
    row = store.outbox_row(rows[0].id)
    assert (row.state, row.attempts, row.error) == ("pending", 1, "http_503")


def test_failed_is_final_and_does_not_block_the_rest_of_the_channel(store) -> None:
    store.outbox_enqueue([Reply("C1", "bad"), Reply("C1", "good")])
    bad = store.outbox_claim(ME, 10, FAST).rows[0]
    final = store.outbox_settle(bad.id, ME, DeliveryOutcome("failed", error="msg_too_long"))
    assert (final.state, final.error, final.attempts) == ("failed", "msg_too_long", 1)
    assert texts(store.outbox_claim(ME, 10, FAST).rows) == ["good"]


def test_settling_a_row_that_is_no_longer_ours_changes_nothing(store) -> None:
    store.outbox_enqueue([Reply("C1", "x")])
    row = store.outbox_claim(ME, 10, FAST).rows[0]
    assert store.outbox_settle(row.id, OTHER, DeliveryOutcome("sent")) is None
    assert store.outbox_row(row.id).state == "sending"


# ---------------------------------------------------------------- buckets


def test_a_channel_gets_its_burst_then_one_token_per_interval(store) -> None:
    limits = PostLimits(rate=10.0, burst=3.0, jitter_s=0.0)
    store.outbox_enqueue([Reply("C1", str(i)) for i in range(5)] + [Reply("C2", "other")])
    sent: list[str | None] = []
    waits: list[float] = []  # what each claim that found no token asked us to wait, at most
    start = time.time()
    while len(sent) < 6 and time.time() - start < 5:
        claimed = store.outbox_claim(ME, 10, limits)
        returned_at = time.time()
        for row in claimed.rows:
            sent.append(row.text)
            store.outbox_settle(row.id, ME, DeliveryOutcome("sent"))
        if not claimed.rows:
            assert claimed.next_at is not None
            waits.append(claimed.next_at - returned_at)
            time.sleep(max(0.0, claimed.next_at - time.time()))
    elapsed = time.time() - start
    assert sent == ["0", "other", "1", "2", "3", "4"]
    assert elapsed >= 0.18, elapsed  # 3 at once, then 2 more at 10/s: two tokens waited for
    # ... and for no longer than a token takes: measured from when the claim returned, a slow
    # machine can only shorten what is left to wait.
    assert waits and max(waits) <= 0.1 + 1e-3, waits


def test_a_429_pauses_its_channel_without_counting_an_attempt(store) -> None:
    store.outbox_enqueue([Reply("C1", "a"), Reply("C2", "b")])
    a, b = store.outbox_claim(ME, 10, FAST).rows
    until = time.time() + 30
    row = store.outbox_settle(a.id, ME, DeliveryOutcome("ratelimited", error="ratelimited", retry_at=until))
    assert (row.state, row.attempts, row.rate_limited) == ("pending", 0, 1)
    store.outbox_settle(b.id, ME, DeliveryOutcome("sent"))
    store.outbox_enqueue([Reply("C2", "c")])
    claimed = store.outbox_claim(ME, 10, FAST)
    assert texts(claimed.rows) == ["c"] and claimed.next_at == pytest.approx(until)
    stats = store.outbox_stats()
    assert stats["rate_limited"] == 1 and [p["bucket"] for p in stats["paused"]] == ["c:C1"]


def test_a_global_429_pauses_every_channel(store) -> None:
    store.outbox_enqueue([Reply("C1", "a")])
    a = store.outbox_claim(ME, 10, FAST).rows[0]
    until = time.time() + 30
    store.outbox_settle(a.id, ME, DeliveryOutcome("ratelimited", retry_at=until, pause="global"))
    store.outbox_enqueue([Reply("C2", "b")])
    claimed = store.outbox_claim(ME, 10, FAST)
    assert claimed.rows == [] and claimed.next_at == pytest.approx(until)


def test_the_workspace_cap_spans_channels(store) -> None:
    limits = PostLimits(rate=100.0, burst=100.0, global_rate=2.0, global_burst=2.0)
    store.outbox_enqueue([Reply(f"C{i}", "x") for i in range(5)])
    claimed = store.outbox_claim(ME, 10, limits)
    assert len(claimed.rows) == 2
    assert claimed.next_at == pytest.approx(time.time() + 0.5, abs=0.1)


def test_plan_waits_for_headroom_but_keeps_the_sustained_rate() -> None:
    limits = PostLimits(rate=1.0, burst=3.0, jitter_s=0.1)
    assert need(1.0, 3.0, 0.1) == pytest.approx(1.1) and need(1000.0, 3.0, 0.1) == 3.0 and need(1.0, 1.0, 0.1) == 1.0
    now = 1000.0
    # two of the burst at once; the third waits for 1.1 tokens
    bucket = Bucket(3.0, now)
    assert ready_at(bucket, now, 1.0, 3.0, 0.1) == now
    bucket = Bucket(1.0, now)
    assert ready_at(bucket, now, 1.0, 3.0, 0.1) == pytest.approx(now + 0.1)
    # steady state: one message per second exactly, whatever the headroom
    times = []
    t, bucket = now, Bucket(0.1, now)

    class Head:
        channel, next_attempt_at = "C1", 0.0

    for _ in range(10):
        t = ready_at(bucket, t, limits.rate, limits.burst, limits.jitter_s)
        decision = plan([Head()], {channel_key("C1"): bucket}, t, limits, 1)
        assert len(decision.chosen) == 1
        bucket = decision.changed[channel_key("C1")]
        times.append(t)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {1.0}
    assert GLOBAL_KEY not in decision.changed  # no global cap configured


def test_processes_sharing_one_file_share_one_bucket(tmp_path: Path) -> None:
    """4 processes claim for 2 s at 10/s, burst 3: together they may take 3 + 20 (+1 for timing)."""
    db = tmp_path / "edge.db"
    seed = SqliteStore(db)
    seed.outbox_enqueue([Reply("C1", str(i)) for i in range(200)])
    seed.close()
    code = textwrap.dedent(f"""
        import json, os, time
        from buidl_edge.delivery.ratelimit import PostLimits
        from buidl_edge.store.base import DeliveryOutcome
        from buidl_edge.store.sqlite import SqliteStore
        store = SqliteStore({str(db)!r})
        owner = "h:" + str(os.getpid())
        limits = PostLimits(rate=10.0, burst=3.0, jitter_s=0.0)
        start = float(os.environ["START"])
        while time.time() < start:
            time.sleep(0.001)
        got = []
        while time.time() < start + 2.0:
            for row in store.outbox_claim(owner, 5, limits, lease_s=30.0).rows:
                got.append((row.id, row.lease_until - 30.0))  # the claim's own clock, inside the lock
                store.outbox_settle(row.id, owner, DeliveryOutcome("sent"))
            time.sleep(0.002)
        store.close()
        print(json.dumps(got))
    """)
    env = {**os.environ, "START": str(time.time() + 1.0)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=Path(__file__).parent.parent) for _ in range(4)]
    results = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    taken = sorted((t, row_id) for got in results for row_id, t in got)
    assert sum(1 for got in results if got) >= 2, "the processes did not actually race"
    # About burst + 2 s x 10/s, as many as the processes got to claim: more than the burst, so that
    # refilled tokens were shared too; the exact bound, on the claims' own clock, is below.
    assert len(taken) > 3, len(taken)
    assert [row_id for _, row_id in taken] == sorted(row_id for _, row_id in taken)  # order kept
    # token-bucket conformance: no window holds more than burst + rate * width
    times = [t for t, _ in taken]
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= 3 + 10 * (times[j] - times[i]) + 1e-6


# ---------------------------------------------------------------- crash recovery (SQLite)


def test_rows_left_sending_by_a_dead_process_go_back_to_pending(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    store.outbox_enqueue([Reply("C1", "dead"), Reply("C2", "expired"), Reply("C3", "alive"), Reply("C4", "mine")])
    ghost = f"{HOST}:{dead_pid()}"
    by_text = {}
    for owner, lease in ((ghost, 60.0), ("otherhost:1", 0.01), ("otherhost:2", 60.0), (ME, 0.01)):
        row = store.outbox_claim(owner, 1, FAST, lease_s=lease).rows[0]
        by_text[row.text] = row
    time.sleep(0.05)
    assert store.outbox_recover(ME) == 2
    states = {t: stored(store, r.id).state for t, r in by_text.items()}
    assert states == {"dead": "pending", "expired": "pending", "alive": "sending", "mine": "sending"}
    assert stored(store, by_text["dead"].id).attempts == 1  # the lost try still counts
    assert store.outbox_recover(ME) == 0
    assert texts(store.outbox_claim(ME, 10, FAST).rows) == ["dead", "expired"]


def test_renew_keeps_a_long_post_from_being_taken_over(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    store.outbox_enqueue([Reply("C1", "slow")])
    row = store.outbox_claim("otherhost:7", 1, FAST, lease_s=0.05).rows[0]
    assert store.outbox_renew("otherhost:7", 60.0) == 1
    time.sleep(0.1)
    assert store.outbox_recover(ME) == 0 and stored(store, row.id).state == "sending"


# ---------------------------------------------------------------- admin


def test_retry_list_purge_and_prune(store) -> None:
    store.outbox_enqueue([Reply("C1", "bad"), Reply("C2", "good")])
    bad, good = store.outbox_claim(ME, 10, FAST).rows
    store.outbox_settle(bad.id, ME, DeliveryOutcome("failed", error="channel_not_found"))
    store.outbox_settle(good.id, ME, DeliveryOutcome("sent"))
    assert [r.id for r in store.outbox_list(state="failed")] == [bad.id]
    assert [r.id for r in store.outbox_list()] == [good.id, bad.id]  # newest first
    assert [r.id for r in store.outbox_list(channel="C2")] == [good.id]
    assert not store.outbox_retry(good.id) and store.outbox_retry(bad.id)
    row = store.outbox_row(bad.id)
    assert (row.state, row.attempts) == ("pending", 0)
    again = store.outbox_claim(ME, 10, FAST).rows[0]
    store.outbox_settle(again.id, ME, DeliveryOutcome("failed", error="channel_not_found"))
    assert store.outbox_purge("failed") == 1 and store.outbox_row(bad.id) is None
    with pytest.raises(ValueError):
        store.outbox_purge("pending")
    if isinstance(store, SqliteStore):
        assert store.prune(3600, now=time.time() + 7200) >= 1
        assert store.outbox_row(good.id) is None  # sent rows go with the retention
