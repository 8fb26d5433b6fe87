"""`buidl-edge demo`: a scripted conversation between the real stack and the bundled simulator.

Every scripted event that should get an answer is sent to a channel of its own,
so counting the simulator's posted messages per channel tells whether each was
handled exactly once.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buidl_edge.api.bot import GREETING, HELP_TEXT
from buidl_edge.sandbox.demo_app import DEPLOY_WORD, DEPLOYED, FAIL_WORD, REACTION, REVIEW_COMMAND, REVIEW_QUEUED
from buidl_edge.sandbox.harness import StackProcess, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from buidl_edge.store.sqlite import SqliteStore

Echo = Callable[[str], None]
BOT = "U0BUIDL"  # the simulator's bot user id, learnt by the worker through auth.test
DEMO_PROCESSES = 2
DEMO_CONNECTIONS = DEMO_PROCESSES  # one connection per process: redundancy, the default shape


@dataclass
class Script:
    client: SimulatorClient
    echo: Echo
    expected_replies: dict[str, str] = field(default_factory=dict)  # channel -> text
    keys: list[str] = field(default_factory=list)
    command_keys: list[str] = field(default_factory=list)
    mentions: list[tuple[str, str]] = field(default_factory=list)  # (channel, ts): each gets a reaction
    review_channels: list[str] = field(default_factory=list)
    channel_seq: int = 0

    def channel(self) -> str:
        self.channel_seq += 1
        return f"C0DEMO{self.channel_seq:03d}"

    def mention(self) -> str:
        """A mention arrives as `message` and `app_mention` with one ts; one answer is due."""
        channel = self.channel()
        ts = f"{time.time():.6f}"
        text = f"<@{BOT}> can you review my branch?"
        for kind in ("message", "app_mention"):
            self.keys += [e["key"] for e in self.client.inject(kind, channel=channel, text=text, ts=ts)]
        self.expected_replies[channel] = GREETING
        self.mentions.append((channel, ts))
        return channel

    def file_share(self, name: str) -> None:
        channel = self.channel()
        self.keys += [e["key"] for e in self.client.inject("file_shared", channel=channel, file_name=name)]
        self.expected_replies[channel] = f"File received: {name}"

    def deploy(self) -> str:
        """A slow job: the demo kills its worker mid-way."""
        channel = self.channel()
        self.keys += [e["key"] for e in self.client.inject("message", channel=channel, text=DEPLOY_WORD)]
        self.expected_replies[channel] = DEPLOYED
        return channel

    def failing_event(self) -> str:
        """Trips the demo app's deliberately failing handler; no answer is due. Returns its key."""
        channel = self.channel()
        keys = [e["key"] for e in self.client.inject("message", channel=channel, text=FAIL_WORD)]
        self.keys += keys
        return keys[0]

    def slash_command(self) -> None:
        keys = [e["key"] for e in self.client.inject("slash_command", command="/buidl", text="help")]
        self.keys += keys
        self.command_keys += keys

    def review(self) -> None:
        """Answered through the command's response_url, not the ack."""
        channel = self.channel()
        injected = self.client.inject("slash_command", command=REVIEW_COMMAND, channel=channel)
        self.keys += [e["key"] for e in injected]
        self.review_channels.append(channel)

    def wait_acked(self, timeout: float = 10.0) -> dict[str, Any]:
        wanted = set(self.keys)

        def all_acked(state: dict[str, Any]) -> bool:
            events = state["events"]
            return all(events.get(k, {}).get("acked") for k in wanted)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.client.state()
            if all_acked(state):
                return state
            time.sleep(0.05)
        raise DemoFailed(f"not every event was acked within {timeout:.0f}s")


class DemoFailed(Exception):
    pass


