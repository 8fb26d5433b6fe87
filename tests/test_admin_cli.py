"""The operator's commands, run as an operator would: `python -m buidl_edge status | inbox | check | config`
as subprocesses, against a running stack, a real SQLite file and the simulator.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.harness import WorkerProcess, wait_until, worker_env
from buidl_edge.protocol import Envelope
from buidl_edge.store.base import Reply
from buidl_edge.store.sqlite import SqliteStore
from stack_support import PROJECT_ROOT, TESTS_DIR, cli, operator_env, stacks, tokens_env  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def assert_no_token(env: dict[str, str], *outputs: str) -> None:
    for name in ("SLACK_APP_TOKEN", "SLACK_BOT_TOKEN"):
        if env.get(name):
            for text in outputs:
                assert env[name] not in text, f"{name} leaked"
                assert env[name][6:] not in text, f"the body of {name} leaked"


# ---------------------------------------------------------------------------- status


def test_status_with_running_supervisor_lists_each_worker_with_its_connections(stacks, fresh_simulator) -> None:
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=2).start()
    pids = {p.name: p.pid for p in stack.wait_up(processes=2, connections=2)}
    fresh_simulator.client.inject("app_mention", channel="CSTATUS", text="<@U0BUIDL> hi")
    fresh_simulator.client.wait_for(lambda s: s["acked"] == 1, 10, "one ack")
    operator = operator_env(stack.state_dir)  # no tokens in this shell

    def report() -> dict[str, Any] | None:
        result = cli(operator, "status", "--json", cwd=stack.state_dir)
        assert result.returncode == 0, result.stdout + result.stderr
        data = json.loads(result.stdout)
        rows = data["processes"]
        ready = len(rows) == 2 and all(r["connections"] == "2/2" for r in rows) \
            and sum(r["acked"] for r in rows) == 1
        return data if ready else None

    data = wait_until(report, 15, "both heartbeats with 2/2 connections and the ack", interval=0.5)
    assert data["supervisor"] == "running"
    rows = {r["process"]: r for r in data["processes"]}
    assert set(rows) == {"worker_00", "worker_01"}
    for name, row in rows.items():
        assert row["state"] == "RUNNING"
        assert row["pid"] == pids[name]
        assert row["connections"] == "2/2"
        assert row["degraded"] is False
        assert (row["duplicates"], row["handler_errors"], row["reconnects"]) == (0, 0, 0)

    table = cli(operator, "status", cwd=stack.state_dir)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split()[:5] == ["process", "state", "pid", "uptime", "connections"]
    cells = sorted(line.split() for line in lines if line.startswith("worker_"))
    assert [(c[0], c[1], int(c[2]), c[4]) for c in cells] == [
        ("worker_00", "RUNNING", pids["worker_00"], "2/2"), ("worker_01", "RUNNING", pids["worker_01"], "2/2")]
    assert_no_token(stack.env, table.stdout, table.stderr, json.dumps(data))


def test_status_without_supervisor_says_it_is_stopped_and_exits_nonzero(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    SqliteStore(state_dir / "edge.sqlite3", checkpoint_interval_s=None).close()  # workers ran here once
    env = operator_env(state_dir)

    table = cli(env, "status", cwd=tmp_path)
    assert table.returncode == 1
    assert "supervisor: stopped" in table.stdout and "no supervisor is running" in table.stdout
    assert "Traceback" not in table.stderr

    as_json = cli(env, "status", "--json", cwd=tmp_path)
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["supervisor"].startswith("stopped") and data["processes"] == []

    # A socket left behind by a killed supervisord: nothing answers on it.
    state_dir.mkdir(exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(state_dir / "supervisor.sock"))
    stale.close()
    left_over = cli(env, "status", cwd=tmp_path)
    assert left_over.returncode == 1
    assert "supervisor: stopped" in left_over.stdout and "does not answer" in left_over.stdout


ADMIN_COMMANDS = [("status",), ("status", "--json"), ("send", "C0123ABCD", "hello"),
                  ("outbox", "stats"), ("outbox", "list"), ("outbox", "retry", "1"), ("outbox", "purge", "--failed"),
                  ("inbox", "stats"), ("inbox", "list"), ("inbox", "retry", "env-1"), ("inbox", "prune")]


@pytest.mark.parametrize("args", ADMIN_COMMANDS, ids=" ".join)
def test_an_admin_command_pointed_at_no_store_says_so_and_creates_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    state_dir = tmp_path / "typo" / "state"
    result = cli(operator_env(state_dir), *args, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    expected = f"Error: no store at {state_dir / 'edge.sqlite3'}: check that BUIDL_STATE_DIR (or BUIDL_DB)"
    assert result.stderr.startswith(expected) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == [], "an admin command created files"


def test_an_admin_command_with_buidl_db_naming_a_missing_file_says_so_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "edge-copy.sqlite3"
    result = cli(operator_env(tmp_path / "state", BUIDL_DB=db), "inbox", "stats", cwd=tmp_path)
    assert result.returncode == 1 and f"no store at {db}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- inbox


def _envelope(n: int) -> Envelope:
    payload = {"type": "event_callback", "event_id": f"EvADMIN{n:03d}",
               "event": {"type": "app_mention", "channel": f"CADMIN{n}", "text": "hi", "ts": f"{n}.000100"}}
    return Envelope("events_api", f"env-admin-{n}", payload)


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A real SQLite inbox: one row done (with a reply), one failed, one still processing."""
    state_dir = tmp_path / "state"
    store = SqliteStore(state_dir / "edge.sqlite3", checkpoint_interval_s=None)
    try:
        for n in (1, 2, 3):
            assert store.claim(_envelope(n), "otherhost:4242")
        store.finish("env-admin-1", [Reply(channel="CADMIN1", text="hello")])
        store.finish("env-admin-2", [], error="RuntimeError")
    finally:
        store.close()
    return state_dir, operator_env(state_dir)


