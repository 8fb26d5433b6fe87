"""The smaller things a new user met in the first hour (issue 22, part 5): what `inbox stats`,
`run --help` and `outbox retry` say, SLACK_API_URL without its trailing slash, `outbox cancel`
on both stores, and a re-run's log line saying why the envelope runs again.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.config import load_settings
from buidl_edge.delivery.ratelimit import PostLimits
from buidl_edge.sandbox.harness import WorkerProcess, fake_tokens, wait_until, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import DeliveryOutcome, Reply
from buidl_edge.store.redis import RedisStore
from buidl_edge.store.sqlite import SqliteStore
from stack_support import PROJECT_ROOT, TESTS_DIR, cli, operator_env, tokens_env
from support import log_lines

pytestmark = pytest.mark.timeout(60)
FAST = PostLimits(rate=1000.0, burst=1000.0)


def mention(n: int) -> Envelope:
    payload = {"type": "event_callback", "event_id": f"EvOPS{n:03d}",
               "event": {"type": "app_mention", "channel": f"COPS{n}", "text": "hi", "ts": f"{n}.000100"}}
    return Envelope("events_api", f"env-ops-{n}", payload)


# ---------------------------------------------------------------- inbox stats


def test_inbox_stats_shows_the_inbox_alone_without_pythons_none(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    store = SqliteStore(state_dir / "edge.sqlite3", checkpoint_interval_s=None)
    try:
        assert store.claim(mention(1), "otherhost:4242")
        store.finish("env-ops-1", [Reply(channel="COPS1", text="hello")])  # a reply in the outbox too
    finally:
        store.close()
    env = operator_env(state_dir)
    text = cli(env, "inbox", "stats", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "None" not in text.stdout and "outbox" not in text.stdout, text.stdout
    assert text.stdout.splitlines() == ["processing: 0", "pending: 0", "done: 1", "failed: 0",
                                        "oldest_processing_age_s: -", "oldest_pending_age_s: -", "keys: 1"]
    as_json = json.loads(cli(env, "inbox", "stats", "--json", cwd=tmp_path).stdout)
    assert not [key for key in as_json if key.startswith("outbox")], as_json


# ---------------------------------------------------------------- run --help, SLACK_API_URL


def test_run_help_says_run_becomes_supervisord(tmp_path: Path) -> None:
    helped = " ".join(cli(operator_env(tmp_path), "run", "--help", cwd=tmp_path).stdout.split())
    assert "as a child" not in helped
    assert "then becomes supervisord (exec: the same pid, no parent left watching)" in helped, helped


def test_slack_api_url_without_its_trailing_slash_is_accepted(simulator: SimulatorProcess, tmp_path: Path) -> None:
    bare = simulator.api_url.rstrip("/")
    assert load_settings({**fake_tokens(), "SLACK_API_URL": bare}).api_url == bare + "/"
    checked = cli(tokens_env(tmp_path / "state", bare, BUIDL_PROCESSES=1), "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "bot token ok" in checked.stdout


# ---------------------------------------------------------------- outbox retry and cancel


def test_a_row_id_that_is_not_a_number_is_said_plainly(tmp_path: Path) -> None:
    for command in ("retry", "cancel"):
        result = cli(operator_env(tmp_path), "outbox", command, "abc", cwd=tmp_path)
        assert result.returncode == 2
        assert "Invalid value for 'ID': 'abc' is not a row id: give the number in the id column of " \
               "`buidl-edge outbox list` (e.g. 42)" in result.stderr, result.stderr
        assert "integer range" not in result.stderr


@pytest.fixture(params=["sqlite", "redis"])
def outbox_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    """A real store of each kind with its operator environment (the same store `outbox` opens)."""
    state_dir = tmp_path / "state"
    if request.param == "sqlite":
        store: Any = SqliteStore(state_dir / "edge.sqlite3", checkpoint_interval_s=None)
        env = operator_env(state_dir)
    else:
        url = f"{request.getfixturevalue('redis_server').url}?prefix=cancel{os.getpid()}{tmp_path.name[-6:]}:"
        store = RedisStore(url)
        env = operator_env(state_dir, BUIDL_STORE_URL=url)
    try:
        yield store, env
    finally:
        store.close()


def test_outbox_cancel_takes_a_queued_reply_out_of_the_queue_on_both_stores(outbox_store, tmp_path: Path) -> None:
    store, env = outbox_store
    first, second, third = store.outbox_enqueue([Reply("C0ONE", "first"), Reply("C0ONE", "second"),
                                                 Reply("C0TWO", "third")])

    cancelled = cli(env, "outbox", "cancel", str(second), cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == (f"row {second} cancelled: it will not be sent (listed as failed, "
                                        f"'cancelled by an operator'; `outbox retry {second}` queues it again)")
    row = store.outbox_row(second)
    assert (row.state, row.error) == ("failed", "cancelled by an operator")

    taken = store.outbox_claim("host:1", 10, FAST)  # each channel's head: the cancelled row is none
    assert sorted(r.id for r in taken.rows) == [first, third]
    busy = cli(env, "outbox", "cancel", str(first), cwd=tmp_path)
    assert busy.returncode == 1 and busy.stderr.strip() == (
        f"Error: row {first} is being sent right now; it can no longer be cancelled")
    store.outbox_settle(first, "host:1", DeliveryOutcome("sent", ts="1.000200"))
    assert store.outbox_claim("host:1", 10, FAST).rows == []  # C0ONE has nothing left to send

    for row_id, said in ((first, f"row {first} was sent already"), (second, f"row {second} is failed, not queued"),
                         (999, "no row 999 in the outbox")):
        refused = cli(env, "outbox", "cancel", str(row_id), cwd=tmp_path)
        assert refused.returncode == 1 and refused.stderr.strip().startswith(f"Error: {said}"), refused.stderr

    assert cli(env, "outbox", "retry", str(second), cwd=tmp_path).returncode == 0  # a change of mind
    assert [r.id for r in store.outbox_claim("host:1", 10, FAST).rows] == [second]


# ---------------------------------------------------------------- why an envelope runs again


def slow_worker_env(sim: SimulatorProcess, state_dir: Path, **extra: Any) -> dict[str, str]:
    return worker_env(sim.api_url, BUIDL_APP="slow_app:app", BUIDL_STATE_DIR=state_dir,
                      PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(PROJECT_ROOT)]), **extra)


def reruns(worker: WorkerProcess) -> list[str]:
    return log_lines(worker, r'msg="re-running app_mention')


@pytest.mark.parametrize("how", ["killed", "drain timed out", "retried by an operator"])
def test_a_rerun_says_why_the_envelope_runs_again(fresh_simulator: SimulatorProcess, tmp_path: Path,
                                                 how: str) -> None:
    sim, state_dir = fresh_simulator, tmp_path / "state"
    env = slow_worker_env(sim, state_dir, BUIDL_DRAIN_TIMEOUT="1")
    first = WorkerProcess(env, log_path=tmp_path / "first.log").start()
    second: WorkerProcess | None = None
    try:
        sim.client.wait_for(lambda s: s["open_connections"] == 1, 20, "the first worker's link")
        text = "slow 0" if how == "retried by an operator" else "slow 30"
        (event,) = sim.client.inject("app_mention", channel="CWHY", text=text)
        sim.client.wait_for(lambda s: s["acked"] == 1, 10, "the ack")
        if how == "retried by an operator":
            sim.client.wait_for(lambda s: s["messages_posted"] == 1, 10, "the first reply")
            second = first
            retried = cli(operator_env(state_dir), "inbox", "retry", event["envelope_id"], cwd=tmp_path)
            assert retried.returncode == 0, retried.stderr
            expected = "an operator retried it (`buidl-edge inbox retry`)"
        else:
            wait_until(lambda: log_lines(first, "worker up"), 10, "the handler to start")
            first.signal(signal.SIGKILL if how == "killed" else signal.SIGTERM)
            first.wait(15)
            if how == "drain timed out":
                assert log_lines(first, "drain timed out"), first.output()
            second = WorkerProcess(env, log_path=tmp_path / "second.log").start()
            expected = (f"its worker {socket.gethostname()}:{first.pid} is gone "
                        "(killed, crashed, or stopped when its drain timed out)")
        (line,) = wait_until(lambda: reruns(second), 20, "the re-run's line")
        said = re.search(r'msg="re-running app_mention: (.*)"', line)
        assert said is not None and said.group(1) == expected, line
        assert "dead worker" not in line
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()