def run_demo(echo: Echo) -> int:
    started = time.monotonic()
    echo("buidl-edge demo: the real stack (supervisord + workers) against the bundled Slack simulator;"
         " no tokens, no network")
    with SimulatorProcess() as sim:
        sim.client.configure(warning_close_delay=2.0, refresh_close_delay=0.5, ping_interval=5.0)
        env = worker_env(sim.api_url, BUIDL_PROCESSES=DEMO_PROCESSES, BUIDL_CONNECTIONS=1,
                         BUIDL_APP="buidl_edge.sandbox.demo_app:app",
                         # Errors go to the simulator's Sentry endpoint, through the real sentry-sdk.
                         SENTRY_DSN=sim.sentry_dsn(), SENTRY_ENVIRONMENT="demo")
        with StackProcess(env) as worker:
            try:
                summary = _play(Script(sim.client, echo), echo, worker.state_dir)
            except (DemoFailed, AssertionError) as exc:
                echo(f"FAILED: {exc}")
                echo("worker log tail:\n" + worker.output()[-2000:])
                return 1
            code = worker.stop()
        summary["worker exit code"] = code
        summary["errors reported to Sentry"] = sim.client.sentry()["count"]
    summary["elapsed s"] = round(time.monotonic() - started, 1)
    return _report(summary, echo)


def _play(script: Script, echo: Echo, state_dir: Path) -> dict[str, Any]:
    client = script.client
    step = _stepper(echo)
    step(f"starting `buidl-edge run`: supervisord with {DEMO_PROCESSES} workers, one connection each")
    client.wait_for(lambda s: s["open_connections"] == DEMO_CONNECTIONS, 15, "the worker's connections")
    opened_at_start = client.summary()["connections_opened"]

    step("a user mentions @buidl (Slack sends it as message + app_mention)")
    script.mention()
    step("a user shares design.pdf")
    script.file_share("design.pdf")
    step("a user runs /buidl help (the answer rides on the ack)")
    script.slash_command()
    step(f"a user runs {REVIEW_COMMAND} (the answer goes to its response_url: ctx.respond);"
         f" each mention gets :{REACTION}: at once (ctx.client)")
    script.review()
    script.wait_acked()

    step("Slack redelivers the mention as if our ack were lost")
    mention_key = script.keys[1]
    client.fault("redeliver", key=mention_key)
    script.wait_acked()

    step(f"a handler fails (`{FAIL_WORD}`, on purpose) and Slack redelivers that event: one Sentry event")
    failing_key = script.failing_event()
    script.wait_acked()
    client.wait_for(lambda s: s["sentry_events"] >= 1, 10, "the handler error at the Sentry endpoint")
    client.fault("redeliver", key=failing_key)
    script.wait_acked()

    step("Slack warns one connection it will close: buidl-edge opens the next one first")
    client.fault("disconnect", reason="warning", target="oldest")
    for _ in range(3):
        script.mention()
        time.sleep(0.2)
    script.wait_acked()
    client.wait_for(lambda s: s["open_connections"] >= DEMO_CONNECTIONS, 10, "connections after the refresh")

    step("the network drops a connection abruptly")
    client.fault("drop", target="newest")
    for _ in range(3):
        script.mention()
    script.file_share("notes.txt")
    script.wait_acked(timeout=15)
    client.wait_for(lambda s: s["open_connections"] >= DEMO_CONNECTIONS, 15, "connections after the drop")

    step("a user asks for a deploy (a slow job); its worker is killed with SIGKILL mid-way")
    deploy_channel = script.deploy()
    script.wait_acked()
    victim = _kill_owner(state_dir, script.keys[-1], client)
    echo(f"      killed worker pid {victim}; another worker takes the job over")
    client.wait_for(lambda s: s["open_connections"] >= DEMO_CONNECTIONS, 20, "supervisord restarting the worker")

    step("waiting for replies to go out")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = client.state()
        if _replies_by_channel(state).keys() >= script.expected_replies.keys() \
                and len(state["reactions"]) >= len(script.mentions) and state["responses"]:
            break
        time.sleep(0.1)
    time.sleep(0.5)  # a late double answer would show up here
    summary = _summarise(script, client.state(), client.summary(), opened_at_start)
    recovered = SqliteStore(state_dir / "edge.sqlite3")
    try:
        summary["recovered after SIGKILL"] = sum(1 for r in recovered.inbox_list(limit=1000) if r["attempts"] > 1)
    finally:
        recovered.close()
    summary["deploy replies"] = len([m for m in client.state()["messages"] if m["channel"] == deploy_channel])
    return summary