def test_inbox_stats_counts_rows_per_state_keys_and_replies(seeded) -> None:
    state_dir, env = seeded
    result = cli(env, "inbox", "stats", "--json", cwd=state_dir.parent)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["processing"], stats["done"], stats["failed"]) == (1, 1, 1)
    assert stats["keys"] == 6  # envelope id + event id for each
    assert stats["outbox_pending"] == 1
    assert stats["oldest_processing_age_s"] is not None and stats["oldest_processing_age_s"] < 60

    text = cli(env, "inbox", "stats", cwd=state_dir.parent)
    assert text.returncode == 0
    assert {"processing: 1", "done: 1", "failed: 1", "keys: 6"} <= set(text.stdout.splitlines())


def test_inbox_list_shows_rows_and_filters_by_state(seeded) -> None:
    state_dir, env = seeded
    everything = json.loads(cli(env, "inbox", "list", "--json", cwd=state_dir.parent).stdout)
    assert {r["envelope_id"]: r["state"] for r in everything} == {
        "env-admin-1": "done", "env-admin-2": "failed", "env-admin-3": "processing"}
    assert {r["kind"] for r in everything} == {"app_mention"}

    failed = json.loads(cli(env, "inbox", "list", "--state", "failed", "--json", cwd=state_dir.parent).stdout)
    assert [(r["envelope_id"], r["error"]) for r in failed] == [("env-admin-2", "RuntimeError")]

    processing = json.loads(cli(env, "inbox", "list", "--state", "processing", "--json",
                                cwd=state_dir.parent).stdout)
    assert [(r["envelope_id"], r["owner"], r["attempts"]) for r in processing] == [
        ("env-admin-3", "otherhost:4242", 1)]

    table = cli(env, "inbox", "list", "--limit", "2", cwd=state_dir.parent)
    assert table.returncode == 0
    header, *lines = table.stdout.splitlines()
    assert header.split()[:3] == ["envelope_id", "kind", "state"]
    assert len(lines) == 2

    bad = cli(env, "inbox", "list", "--state", "lost", cwd=state_dir.parent)
    assert bad.returncode == 2 and "lost" in bad.stderr


