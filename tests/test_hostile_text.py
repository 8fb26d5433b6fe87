"""Valid JSON that is not valid UTF-8 text: a lone UTF-16 surrogate escape ("\\udc00", what a broken
emoji leaves) in an envelope id, an event id or a message text.

End to end, through the real wire: the simulator's json.dumps escapes the surrogate as Slack would,
a real worker with the default SQLite store claims, acks, handles and finishes every envelope of
the burst, the hostile ones included, and posts every reply. Then the reply rule (message.py)
on its own.
"""
from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.api.message import validate_reply
from buidl_edge.sandbox.harness import WorkerProcess, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from buidl_edge.store.base import Reply
from buidl_edge.store.sqlite import SqliteStore
from support import wait_idle

pytestmark = pytest.mark.timeout(90)

LONE = "\udc00"  # a low surrogate with no high one before it: json.loads makes it, UTF-8 cannot hold it

ECHO_APP = textwrap.dedent('''
    from buidl_edge import EdgeApp

    app = EdgeApp("echo")

    @app.event("message")
    def echo(event, ctx):
        ctx.say("seen: " + event.get("text", ""))
''')


@pytest.fixture
def sim(fresh_simulator: SimulatorProcess) -> SimulatorClient:
    client = fresh_simulator.client
    client.configure(post_rate=100.0, post_burst=100)  # replies are counted here, not paced
    return client


def start_echo_worker(sim_process: SimulatorProcess, tmp_path: Path) -> WorkerProcess:
    (tmp_path / "echo_app.py").write_text(ECHO_APP)
    env = worker_env(sim_process.api_url, BUIDL_STATE_DIR=tmp_path / "state", BUIDL_APP="echo_app:app",
                     BUIDL_POST_RATE=100, BUIDL_POST_BURST=100, PYTHONPATH=tmp_path)
    assert "BUIDL_STORE_URL" not in env  # the default store: SQLite in the state dir
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log")
    worker.start()
    return worker


def test_a_lone_surrogate_in_an_id_or_a_text_takes_no_envelope_of_its_burst_down(
        sim: SimulatorClient, fresh_simulator: SimulatorProcess, tmp_path: Path) -> None:
    worker = start_echo_worker(fresh_simulator, tmp_path)
    bad_envelope_id = f"env-{LONE}-bad"
    bad_event_id = f"Ev{LONE}BAD"
    try:
        sim.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's connection")
        injected: list[dict[str, Any]] = []
        # Each call sends its envelopes back to back; the hostile one goes first, so the good
        # ones arrive while its claim is being committed, into the same or the next group commit.
        injected += sim.inject("message", channel="C0BURST1", text="good", count=15, envelope_id=bad_envelope_id)
        injected += sim.inject("message", channel="C0BURST2", text="good", count=15, event_id=bad_event_id)
        injected += sim.inject("message", channel="C0BURST3", text=f"broken {LONE} emoji")
        injected += sim.inject("message", channel="C0BURST3", text="good", count=14)
        assert injected[0]["envelope_id"] == bad_envelope_id and injected[15]["key"] == bad_event_id
        keys = [e["key"] for e in injected]
        assert len(set(keys)) == 45

        state = sim.wait_for(lambda s: all(s["events"].get(k, {}).get("acked") for k in keys), 10,
                             "every envelope of the burst acked", source="state")
        # In time, and with the exact envelope id: an ack with an altered id would be unknown.
        summary = sim.summary()
        assert summary["late_acks"] == 0 and summary["missed_deadlines"] == 0, summary
        assert summary["unknown_acks"] == 0 and summary["redeliveries"] == 0, summary
        assert all(state["events"][k]["deliveries"] == 1 for k in keys)

        sim.wait_for(lambda s: len(s["messages"]) >= 45, 15, "a reply to every envelope", source="state")
        state = wait_idle(sim, worker)  # a doubled answer would be in by then
    finally:
        assert worker.stop() == 0, worker.output()[-4000:]
        print(worker.output()[-6000:])

    posted = Counter((m["channel"], m["text"]) for m in state["messages"])
    assert posted == {("C0BURST1", "seen: good"): 15, ("C0BURST2", "seen: good"): 15,
                      ("C0BURST3", "seen: good"): 14, ("C0BURST3", "seen: broken \ufffd emoji"): 1}

    store = SqliteStore(tmp_path / "state" / "edge.sqlite3", checkpoint_interval_s=None)
    try:
        rows = store.inbox_list(limit=1000)
        assert len(rows) == 45 and {r["state"] for r in rows} == {"done"}, Counter(r["state"] for r in rows)
        bad_row = store.inbox_row(bad_envelope_id)  # kept exactly, surrogate and all
        assert bad_row is not None and bad_row["envelope_id"] == bad_envelope_id and bad_row["state"] == "done"
        assert bad_envelope_id in {r["envelope_id"] for r in rows}
    finally:
        store.close()
    output = worker.output()
    assert "Logging error" not in output and "Traceback" not in output, output[-4000:]
    assert "level=error" not in output, output[-4000:]


# -- the reply rule --------------------------------------------------------------------------------


def test_a_reply_echoing_a_lone_surrogate_carries_a_replacement_character_instead() -> None:
    reply = validate_reply(Reply("C0ECHO", f"you said {LONE}!", blocks=[
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{LONE}*"}}]))
    assert reply.text == "you said \ufffd!"
    assert reply.blocks == [{"type": "section", "text": {"type": "mrkdwn", "text": "*\ufffd*"}}]
    reply.text.encode("utf-8")  # what Slack's Web API takes


def test_a_reply_keeps_a_valid_surrogate_pair_and_other_text_as_it_is() -> None:
    pair = "\ud83d\ude00"  # two code points that together are one emoji (😀)
    assert validate_reply(Reply("C0ECHO", f"smile {pair}")).text == "smile \U0001F600"
    text = "plain, ünïcödé and 😀"
    reply = Reply("C0ECHO", text, blocks=[{"type": "divider"}])
    assert validate_reply(reply) is reply  # nothing to change: the very same reply
