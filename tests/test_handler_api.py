"""The handler API in process: which messages @app.message handlers see and what ctx.matches holds,
the thread ctx.set_status names, and ctx.respond's refusals (real loopback HTTP servers, no mocks).
"""
from __future__ import annotations

import http.server
import json
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from buidl_edge.api.app import AppError, Context, EdgeApp
from buidl_edge.api.message import MessageError
from buidl_edge.api.respond import ResponseUrlError
from buidl_edge.socketmode.protocol import Envelope
from http_support import write_answer

BOT = "U0BUIDL"


def envelope(event: dict[str, Any]) -> Envelope:
    return Envelope("events_api", "env-1", {"type": "event_callback", "event_id": "Ev1", "event": event})


def message(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "channel": "C1", "user": "U0HUMAN", "text": text, "ts": "1700000000.000100", **extra}


def run(app: EdgeApp, event: dict[str, Any], bot_user_id: str | None = BOT,
        running: EdgeApp | None = None) -> list[Any]:
    """What the dispatcher does: each handler of the event type, with one Context."""
    env = envelope(event)
    ctx = Context(envelope=env, logger=logging.LoggerAdapter(logging.getLogger("test"), {}),
                  bot_user_id=bot_user_id, app=running or app)
    argument = (running or app).handler_argument(env)
    return [r.fn(argument, ctx) for r in (running or app).registrations_for(env)]


# What each call saw: the message's text (None if it had none) and ctx.matches.
Seen = list[tuple[str | None, tuple[str | None, ...]]]


def recording_app(**options: Any) -> tuple[EdgeApp, Seen]:
    app = EdgeApp("t")
    seen: Seen = []

    @app.message(options.pop("pattern", None), **options)
    def on_message(event: dict[str, Any], ctx: Context) -> None:
        seen.append((event.get("text") or (event.get("message") or {}).get("text"), ctx.matches))
    return app, seen


# -- patterns ------------------------------------------------------------------------------


def test_a_substring_pattern_matches_anywhere_in_the_text() -> None:
    app, seen = recording_app(pattern="deploy")
    for text in ("please deploy now", "redeploy", "Deploy", "ship it"):
        run(app, message(text))
    assert seen == [("please deploy now", ("deploy",)), ("redeploy", ("deploy",))]


def test_a_regex_gives_its_groups_or_the_whole_match() -> None:
    app, seen = recording_app(pattern=re.compile(r"deploy (\w+) to (\w+)"))
    run(app, message("deploy api to staging"))
    run(app, message("deploy api"))
    plain, plain_seen = recording_app(pattern=re.compile(r"v\d+\.\d+"))
    run(plain, message("release v1.2 today"))
    assert seen == [("deploy api to staging", ("api", "staging"))]
    assert plain_seen == [("release v1.2 today", ("v1.2",))]


def test_matches_are_only_set_while_the_message_handler_runs() -> None:
    app = EdgeApp("t")
    seen: list[tuple[Any, ...]] = []

    @app.message(re.compile(r"go (\w+)"))
    def first(event: dict[str, Any], ctx: Context) -> None:
        seen.append(ctx.matches)

    @app.event("message")
    def plain(event: dict[str, Any], ctx: Context) -> None:
        seen.append(ctx.matches)

    run(app, message("go north"))
    assert seen == [("north",), ()]
    assert app.registrations_for(envelope(message("x")))[0].name == "first"  # HubWatch names the user's function


def test_bad_patterns_are_refused_when_registered() -> None:
    app = EdgeApp("t")
    with pytest.raises(AppError, match=r"str or a re\.compile"):
        app.message(42)  # type: ignore[arg-type]  # the wrong type on purpose: refused at run time
    with pytest.raises(AppError, match="empty"):
        app.message("")


# -- what message handlers see -------------------------------------------------------------


def test_own_other_bots_edits_and_system_messages_are_left_out_by_default() -> None:
    app, seen = recording_app()
    run(app, message("a person"))
    run(app, message("a file", subtype="file_share"))
    run(app, message("own", user=BOT, bot_id="B0BUIDL"))
    run(app, message("other bot", subtype="bot_message", bot_id="B0CI", user=None))
    run(app, message("other bot as a user", bot_id="B0CI", user="U0CI"))
    run(app, {"type": "message", "subtype": "message_changed", "channel": "C1", "ts": "1.2",
              "message": {"type": "message", "user": "U0HUMAN", "text": "edited"}})
    run(app, {"type": "message", "subtype": "message_deleted", "channel": "C1", "ts": "1.3",
              "previous_message": {"type": "message", "user": "U0HUMAN", "text": "deleted"}})
    run(app, message("<@U0NEW> has joined the channel", subtype="channel_join"))
    run(app, {"type": "app_mention", "channel": "C1", "user": "U0HUMAN", "text": "not a message", "ts": "1.4"})
    assert [text for text, _ in seen] == ["a person", "a file"]


@pytest.mark.parametrize("flag, extra_text", [
    ("include_self", "own"), ("include_bots", "other bot"), ("include_edits", "edited")])
def test_each_flag_turns_one_kind_back_on(flag: str, extra_text: str) -> None:
    app, seen = recording_app(**{flag: True})
    run(app, message("own", user=BOT, bot_id="B0BUIDL"))
    run(app, message("other bot", subtype="bot_message", bot_id="B0CI", user=None))
    run(app, {"type": "message", "subtype": "message_changed", "channel": "C1", "ts": "1.2",
              "message": {"type": "message", "user": "U0HUMAN", "text": "edited"}})
    assert [text for text, _ in seen] == [extra_text]


