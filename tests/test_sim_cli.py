"""Driving a running simulator without reading its source: `GET /_sim/` lists the routes,
`simulate` prints what to export, and `buidl-edge sim …` injects events, applies faults and
shows what the bot did. A real simulator process on loopback, the real CLI in a subprocess.
"""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result

from buidl_edge.cli import cli as cli_group
from buidl_edge.sandbox.harness import WorkerProcess, wait_until, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from redis_support import free_port
from stack_support import cli, operator_env

pytestmark = pytest.mark.timeout(60)


def test_sim_root_lists_every_control_route(simulator: SimulatorProcess) -> None:
    answer = requests.get(f"{simulator.base_url}/_sim/", timeout=5)
    assert answer.status_code == 200, answer.text
    listing = answer.json()
    routes = {(r["method"], r["path"]): r["does"] for r in listing["routes"]}
    for route in (("POST", "/_sim/events"), ("POST", "/_sim/fault"), ("GET", "/_sim/state"),
                  ("GET", "/_sim/summary"), ("POST", "/_sim/config"), ("POST", "/_sim/reset")):
        assert routes.get(route), f"{route} missing from {sorted(routes)}"
    assert "app_mention" in routes[("POST", "/_sim/events")]  # the kinds it takes are named
    assert "chat.postMessage" in listing["web_api"]["methods"]
    # A route that does not exist points at the list.
    missing = requests.get(f"{simulator.base_url}/_sim/nope", timeout=5)
    assert missing.status_code == 404 and "GET /_sim/ lists" in missing.json()["error"]


def test_simulate_prints_the_exports_that_point_a_worker_at_it(tmp_path: Path) -> None:
    env = operator_env(tmp_path / "state")
    with simulate(env, tmp_path, "--port", "0") as (port, printed):
        exports = _exports(printed)
        assert exports, f"no exports printed at start: {printed!r}"
        assert exports["SLACK_API_URL"] == f"http://127.0.0.1:{port}/api/"
        assert exports["SLACK_APP_TOKEN"].startswith("xapp-") and exports["SLACK_BOT_TOKEN"].startswith("xoxb-")
        assert exports["BUIDL_SIM_URL"] == f"http://127.0.0.1:{port}"
        # The tokens it printed are accepted: `check` tries both against it.
        checked = cli({**env, **exports}, "check", cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    # Started again where BUIDL_SIM_URL says (the variable `buidl-edge sim …` reads), with
    # tokens made up anew.
    wanted = free_port()
    with simulate({**env, "BUIDL_SIM_URL": f"http://127.0.0.1:{wanted}"}, tmp_path) as (port, again):
        assert port == str(wanted)
        exports_again = _exports(again)
        assert exports_again is not None and exports_again["SLACK_BOT_TOKEN"] != exports["SLACK_BOT_TOKEN"]


@contextlib.contextmanager
def simulate(env: dict[str, str], cwd: Path, *args: str) -> Iterator[tuple[str, str]]:
    """`buidl-edge simulate ARGS` until the block ends: its port and what it printed at start."""
    out = cwd / f"simulate-{len(list(cwd.glob('simulate-*')))}.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "buidl_edge", "simulate", *args], stdout=sink,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        port = wait_until(lambda: _listening_port(out.read_text()), 15, "simulate's listening line")
        yield port, out.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _listening_port(text: str) -> str | None:
    found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)
    return found.group(1) if found else None


def _exports(text: str) -> dict[str, str] | None:
    found = dict(re.findall(r"^\s*export (\w+)=(\S+)", text, re.M))
    return found if {"SLACK_API_URL", "SLACK_APP_TOKEN", "SLACK_BOT_TOKEN"} <= set(found) else None


# ---------------------------------------------------------------- the sim commands against a worker

BOT_APP = '''
from buidl_edge import EdgeApp

app = EdgeApp("sim-cli-test")


@app.event("app_mention")
def hello(event, ctx):
    ctx.client.reactions_add(channel=event["channel"], name="eyes", timestamp=event["ts"])
    ctx.say("Hello!", thread_ts=event["ts"])


@app.message("deploy")
def deploy(event, ctx):
    ctx.say("Deploying " + event["text"].split()[-1], channel=event["channel"])


@app.command("/standup")
def standup(payload, ctx):
    ctx.respond("Noted: " + payload["text"])
    return {"text": "got it"}


@app.interactive("block_actions")
def clicked(payload, ctx):
    [action] = payload["actions"]
    ctx.respond(action["action_id"] + "=" + action["value"], replace_original=True)
'''


