"""The operator's commands, run as an operator would: `python -m buidl_edge status | inbox | check | config`
as subprocesses, against a running stack, a real SQLite file and the simulator.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.sandbox.harness import WorkerProcess, wait_until, worker_env
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import Reply
from buidl_edge.store.sqlite import SqliteStore
from stack_support import PROJECT_ROOT, TESTS_DIR, cli, operator_env, tokens_env
from support import assert_no_secret, tokens_in

pytestmark = pytest.mark.timeout(60)


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
        ready = len(rows) == 2 and all((r["connections_open"], r["connections"]) == (2, 2) for r in rows) \
            and sum(r["acked"] for r in rows) == 1
        return data if ready else None

    data = wait_until(report, 15, "both heartbeats with 2/2 connections and the ack", interval=0.5)
    assert data["supervisor"] == "running"
    rows = {r["process"]: r for r in data["processes"]}
    assert set(rows) == {"worker_00", "worker_01"}
    for name, row in rows.items():
        assert row["state"] == "RUNNING"
        assert row["pid"] == pids[name]
        assert (row["connections_open"], row["connections"]) == (2, 2)
        assert row["degraded"] is False
        assert (row["duplicates"], row["handler_errors"], row["reconnects"]) == (0, 0, 0)
        # Numbers, and null where there is no value (the worker that did not ack has no latency).
        assert isinstance(row["uptime_s"], (int, float)) and row["uptime_s"] >= 0
        assert isinstance(row["heartbeat_age_s"], (int, float))
        assert row["last_ack_ms"] is None or isinstance(row["last_ack_ms"], (int, float))
    assert sorted(r["last_ack_ms"] is None for r in rows.values()) == [False, True]

    table = cli(operator, "status", cwd=stack.state_dir)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split()[:5] == ["process", "state", "pid", "uptime", "connections"]
    cells = sorted(line.split() for line in lines if line.startswith("worker_"))
    assert [(c[0], c[1], int(c[2]), c[4]) for c in cells] == [
        ("worker_00", "RUNNING", pids["worker_00"], "2/2"), ("worker_01", "RUNNING", pids["worker_01"], "2/2")]
    last_ack = header.split().index("last_ack_ms")
    assert "None" not in table.stdout and "-" in [c[last_ack] for c in cells]  # last_ack_ms of the idle worker
    assert "connection slots: 4/10 held" in table.stdout
    assert_no_secret("\n".join([table.stdout, table.stderr, json.dumps(data)]), tokens_in(stack.env))


def test_status_after_every_process_is_killed_shows_dead_workers_and_frees_their_slots(stacks) -> None:
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1).start()
    pids = {p.name: p.pid for p in stack.wait_up(processes=2, connections=1)}
    operator = operator_env(stack.state_dir)
    wait_until(lambda: len(stack.status_json()["processes"]) == 2 and stack.status_json()["slots"]["held"] == 2,
               10, "both heartbeats and slots")

    stack.kill_everything()  # SIGKILL to the whole tree: nobody cleans up
    result = cli(operator, "status", "--json", cwd=stack.state_dir)
    assert result.returncode == 1  # no supervisor
    report = json.loads(result.stdout)
    assert report["supervisor"].startswith("stopped")
    rows = {r["process"]: r for r in report["processes"]}
    assert set(rows) == {"worker_00", "worker_01"}
    for name, row in rows.items():
        assert (row["state"], row["pid"]) == ("DEAD", pids[name])
        assert row["uptime_s"] is None and row["connections"] is None and row["acked"] is None
        assert row["heartbeat_age_s"] is not None
    assert report["slots"]["held"] == 0  # their leases have not run out, but their pids are gone

    table = cli(operator, "status", cwd=stack.state_dir)
    lines = [line.split() for line in table.stdout.splitlines() if line.startswith("worker_")]
    assert sorted((c[0], c[1], c[3], c[4]) for c in lines) == [("worker_00", "DEAD", "-", "-"),
                                                                ("worker_01", "DEAD", "-", "-")]
    assert "connection slots: 0/10 held" in table.stdout and "None" not in table.stdout


def test_status_marks_stale_heartbeats_and_escapes_what_it_prints(tmp_path: Path) -> None:
    """Heartbeats in a real SQLite file, as workers write them: one from a live process that went
    quiet (this test's own pid), one from a live one with a hostile process name."""
    state_dir = tmp_path / "state"
    store = SqliteStore(state_dir / "edge.sqlite3", checkpoint_interval_s=None)
    here = socket.gethostname()
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.heartbeat(f"{here}:{os.getpid()}", {"process": "quiet", "started_at": time.time() - 100,
                                                  "connections": [{"connected": True}]})
        store.heartbeat(f"{here}:{helper.pid}", {"process": "evil\x1b[2J\x1b]0;owned\x07", "started_at": time.time(),
                                                 "connections": [{"connected": True, "envelopes_acked": 3}]})
        db = sqlite3.connect(state_dir / "edge.sqlite3")
        with db:
            db.execute("UPDATE workers SET updated_at = updated_at - 30 WHERE pid = ?", (os.getpid(),))
        db.close()
        env = operator_env(state_dir)
        report = json.loads(cli(env, "status", "--json", cwd=tmp_path).stdout)
        rows = {r["pid"]: r for r in report["processes"]}
        assert rows[os.getpid()]["state"] == "STALE (unsupervised)"
        assert rows[os.getpid()]["connections"] is None and rows[os.getpid()]["uptime_s"] is None
        assert rows[helper.pid]["state"] == "RUNNING (unsupervised)" and rows[helper.pid]["acked"] == 3

        table = cli(env, "status", cwd=tmp_path)
        assert "\x1b" not in table.stdout and "\x07" not in table.stdout
        assert "evil\\x1b[2J\\x1b]0;owned\\x07" in table.stdout
    finally:
        helper.kill()
        helper.wait()
        store.close()


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


def test_admin_reads_of_a_memory_store_show_it_empty_rather_than_a_traceback(tmp_path: Path) -> None:
    """A memory:// store lives in each worker: an admin command in another process finds it empty."""
    env = operator_env(tmp_path / "state", BUIDL_STORE_URL="memory://")

    status = cli(env, "status", "--json", cwd=tmp_path)
    assert "Traceback" not in status.stderr and status.returncode == 1  # no supervisor here
    report = json.loads(status.stdout)
    assert report["processes"] == [] and report["outbox"]["depth"] == 0 and report["slots"]["held"] == 0

    stats = cli(env, "inbox", "stats", "--json", cwd=tmp_path)
    assert "Traceback" not in stats.stderr and stats.returncode == 0
    assert {k: v for k, v in json.loads(stats.stdout).items() if k != "oldest_processing_age_s"} == {
        "processing": 0, "pending": 0, "done": 0, "failed": 0, "oldest_pending_age_s": None, "keys": 0}

    listed = cli(env, "inbox", "list", "--json", cwd=tmp_path)
    assert "Traceback" not in listed.stderr and listed.returncode == 0 and json.loads(listed.stdout) == []


ADMIN_COMMANDS = [("status",), ("status", "--json"), ("send", "C0123ABCD", "hello"),
                  ("outbox", "stats"), ("outbox", "list"), ("outbox", "retry", "1"), ("outbox", "purge", "--failed"),
                  ("inbox", "stats"), ("inbox", "list"), ("inbox", "retry", "env-1"), ("inbox", "prune")]


@pytest.mark.parametrize("args", ADMIN_COMMANDS, ids=" ".join)
def test_an_admin_command_pointed_at_no_store_says_so_and_creates_nothing(tmp_path: Path,
                                                                          args: tuple[str, ...]) -> None:
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
    assert stats["keys"] == 3  # one a claim: the event id of each
    assert stats["oldest_processing_age_s"] is not None and stats["oldest_processing_age_s"] < 60

    text = cli(env, "inbox", "stats", cwd=state_dir.parent)
    assert text.returncode == 0
    assert {"processing: 1", "done: 1", "failed: 1", "keys: 3"} <= set(text.stdout.splitlines())


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
    assert floored.stdout.strip() == "pruned 4 rows"  # 2 rows + their 2 keys (the reply is unsent)

    left = json.loads(cli(env, "inbox", "list", "--json", cwd=state_dir.parent).stdout)
    assert [r["envelope_id"] for r in left] == ["env-admin-3"]
    stats = json.loads(cli(env, "inbox", "stats", "--json", cwd=state_dir.parent).stdout)
    assert stats["keys"] == 1  # the in-flight envelope keeps its dedup key, whatever its age


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
    assert "app ok: buidl_edge.api.bot:app imports (EdgeApp 'buidl')" in result.stdout
    assert "bot token ok" in result.stdout and "app token ok" in result.stdout
    assert ("would run 3 processes x 2 connections = 6 links, 9 with one refresh spare per process, "
            "of Slack's 10") in result.stdout
    summary = fresh_simulator.client.summary()
    assert summary["connections_open_calls"] == 1
    assert summary["open_connections"] == 0  # it asked for a URL, it did not connect
    assert_no_secret("\n".join([result.stdout, result.stderr]), tokens_in(env))


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
    assert_no_secret("\n".join([result.stdout, result.stderr]), tokens_in(env))


def test_check_refuses_a_bad_setup_before_calling_slack(fresh_simulator, tmp_path: Path) -> None:
    over = tokens_env(tmp_path / "state", fresh_simulator.api_url, BUIDL_PROCESSES=4, BUIDL_CONNECTIONS=2)
    result = cli(over, "check", cwd=tmp_path)
    assert result.returncode != 0 and "Slack allows 10 per app" in result.stderr

    swapped = dict(over, BUIDL_PROCESSES="1", SLACK_APP_TOKEN=over["SLACK_BOT_TOKEN"])
    result = cli(swapped, "check", cwd=tmp_path)
    assert result.returncode != 0
    assert "SLACK_APP_TOKEN must start with xapp-" in result.stderr
    assert_no_secret("\n".join([result.stdout, result.stderr]), tokens_in(swapped))
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
    assert_no_secret("\n".join([as_json.stdout, table.stdout, as_json.stderr, table.stderr]), tokens_in(env))


def test_check_json_reports_the_app_the_tokens_and_the_plan(fresh_simulator, tmp_path: Path) -> None:
    env = tokens_env(tmp_path / "state", fresh_simulator.api_url, BUIDL_PROCESSES=1, BUIDL_CONNECTIONS=1)
    result = cli(env, "check", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["app"] == {"spec": "buidl_edge.api.bot:app", "name": "buidl"}
    assert report["bot_token"]["ok"] is True and report["bot_token"]["user_id"]
    assert report["app_token"] == {"ok": True}
    assert report["plan"] == {"processes": 1, "connections": 1, "links": 1, "links_with_refresh_spares": 2,
                              "slack_limit": 10}
    text = cli(env, "check", cwd=tmp_path)
    assert "would run 1 process x 1 connection = 1 link, 2 with one refresh spare" in text.stdout


# ---------------------------------------------------------------------------- loading BUIDL_APP


APP_FILES = {
    "my_bot.py": "from buidl_edge import EdgeApp\napp = EdgeApp('my-bot')\nhelper = 42\n\n"
                 "@app.event('app_mention')\ndef hi(event, ctx):\n    ctx.say('hi from my_bot')\n",
    "bad_dep.py": "from buidl_edge import EdgeApp\nimport buidl_no_such_dependency\napp = EdgeApp('x')\n",
    "bad_syntax.py": "app = (\n",
}


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    for name, text in APP_FILES.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def short_state_dir() -> Any:
    """A state dir whose control socket fits a unix socket path (check refuses one that does not,
    as run does; pytest's tmp_path can be too long)."""
    path = Path(tempfile.mkdtemp(prefix="be-check-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("spec, expected, traceback", [
    ("my_bot:app", None, None),
    ("my_bot:ap", "app module 'my_bot' has no attribute 'ap'; did you mean my_bot:app?", None),
    ("my_bot:helper", "my_bot:helper is not an EdgeApp (it is 'int'); make it `helper = EdgeApp(...)`", None),
    ("my_bto:app", "cannot import app module 'my_bto': no module named 'my_bto'", None),
    ("bad_dep:app", ("importing app module 'bad_dep' failed: ModuleNotFoundError: "
                     "No module named 'buidl_no_such_dependency'"), 'bad_dep.py", line 2, in <module>'),
    ("bad_syntax:app", "importing app module 'bad_syntax' failed: SyntaxError: '(' was never closed",
     'bad_syntax.py", line 1'),
])
def test_check_imports_the_app_from_the_working_directory_and_names_what_is_wrong(
        fresh_simulator, app_dir: Path, short_state_dir: Path, spec: str, expected: str | None,
        traceback: str | None) -> None:
    env = tokens_env(short_state_dir, fresh_simulator.api_url, BUIDL_APP=spec)
    env.pop("PYTHONPATH")  # the app is found because it is in the working directory, as with gunicorn
    result = subprocess.run([console_script(), "check"], env=env, cwd=app_dir, capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL)
    if expected is None:
        assert result.returncode == 0, result.stderr
        assert "app ok: my_bot:app imports (EdgeApp 'my-bot')" in result.stdout
        return
    assert result.returncode == 1
    *shown, last = result.stderr.strip().splitlines()
    assert last.startswith(f"Error: {expected}"), result.stderr
    if traceback:  # an error in the user's own code: where, without importlib's frames
        assert traceback in "\n".join(shown) and "importlib" not in result.stderr
    else:
        assert shown == []
    assert fresh_simulator.client.summary()["connections_open_calls"] == 0  # refused before calling Slack


def console_script() -> str:
    """The `buidl-edge` entry point of this venv: unlike `python -m`, it puts no directory on sys.path."""
    script = Path(sys.executable).parent / "buidl-edge"
    assert script.exists(), "buidl-edge is not installed in this venv (scripts/_venv.sh installs it)"
    return str(script)


def test_worker_started_from_the_apps_directory_imports_it_and_answers(fresh_simulator, app_dir: Path) -> None:
    env = tokens_env(app_dir / "state", fresh_simulator.api_url, BUIDL_APP="my_bot:app", BUIDL_BACKOFF_BASE=0.2)
    env.pop("PYTHONPATH")
    log_path = app_dir / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([console_script(), "worker"], env=env, cwd=app_dir, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        fresh_simulator.client.wait_for(lambda s: s["open_connections"] == 1, 20, "the worker to connect")
        fresh_simulator.client.inject("app_mention", channel="CAPPDIR", text="<@U0BUIDL> hello")
        fresh_simulator.client.wait_for(lambda s: s["messages_posted"] == 1, 10, "my_bot's reply")
        assert [m["text"] for m in fresh_simulator.client.state()["messages"]] == ["hi from my_bot"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0, log_path.read_text()


# ---------------------------------------------------------------------------- one state dir, wherever


def test_admin_commands_from_any_directory_use_the_workers_store_and_send_warns_without_one(
        fresh_simulator, tmp_path: Path) -> None:
    """No BUIDL_STATE_DIR: the worker and the operator's commands, started in different
    directories, meet in $BUIDL_HOME/state."""
    home, worker_dir, elsewhere = tmp_path / "home", tmp_path / "app", tmp_path / "elsewhere"
    worker_dir.mkdir()
    elsewhere.mkdir()
    env = tokens_env(tmp_path / "unused", fresh_simulator.api_url, BUIDL_HOME=home, BUIDL_BACKOFF_BASE=0.2)
    env.pop("BUIDL_STATE_DIR")
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "buidl_edge", "worker"], env=env, cwd=worker_dir,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        fresh_simulator.client.wait_for(lambda s: s["open_connections"] == 1, 20, "the worker to connect")
        wait_until(lambda: cli(env, "status", "--json", cwd=elsewhere).stdout.count('"RUNNING (unsupervised)"') == 1,
                   10, "the worker's heartbeat, seen from another directory")
        # TEXT '-' reads stdin; the newline `echo` adds is not part of the message.
        sent = subprocess.run([sys.executable, "-m", "buidl_edge", "send", "C0HOME", "-"], env=env, cwd=elsewhere,
                              input="posted from elsewhere\n", capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("queued message") and "a running worker posts it" in sent.stdout
        assert sent.stderr == ""
        fresh_simulator.client.wait_for(lambda s: s["messages_posted"] == 1, 10, "the worker to post it")
        assert [(m["channel"], m["text"]) for m in fresh_simulator.client.state()["messages"]] == [
            ("C0HOME", "posted from elsewhere")]
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0, (tmp_path / "worker.log").read_text()

    alone = cli(env, "send", "C0HOME", "nobody reads this", cwd=elsewhere)
    assert alone.returncode == 0 and "a running worker posts it" not in alone.stdout
    assert alone.stderr.splitlines() == [
        (f"warning: no worker is heartbeating on {home / 'state' / 'edge.sqlite3'}: the message waits there "
         "until one runs with this store (BUIDL_STATE_DIR / BUIDL_STORE_URL)")]
    as_json = json.loads(cli(env, "send", "C0HOME", "again", "--json", cwd=elsewhere).stdout)
    assert as_json["live_workers"] == 0 and as_json["warning"].startswith("no worker is heartbeating on")
    for folder in (worker_dir, elsewhere):
        assert not (folder / ".buidl").exists()
    assert (home / "state" / "edge.sqlite3").exists()


# ---------------------------------------------------------------------------- bad input: one line


def test_bad_input_to_send_and_outbox_is_one_line_never_a_traceback(seeded, tmp_path: Path) -> None:
    _, env = seeded
    latin1 = b'[{"type": "section", "text": "caf\xe9"}]'
    (tmp_path / "latin1.json").write_bytes(latin1)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    cases = [
        (("send", "C0BAD", "--blocks-file", str(tmp_path / "latin1.json")),
         (f"Error: not sent: {tmp_path / 'latin1.json'} is not UTF-8 text (byte 0xe9 at offset "
          f"{latin1.index(0xe9)})")),
        (("send", "C0BAD", "--blocks-file", str(tmp_path / "deep.json")),
         f"Error: not sent: {tmp_path / 'deep.json'} nests JSON too deeply to be Block Kit"),
        (("outbox", "retry", "99999999999999999999999"), None),
    ]
    for args, expected in cases:
        result = cli(env, *args, cwd=tmp_path)
        assert result.returncode in (1, 2), (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert "Traceback" not in result.stderr, result.stderr
        if expected:
            assert lines == [expected], result.stderr
        else:  # click's usage error: not a row id, said where it entered
            assert "'99999999999999999999999' is not a row id" in lines[-1]
    assert json.loads(cli(env, "outbox", "stats", "--json", cwd=tmp_path).stdout)["pending"] == 1  # nothing queued


def test_tables_escape_control_characters_show_ages_and_no_stale_errors(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    store = SqliteStore(state_dir / "edge.sqlite3", checkpoint_interval_s=None)
    hostile = "\x1b]0;pwned\x07\x1b[2J\u202ereversed"
    try:
        payload = {"type": "event_callback", "event_id": "EvESC1",
                   "event": {"type": "app_mention", "channel": "CESC", "text": hostile, "ts": "1.000100"}}
        assert store.claim(Envelope("events_api", f"env-{hostile}", payload), "otherhost:4242")
        store.finish(f"env-{hostile}", [], error=f"RuntimeError: {hostile}")
        sent_id, _hostile_id = store.outbox_enqueue([Reply(channel="CESC", text="retried then sent"),
                                                    Reply(channel="CESC2", text=hostile)])
        # The first row fails once (a 5xx), is retried, and then goes out.
        from buidl_edge.delivery.ratelimit import PostLimits
        from buidl_edge.store.base import DeliveryOutcome

        claimed = [r.id for r in store.outbox_claim("me:1", 10, PostLimits(), 30.0).rows]
        assert claimed.count(sent_id) == 1, claimed
        store.outbox_settle(sent_id, "me:1", DeliveryOutcome("retry", error="HTTP 503", retry_at=0.0))
        claimed = [r.id for r in store.outbox_claim("me:1", 10, PostLimits(), 30.0).rows]
        assert claimed.count(sent_id) == 1, claimed
        store.outbox_settle(sent_id, "me:1", DeliveryOutcome("sent", ts="2.000100"))
    finally:
        store.close()
    env = operator_env(state_dir)

    inbox = cli(env, "inbox", "list", cwd=tmp_path)
    outbox = cli(env, "outbox", "list", cwd=tmp_path)
    for table in (inbox, outbox):
        assert table.returncode == 0, table.stderr
        assert not any(c in table.stdout for c in "\x1b\x07\u202e"), table.stdout
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202ereversed" in table.stdout
        assert "None" not in table.stdout
    header, inbox_row = inbox.stdout.splitlines()
    assert header.split() == ["envelope_id", "kind", "state", "owner", "attempts", "deliveries", "age", "error"]
    # An age, as `outbox list` shows, not epoch seconds (seconds pass on a loaded machine).
    assert re.fullmatch(r"\d{1,2}s", inbox_row.split()[6]), inbox_row
    rows = {line.split()[0]: line.split() for line in outbox.stdout.splitlines()[1:]}
    sent_row = rows[str(sent_id)]
    assert sent_row[2] == "sent" and "503" not in " ".join(sent_row) and sent_row[6] == "-"


def test_simulate_on_a_busy_port_says_so_in_one_line(shared_simulator, tmp_path: Path) -> None:
    result = cli(operator_env(tmp_path), "simulate", "--port", str(shared_simulator.port), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        (f"Error: simulator: cannot listen on 127.0.0.1:{shared_simulator.port}: Address already in use; is "
         "another simulator running there? pick another with --port (0 takes a free one)")]
