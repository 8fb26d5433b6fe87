#!/usr/bin/env python
"""Fault soak: `buidl-edge run` (2 processes x 2 connections) against the simulator, under fire.

    .venv/bin/python scripts/soak.py                  # 10,000 events, ~2 min
    .venv/bin/python scripts/soak.py --events 1000 --rate 100 --scale 0.2   # what the test suite runs

The simulator sends `--events` plain `message` events at `--rate`/s, each in a
channel of its own. The soak app (scripts/edge_apps.py:soak) appends one line
per handler run to a record file and replies once into the event's channel.
Meanwhile faults go off at random times (seeded, `--seed`), each kind with a
count (scaled by `--scale`):

  kill          SIGKILL of a random worker, all of them up 3 s and the last kill 4 s ago
                (supervisord restarts it)
  drop          abrupt server-side drop of a link (no close frame)
  silence       the server stops reading and writing a link for longer than the
                stale timeout (BUIDL_PING_INTERVAL=1, BUIDL_STALE_TIMEOUT=3)
  disconnect    `warning` / `refresh_requested`, alternately, to a link not yet warned
  redeliver     a duplicate of an already sent event, new envelope id (Slack's retry)
  ack_delay     the ack deadline drops to 5 ms for 1 s: most envelopes sent then are
                "late", and Slack-style retries follow while their acks are on the way
  bad_frame     a malformed text frame on a link
  post_storm    chat.postMessage answers 429 (Retry-After 1) to every call for 2.5 s
  open_storm    apps.connections.open answers 429 three times, then a link is dropped
                so that a slot has to reopen through them

and the hostile inputs of issue 10 (scripts/_soak_hostile.py says exactly what each is):

  surrogate     an event with a lone surrogate in its event id, envelope id or text
  long_text     a 40,000-character event, half of them failing a handler with the text
  deep_frame    a frame nested 100,000 levels deep, to every link
  pool_full     a burst of 64 slow handlers (BUIDL_HANDLER_CONCURRENCY=16), then slash
                commands, which must be acked at once with the pool full
  blackhole     a link half-open for good (no `seconds`): the stack must replace it

and the store under pressure of issue 21 (scripts/_soak_store.py):

  write_lock    another process holds the SQLite file's write lock for 5 s
  disk_full     the state dir's filesystem (a tmpfs mounted for the soak: root only) full for 3 s

The whole stack runs with WEBSOCKET_DEBUG=1 (`--no-trace` turns it off): the frame
trace is process-wide, and a 40,000-character frame traced on the hub while other
envelopes wait is the case issue 10 found; tracing everything costs the soak some
speed, which only makes it harder. Handler errors go to the simulator's Sentry.

At the end it reports, and exits 1 if any of these is not zero:

  lost             events no handler ever recorded
  handled twice    events the handler recorded more than once
  acks missed      events the simulator gave up on (never acked after its retries)
  replies lost     events whose channel got no reply
  replies doubled  events whose channel got more than one reply
  tokens leaked    occurrences of either token (whole, or without its prefix) or the
                   Sentry DSN key in any output (stack log, simulator log, record,
                   state directory)
  slash acks late  slash commands acked more than 3 s after they were sent
  blackholes not replaced  blackholed links the stack still held open at the end
  logging errors   "--- Logging error ---" in the stack log (a line logging could not write)
  late acks        acks past Slack's 3 s whose envelope was sent outside the windows of the faults
                   that delay acks on purpose (a killed worker, a dropped, silenced or warned link,
                   the ack deadline cut to 5 ms, …); the store faults' windows are not among them

"Handled twice" and "replies doubled" are split by cause:

  re-run after SIGKILL     the process running the handler was SIGKILLed after the
                           handler's effect (its record line) but before the inbox
                           row was marked done; a live worker's sweeper ran it again.
  posted again after SIGKILL  a reply's first post landed at most 5 s before a kill
                           and the next one after it: a row a dead worker left in
                           flight, re-sent although the outbox first looks for its
                           earlier post in the channel (expected: none).
  unexplained              no SIGKILL explains it: a dedup or outbox bug.

`--tolerate-kill-window` tolerates only handler re-runs after a SIGKILL, the
inbox's at-least-once window (the test suite's kill test uses it to pin down
that SIGKILL is their only cause); the default fails on every double.

Every loop here is bounded in count and time; all traffic stays on loopback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # support.wait_idle: the tests' one "nothing left to happen"

from _soak_hostile import (  # noqa: E402
    BLACKHOLE_SETTLE_S,
    HANDLER_CONCURRENCY,
    PROCESSES,
    STALE_TIMEOUT_S,
    HostileFaults,
    as_posted,
    evidence,
    report_rows,
)
from _soak_store import DISK_SIZE, STORE_SETTLE_S, StoreFaults, late_acks_outside  # noqa: E402
from buidl_edge.sandbox.harness import (  # noqa: E402
    StackProcess,
    fake_tokens,
    small_filesystem,
    worker_env,
)
from buidl_edge.sandbox.simulator.client import SimulatorError, SimulatorProcess  # noqa: E402
from support import wait_idle  # noqa: E402

CHANNEL_PREFIX = "CSOAK"
FAULT_COUNTS = {  # for 10,000 events; --scale multiplies (at least 1 of each)
    "kill": 8, "drop": 8, "silence": 4, "disconnect": 16, "redeliver": 60,
    "ack_delay": 4, "bad_frame": 40, "post_storm": 3, "open_storm": 3,
    "surrogate": 40, "long_text": 20, "deep_frame": 10, "pool_full": 3, "blackhole": 4,
    "write_lock": 4, "disk_full": 2,
}
KILL_MIN_UPTIME_S = 3.0
KILL_SPACING_S = 4.0  # as planned by `schedule`, also for kills that were held back and go together
SILENCE_S = 4.0
ACK_DELAY_S = 1.0
POST_STORM_S = 2.5
WARNING_CLOSE_S = 2.0
# Faults that end or stall links, and how long after one a link may still swallow an envelope
# or its ack: a slash command (never redelivered) waits that long, and none fires meanwhile.
LINK_SETTLE_S = {"kill": 1.0, "drop": 1.0, "open_storm": 1.0, "silence": SILENCE_S + 0.5,
                 "disconnect": WARNING_CLOSE_S + 1.0, "blackhole": BLACKHOLE_SETTLE_S}
# Faults that delay acks on purpose, and for how long after one fired an ack may still be late.
ACK_DELAYING_S = {**LINK_SETTLE_S, "ack_delay": ACK_DELAY_S, "deep_frame": 1.0}
SLACK_ACK_DEADLINE_MS = 3000.0
LATE_ACK_MARGIN_S = 4.0


@dataclass
class SoakConfig:
    events: int = 10_000
    rate: float = 150.0
    scale: float = 1.0
    seed: int = 0
    tolerate_kill_window: bool = False
    trace: bool = True
    drain_timeout: float = 120.0
    counts: dict[str, int] = field(default_factory=dict)

    def fault_counts(self) -> dict[str, int]:
        base = {k: max(1, round(v * self.scale)) for k, v in FAULT_COUNTS.items()}
        base.update(self.counts)
        return base


class Faults(HostileFaults, StoreFaults):
    """Applies one fault of a kind; counts what really happened."""

    def __init__(self, sim: SimulatorProcess, stack: StackProcess, rng: random.Random,
                 disk: Path | None = None) -> None:
        self.sim = sim
        self.client = sim.client
        self.stack = stack
        self.rng = rng
        self.injected: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.killed_pids: set[int] = set()
        self.kill_times: list[float] = []  # wall clock, like the simulator's received_at
        self.restore_at: list[tuple[float, dict[str, Any]]] = []
        self.later: list[tuple[float, Callable[[], None]]] = []  # follow-ups of a fault, in time order
        self.link_faults: list[tuple[float, str]] = []
        # Slash commands in flight (pool_full) wait for these to settle, and hold them meanwhile: a
        # store fault would have the commands acked undecided, not through a full pool.
        self.link_settle_s = {**LINK_SETTLE_S, **STORE_SETTLE_S}
        self.hold_links_until = 0.0  # slash commands in flight: link faults wait
        self.later_failed = 0
        self.fired: list[tuple[float, str]] = []  # (unix time, kind): to lay over the stack log
        self.disconnects = 0
        self.init_hostile()
        self.init_store_faults(disk)

    def apply(self, kind: str) -> bool:
        held = kind in self.link_settle_s and time.monotonic() < self.hold_links_until
        try:
            done = not held and getattr(self, f"_{kind}")()
        except SimulatorError:
            done = False
        if done and kind in self.link_settle_s:
            self.link_faults.append((time.monotonic(), kind))
        if done:
            self.fired.append((round(time.time(), 3), kind))
        (self.injected if done else self.failed)[kind] += 1
        return done

    def run_later(self) -> None:
        """Run the follow-ups that are due, in time order."""
        now = time.monotonic()
        due = sorted((item for item in self.later if item[0] <= now), key=lambda item: item[0])
        self.later = [item for item in self.later if item[0] > now]
        for _, action in due:
            try:
                action()
            except SimulatorError:
                self.later_failed += 1

    def drop_later(self) -> None:
        """The run is over: follow-ups still waiting never happen (counted)."""
        self.later_failed += len(self.later)
        self.later = []

    def _kill(self) -> bool:
        from buidl_edge.ops.supervise import SupervisorDown, supervisor_processes

        # supervisord reports a worker killed a moment ago as RUNNING still: only the clock can
        # keep a second kill from taking down the other worker too.
        if self.kill_times and time.time() - self.kill_times[-1] < KILL_SPACING_S:
            return False
        try:
            procs = supervisor_processes(self.stack.state_dir)
        except SupervisorDown:
            return False
        running = [p for p in procs if p.state == "RUNNING"]
        ripe = [p for p in running if p.uptime_s >= KILL_MIN_UPTIME_S and p.pid > 0]
        # Keep one worker serving, and let restarts settle: every worker up 3 s, not just the victim
        # (a fault held back, then let go, must not kill the one worker that is just starting).
        if len(running) < 2 or len(ripe) < len(running):
            return False
        victim = self.rng.choice(ripe)
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.killed_pids.add(victim.pid)
        self.kill_times.append(time.time())
        return True

    def _drop(self) -> bool:
        self.client.fault("drop", target=self.rng.choice(["oldest", "newest"]))
        return True

    def _silence(self) -> bool:
        self.client.fault("silence", seconds=SILENCE_S, target=self.rng.choice(["oldest", "newest"]))
        return True

    def _disconnect(self) -> bool:
        reason = ("warning", "refresh_requested")[self.disconnects % 2]
        self.client.fault("disconnect", reason=reason, target="oldest_open")
        self.disconnects += 1
        return True

    def _redeliver(self) -> bool:
        keys = self.client.load_status().get("sample_keys") or []
        if not keys:
            return False
        self.client.fault("redeliver", key=self.rng.choice(keys))
        return True

    def _ack_delay(self) -> bool:
        self.client.configure(ack_deadline=0.005)
        self.restore_at.append((time.monotonic() + ACK_DELAY_S, {"ack_deadline": 3.0}))
        return True

    def _bad_frame(self) -> bool:
        text = self.rng.choice(["not json {", "[1, 2, 3]", '{"type": "events_api"}', '{"type": "mystery"}'])
        self.client.fault("bad_frame", text=text, target=self.rng.choice(["oldest", "newest"]))
        return True

    def _post_storm(self) -> bool:
        self.client.configure(post_burst=0)
        self.restore_at.append((time.monotonic() + POST_STORM_S, {"post_burst": 3}))
        return True

    def _open_storm(self) -> bool:
        self.client.configure(open_ratelimit={"count": 3, "retry_after": 1})
        self.client.fault("drop", target="newest")
        return True

    def restore_due(self, force: bool = False) -> None:
        now = time.monotonic()
        keep = []
        for at, knobs in self.restore_at:
            if force or at <= now:
                self.client.configure(**knobs)
            else:
                keep.append((at, knobs))
        self.restore_at = keep


def schedule(counts: dict[str, int], span_s: float, rng: random.Random) -> list[tuple[float, str]]:
    """Random times in (1 s, span - 1 s); kills at least 4 s apart so restarts settle."""
    plan: list[tuple[float, str]] = []
    lo, hi = 1.0, max(2.0, span_s - 1.0)
    for kind, count in counts.items():
        if kind == "kill":
            slots = max(1, int((hi - lo) // 4))
            picks = sorted(rng.sample(range(slots), min(count, slots)))
            plan += [(lo + (hi - lo) * (p + rng.random() * 0.5) / slots, kind) for p in picks]
        else:
            plan += [(rng.uniform(lo, hi), kind) for _ in range(count)]
    return sorted(plan)


def read_record(path: Path) -> dict[str, list[tuple[str, int, float]]]:
    """key -> [(envelope_id, pid, unix time recorded)] in file order (scripts/edge_apps.py writes it)."""
    runs: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
    if not path.exists():
        return runs
    for line in path.read_text().splitlines():
        try:
            run = json.loads(line)
        except ValueError:  # a line being written as we read
            continue
        runs[run["key"]].append((run["envelope_id"], int(run["pid"]), float(run["at"])))
    return runs


def scan_tokens(paths: list[Path], tokens: dict[str, str]) -> dict[str, int]:
    found: Counter[str] = Counter()
    values = {name: value.encode() for name, value in tokens.items()}
    for path in paths:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for f in files:
            try:
                data = f.read_bytes()
            except OSError:
                continue
            for name, value in values.items():
                hits = data.count(value)
                if hits:
                    found[f"{name} in {f.name}"] += hits
    return dict(found)


def run_soak(cfg: SoakConfig, echo: Any = print) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    counts = cfg.fault_counts()
    span = cfg.events / cfg.rate
    plan = schedule(counts, span, rng)
    work = Path(tempfile.mkdtemp(prefix="buidl-soak-"))
    record = work / "handled.log"
    tokens = fake_tokens()
    started = time.monotonic()
    report: dict[str, Any] = {"config": {**cfg.__dict__, "fault_counts_planned": counts}, "work_dir": str(work)}
    state_dir = work / "state"
    # The mount outlives the stack (entered first, left last): the disk_full fault fills it.
    with contextlib.ExitStack() as mounts, SimulatorProcess() as sim:
        refused = mounts.enter_context(small_filesystem(state_dir, DISK_SIZE))
        if refused:
            echo(f"soak: no disk_full faults: {refused}")
        client = sim.client
        client.configure(ping_interval=1.0, warning_close_delay=WARNING_CLOSE_S, refresh_close_delay=1.0)
        dsn = sim.sentry_dsn()
        secrets = {**tokens, **{f"{name} body": value.partition("-")[2] for name, value in tokens.items()},
                   "SENTRY_DSN key": dsn.split("//", 1)[1].split("@", 1)[0]}
        extra: dict[str, Any] = {
            "BUIDL_STATE_DIR": str(state_dir), "BUIDL_PROCESSES": PROCESSES, "BUIDL_CONNECTIONS": 2,
            "BUIDL_APP": "edge_apps:soak",
            "BUIDL_SOAK_RECORD": str(record), "BUIDL_PING_INTERVAL": 1, "BUIDL_STALE_TIMEOUT": STALE_TIMEOUT_S,
            "BUIDL_HANDLER_CONCURRENCY": HANDLER_CONCURRENCY, "BUIDL_LOG_LEVEL": "INFO", "SENTRY_DSN": dsn,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        if cfg.trace:
            extra["WEBSOCKET_DEBUG"] = "1"
        env = worker_env(sim.api_url, tokens, **extra)
        stack = StackProcess(env, log_path=work / "stack.log")
        stack.start()
        faults = Faults(sim, stack, rng, None if refused else state_dir)
        try:
            client.wait_for(lambda s: s["open_connections"] >= 4, 40, "the stack's 4 connections")
            echo(f"soak: {cfg.events} events at {cfg.rate:g}/s (~{span:.0f}s) with faults {counts}")
            client.load("rate", rate=cfg.rate, count=cfg.events, channel_prefix=CHANNEL_PREFIX, text="soak",
                        timeout=span + cfg.drain_timeout + 60)
            load_started = time.monotonic()
            pending = list(plan)
            deferred: list[tuple[float, str]] = []
            last_note = 0.0
            # Fire the plan; a fault that could not go (no worker ripe, no link) is retried a little later.
            injected = 0
            while pending or deferred or faults.restore_at or faults.later or injected < cfg.events:
                now = time.monotonic() - load_started
                if now > span + 30:
                    break
                if not (pending or deferred or faults.restore_at or faults.later) or now - last_note >= 10:
                    injected = client.load_status(brief=True)["injected"]
                faults.restore_due()
                faults.run_later()
                for item in [p for p in pending if p[0] <= now]:
                    pending.remove(item)
                    if not faults.apply(item[1]) and item[0] < span + 10:
                        faults.failed[item[1]] -= 1  # not a failure yet: try again in a second
                        deferred.append((now + 1.0, item[1]))
                for item in [d for d in deferred if d[0] <= now]:
                    deferred.remove(item)
                    pending.append(item)
                if now - last_note >= 10:
                    last_note = now
                    st = client.load_status(brief=True)
                    echo(f"  t={now:5.1f}s injected {st['injected']}, acked {st['acked']}, "
                         f"faults so far {dict(faults.injected)}")
                time.sleep(0.05 if pending or deferred or faults.restore_at or faults.later else 0.2)
            faults.restore_due(force=True)
            faults.drop_later()
            echo(f"  t={time.monotonic() - load_started:5.1f}s every fault fired; waiting for acks and replies")
            client.configure(open_ratelimit=None, ack_deadline=3.0, post_burst=3)
            client.load("finish")
            drain_deadline = time.monotonic() + cfg.drain_timeout
            while client.load_status(brief=True)["state"] == "running" and time.monotonic() < drain_deadline:
                time.sleep(0.2)
            keys = client.load_status(keys=True)["keys"]
            expected = {k: (f"{CHANNEL_PREFIX}{i + 1:06d}", "load") for i, k in enumerate(keys)}
            expected.update(faults.expected_extra)
            # Replies trail the acks (outbox, rate limits, re-runs by sweepers): wait for them, bounded.
            while time.monotonic() < drain_deadline:
                handled = read_record(record)
                posted = client.summary()["messages_posted"]
                if len(expected.keys() & handled.keys()) >= len(expected) and posted >= len(expected):
                    break
                time.sleep(0.5)
            echo(f"  t={time.monotonic() - load_started:5.1f}s all handled and replied (or the drain timed out)")
            # A late second reply or handler run lands before the stack is idle: every event acked or
            # given up on, no inbox row or reply left, every worker's heartbeat showing nothing running.
            try:
                wait_idle(client, env, timeout=max(15.0, drain_deadline - time.monotonic()))
            except AssertionError as exc:  # the analysis below says what it left
                echo(f"  {exc}")
            state = client.state()
            summary = client.summary()
            sentry = client.sentry()
        finally:
            faults.restore_due(force=True)
            exit_code = stack.stop(timeout=30)
        sim_log = Path(sim.log_path)
        leaks = scan_tokens([stack.log_path, sim_log, record, stack.state_dir], secrets)
    report.update(analyse(expected, read_record(record), state, summary, faults, leaks))
    report["hostile"] = evidence(faults, state, Path(stack.log_path).read_text(errors="replace"), sentry)
    report["sentry_events"] = sentry.get("count", 0)
    report["stack_exit_code"] = exit_code
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    for key in ("slash_acks_late", "blackholes_not_replaced", "logging_errors"):
        report[key] = report["hostile"][key]
    delaying = [(at - 1.0, at + ACK_DELAYING_S[kind]) for at, kind in faults.fired if kind in ACK_DELAYING_S]
    late = late_acks_outside(state["acks"], delaying, SLACK_ACK_DEADLINE_MS, LATE_ACK_MARGIN_S)
    report["late_acks_outside_fault_windows"] = len(late)
    report["late_acks_sample"] = late[:5]
    report["store_fault_windows"] = [(round(start, 3), round(end - start, 1), kind)
                                     for start, end, kind in faults.store_windows]
    gate = ["lost", "acks_missed", "replies_lost", "tokens_leaked", "slash_acks_late", "blackholes_not_replaced",
            "logging_errors", "late_acks_outside_fault_windows"]
    if cfg.tolerate_kill_window:  # handler re-runs only when a SIGKILL explains them
        gate += ["handled_twice_unexplained", "replies_doubled"]
    else:
        gate += ["handled_twice", "replies_doubled"]
    report["failures"] = failures = {k: report[k] for k in gate if report[k]}
    report["ok"] = not failures
    return report


def analyse(expected: dict[str, tuple[str, str]], runs: dict[str, list[tuple[str, int, float]]],
            state: dict[str, Any], summary: dict[str, Any], faults: Faults, leaks: dict[str, int]) -> dict[str, Any]:
    """`expected`: every event's key -> (its own channel, the input it was: "load", "surrogate", …)."""
    sent = set(expected)
    lost = sorted(sent - runs.keys())
    twice, rerun = [], []  # rerun: explained by a SIGKILL; twice: not
    window_ms: list[float] = []
    for event_id in sent & runs.keys():
        handled = runs[event_id]
        if len(handled) < 2:
            continue
        # A second run is explained only if every run but the last was in a process we SIGKILLed.
        if all(pid in faults.killed_pids for _, pid, _ in handled[:-1]):
            rerun.append(event_id)
            # How long before the SIGKILL the first run had done its work: the inbox window.
            first_at = handled[0][2]
            later_kills = [t for t in faults.kill_times if t >= first_at]
            if later_kills:
                window_ms.append((min(later_kills) - first_at) * 1000)
        else:
            twice.append(event_id)
    events = state["events"]
    never_acked = sorted(k for k in sent if not events.get(k, {}).get("acked"))
    texts: dict[str, list[str]] = defaultdict(list)
    for message in state["messages"]:
        texts[message["channel"]].append(message.get("text") or "")
    channel_of = {k: channel for k, (channel, _) in expected.items()}
    replies_lost = sorted(k for k, ch in channel_of.items() if not texts.get(ch))
    replies_doubled = sorted(k for k, ch in channel_of.items() if len(texts.get(ch, ())) > 1)
    posted_at: dict[str, list[float]] = defaultdict(list)
    for message in state["messages"]:
        posted_at[message["channel"]].append(float(message.get("received_at") or 0))
    # A reply posted again after a SIGKILL: the first post landed shortly before a kill, the next after it.
    resent = [k for k in replies_doubled if any(
        t - 5.0 <= min(posted_at[channel_of[k]]) <= t + 0.5 and max(posted_at[channel_of[k]]) >= t
        for t in faults.kill_times)]
    wrong_text = sorted(k for k, ch in channel_of.items()
                        if texts.get(ch) and not any(as_posted(k) in t for t in texts[ch]))
    bad = {"lost": set(lost), "twice": set(twice) | set(rerun), "acks_missed": set(never_acked),
           "replies_lost": set(replies_lost), "replies_doubled": set(replies_doubled)}
    inputs: dict[str, dict[str, int]] = {}
    for kind in dict.fromkeys(kind for _, kind in expected.values()):
        mine = {k for k, (_, of) in expected.items() if of == kind}
        inputs[kind] = {"sent": len(mine), **{name: len(mine & which) for name, which in bad.items()}}
    return {
        "inputs": inputs,
        "events_sent": len(sent),
        "events_handled": len(sent & runs.keys()),
        "handler_runs": sum(len(v) for v in runs.values()),
        "lost": len(lost), "lost_sample": lost[:10],
        "handled_twice": len(twice) + len(rerun), "handled_twice_unexplained": len(twice),
        "handled_twice_sample": twice[:10],
        "rerun_after_sigkill": len(rerun), "rerun_after_sigkill_sample": rerun[:10],
        "rerun_recorded_before_kill_ms": {
            "count": len(window_ms), "median": round(sorted(window_ms)[len(window_ms) // 2], 1) if window_ms else None,
            "max": round(max(window_ms), 1) if window_ms else None},
        "acks_missed": len(never_acked), "acks_missed_sample": never_acked[:10],
        "replies_lost": len(replies_lost), "replies_lost_sample": replies_lost[:10],
        "replies_doubled": len(replies_doubled), "replies_doubled_sample": replies_doubled[:10],
        "replies_resent_after_sigkill": len(resent),
        "replies_doubled_unexplained": len(replies_doubled) - len(resent),
        "replies_with_wrong_text": len(wrong_text),
        "tokens_leaked": sum(leaks.values()), "token_hits": leaks,
        "faults_injected": dict(faults.injected),
        "faults_not_injected": {k: v for k, v in faults.failed.items() if v > 0},
        "follow_ups_not_run": faults.later_failed,
        "faults_fired_at": faults.fired,
        "killed_pids": sorted(faults.killed_pids),
        "simulator": {k: summary[k] for k in (
            "envelopes_sent", "acked", "redeliveries", "missed_deadlines", "late_acks", "events_missed",
            "duplicate_acks", "unknown_acks", "bad_frames", "connections_opened", "connections_open_calls",
            "open_429s", "post_429s", "messages_posted", "max_open_connections_seen", "too_many_websockets",
            "longest_no_connection_gap_s", "faults")},
    }


def print_report(report: dict[str, Any], echo: Any = print) -> None:
    sim = report["simulator"]
    rows = [
        ("events sent", report["events_sent"]),
        ("events handled (at least once)", report["events_handled"]),
        ("  lost (never handled)", report["lost"]),
        ("  handled twice", report["handled_twice"]),
        ("    of which re-run after a SIGKILL (inbox window)", report["rerun_after_sigkill"]),
        ("    of which with no SIGKILL to explain it", report["handled_twice_unexplained"]),
        ("acks missed (never acked)", report["acks_missed"]),
        ("  deliveries past the ack deadline (then retried)", sim["missed_deadlines"]),
        ("  redeliveries sent by the simulator", sim["redeliveries"]),
        ("replies lost", report["replies_lost"]),
        ("replies doubled", report["replies_doubled"]),
        ("  of which posted again after a SIGKILL (outbox window)", report["replies_resent_after_sigkill"]),
        ("tokens found in output", report["tokens_leaked"]),
        ("acks past 3 s outside the ack-delaying faults' windows", report["late_acks_outside_fault_windows"]),
        ("store faults (start, seconds, kind)", report["store_fault_windows"]),
        *report_rows(report["hostile"], report["inputs"]),
        ("Sentry events received", report["sentry_events"]),
        ("connections opened / open calls / open 429s", (f"{sim['connections_opened']} / "
                                                         f"{sim['connections_open_calls']} / {sim['open_429s']}")),
        ("chat.postMessage 429s", sim["post_429s"]),
        ("max links open at once / too_many_websockets", (f"{sim['max_open_connections_seen']} / "
                                                          f"{sim['too_many_websockets']}")),
        ("longest time with no open link (s)", sim["longest_no_connection_gap_s"]),
        ("stack exit code after SIGTERM", report["stack_exit_code"]),
        ("elapsed (s)", report["elapsed_s"]),
    ]
    width = max(len(r[0]) for r in rows)
    echo("")
    for name, value in rows:
        echo(f"{name:<{width}}  {value}")
    echo(f"faults injected: {report['faults_injected']}")
    if report["faults_not_injected"]:
        echo(f"faults that found no target: {report['faults_not_injected']}")
    if report["follow_ups_not_run"]:
        echo(f"fault follow-ups (redeliveries, slow bursts, commands) not run: {report['follow_ups_not_run']}")
    echo(f"simulator fault counters: {sim['faults']}")
    if report["rerun_after_sigkill"]:
        w = report["rerun_recorded_before_kill_ms"]
        echo(f"re-runs: the first run had recorded its effect {w['median']} ms (median, max {w['max']} ms) "
             "before the SIGKILL, with its inbox row not yet marked done")
    for key in ("lost", "rerun_after_sigkill", "acks_missed", "replies_lost", "replies_doubled"):
        if report[key]:
            echo(f"{key}: e.g. {report[key + '_sample']}")
    if report["handled_twice_unexplained"]:
        echo(f"handled twice with no SIGKILL to explain it: e.g. {report['handled_twice_sample']}")
    if report["token_hits"]:
        echo(f"token hits: {report['token_hits']}")
    echo(f"work dir (stack log, record): {report['work_dir']}")
    echo("PASS" if report["ok"] else f"FAIL: {report['failures']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=150.0, help="events per second")
    parser.add_argument("--scale", type=float, default=None,
                        help="multiply the fault counts (default events/10000)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--tolerate-kill-window", action="store_true",
                        help="do not fail on handler re-runs that a SIGKILL explains (they are still "
                             "counted and shown); doubled replies always fail")
    parser.add_argument("--no-trace", dest="trace", action="store_false",
                        help="without WEBSOCKET_DEBUG=1 in the workers (on by default)")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=N",
                        help="override one fault count, e.g. --fault kill=0")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    counts = {}
    for item in args.fault:
        kind, _, n = item.partition("=")
        if kind not in FAULT_COUNTS or not n.isdigit():
            parser.error(f"--fault wants KIND=N with KIND in {sorted(FAULT_COUNTS)}")
        counts[kind] = int(n)
    cfg = SoakConfig(events=args.events, rate=args.rate, scale=args.scale if args.scale is not None
                     else args.events / 10_000, seed=seed, tolerate_kill_window=args.tolerate_kill_window,
                     trace=args.trace, counts=counts)
    print(f"seed {seed} (repeat with --seed {seed})")
    report = run_soak(cfg)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
