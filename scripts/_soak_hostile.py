"""The soak's hostile inputs (issue 10), and what shows each one did what it should.

  surrogate   a `message` event holding a lone UTF-16 surrogate ("\\udc00", valid JSON) in its
              event id, its envelope id, its text, or all three, in turn; each is redelivered
              once 0.5 s later (Slack's retry: new envelope, same event id), so dedup is tried
              on the hostile key too. Handled once and replied to once like any event; a reply
              that echoes the text carries U+FFFD where the surrogate was.
  long_text   a `message` event of exactly 40,000 characters (Slack's maximum), every other
              one marked `soak-fail`: a second handler raises with the whole text in its
              exception, so a huge string goes through redaction to the log and to Sentry.
              The stack runs with WEBSOCKET_DEBUG=1, so the frame trace logs each one too.
  deep_frame  a text frame nested 100,000 levels deep (a bare list, or an envelope whose
              payload nests that deep), to every open link: rejected and counted, nothing else.
  pool_full   64 slow handlers (2.5 s each; BUIDL_HANDLER_CONCURRENCY=16 in each of the 2
              processes) at once, then 3 `/soak` slash commands 0.5 s after, with the pool
              full: each must be acked at once (without its payload), not after a handler.
  blackhole   a link half-open for good (no reads, no writes, no FIN); the stack must notice
              (BUIDL_STALE_TIMEOUT=3) and replace it.

Slack never redelivers a slash command, so one whose envelope or ack falls into a dying link
is gone for any client. The soak is about the pool, not that: the commands go out only once
earlier link faults have settled, and no link fault fires while they are in flight.
"""
from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

PROCESSES = 2
HANDLER_CONCURRENCY = 16
SLOW_HANDLER_S = 2.5
SLOW_BURST = 2 * HANDLER_CONCURRENCY * PROCESSES  # two rounds in each pool: full for ~5 s
SLASH_PER_BURST = 3
SLASH_AFTER_S = 0.5  # after the burst has gone out: both pools are full by then
SLASH_WINDOW_S = 3.5  # Slack's 3 s and a margin: no link fault while the commands are in flight
SLACK_ACK_DEADLINE_MS = 3000.0
LONG_TEXT_CHARS = 40_000
DEEP_LEVELS = 100_000
STALE_TIMEOUT_S = 3.0
# Issue 10: a stale link is replaced within BUIDL_STALE_TIMEOUT + 5 s; until then it may swallow.
BLACKHOLE_SETTLE_S = STALE_TIMEOUT_S + 5.0
SURROGATE_PLACES = ("event_id", "envelope_id", "text", "all")
SLOW_MARK, ECHO_MARK, FAIL_MARK = "soak-slow", "soak-echo", "soak-fail"  # scripts/edge_apps.py
FAILING_HANDLER = "soak_fail_on_request"
REJECTED = re.compile(r"bad frame rejected: (\w+)")


