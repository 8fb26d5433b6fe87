"""README's "Writing handlers" app (buidl_edge/examples/handlers.py), run in a real worker
against the real simulator: a reaction and an edit through ctx.client, ctx.respond in both
forms, a regex with groups, the bot's own and other bots' messages left out, and an AI
assistant thread's prompts and status set and cleared.

README shows the module whole; the first test keeps the two the same.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.examples import handlers
from buidl_edge.sandbox.harness import WorkerProcess, wait_until, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
BOT = "U0BUIDL"  # the simulator's bot user
README_MARKER = "<!-- buidl_edge/examples/handlers.py, whole -->"


def test_readme_shows_the_example_app_line_for_line() -> None:
    readme = (ROOT / "README.md").read_text()
    after = readme.split(README_MARKER, 1)[1]
    shown = re.match(r"\s*```python\n(.*?)```", after, re.S)
    assert shown, "README's example block must follow its marker"
    assert shown.group(1) == Path(handlers.__file__).read_text()


def test_the_example_app_against_the_simulator(simulator: SimulatorProcess, tmp_path: Path) -> None:
    sim = simulator.client
    env = worker_env(simulator.api_url, BUIDL_APP="buidl_edge.examples.handlers:app",
                     BUIDL_STATE_DIR=tmp_path / "state")
    with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
        sim.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's connection")
        mention_ts = "1700000001.000100"
        for kind in ("message", "app_mention"):  # one mention, as Slack sends it
            sim.inject(kind, channel="C0TALK", text=f"<@{BOT}> hi", ts=mention_ts)
        sim.inject("message", channel="C0OPS", text="deploy api")
        sim.inject("message", channel="C0OPS", text="deploy web", subtype="bot_message", bot_id="B0CI")
        sim.inject("message", channel="C0OPS", text="deploy self", user=BOT, bot_id="B0BUIDL")
        sim.inject("message", channel="C0OPS", text="deploy edited", subtype="message_changed")
        sim.inject("slash_command", command="/standup", channel="C0TEAM", user="U0ALICE")
        sim.inject("assistant_thread_started", channel="D0ASK", thread_ts="1700000002.000100")
        for thread, text in (("1700000002.000100", "what broke?"), ("1700000003.000100", "never mind")):
            sim.inject("message", channel="D0ASK", channel_type="im", thread_ts=thread, text=text)

        def settled() -> dict[str, Any] | None:
            state = sim.state()
            done = (len(state["messages"]) >= 3 and len(state["responses"]) >= 2 and state["reactions"]
                    and state["assistant"]["prompts"] and len(state["assistant"]["statuses"]) >= 4
                    and any(m.get("edits") for m in state["messages"]))
            return state if done else None

        state = wait_until(settled, 20, "the example app's work")
        assert sim.summary()["unacked_in_flight"] == 0
        code = worker.stop()
        log = worker.output()
    state = sim.state()  # nothing more came after the worker stopped

    # The mention: one reaction, one threaded "Hello!" (message + app_mention answered once).
    assert [(r["channel"], r["ts"], r["name"]) for r in state["reactions"]] == [("C0TALK", mention_ts, "eyes")]
    posted = {(m["channel"], m["text"], m["thread_ts"]) for m in state["messages"]}
    # `deploy (\w+)`: the group reached the handler; its post was edited in place.
    # Only the person's "deploy api": not the other bot's, the bot's own or the edit.
    assert posted == {("C0TALK", "Hello!", mention_ts), ("C0OPS", "Deployed api.", None),
                      ("D0ASK", "You asked: what broke?", "1700000002.000100")}
    [deployed] = [m for m in state["messages"] if m["channel"] == "C0OPS"]
    assert deployed["edits"] == 1
    # /standup answered through its response_url, privately and then in the channel.
    assert [(r["response_type"], r["text"], r["channel"]) for r in state["responses"]] == [
        ("ephemeral", "Noted. Only you can see this.", "C0TEAM"),
        ("in_channel", "<@U0ALICE> posted a standup.", "C0TEAM")]
    # The assistant thread: prompts offered; "is thinking…" shown, then cleared by the reply
    # in one thread and by ctx.clear_status() in the other.
    [prompts] = state["assistant"]["prompts"]
    assert (prompts["channel_id"], prompts["thread_ts"]) == ("D0ASK", "1700000002.000100")
    assert prompts["prompts"] == [{"title": "Review", "message": "Review my branch"}]
    by_thread: dict[str, list[tuple[str, str]]] = {}
    for change in state["assistant"]["statuses"]:
        by_thread.setdefault(change["thread_ts"], []).append((change["status"], change["by"]))
    assert by_thread == {"1700000002.000100": [("is thinking…", "set_status"), ("", "message")],
                         "1700000003.000100": [("is thinking…", "set_status"), ("", "set_status")]}
    assert code == 0, log
    assert "Traceback" not in log and "level=error" not in log, log