@pytest.fixture(scope="module")
def driven(shared_simulator: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The module's simulator with one worker connected, its environment from `sim env`; yields
    the simulator's URL."""
    folder = tmp_path_factory.mktemp("sim-cli")
    (folder / "sim_cli_bot.py").write_text(BOT_APP)
    url = shared_simulator.base_url
    printed = CliRunner().invoke(cli_group, ["sim", "env", "--sim-url", url])
    assert printed.exit_code == 0, printed.output
    exports = _exports(printed.output)
    assert exports and exports["SLACK_API_URL"] == shared_simulator.api_url
    env = worker_env(exports["SLACK_API_URL"], {k: exports[k] for k in ("SLACK_APP_TOKEN", "SLACK_BOT_TOKEN")},
                     BUIDL_APP="sim_cli_bot:app", BUIDL_STATE_DIR=folder / "state", BUIDL_PING_INTERVAL="0.3",
                     BUIDL_STALE_TIMEOUT="1.5")
    with WorkerProcess(env, log_path=folder / "worker.log", cwd=folder) as worker:
        _open_links(shared_simulator.client, 1)
        yield url
        worker.stop()
        log = worker.output()
    assert "Traceback" not in log, log


def sim(url: str, *args: str) -> Result:
    result = CliRunner().invoke(cli_group, ["sim", *args, "--sim-url", url])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _open_links(client: SimulatorClient, count: int) -> list[dict[str, Any]]:
    return client.wait_for(lambda s: len([c for c in s["connections"] if c["state"] == "open"]) >= count,
                           15, f"{count} open link(s)", source="state")["connections"]


def _rows(output: str) -> list[list[str]]:
    """The table under a `what  channel …` header, each row split on runs of 2+ spaces."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("what "))
    return [re.split(r"\s{2,}", line.strip()) for line in lines[start + 1:] if line.strip()]


def test_sim_mention_sends_both_events_and_prints_the_ack_and_the_answer(driven: str,
                                                                         shared_simulator: SimulatorProcess) -> None:
    client = shared_simulator.client
    client.reset()
    result = sim(driven, "mention", "hi there", "--channel", "C0TALK")
    assert result.exit_code == 0, result.output
    assert re.search(r"^acked by link c\d+ in \d+ ms$", result.output, re.M), result.output
    sent_line = re.search(r"sent mention in C0TALK, ts (\S+) ", result.output)
    assert sent_line is not None, result.output
    ts = sent_line.group(1)
    # Slack's two events for one mention: app_mention and message, the same message.
    sent = [client.event(key)["payload"]["event"] for key in client.state()["events"]]
    assert sorted(e["type"] for e in sent) == ["app_mention", "message"]
    assert {(e["channel"], e["ts"], e["text"]) for e in sent} == {("C0TALK", ts, "<@U0BUIDL> hi there")}
    # The answer: the reaction and the threaded reply, as the simulator recorded them.
    rows = _rows(result.output)
    assert rows[0] == ["reacted", "C0TALK", ts, "-", ":eyes:"], rows
    assert rows[1][:2] == ["posted", "C0TALK"] and rows[1][3:] == [ts, "Hello!"] and len(rows) == 2, rows
    assert [m["text"] for m in client.state()["messages"]] == ["Hello!"]


def test_sim_message_in_a_channel(driven: str, shared_simulator: SimulatorProcess) -> None:
    shared_simulator.client.reset()
    result = sim(driven, "message", "deploy web", "--channel", "C0OPS", "--json")
    assert result.exit_code == 0, result.output
    followed = json.loads(result.stdout)
    assert followed["acked"] and [(r["what"], r["channel"], r["text"]) for r in followed["answer"]] == [
        ("posted", "C0OPS", "Deploying web")]
    [key] = shared_simulator.client.state()["events"]
    event = shared_simulator.client.event(key)["payload"]["event"]
    assert (event["type"], event["channel"], event["text"]) == ("message", "C0OPS", "deploy web")


def test_sim_command_shows_the_ack_payload_and_the_response(driven: str, shared_simulator: SimulatorProcess) -> None:
    shared_simulator.client.reset()
    result = sim(driven, "command", "/standup", "all green", "--channel", "C0TEAM")
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert ["acked with", "-", "-", "-", '{"text": "got it"}'] in rows, rows
    assert ["responded", "C0TEAM", "-", "-", "(ephemeral) Noted: all green"] in rows, rows
    refused = sim(driven, "command", "standup")
    assert refused.exit_code == 2 and "a slash command starts with /" in refused.stderr


def test_sim_action_on_a_message_of_the_bot(driven: str, shared_simulator: SimulatorProcess) -> None:
    client = shared_simulator.client
    client.reset()
    posted = json.loads(sim(driven, "mention", "go", "--json").stdout)["answer"]
    [message_ts] = [r["ts"] for r in posted if r["what"] == "posted"]
    result = sim(driven, "action", "yes", "--action-id", "approve", "--message-ts", message_ts)
    assert result.exit_code == 0, result.output
    # The answer: the response_url post, and the bot's message it replaced.
    assert [r[:3] + r[4:] for r in _rows(result.output)] == [
        ["edited", "C0GENERAL", message_ts, "approve=yes"],
        ["responded", "C0GENERAL", "-", "(ephemeral, replacing the original) approve=yes"]]
    shown = _rows(sim(driven, "shows").output)
    assert [r[0] for r in shown] == ["reacted", "edited", "responded"], shown
    as_json = json.loads(sim(driven, "shows", "--json").stdout)
    assert [r["what"] for r in as_json] == [r[0] for r in shown]


def test_sim_shows_when_the_bot_did_nothing(driven: str, shared_simulator: SimulatorProcess) -> None:
    shared_simulator.client.reset()
    result = sim(driven, "shows")
    assert result.exit_code == 0 and result.stdout == "the bot has done nothing yet (1 worker link open)\n"


@pytest.mark.parametrize("kind, link_after", [("drop", ("closing", "closed")), ("refresh", ("warned",)),
                                              ("blackhole", ("open", "closed"))])
def test_sim_fault_breaks_the_link_and_the_worker_replaces_it(driven: str, shared_simulator: SimulatorProcess,
                                                              kind: str, link_after: tuple[str, ...]) -> None:
    client = shared_simulator.client
    before = _open_links(client, 1)
    [target] = [c["id"] for c in before if c["state"] == "open"][-1:]
    result = sim(driven, "fault", kind, "--target", target)
    assert result.exit_code == 0 and result.output == f"{kind}: link {target}\n", result.output
    links = {c["id"]: c for c in json.loads(sim(driven, "links", "--json").stdout)}
    assert links[target]["state"] in link_after, links
    if kind == "blackhole":
        assert links[target]["blackholed"]
    # The worker opens a new link in its place.
    known = {c["id"] for c in before}
    client.wait_for(lambda s: any(c["state"] == "open" and c["id"] not in known for c in s["connections"]),
                    15, f"a new link after {kind}", source="state")


def test_sim_commands_say_in_one_line_when_no_simulator_listens(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (["shows"], ["mention", "hi"], ["fault", "drop"], ["env", "--wait", "0"]):
        result = cli(operator_env(tmp_path), "sim", *args, "--sim-url", closed, cwd=tmp_path)
        assert result.returncode == 1, args
        assert result.stderr.splitlines() == [(
            f"Error: no simulator answers at {closed}: start one with `buidl-edge simulate`, "
            "or name where it is with --sim-url or BUIDL_SIM_URL")], result.stderr


def test_sim_mention_with_no_worker_says_so_and_fails(simulator: SimulatorProcess) -> None:
    result = sim(simulator.base_url, "mention", "anyone?", "--wait", "0.5")
    assert result.exit_code == 1
    assert "no worker is connected: the simulator holds the event until one connects" in result.stdout
    assert result.stderr == "Error: not acked within 0.5s\n"
    fault = sim(simulator.base_url, "fault", "drop")
    assert fault.exit_code == 1 and "no open link matches --target: is a worker connected?" in fault.stderr