def long_text(n: int, fail: bool) -> str:
    """Exactly LONG_TEXT_CHARS: long runs that the old quadratic patterns choked on (a run of
    letters, a scheme's "://" with no "@" after it, a "ticket=" with no end)."""
    head = f"{FAIL_MARK if fail else 'soak-long'} {n} "
    unit = "a" * 4000 + " x://" + "b" * 4000 + " ticket=" + "c" * 1987 + " "
    return (head + unit * (LONG_TEXT_CHARS // len(unit) + 1))[:LONG_TEXT_CHARS]


def deep_frame(n: int) -> str:
    if n % 2 == 0:
        return "[" * DEEP_LEVELS + "]" * DEEP_LEVELS
    return (f'{{"type":"events_api","envelope_id":"deep-{n}","payload":'
            + '{"a":' * DEEP_LEVELS + "1" + "}" * DEEP_LEVELS + "}")


def as_posted(text: str) -> str:
    """What a reply holding `text` reads like once posted: each lone surrogate U+FFFD."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class HostileFaults:
    """Mixed into soak.Faults, which provides `client`, `rng` and `later` (timed follow-ups).

    `expected_extra` maps the key of every event sent here (event id, or a command's envelope
    id, as the simulator names it) to (its own channel, which input it was).
    """

    client: Any
    rng: Any
    later: list[tuple[float, Callable[[], None]]]
    hold_links_until: float
    link_faults: list[tuple[float, str]]
    link_settle_s: dict[str, float]

    def init_hostile(self) -> None:
        self.expected_extra: dict[str, tuple[str, str]] = {}
        self.seq: Counter[str] = Counter()
        self.surrogate_places: Counter[str] = Counter()
        self.surrogate_redelivered = 0
        self.long_failing = 0
        self.deep_frames: list[tuple[str, float]] = []  # (link id, wall time) of each deep frame sent
        self.slow_sent = 0
        self.slash_keys: list[str] = []
        self.blackholed: list[tuple[str, float]] = []  # (link id, wall time)

    def _next(self, kind: str) -> int:
        self.seq[kind] += 1
        return self.seq[kind]

    def _send(self, kind: str, channel: str, event_kind: str = "message", **fields: Any) -> str:
        key = self.client.inject(event_kind, channel=channel, **fields)[0]["key"]
        self.expected_extra[key] = (channel, kind)
        return key

    def _surrogate(self) -> bool:
        n = self._next("surrogate")
        place = SURROGATE_PLACES[(n - 1) % len(SURROGATE_PLACES)]
        fields: dict[str, Any] = {"text": "soak surrogate"}
        if place in ("event_id", "all"):
            fields["event_id"] = f"EvSURR{n:05d}\udc00"
        if place in ("envelope_id", "all"):
            fields["envelope_id"] = f"surr-{n:05d}-\ud800-{uuid.uuid4()}"
        if place in ("text", "all"):
            fields["text"] = f"{ECHO_MARK} a broken emoji \ud83d, a lone low half \udc00, done"
        key = self._send("surrogate", f"CSURR{n:05d}", **fields)
        self.surrogate_places[place] += 1
        self.later.append((time.monotonic() + 0.5, lambda: self._redeliver_key(key)))
        return True

    def _redeliver_key(self, key: str) -> None:
        self.client.fault("redeliver", key=key)
        self.surrogate_redelivered += 1

    def _long_text(self) -> bool:
        n = self._next("long_text")
        fail = n % 2 == 1
        self._send("long_text", f"CLONG{n:05d}", text=long_text(n, fail))
        self.long_failing += fail
        return True

    def _deep_frame(self) -> bool:
        touched = self.client.fault("bad_frame", text=deep_frame(self._next("deep_frame")), target="all")
        self.deep_frames += [(link, time.time()) for link in touched.get("connections") or ()]
        return True

    def _pool_full(self) -> bool:
        """Wait for earlier link faults to settle, hold new ones, then the burst and the commands."""
        now = time.monotonic()
        settled = max([now, self.hold_links_until]
                      + [at + self.link_settle_s.get(kind, 0.0) for at, kind in self.link_faults])
        self.hold_links_until = settled + SLASH_AFTER_S + SLASH_WINDOW_S
        self.later.append((settled, self._slow_burst))
        return True

    def _slow_burst(self) -> None:
        for _ in range(SLOW_BURST):
            n = self._next("slow")
            self._send("slow", f"CSLOW{n:05d}", text=f"{SLOW_MARK} {SLOW_HANDLER_S}")
            self.slow_sent += 1
        # The commands follow the whole burst (sending it may take a while on a busy machine).
        at = time.monotonic() + SLASH_AFTER_S
        self.hold_links_until = max(self.hold_links_until, at + SLASH_WINDOW_S)
        self.later.append((at, self._slash_commands))

    def _slash_commands(self) -> None:
        for _ in range(SLASH_PER_BURST):
            n = self._next("slash")
            self.slash_keys.append(self._send("slash", f"CCMD{n:05d}", "slash_command", command="/soak",
                                              text=f"soak {n}"))

    def _blackhole(self) -> bool:
        touched = self.client.fault("blackhole", target=self.rng.choice(["oldest", "newest"]))
        self.blackholed += [(link, time.time()) for link in touched.get("connections") or ()]
        return True


def evidence(faults: HostileFaults, state: dict[str, Any], log_text: str, sentry: dict[str, Any]) -> dict[str, Any]:
    """What the stack's log, the simulator and Sentry say about each hostile input."""
    events = state["events"]
    slash = [events.get(k, {}) for k in faults.slash_keys]
    latencies = [e["first_ack_latency_ms"] for e in slash if e.get("first_ack_latency_ms") is not None]
    closed_at = {c["id"]: c.get("closed_at") for c in state["connections"]}
    close_after = [closed_at[link] - at for link, at in faults.blackholed if closed_at.get(link)]
    hole_since = dict(faults.blackholed)

    def into_hole(link: str, at: float) -> bool:
        """Sent while `link` was blackholed: it never reached the wire."""
        return hole_since.get(link, float("inf")) <= at < (closed_at.get(link) or float("inf"))

    swallowed = sum(into_hole(link, at) for link, at in faults.deep_frames)
    failures = [e for e in sentry.get("events", []) if "failing on purpose" in str(e.get("exception_value"))]
    lines = log_text.splitlines()
    return {
        "surrogate_places": dict(faults.surrogate_places),
        "surrogate_redelivered": faults.surrogate_redelivered,
        "long_texts_failing": faults.long_failing,
        "handler_failures_logged": sum(f"handler {FAILING_HANDLER} failed" in line for line in lines),
        "longest_log_line": max((len(line) for line in lines), default=0),
        "logging_errors": log_text.count("--- Logging error ---"),
        "sentry_handler_failures": len(failures),
        "sentry_longest_exception_value": max((len(str(e.get("exception_value"))) for e in failures), default=0),
        "deep_frames_sent": len(faults.deep_frames),
        "deep_frames_into_blackholes": swallowed,
        "bad_frames_rejected": dict(Counter(m.group(1) for m in REJECTED.finditer(log_text))),
        "slow_handlers_sent": faults.slow_sent,
        "pool_full_acks_logged": log_text.count("handler pool full ("),
        "slash_commands": len(slash),
        "slash_acked": sum(bool(e.get("acked")) for e in slash),
        "slash_acked_without_payload": sum(bool(e.get("acked")) and not e.get("ack_payloads") for e in slash),
        "slash_acks_late": sum(ms > SLACK_ACK_DEADLINE_MS for ms in latencies),
        "slash_ack_ms_max": round(max(latencies), 1) if latencies else None,
        "blackholed_links": len(faults.blackholed),
        "blackholes_not_replaced": len(faults.blackholed) - len(close_after),
        "blackhole_closed_after_s_max": round(max(close_after), 2) if close_after else None,
    }


def report_rows(hostile: dict[str, Any], inputs: dict[str, dict[str, int]]) -> list[tuple[str, Any]]:
    """The hostile inputs' part of the soak's printed report."""
    h = hostile

    def fate(kind: str) -> str:
        i = inputs.get(kind)
        if not i:
            return "none sent"
        rest = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in i.items() if k != "sent")
        return f"{i['sent']} sent: {rest}"

    rejected = h["bad_frames_rejected"]
    return [
        ("lone surrogates (events)", (f"{fate('surrogate')}; in {h['surrogate_places']}, "
                                      f"{h['surrogate_redelivered']} redelivered")),
        ("40,000-character texts", f"{fate('long_text')}; {h['long_texts_failing']} failing a handler"),
        ("  handler failures logged / reported to Sentry", (f"{h['handler_failures_logged']} / "
                                                            f"{h['sentry_handler_failures']}")),
        ("  longest Sentry exception value / stack log line (chars)",
         f"{h['sentry_longest_exception_value']} / {h['longest_log_line']}"),
        ("  logging errors", h["logging_errors"]),
        ("deep frames sent (100k levels, one per link) / into a blackhole",
         f"{h['deep_frames_sent']} / {h['deep_frames_into_blackholes']}"),
        ("  bad frames rejected by the workers (log)", f"{sum(rejected.values())} {rejected}"),
        ("slow handlers (pool full)", fate("slow")),
        ("slash commands during a full pool", fate("slash")),
        ("  acked / without payload / late (> 3 s)", (f"{h['slash_acked']} / {h['slash_acked_without_payload']} / "
                                                      f"{h['slash_acks_late']}")),
        ("  slowest slash ack (ms)", h["slash_ack_ms_max"]),
        ("  'handler pool full' acks logged", h["pool_full_acks_logged"]),
        ("blackholed links / not replaced", f"{h['blackholed_links']} / {h['blackholes_not_replaced']}"),
        ("  closed by the stack after, at most (s)", h["blackhole_closed_after_s_max"]),
    ]