def test_inbox_retry_hands_done_or_failed_rows_back_and_refuses_others(seeded) -> None:
    state_dir, env = seeded
    done = cli(env, "inbox", "retry", "env-admin-1", cwd=state_dir.parent)
    assert done.returncode == 0 and "env-admin-1 queued for a re-run" in done.stdout
    failed = cli(env, "inbox", "retry", "env-admin-2", cwd=state_dir.parent)
    assert failed.returncode == 0

    store = SqliteStore(state_dir / "edge.sqlite3", checkpoint_interval_s=None)
    try:
        for envelope_id in ("env-admin-1", "env-admin-2"):
            row = store.inbox_row(envelope_id)
            assert row is not None
            assert (row["state"], row["owner"], row["error"]) == ("processing", "", None)
            assert row["lease_until"] <= time.time()  # up for grabs by the next sweep
    finally:
        store.close()

    unknown = cli(env, "inbox", "retry", "env-nope", cwd=state_dir.parent)
    assert unknown.returncode == 1 and "no envelope env-nope in the inbox" in unknown.stderr
    # A row still being handled is not handed out twice.
    busy = cli(env, "inbox", "retry", "env-admin-3", cwd=state_dir.parent)
    assert busy.returncode == 1


def test_inbox_prune_drops_old_handled_rows_but_keeps_in_flight_ones(seeded) -> None:
    state_dir, env = seeded
    fresh = cli(env, "inbox", "prune", cwd=state_dir.parent)
    assert fresh.returncode == 0 and fresh.stdout.strip() == "pruned 0 rows"

    # Age everything by 700 s: past the 10-minute floor, inside the 1-hour default.
    db = sqlite3.connect(state_dir / "edge.sqlite3")
    with db:
        db.execute("UPDATE inbox SET updated_at = updated_at - 700, received_at = received_at - 700")
        db.execute("UPDATE keys SET created_at = created_at - 700")
        db.execute("UPDATE outbox SET created_at = created_at - 700")
    db.close()
    assert cli(env, "inbox", "prune", cwd=state_dir.parent).stdout.strip() == "pruned 0 rows"

    # --retention under the floor (even 0) is raised to 600 s, so the 700 s old rows now go.
    floored = cli(env, "inbox", "prune", "--retention", "0", cwd=state_dir.parent)
    assert floored.returncode == 0
    assert floored.stdout.strip() == "pruned 6 rows"  # 2 rows + their 4 keys (the reply is unsent)

    left = json.loads(cli(env, "inbox", "list", "--json", cwd=state_dir.parent).stdout)
    assert [r["envelope_id"] for r in left] == ["env-admin-3"]
    stats = json.loads(cli(env, "inbox", "stats", "--json", cwd=state_dir.parent).stdout)
    assert stats["keys"] == 2  # the in-flight envelope keeps its dedup keys, whatever their age


