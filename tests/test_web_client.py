"""ctx.client and ctx.respond in a real worker against the real simulator: one WebClient shared by
many handlers at once (greenlets and native threads), a 429 retried, response_url retries and
limits, nothing of a request body or token in a DEBUG + WEBSOCKET_DEBUG log, and slack_sdk
imported only on first use.

One worker (BUIDL_LOG_LEVEL=DEBUG, WEBSOCKET_DEBUG=1) serves the module; each test resets the
simulator's records first.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.sandbox.harness import WorkerProcess, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from support import Workers, app_folder

pytestmark = pytest.mark.timeout(60)

CLIENT_APP = textwrap.dedent('''
    import re
    import threading

    from gevent import monkey
    from slack_sdk.http_retry import RetryHandler

    from buidl_edge import EdgeApp
    from buidl_edge.api.respond import ResponseUrlError

    app = EdgeApp("client-test")
    native_ident = monkey.get_original("_thread", "get_ident")
    HUB_THREAD = native_ident()  # the app is loaded on the worker's hub thread
    seen = {"clients": set(), "in_flight": 0, "max_in_flight": 0, "handler_threads": [], "http_threads": []}


    class WhereHttpRuns(RetryHandler):
        """slack_sdk asks its retry handlers about every response, on the thread that made the call."""

        def _can_retry(self, *, state, request, response=None, error=None):
            seen["http_threads"].append("hub" if native_ident() == HUB_THREAD else "other")
            return False


    @app.command("/probe")
    def probe(payload, ctx):
        ctx.client.retry_handlers.append(WhereHttpRuns())
        return {"text": "probing"}


    @app.command("/report")
    def report(payload, ctx):
        return {"text": json.dumps({**seen, "clients": len(seen["clients"])})}


    @app.message(re.compile(r"^react (\\w+)"))
    def react(event, ctx):
        seen["clients"].add(id(ctx.client))
        seen["in_flight"] += 1
        seen["max_in_flight"] = max(seen["max_in_flight"], seen["in_flight"])
        try:
            ctx.client.reactions_add(channel=event["channel"], name=ctx.matches[0], timestamp=event["ts"])
        finally:
            seen["in_flight"] -= 1


    @app.message(re.compile(r"^threaded (\\w+)"), threaded=True)
    def react_from_a_thread(event, ctx):
        seen["handler_threads"].append("hub" if native_ident() == HUB_THREAD else "other")
        seen["clients"].add(id(ctx.client))
        ctx.client.reactions_add(channel=event["channel"], name=ctx.matches[0], timestamp=event["ts"])


    @app.message(re.compile(r"^secret (\\S+)"))
    def post_a_secret(event, ctx):
        ctx.logger.debug("posting what the user said, reversed")
        ctx.client.chat_postMessage(channel=event["channel"], text=ctx.matches[0][::-1])


    @app.command("/answers", threaded=True)
    def answers(payload, ctx):
        """Six answers to one response_url: Slack takes five."""
        for n in range(6):
            try:
                ctx.respond(f"answer {n}", response_type="in_channel")
            except ResponseUrlError as exc:
                ctx.say(f"answer {n} refused: {type(exc).__name__}: {exc}")
                return
''').replace("import re\n", "import json\nimport re\n", 1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimulatorProcess, WorkerProcess]]:
    folder = app_folder(tmp_path_factory, "client_test_app", CLIENT_APP)
    with SimulatorProcess() as sim:
        sim.client.configure(post_rate=100.0, post_burst=100)
        workers = Workers(sim, folder, folder, BUIDL_APP="client_test_app:app", BUIDL_LOG_LEVEL="DEBUG",
                          WEBSOCKET_DEBUG="1", BUIDL_POST_RATE=100, BUIDL_POST_BURST=100)
        try:
            worker = workers.start()
            command(sim.client, "/probe")
            yield sim, worker
        finally:
            workers.stop_all()


@pytest.fixture
def sim(stack: tuple[SimulatorProcess, WorkerProcess]) -> SimulatorClient:
    client = stack[0].client
    client.reset()
    client.configure(method_ratelimits={}, respond_failures=0)
    return client


def command(sim: SimulatorClient, name: str, text: str = "") -> dict[str, Any]:
    """Run a slash command; returns the payload its handler put on the ack."""
    [sent] = sim.inject("slash_command", command=name, text=text, channel="C0CMD")
    event = sim.wait_for(lambda s: s["events"][sent["key"]]["acked"], 10, f"{name} acked",
                         source="state")["events"][sent["key"]]
    return event["ack_payloads"][0] if event["ack_payloads"] else {}


def test_one_client_serves_many_handlers_at_once_greenlets_and_threads(sim: SimulatorClient) -> None:
    sim.inject("message", channel="C0LOAD", text="react eyes", count=60)
    sim.inject("message", channel="C0LOAD", text="threaded rocket", count=20)
    sim.wait_for(lambda s: s["reactions_added"] == 80, 20, "80 reactions")
    reactions = sim.state()["reactions"]
    assert sorted({r["name"] for r in reactions}) == ["eyes", "rocket"]
    assert len({r["ts"] for r in reactions}) == 80  # one per message, none lost or doubled
    seen = json.loads(command(sim, "/report")["text"])
    assert seen["clients"] == 1  # the same WebClient everywhere
    assert seen["max_in_flight"] > 1  # greenlets really were inside the client together
    assert seen["handler_threads"] == ["other"] * 20  # threaded handlers ran off the hub thread...
    assert set(seen["http_threads"]) == {"hub"}  # ...and their HTTP, like everyone's, on the hub
    assert len(seen["http_threads"]) >= 80


def test_a_429_is_retried_after_retry_after(sim: SimulatorClient) -> None:
    sim.configure(method_ratelimits={"reactions.add": {"count": 2, "retry_after": 0}})
    sim.inject("message", channel="C0BUSY", text="react hourglass")
    summary = sim.wait_for(lambda s: s["reactions_added"] == 1, 15, "the reaction after two 429s")
    assert summary["method_429s"] == {"reactions.add": 2} and summary["method_calls"]["reactions.add"] == 1


def test_respond_is_retried_on_a_5xx_and_refused_after_five_uses(sim: SimulatorClient) -> None:
    sim.configure(respond_failures=1)  # the first post answers 500: retried, not lost
    command(sim, "/answers")
    state = sim.wait_for(lambda s: s["messages"], 15, "the handler's report", source="state")
    assert [(r["text"], r["response_type"], r["use"]) for r in state["responses"]] == \
        [(f"answer {n}", "in_channel", n + 1) for n in range(5)]
    [report] = [m["text"] for m in state["messages"]]
    assert report.startswith("answer 5 refused: ResponseUrlExpired: response_url already used 5 times")
    summary = sim.summary()
    assert (summary["respond_500s"], summary["respond_expired"]) == (1, 0)  # refused before a sixth post


def test_debug_logs_carry_no_request_body_and_no_token(stack: tuple[SimulatorProcess, WorkerProcess],
                                                       sim: SimulatorClient) -> None:
    worker = stack[1]
    secret = "s3cr3t-" + os.urandom(6).hex()
    sim.inject("message", channel="C0SECRET", text=f"secret {secret}")
    sim.wait_for(lambda s: s["messages_posted"] == 1, 10, "the handler's post")
    [posted] = sim.state()["messages"]
    assert posted["text"] == secret[::-1]  # only ever in the client's request (and Slack's answer)
    log = worker.output()
    assert secret in log  # the frame trace is on: the event's own text is there...
    assert secret[::-1] not in log  # ...but not the body the client sent, nor the answer echoing it
    assert "logger=buidl_edge.frames" in log and "posting what the user said, reversed" in log  # DEBUG is on
    for token in (worker.env["SLACK_BOT_TOKEN"], worker.env["SLACK_APP_TOKEN"]):
        assert token not in log and token.partition("-")[2] not in log


def test_slack_sdk_is_imported_only_when_the_client_is_first_used(simulator: SimulatorProcess) -> None:
    script = textwrap.dedent('''
        import sys
        from buidl_edge.runtime.gevent_patch import patch
        patch()
        import buidl_edge.runtime.worker
        from buidl_edge.examples.handlers import app
        before = "slack_sdk" in sys.modules
        user = app.client.auth_test()["user_id"]  # outside a worker: the bot token from the environment
        print(before, "slack_sdk" in sys.modules, user, app.client is app.client)
    ''')
    env = worker_env(simulator.api_url)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "U0BUIDL", "True"]


def test_threaded_handler_app_client_is_built_once(tmp_path: Path) -> None:
    """Many native threads asking app.client at once get one client, built on the hub."""
    script = textwrap.dedent('''
        import threading
        from buidl_edge.runtime.gevent_patch import patch
        patch()
        import gevent
        from buidl_edge.api.app import EdgeApp
        from buidl_edge.config import Secret
        from buidl_edge.dispatch.handler_threads import HandlerThreads, HubCall
        from buidl_edge.api.webclient import client_factory

        hub_call = HubCall()
        app = EdgeApp("t")
        token = Secret("xoxb-" + "1" * 24)
        app.bind_client(client_factory("http://127.0.0.1:9/api/", token, 5.0, hub_call), hub_call)
        threads = HandlerThreads(8)
        jobs = [gevent.spawn(threads.run, lambda: id(app.client)) for _ in range(32)]
        gevent.joinall(jobs, raise_error=True)
        print(len({job.value for job in jobs}), id(app.client) == jobs[0].value)
    ''')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BUIDL_"))}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True"]