def test_a_mention_goes_to_the_app_mention_handler_not_also_to_message_handlers() -> None:
    mention = message(f"<@{BOT}> deploy api")
    alone, alone_seen = recording_app(pattern="deploy")
    run(alone, mention)  # no app_mention handler: the message handler is how the app hears mentions
    both, both_seen = recording_app(pattern="deploy")
    both.event("app_mention")(lambda event, ctx: None)
    run(both, mention)
    on_purpose, on_purpose_seen = recording_app(pattern="deploy", include_mentions=True)
    on_purpose.event("app_mention")(lambda event, ctx: None)
    run(on_purpose, mention)
    assert (len(alone_seen), len(both_seen), len(on_purpose_seen)) == (1, 0, 1)
    # The rule follows the app the worker runs: an included module's handlers obey it too.
    included, included_seen = recording_app(pattern="deploy")
    running = EdgeApp("main").include(included)
    running.event("app_mention")(lambda event, ctx: None)
    run(included, mention, running=running)
    assert included_seen == []


# -- AI assistant threads -------------------------------------------------------------------


def test_set_status_names_the_assistant_thread_or_the_messages_thread() -> None:
    def thread_of(event: dict[str, Any]) -> tuple[str, str]:
        ctx = Context(envelope=envelope(event), logger=logging.LoggerAdapter(logging.getLogger("t"), {}))
        return ctx.assistant_thread()

    started = {"type": "assistant_thread_started",
               "assistant_thread": {"channel_id": "D0ASK", "thread_ts": "1.000100", "user_id": "U1"}}
    assert thread_of(started) == ("D0ASK", "1.000100")
    assert thread_of(message("in a thread", channel="D0ASK", thread_ts="1.000100", ts="1.000200")) == \
        ("D0ASK", "1.000100")
    assert thread_of(message("starts one", channel="D0ASK", ts="1.000300")) == ("D0ASK", "1.000300")
    with pytest.raises(AppError, match="needs an event in a thread"):
        thread_of({"type": "file_shared", "file_id": "F1"})


# -- ctx.respond's refusals ----------------------------------------------------------------


class Recorder(http.server.BaseHTTPRequestHandler):
    """A loopback HTTP server that records what reaches it and answers as told."""

    answer: tuple[int, dict[str, str], bytes] = (200, {}, b"ok")
    hits: list[tuple[str, str, bytes]]

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self._record()

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.hits.append((self.command, self.path, body))
        write_answer(self, self.answer)

    def log_message(self, *args: Any) -> None:
        pass


def serve(answer: tuple[int, dict[str, str], bytes]) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    hits: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (Recorder,), {"answer": answer, "hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def elsewhere() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    yield from serve((200, {}, b"ok"))


def command_ctx(response_url: str | None) -> Context:
    payload: dict[str, Any] = {"command": "/x", "channel_id": "C1", "user_id": "U1"}
    if response_url is not None:
        payload["response_url"] = response_url
    return Context(envelope=Envelope("slash_commands", "env-2", payload, True),
                   logger=logging.LoggerAdapter(logging.getLogger("t"), {}))


def test_respond_posts_the_fields_slack_reads(elsewhere: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    base, hits = elsewhere
    ctx = command_ctx(base + "/commands/T1/2/abc")
    ctx.respond("done", thread_ts="1700000000.000100", response_type="in_channel")
    ctx.respond(delete_original=True)
    assert [(method, path) for method, path, _ in hits] == [("POST", "/commands/T1/2/abc")] * 2
    assert [json.loads(body) for _, _, body in hits] == [
        {"text": "done", "thread_ts": "1700000000.000100", "response_type": "in_channel",
         "replace_original": False, "delete_original": False},
        {"response_type": "ephemeral", "replace_original": False, "delete_original": True}]


def test_respond_never_follows_a_redirect(elsewhere: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    other, other_hits = elsewhere
    for redirector, hits in serve((302, {"Location": other + "/stolen"}, b"")):
        with pytest.raises(ResponseUrlError, match=r"redirect .*not followed"):
            command_ctx(redirector + "/commands/1").respond("private answer")
        assert len(hits) == 1
    assert other_hits == []  # nothing reached the other host


def test_respond_refuses_plain_http_outside_loopback_and_payloads_without_a_url() -> None:
    with pytest.raises(ResponseUrlError, match="https:// outside loopback"):
        command_ctx("http://hooks.example.com/commands/1").respond("hi")
    with pytest.raises(ResponseUrlError, match="must be a https:// URL"):
        command_ctx("ftp://hooks.example.com/commands/1").respond("hi")
    with pytest.raises(AppError, match="has none"):
        command_ctx(None).respond("hi")


def test_respond_checks_the_message_as_say_does(elsewhere: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    base, hits = elsewhere
    ctx = command_ctx(base + "/commands/1")
    with pytest.raises(MessageError, match="40,000"):
        ctx.respond("x" * 40_001)
    with pytest.raises(MessageError, match="needs text or blocks"):
        ctx.respond()
    with pytest.raises(MessageError, match="thread_ts"):
        ctx.respond("hi", thread_ts="tomorrow")
    with pytest.raises(AppError, match="response_type"):
        ctx.respond("hi", response_type="everyone")
    ctx.respond("lone \ud83d surrogate")  # replaced, as ctx.say does, not refused
    assert hits and json.loads(hits[0][2])["text"] == "lone \ufffd surrogate"


def test_respond_after_slack_says_expired_fails_at_once() -> None:
    for base, hits in serve((404, {"Content-Type": "text/plain"}, b"expired_url")):
        ctx = command_ctx(base + "/commands/1")
        with pytest.raises(ResponseUrlError, match=r"has expired \(expired_url\)"):
            ctx.respond("late")
        with pytest.raises(ResponseUrlError, match="Slack says the response_url has expired"):
            ctx.respond("later")
        assert len(hits) == 1  # the second never went out