def _kill_owner(state_dir: Path, key: str, client: SimulatorClient) -> int:
    """SIGKILL the worker whose inbox row for this event is still processing."""
    envelope_ids = set(client.state()["events"][key]["envelope_ids"])
    store = SqliteStore(state_dir / "edge.sqlite3")
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for row in store.inbox_list(state="processing", limit=100):
                if row["envelope_id"] in envelope_ids:
                    pid = int(str(row["owner"]).rsplit(":", 1)[1])
                    os.kill(pid, signal.SIGKILL)
                    return pid
            time.sleep(0.05)
    finally:
        store.close()
    raise DemoFailed("the deploy job never showed up as processing in the inbox")


def _stepper(echo: Echo) -> Callable[[str], None]:
    counter = iter(range(1, 100))

    def step(text: str) -> None:
        echo(f"  [{next(counter)}] {text}")
    return step


def _replies_by_channel(state: dict[str, Any]) -> dict[str, list[str]]:
    replies: dict[str, list[str]] = {}
    for message in state["messages"]:
        replies.setdefault(message["channel"], []).append(message.get("text") or "")
    return replies


def _summarise(script: Script, state: dict[str, Any], summary: dict[str, Any],
               opened_at_start: int) -> dict[str, Any]:
    events = state["events"]
    replies = _replies_by_channel(state)
    handled_once = sum(1 for ch, text in script.expected_replies.items() if replies.get(ch) == [text])
    handled_once += sum(1 for k in script.command_keys
                        if any(p and p.get("text") == HELP_TEXT for p in events[k].get("ack_payloads", [])))
    expected_answers = len(script.expected_replies) + len(script.command_keys)
    deliveries = sum(events[k]["deliveries"] for k in script.keys)
    unexpected = {ch: r for ch, r in replies.items() if ch not in script.expected_replies}
    latency = summary["ack_latency_ms"]
    reactions = [(r["channel"], r["ts"]) for r in state["reactions"] if r["name"] == REACTION]
    return {
        "events sent": len(script.keys),
        "events acked": sum(1 for k in script.keys if events[k]["acked"]),
        "answers due": expected_answers,
        "replies due": len(script.expected_replies),
        "handled once": handled_once,
        "duplicates suppressed": deliveries - len(script.keys),
        "replies posted": summary["messages_posted"],
        "unexpected replies": sum(len(r) for r in unexpected.values()),
        "mentions": len(script.mentions),
        "reactions via ctx.client": len(state["reactions"]),
        "mentions reacted to once": sum(1 for mention in script.mentions if reactions.count(mention) == 1),
        "answers via ctx.respond": sum(1 for r in state["responses"] if r["text"] == REVIEW_QUEUED
                                       and r["response_type"] == "in_channel"
                                       and r["channel"] in script.review_channels),
        "answers due via ctx.respond": len(script.review_channels),
        "reconnects": summary["connections_opened"] - opened_at_start,
        "ack latency p50 ms": latency.get("p50"),
        "ack latency p99 ms": latency.get("p99"),
        "longest gap with no connection s": summary["longest_no_connection_gap_s"],
    }


def _report(summary: dict[str, Any], echo: Echo) -> int:
    echo("")
    echo("summary")
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        echo(f"  {key.ljust(width)}  {value}")
    ok = (summary["events acked"] == summary["events sent"]
          and summary["handled once"] == summary["answers due"]
          and summary["replies posted"] == summary["replies due"]
          and summary["unexpected replies"] == 0
          and summary["reactions via ctx.client"] == summary["mentions reacted to once"] == summary["mentions"]
          and summary["answers via ctx.respond"] == summary["answers due via ctx.respond"]
          and summary["recovered after SIGKILL"] >= 1 and summary["deploy replies"] == 1
          and summary["errors reported to Sentry"] == 1
          and summary["worker exit code"] == 0)
    echo("")
    echo("PASS: every event acked and handled exactly once" if ok else "FAIL: see the summary above")
    return 0 if ok else 1