def test_inbox_retry_is_rerun_by_a_running_worker(fresh_simulator, tmp_path: Path) -> None:
    sim = fresh_simulator
    env = worker_env(sim.api_url, BUIDL_APP="slow_app:app",
                     PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(PROJECT_ROOT)]))
    shutil.rmtree(env["BUIDL_STATE_DIR"])
    state_dir = tmp_path / "state"
    env["BUIDL_STATE_DIR"] = str(state_dir)
    with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
        sim.client.wait_for(lambda s: s["open_connections"] == 1, 20, "the worker to connect")
        (event,) = sim.client.inject("app_mention", channel="CRETRY", text="again")
        sim.client.wait_for(lambda s: s["messages_posted"] == 1, 10, "the first reply")

        store = SqliteStore(state_dir / "edge.sqlite3", checkpoint_interval_s=None)
        try:
            row = wait_until(lambda: (r := store.inbox_row(event["envelope_id"])) and r["state"] == "done" and r,
                             5, "the row done")
            assert row["attempts"] == 1
            retried = cli(operator_env(state_dir), "inbox", "retry", event["envelope_id"], cwd=tmp_path)
            assert retried.returncode == 0, retried.stderr

            def rerun_done() -> dict[str, Any] | None:
                r = store.inbox_row(event["envelope_id"])
                return r if r and r["state"] == "done" and r["attempts"] == 2 else None

            row = wait_until(rerun_done, 15, "the worker's sweeper to re-run the envelope", interval=0.1)
            assert row["owner"].endswith(f":{worker.pid}")
        finally:
            store.close()
        assert "re-running app_mention" in worker.output()
    assert sim.client.summary()["envelopes_sent"] == 1  # re-run from the inbox, not redelivered


# ---------------------------------------------------------------------------- check and config


def test_check_with_good_tokens_says_what_would_run(fresh_simulator, tmp_path: Path) -> None:
    env = tokens_env(tmp_path / "state", fresh_simulator.api_url, BUIDL_PROCESSES=3, BUIDL_CONNECTIONS=2)
    result = cli(env, "check", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "bot token ok" in result.stdout and "app token ok" in result.stdout
    assert "would run 3 process(es) x 2 connection(s) = 6 of Slack's 10" in result.stdout
    summary = fresh_simulator.client.summary()
    assert summary["connections_open_calls"] == 1
    assert summary["open_connections"] == 0  # it asked for a URL, it did not connect
    assert_no_token(env, result.stdout, result.stderr)


@pytest.mark.parametrize("knob, method", [("open_error", "apps.connections.open"), ("auth_error", "auth.test")])
def test_check_with_a_refused_token_fails_with_one_clear_line(fresh_simulator, tmp_path: Path,
                                                            knob: str, method: str) -> None:
    fresh_simulator.client.configure(**{knob: "invalid_auth"})
    env = tokens_env(tmp_path / "state", fresh_simulator.api_url)
    result = cli(env, "check", cwd=tmp_path)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "invalid_auth" in lines[0] and method in lines[0]
    assert "Traceback" not in result.stderr
    assert_no_token(env, result.stdout, result.stderr)


def test_check_refuses_a_bad_setup_before_calling_slack(fresh_simulator, tmp_path: Path) -> None:
    over = tokens_env(tmp_path / "state", fresh_simulator.api_url, BUIDL_PROCESSES=4, BUIDL_CONNECTIONS=2)
    result = cli(over, "check", cwd=tmp_path)
    assert result.returncode != 0 and "Slack allows 10 per app" in result.stderr

    swapped = dict(over, BUIDL_PROCESSES="1", SLACK_APP_TOKEN=over["SLACK_BOT_TOKEN"])
    result = cli(swapped, "check", cwd=tmp_path)
    assert result.returncode != 0
    assert "SLACK_APP_TOKEN must start with xapp-" in result.stderr
    assert_no_token(swapped, result.stdout, result.stderr)
    summary = fresh_simulator.client.summary()
    assert summary["connections_open_calls"] == 0


def test_config_prints_settings_with_tokens_masked(tmp_path: Path) -> None:
    env = tokens_env(tmp_path / "state", "http://127.0.0.1:9/api/", BUIDL_PROCESSES=3)
    as_json = cli(env, "config", "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    values = json.loads(as_json.stdout)
    assert values["processes"] == 3
    assert values["app_token"] == "xapp-…" + env["SLACK_APP_TOKEN"][-4:]
    assert values["bot_token"] == "xoxb-…" + env["SLACK_BOT_TOKEN"][-4:]
    table = cli(env, "config", cwd=tmp_path)
    assert table.returncode == 0 and "processes" in table.stdout
    assert_no_token(env, as_json.stdout, table.stdout, as_json.stderr, table.stderr)
