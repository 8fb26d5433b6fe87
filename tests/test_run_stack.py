"""The deployable stack for real: `python -m buidl_edge run` → supervisord → worker processes,
one shared SQLite file, against the simulator process over loopback.

Each test asserts on what the simulator saw (acks per connection, posted messages,
connection counts), on supervisord's own XML-RPC view, and on the SQLite inbox.
Logs of `run` (supervisord + workers) are printed at teardown, so a failure shows them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from buidl_edge.api.bot import GREETING
from buidl_edge.config import ConfigError, load_settings
from buidl_edge.ops.supervise import Credentials, Supervisor, SupervisorDown, check_connection_budget, render_config
from buidl_edge.sandbox.harness import WorkerProcess, wait_until
from stack_support import cli, mention_each_in_own_channel, messages_by_channel, session_pids, tokens_env
from support import outbox_rows, wait_idle

# What supervisord's own log lines look like (`2026-01-01 10:00:00,123 WARN exited: …`), and
# anything a clean run must never print.
SUPERVISORD_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ", re.M)
ALARMING = re.compile(r"level=(warning|error|critical)|\b(CRIT|WARN|ERROR)\b|not expected|Traceback", re.I)

pytestmark = pytest.mark.timeout(90)


def test_rendered_config_is_accepted_by_supervisord(fresh_simulator, tmp_path: Path) -> None:
    """The file `run` renders: supervisor's own parser reads the policies we rely on, and a
    plain `supervisord -c` started on it brings the workers up, visible to supervisorctl."""
    from supervisor.datatypes import RestartWhenExitUnexpected
    from supervisor.options import ServerOptions

    # A short path: a unix socket's path is capped at 108 bytes.
    state_dir = Path(tempfile.mkdtemp(prefix="be-conf-"))
    env = tokens_env(state_dir, fresh_simulator.api_url, BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1,
                     BUIDL_BACKOFF_BASE=0.2)
    conf = render_config(load_settings(env))
    assert conf == state_dir.resolve() / "supervisord.conf"

    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    groups = {g.name: g for g in options.process_group_configs}
    workers = groups["worker"].process_configs
    assert [p.name for p in workers] == ["worker_00", "worker_01"]
    for program in workers:
        assert program.autorestart is RestartWhenExitUnexpected
        assert sorted(program.exitcodes) == [0, 3]
        assert 0 < program.stopwaitsecs < 30
        assert program.stopsignal == signal.SIGTERM
        assert program.stdout_logfile == "/dev/stdout" and program.stdout_logfile_maxbytes == 0
        assert program.command.endswith("-m buidl_edge worker")
    assert options.nodaemon is True
    assert options.silent is True  # `run` logs the workers' starts and exits itself
    server = options.server_configs[0]
    assert server["file"] == str(state_dir.resolve() / "supervisor.sock")
    assert server["username"] and server["password"]  # the control socket asks who is calling
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # and the pair is readable by its owner only

    # supervisord's own log, made visible for once: a start says nothing alarming (no CRIT about
    # running as root, none about a socket without authentication).
    own_log = state_dir / "supervisord.log"
    daemon = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf),
                               "-l", str(own_log), "-e", "info"], env=env,
                              cwd=state_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        fresh_simulator.client.wait_for(lambda s: s["open_connections"] == 2, 30, "2 workers connected")
        logged = own_log.read_text()
        assert "spawned" in logged, logged  # the log is really written
        assert not re.search(r"\b(CRIT|ERRO|WARN)\b", logged), logged
        with pytest.raises(SupervisorDown, match="does not answer"):
            Supervisor(state_dir, Credentials()).processes()  # no password, no answer
        assert {p.name for p in Supervisor(state_dir).processes()} == {"worker_00", "worker_01"}

        def ctl_status() -> list[tuple[str, ...]] | None:  # (name, state) per worker line
            ctl = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "status"],
                                 env=env, capture_output=True, text=True, timeout=20)
            lines = [tuple(line.split()[:2]) for line in ctl.stdout.splitlines() if line.startswith("worker:")]
            return lines if all(state != "STARTING" for _, state in lines) else None

        assert wait_until(ctl_status, 15, "supervisorctl to show the workers started", interval=0.3) == [
            ("worker:worker_00", "RUNNING"), ("worker:worker_01", "RUNNING")]
        down = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "shutdown"],
                              env=env, capture_output=True, text=True, timeout=20)
        assert "Shut down" in down.stdout
        assert daemon.wait(timeout=25) == 0
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=10)
        for pid in session_pids(daemon.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(state_dir, ignore_errors=True)


def test_run_spreads_events_over_2_processes_x_2_connections_each_handled_once(stacks, fresh_simulator) -> None:
    sim = fresh_simulator
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=2).start()
    stack.wait_up(processes=2, connections=2)
    assert sim.client.summary()["open_connections"] == 4

    sent = mention_each_in_own_channel(sim, "SPREAD", 20)
    sim.client.wait_for(lambda s: s["acked"] == 20 and s["messages_posted"] >= 20, 30, "20 acks and replies")

    state = sim.client.state()
    acks_per_connection = Counter(ack["connection"] for ack in state["acks"])
    assert len(acks_per_connection) == 4, acks_per_connection  # every link carried envelopes
    assert sum(acks_per_connection.values()) == 20
    summary = sim.client.summary()
    assert (summary["duplicate_acks"], summary["unknown_acks"], summary["events_missed"]) == (0, 0, 0)

    replies = messages_by_channel(sim)
    assert replies == {channel: [GREETING] for channel in sent}

    # Both processes took part, as seen by their own heartbeats (written every 2 s).
    def per_process() -> dict[str, int] | None:
        rows = {row["process"]: row["acked"] for row in stack.status_json()["processes"]}
        return rows if sum(rows.values()) == 20 else None

    acked = wait_until(per_process, 15, "heartbeats counting 20 acks", interval=0.5)
    assert set(acked) == {"worker_00", "worker_01"}
    assert all(count > 0 for count in acked.values()), acked

    rows = stack.inbox_rows()
    assert sorted(r["envelope_id"] for r in rows) == sorted(sent.values())
    assert {(r["state"], r["attempts"]) for r in rows} == {("done", 1)}


def test_sigkilled_worker_is_restarted_by_supervisord_and_no_event_is_lost(stacks, fresh_simulator) -> None:
    sim = fresh_simulator
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1).start()
    before = {p.name: p.pid for p in stack.wait_up(processes=2, connections=1)}

    first = mention_each_in_own_channel(sim, "PRE", 6)
    sim.client.wait_for(lambda s: s["messages_posted"] >= 6, 20, "replies before the kill")

    os.kill(before["worker_00"], signal.SIGKILL)
    # Events sent while it is dead or coming back: some may go down its dying link.
    during = mention_each_in_own_channel(sim, "MID", 6)

    def restarted() -> dict[str, int] | None:
        now = {p.name: p.pid for p in stack.processes() if p.state == "RUNNING"}
        return now if len(now) == 2 and now["worker_00"] != before["worker_00"] else None

    after = wait_until(restarted, 20, "supervisord to restart worker_00", interval=0.1)
    assert after["worker_01"] == before["worker_01"]  # the other one was left alone
    # `run` says so, in the workers' own log format, once.
    said = wait_until(lambda: [line for line in stack.out_path.read_text().splitlines()
                               if "worker_00 exited unexpectedly" in line], 5, "run's warning")
    assert len(said) == 1 and "level=warning" in said[0] and "supervisord restarts it" in said[0], said
    wait_until(lambda: f"worker_00 running (pid {after['worker_00']})" in stack.out_path.read_text(), 5,
               "run to log the new worker_00")
    sim.client.wait_for(lambda s: s["open_connections"] == 2, 20, "the restarted worker to reconnect")

    later = mention_each_in_own_channel(sim, "POST", 6)
    channels = {**first, **during, **later}
    sim.client.wait_for(lambda s: s["acked"] == 18 and s["messages_posted"] >= 18, 30,
                        "every event acked and answered")
    wait_idle(sim.client, stack.env)  # a stray second reply would have landed by then
    assert messages_by_channel(sim) == {channel: [GREETING] for channel in channels}
    summary = sim.client.summary()
    assert summary["events_missed"] == 0
    assert summary["acked"] == summary["events_injected"] == 18
    assert {r["state"] for r in stack.inbox_rows()} == {"done"}


def test_sweep_reruns_envelope_of_worker_killed_mid_handler_exactly_once(stacks, fresh_simulator) -> None:
    sim = fresh_simulator
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1, BUIDL_APP="slow_app:app").start()
    pids = {p.pid for p in stack.wait_up(processes=2, connections=1)}

    (event,) = sim.client.inject("app_mention", channel="CSWEEP", text="slow 2.5")
    envelope_id = event["envelope_id"]

    def processing_owner() -> str | None:
        listed = stack.cli("inbox", "list", "--state", "processing", "--json")
        assert listed.returncode == 0, listed.stderr
        owners = [row["owner"] for row in json.loads(listed.stdout) if row["envelope_id"] == envelope_id]
        return owners[0] if owners else None

    owner = wait_until(processing_owner, 10, "the envelope to be processing", interval=0.1)
    host, _, pid_text = owner.rpartition(":")
    victim = int(pid_text)
    assert victim in pids, (owner, pids)
    sim.client.wait_for(lambda s: s["acked"] == 1, 5, "the ack (sent before the handler finishes)")
    assert sim.client.summary()["messages_posted"] == 0  # still sleeping in the handler
    os.kill(victim, signal.SIGKILL)

    sim.client.wait_for(lambda s: s["messages_posted"] >= 1, 25, "the re-run's reply")
    wait_idle(sim.client, stack.env)  # a second reply, if the envelope ran twice, would be in by then
    assert messages_by_channel(sim) == {"CSWEEP": ["done: slow 2.5"]}
    row = wait_until(lambda: (r := stack.inbox_row(envelope_id)) and r["state"] == "done" and r,
                     10, "the inbox row to be done")
    assert row["attempts"] == 2
    assert row["owner"] != owner and row["owner"].startswith(host + ":")
    assert sim.client.summary()["envelopes_sent"] == 1  # recovered from the inbox, not redelivered


def test_sigterm_to_every_process_twice_drains_and_exits_0_without_respawn(stacks, fresh_simulator) -> None:
    sim = fresh_simulator
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1, BUIDL_APP="slow_app:app").start()
    stack.wait_up(processes=2, connections=1)
    workers_before = stack.worker_pids()
    assert len(workers_before) == 2

    # A second `run` on the same state dir finds the first before touching anything.
    conf = stack.state_dir / "supervisord.conf"
    conf_before = conf.read_bytes()
    second = stack.cli("run")
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        (f"Error: a stack is already running on {stack.state_dir} (supervisord pid "
         f"{(stack.state_dir / 'supervisord.pid').read_text().strip()}): stop it first, "
         "or give this one its own BUIDL_STATE_DIR")]
    assert conf.read_bytes() == conf_before
    assert {p.state for p in stack.processes()} == {"RUNNING"} and stack.worker_pids() == workers_before

    sent = mention_each_in_own_channel(sim, "TERM", 6, text="slow 1.5")
    sim.client.wait_for(lambda s: s["acked"] == 6, 10, "6 envelopes acked (handlers now running)")
    assert sim.client.summary()["messages_posted"] == 0
    opened_before = sim.client.summary()["connections_opened"]

    started = time.monotonic()
    seen_workers: set[int] = set(workers_before)
    stack.signal_every_process(signal.SIGTERM)
    time.sleep(0.2)
    stack.signal_every_process(signal.SIGTERM)
    assert stack.proc is not None
    while stack.proc.poll() is None and time.monotonic() - started < 25:
        seen_workers |= stack.worker_pids()
        time.sleep(0.05)
    elapsed = time.monotonic() - started

    assert stack.proc.returncode == 0, stack.logs()
    assert elapsed < 25
    assert seen_workers == workers_before, "a worker was respawned during shutdown"
    assert stack.worker_pids() == set()
    assert sim.client.summary()["connections_opened"] == opened_before
    # A clean start and a clean stop: nothing that looks like an error, and no supervisord lines;
    # `run` said each worker's start and stop in the workers' own format.
    out, err = stack.out_path.read_text(), stack.err_path.read_text()
    assert not ALARMING.search(out + err), stack.logs()
    assert not SUPERVISORD_LINE.search(out + err), stack.logs()
    for name in ("worker_00", "worker_01"):
        assert re.search(rf"level=info logger=buidl_edge.run .*msg=\"{name} running \(pid \d+\)\"", out), out
        assert re.search(rf"level=info logger=buidl_edge.run .*msg=\"{name} stopped", out), out
    # The stopped workers took their heartbeats with them: status shows nothing alive.
    after = stack.cli("status", "--json")
    assert after.returncode == 1 and json.loads(after.stdout)["processes"] == [], after.stdout

    # The handlers in flight finished: every envelope is done, with exactly one reply queued
    # in the shared outbox, and nothing was posted twice.
    assert {(r["state"], r["attempts"]) for r in stack.inbox_rows()} == {("done", 1)}
    store = stack.store()
    try:
        queued = {channel: [(r.text, r.state) for r in outbox_rows(store, envelope_id)]
                  for channel, envelope_id in sent.items()}
    finally:
        store.close()
    assert {channel: [text for text, _ in rows] for channel, rows in queued.items()} == {
        channel: ["done: slow 1.5"] for channel in sent}
    posted_at_exit = messages_by_channel(sim)
    assert all(texts == ["done: slow 1.5"] for texts in posted_at_exit.values()), posted_at_exit
    left_unsent = {channel: rows[0][1] for channel, rows in queued.items() if rows[0][1] != "sent"}
    # Heroku gives a restarted dyno a fresh disk: a reply left in SQLite at exit is a lost reply.
    assert not left_unsent, f"replies left unsent at exit {left_unsent}; posted before exit: {sorted(posted_at_exit)}"

    # The same file seen by a new start: nothing goes out twice.
    with WorkerProcess(stack.env, log_path=stack.state_dir / "next-start.log") as again:
        sim.client.wait_for(lambda s: s["open_connections"] == 1 and s["messages_posted"] >= 6, 20,
                            "the queued replies after a restart")
        wait_idle(sim.client, again.env)
        assert messages_by_channel(sim) == {channel: ["done: slow 1.5"] for channel in sent}
        assert again.stop() == 0



def test_refused_app_token_stops_the_stack_with_exit_3_and_no_respawn_loop(stacks, fresh_simulator) -> None:
    sim = fresh_simulator
    sim.client.configure(open_error="invalid_auth")
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=2).start()
    assert stack.proc is not None
    code = stack.proc.wait(timeout=30)

    err = stack.err_path.read_text()
    assert code == 3, stack.logs()
    assert "invalid_auth" in err and "stopped for good" in err
    everything = stack.out_path.read_text(errors="replace") + err
    assert stack.env["SLACK_APP_TOKEN"] not in everything and stack.env["SLACK_BOT_TOKEN"] not in everything
    # One open call per connection slot (2 x 2), not a respawn loop's worth.
    assert 1 <= sim.client.summary()["connections_open_calls"] <= 4
    # `run` (supervisord) exits only once it has stopped and reaped every worker: none is left to call.
    assert stack.worker_pids() == set()
    assert sim.client.summary()["connections_open_calls"] <= 4


def test_link_disabled_stops_the_whole_stack_with_exit_3(stacks, fresh_simulator) -> None:
    sim = fresh_simulator
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1).start()
    stack.wait_up(processes=2, connections=1)
    opened = sim.client.summary()["connections_opened"]

    sim.client.fault("disconnect", target="oldest", reason="link_disabled")
    assert stack.proc is not None
    code = stack.proc.wait(timeout=30)

    assert code == 3, stack.logs()
    assert "link_disabled" in stack.err_path.read_text()
    summary = sim.client.summary()
    assert summary["connections_opened"] == opened  # nobody reconnected or respawned
    assert summary["open_connections"] == 0  # the healthy worker was stopped too
    assert stack.worker_pids() == set()


def test_run_is_supervisord_itself_and_its_watch_survives_a_sighup_restart(stacks, fresh_simulator) -> None:
    """No parent stays up only to watch: `run`'s pid is supervisord's, and the dyno holds it and the
    workers, nothing else. A SIGHUP (supervisord's restart) makes a new watch that still logs and
    still stops the stack for good."""
    sim = fresh_simulator
    stack = stacks(BUIDL_PROCESSES=2, BUIDL_CONNECTIONS=1).start()
    first = {p.name: p.pid for p in stack.wait_up(processes=2, connections=1)}
    assert int((stack.state_dir / "supervisord.pid").read_text()) == stack.pid
    session = session_pids(stack.pid)
    assert sorted(session) == sorted([stack.pid, *first.values()]), session
    assert "buidl_edge.ops.stack_watch" in session[stack.pid]

    def restarted() -> dict[str, int] | None:
        try:  # supervisord answers with a fault while it restarts
            infos = stack.processes()
        except SupervisorDown:
            return None
        fresh = {p.name: p.pid for p in infos if p.state == "RUNNING" and p.pid not in first.values()}
        return fresh if len(fresh) == 2 else None

    os.kill(stack.pid, signal.SIGHUP)
    again = wait_until(restarted, 20, "both workers started again")
    wait_until(lambda: all(f"{name} running (pid {pid})" in stack.out_path.read_text()
                           for name, pid in again.items()), 20, "the new watch's lines")
    sim.client.wait_for(lambda s: s["open_connections"] == 2, 20, "2 links open again")

    sim.client.fault("disconnect", target="oldest", reason="link_disabled")
    assert stack.proc is not None
    assert stack.proc.wait(timeout=30) == 3, stack.logs()
    assert "link_disabled" in stack.err_path.read_text()
    assert stack.worker_pids() == set()


def test_supervisord_leaves_out_openssl_which_only_the_workers_use(stacks, fresh_simulator) -> None:
    """supervisord speaks XML-RPC on a unix socket only, yet supervisor's imports would load the
    ssl module and hashlib's OpenSSL binding, and with them libssl and libcrypto: 4.7 MB of `run`'s
    RSS for nothing (issue 26). A worker, which talks wss to Slack, still has them."""
    stack = stacks(BUIDL_PROCESSES=1, BUIDL_CONNECTIONS=1).start()
    [worker] = stack.wait_up(processes=1, connections=1)

    def openssl_in(pid: int) -> list[str]:
        maps = Path(f"/proc/{pid}/maps").read_text()
        return [name for name in ("/_ssl.", "/_hashlib.", "libcrypto") if name in maps]

    assert openssl_in(worker.pid) == ["/_ssl.", "/_hashlib.", "libcrypto"]
    assert openssl_in(stack.pid) == [], "supervisord loaded OpenSSL"
    assert [p.state for p in stack.processes()] == ["RUNNING"], stack.logs()  # its XML-RPC still answers


def test_run_refuses_more_connections_than_slack_allows_counting_refresh_overlap(tmp_path: Path) -> None:
    env = tokens_env(tmp_path / "state", "http://127.0.0.1:9/api/", BUIDL_PROCESSES=4, BUIDL_CONNECTIONS=2)
    result = cli(env, "run", cwd=tmp_path)

    assert result.returncode != 0
    assert result.stderr.strip() == ("Error: 4 processes x (2 connections + 1 spare for a refresh) = 12; "
                                     "Slack allows 10 per app")
    assert not (tmp_path / "state" / "supervisor.sock").exists()  # nothing was started

    # The one rule, at its edges: processes x (connections + 1) <= 10.
    for processes, connections, fits in ((5, 1, True), (3, 2, True), (2, 4, True), (1, 9, True),
                                         (3, 3, False), (2, 5, False), (6, 1, False)):
        settings = load_settings({**env, "BUIDL_PROCESSES": str(processes), "BUIDL_CONNECTIONS": str(connections)})
        if fits:
            check_connection_budget(settings)
        else:
            with pytest.raises(ConfigError, match="Slack allows 10 per app"):
                check_connection_budget(settings)

    # The flags advertise only what can pass, and the help states the rule.
    for flag, value, allowed in (("-n", "6", "1<=x<=5"), ("-c", "10", "1<=x<=9")):
        refused = cli(env, "run", flag, value, cwd=tmp_path)
        assert refused.returncode == 2 and f"{value} is not in the range {allowed}" in refused.stderr
    helped = cli(env, "run", "--help", cwd=tmp_path)
    assert "1<=x<=5" in helped.stdout and "1<=x<=9" in helped.stdout
    assert "processes x (connections + 1) <= 10" in " ".join(helped.stdout.split())
    # The same rule where an operator reads it.
    from stack_support import PROJECT_ROOT

    app_json = json.loads((PROJECT_ROOT / "app.json").read_text())["env"]
    assert "processes x (connections + 1) must be <= 10" in app_json["BUIDL_PROCESSES"]["description"]
    assert "value" not in app_json["BUIDL_STATE_DIR"]  # the default is $BUIDL_HOME/state, not a relative path
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "processes × (connections + 1) ≤ 10" in readme and "connections ≤ 10" not in readme


def test_worker_refuses_10_connections_as_it_keeps_one_for_a_refresh(tmp_path: Path) -> None:
    env = tokens_env(tmp_path / "state", "http://127.0.0.1:9/api/")
    flag = cli(env, "worker", "--connections", "10", cwd=tmp_path)
    assert flag.returncode == 2 and "10 is not in the range 1<=x<=9" in flag.stderr

    from_env = cli({**env, "BUIDL_CONNECTIONS": "10"}, "worker", cwd=tmp_path)
    assert from_env.returncode == 3
    assert from_env.stderr.strip().splitlines() == [
        ("buidl-edge worker: cannot start: BUIDL_CONNECTIONS must be 1..9 (Slack allows 10 per app, "
         "and each process keeps one spare for a refresh), got 10")]


def test_run_refuses_a_state_dir_too_long_for_the_control_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    env = tokens_env(deep, "http://127.0.0.1:9/api/")
    result = cli(env, "run", cwd=tmp_path)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert "BUIDL_STATE_DIR is too long" in message and "use a shorter path" in message
    assert len(message.splitlines()) == 1
    assert not deep.exists()  # refused before anything was made or started


BROKEN_APP = """from buidl_edge import EdgeApp
import buidl_nonexistent_dependency  # the typo is in here, not in BUIDL_APP
app = EdgeApp("broken")
"""


@pytest.mark.parametrize("case", ["missing module", "error inside the module", "worker config", "store"])
def test_a_worker_that_cannot_start_stops_run_for_good_with_its_reason(stacks, fresh_simulator, case) -> None:
    """Any start-up failure: `run` stops within a few seconds (not a restart loop), exits 3 and
    prints the worker's own one-line reason; a traceback only for an error in the user's code."""
    extra: dict[str, object] = {"BUIDL_PROCESSES": 2}
    args: tuple[str, ...] = ()
    if case == "missing module":
        args, reason = ("--app", "myap:app"), "cannot import app module 'myap': no module named 'myap'"
    elif case == "error inside the module":
        extra["BUIDL_APP"] = "broken_app:app"  # in the directory `run` starts in
        reason = ("importing app module 'broken_app' failed: ModuleNotFoundError: "
                  "No module named 'buidl_nonexistent_dependency'")
    elif case == "worker config":
        extra["BUIDL_POST_RATE"] = "fast"
        reason = "BUIDL_POST_RATE must be a number, got 'fast'"
    else:
        extra["BUIDL_DB"] = "/proc/buidl-nowhere/edge.sqlite3"
        reason = "cannot open the store: cannot open store /proc/buidl-nowhere/edge.sqlite3"
    stack = stacks(**extra)
    (stack.state_dir / "broken_app.py").write_text(BROKEN_APP)
    stack.start_with(*args)
    assert stack.proc is not None
    code = stack.proc.wait(timeout=30)

    out, err = stack.out_path.read_text(), stack.err_path.read_text()
    assert code == 3, stack.logs()
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"buidl-edge run: stopped for good: {reason}"), stack.logs()
    assert re.search(r"\(worker_0[01]\)$", last), last
    said = [line for line in out.splitlines() if line.startswith("buidl-edge worker: cannot start: ")]
    assert said and all(reason in line for line in said), stack.logs()
    assert len(said) <= 4, "a restart loop"  # each of the 2 workers, and at most one respawn each
    assert ("Traceback" in out) is (case == "error inside the module"), out
    if case == "error inside the module":
        assert 'broken_app.py", line 2, in <module>' in out and "importlib" not in out
    assert not SUPERVISORD_LINE.search(out + err), stack.logs()
    assert stack.worker_pids() == set()
    assert fresh_simulator.client.summary()["connections_open_calls"] == 0


def test_an_operator_template_in_deploy_wins_over_the_packaged_one(tmp_path: Path, monkeypatch) -> None:
    from buidl_edge.ops.supervise import template_text

    packaged, source = template_text()
    assert source.endswith("(packaged)") and "[program:worker]" in packaged
    state_dir = Path(tempfile.mkdtemp(prefix="be-tmpl-"))
    try:
        settings = load_settings(tokens_env(state_dir, "http://127.0.0.1:9/api/"))
        monkeypatch.chdir(tmp_path)
        (tmp_path / "deploy").mkdir()
        (tmp_path / "deploy" / "supervisord.conf.tmpl").write_text("; an operator's own\n" + packaged)
        rendered = render_config(settings).read_text()
        assert rendered.startswith("; an operator's own\n")
        # run's watch is added to whatever template rendered it (an operator's copy cannot lose it)
        assert ("[rpcinterface:buidl_edge]\n"
                "supervisor.rpcinterface_factory = buidl_edge.ops.stack_watch:make_watch") in rendered
        (tmp_path / "deploy" / "supervisord.conf.tmpl").write_text(packaged.replace("$processes", "$procs"))
        with pytest.raises(ConfigError, match=r"deploy/supervisord.conf.tmpl: unknown or malformed placeholder"):
            render_config(settings)
        (tmp_path / "deploy" / "supervisord.conf.tmpl").unlink()
        assert "an operator's own" not in render_config(settings).read_text()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
