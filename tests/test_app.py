"""EdgeApp registry, Context and the default Buidl bot, called directly with a MemoryStore claim."""
from __future__ import annotations

import logging
from typing import Any

import pytest

from buidl_edge.api import bot
from buidl_edge.api.app import AppError, Context, EdgeApp, reply_from
from buidl_edge.api.loading import load_app
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import Reply
from buidl_edge.store.memory import MemoryStore

BOT_USER = "U0BUIDL"
_seq = iter(range(1, 10_000))


def event_envelope(event: dict[str, Any], event_id: str | None = None) -> Envelope:
    n = next(_seq)
    return Envelope("events_api", f"env-{n}", {"type": "event_callback", "event_id": event_id or f"Ev{n:06d}",
                                               "event": event})


def message(text: str, channel: str = "C1", ts: str = "1700000000.000100", kind: str = "message",
            **extra: Any) -> dict[str, Any]:
    return {"type": kind, "channel": channel, "user": "U0HUMAN", "text": text, "ts": ts, **extra}


def command_envelope(command: str = "/buidl", text: str = "help") -> Envelope:
    return Envelope("slash_commands", f"env-{next(_seq)}",
                    {"command": command, "text": text, "channel_id": "C0CMD", "user_id": "U0HUMAN"}, True)


def action_envelope() -> Envelope:
    return Envelope("interactive", f"env-{next(_seq)}",
                    {"type": "block_actions", "channel": {"id": "C0ACT"}, "actions": [{"action_id": "go"}]})


def make_ctx(envelope: Envelope, store: MemoryStore | None = None, bot_user_id: str | None = BOT_USER) -> Context:
    store = store if store is not None else MemoryStore()
    return Context(envelope=envelope, logger=logging.LoggerAdapter(logging.getLogger("test"), {}),
                   bot_user_id=bot_user_id, claim_once=store.claim_key)


def run(app: EdgeApp, envelope: Envelope, ctx: Context) -> list[Any]:
    """What the dispatcher does for one envelope: every matching handler with the right argument."""
    argument = app.handler_argument(envelope)
    return [handler(argument, ctx) for handler in app.handlers_for(envelope)]


# -- EdgeApp registry ---------------------------------------------------------------------


def test_edge_app_is_importable_from_the_package() -> None:
    from buidl_edge import Context as PublicContext, EdgeApp as PublicEdgeApp

    assert PublicEdgeApp is EdgeApp and PublicContext is Context


def test_event_command_and_interactive_handlers_are_found_by_kind() -> None:
    app = EdgeApp("t")
    calls: list[tuple[str, Any]] = []

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], ctx: Context) -> None:
        calls.append(("mention", event["text"]))

    @app.command("/buidl")
    def on_command(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
        calls.append(("command", payload["text"]))
        return {"text": "ok"}

    @app.interactive("block_actions")
    def on_action(payload: dict[str, Any], ctx: Context) -> None:
        calls.append(("action", payload["actions"][0]["action_id"]))

    mention = event_envelope(message("<@U0BUIDL> hi", kind="app_mention"))
    assert run(app, mention, make_ctx(mention)) == [None]
    command = command_envelope()
    assert run(app, command, make_ctx(command)) == [{"text": "ok"}]
    action = action_envelope()
    run(app, action, make_ctx(action))
    assert calls == [("mention", "<@U0BUIDL> hi"), ("command", "help"), ("action", "go")]
    assert app.handlers_for(event_envelope(message("hi"))) == []
    assert app.handlers_for(command_envelope("/other")) == []


def test_events_get_the_inner_event_commands_the_whole_payload() -> None:
    app = EdgeApp()
    envelope = event_envelope(message("hi"))
    assert app.handler_argument(envelope) == envelope.payload["event"]
    command = command_envelope()
    assert app.handler_argument(command) is command.payload


def test_register_handler_is_an_alias_of_event() -> None:
    app = EdgeApp()

    def handler(event: dict[str, Any], ctx: Context) -> None:
        return None

    assert app.register_handler("message", handler) is handler
    assert app.handlers_for(event_envelope(message("x"))) == [handler]


def test_several_handlers_for_one_kind_run_in_registration_order() -> None:
    app = EdgeApp()
    order: list[int] = []
    app.register_handler("message", lambda e, c: order.append(1))
    app.register_handler("message", lambda e, c: order.append(2))
    envelope = event_envelope(message("x"))
    run(app, envelope, make_ctx(envelope))
    assert order == [1, 2]


def test_command_must_start_with_slash() -> None:
    with pytest.raises(AppError, match="starts with '/'"):
        EdgeApp().command("buidl")


# -- Context ------------------------------------------------------------------------------


@pytest.mark.parametrize("envelope,channel", [
    (event_envelope(message("hi", channel="C0MSG")), "C0MSG"),
    (event_envelope({"type": "file_shared", "channel_id": "C0FILE", "file_id": "F1"}), "C0FILE"),
    (command_envelope(), "C0CMD"),
    (action_envelope(), "C0ACT"),
])
def test_say_defaults_to_the_envelopes_channel(envelope: Envelope, channel: str) -> None:
    ctx = make_ctx(envelope)
    reply = ctx.say("hello")
    assert reply == Reply(channel=channel, text="hello")
    assert ctx.replies == [reply]


def test_say_with_explicit_channel_blocks_and_thread() -> None:
    ctx = make_ctx(event_envelope(message("hi")))
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    ctx.say(blocks=blocks, channel="C0OTHER", thread_ts="1.5")
    assert ctx.replies == [Reply(channel="C0OTHER", text=None, blocks=blocks, thread_ts="1.5")]


def test_say_without_channel_or_content_fails_clearly() -> None:
    ctx = make_ctx(event_envelope({"type": "team_join", "user": {"id": "U1"}}))
    with pytest.raises(AppError, match="needs a channel"):
        ctx.say("hello")
    with pytest.raises(AppError, match="text or blocks"):
        make_ctx(event_envelope(message("hi"))).say()
    assert ctx.replies == []


def test_once_is_true_only_the_first_time_per_store() -> None:
    store = MemoryStore()
    envelope = event_envelope(message("x"))
    first, second = make_ctx(envelope, store), make_ctx(envelope, store)
    assert first.once("k") is True
    assert second.once("k") is False
    assert make_ctx(envelope, MemoryStore()).once("k") is True


def test_once_outside_a_worker_fails_clearly() -> None:
    ctx = Context(envelope=event_envelope(message("x")), logger=logging.LoggerAdapter(logging.getLogger("t"), {}))
    with pytest.raises(AppError, match="needs a store"):
        ctx.once("k")


# -- send_message -------------------------------------------------------------------------


def test_send_message_takes_text_or_a_dict() -> None:
    app = EdgeApp()
    sent: list[Reply] = []
    app.bind(sent.append)
    app.send_message("C1", "plain")
    blocks = [{"type": "divider"}]
    app.send_message("C2", {"text": "fallback", "blocks": blocks})
    app.send_message("C3", {"blocks": blocks, "thread_ts": "9.1"})
    assert sent == [Reply("C1", "plain"), Reply("C2", "fallback", blocks), Reply("C3", None, blocks, "9.1")]


def test_an_included_app_sends_through_the_worker_bound_to_the_app_that_included_it() -> None:
    main, part = EdgeApp("main"), EdgeApp("part")  # part: a module's own app, as ctx.client allows
    main.include(part)
    sent: list[Reply] = []
    main.bind(sent.append)  # what a worker binds: the app it runs
    part.send_message("C1", "from the included app")
    assert sent == [Reply("C1", "from the included app")]


def test_send_message_refuses_bad_input_and_an_unbound_app() -> None:
    app = EdgeApp()
    with pytest.raises(AppError, match="running worker"):
        app.send_message("C1", "hi")
    app.bind(lambda reply: None)
    with pytest.raises(AppError, match="'text' or 'blocks'"):
        app.send_message("C1", {"attachments": []})
    with pytest.raises(AppError, match="text or a dict"):
        app.send_message("C1", 42)  # type: ignore[arg-type]  # the wrong type on purpose: refused at run time
    assert reply_from("C1", "x", thread_ts="2.2") == Reply("C1", "x", None, "2.2")


# -- load_app -----------------------------------------------------------------------------


def test_load_app_finds_the_default_bot() -> None:
    assert load_app("buidl_edge.api.bot:app") is bot.app


@pytest.mark.parametrize("spec,problem", [("no_such_module_xyz:app", "cannot import"),
                                          ("buidl_edge.api.bot:GREETING", "not an EdgeApp"),
                                          ("buidl_edge.api.bot:missing", "has no attribute 'missing'")])
def test_load_app_errors(spec: str, problem: str) -> None:
    with pytest.raises(AppError, match=problem):
        load_app(spec)


# -- the default Buidl bot ----------------------------------------------------------------


def bot_replies(*events: dict[str, Any], store: MemoryStore | None = None,
                bot_user_id: str | None = BOT_USER) -> list[Reply]:
    store = store or MemoryStore()
    replies: list[Reply] = []
    for event in events:
        envelope = event_envelope(event)
        ctx = make_ctx(envelope, store, bot_user_id)
        run(bot.app, envelope, ctx)
        replies += ctx.replies
    return replies


def test_mention_as_message_and_app_mention_is_answered_once() -> None:
    text = f"<@{BOT_USER}> can you help?"
    pair = (message(text, ts="1.000001"), message(text, ts="1.000001", kind="app_mention"))
    assert bot_replies(*pair) == [Reply("C1", bot.GREETING)]
    # Either order: whichever lands first answers.
    assert bot_replies(*reversed(pair)) == [Reply("C1", bot.GREETING)]


def test_two_mentions_with_different_ts_are_answered_twice() -> None:
    text = f"<@{BOT_USER}> hi"
    assert len(bot_replies(message(text, ts="1.1"), message(text, ts="1.2"))) == 2


def test_same_ts_in_another_channel_is_another_mention() -> None:
    text = f"<@{BOT_USER}> hi"
    replies = bot_replies(message(text, channel="C1", ts="1.1"), message(text, channel="C2", ts="1.1"))
    assert [r.channel for r in replies] == ["C1", "C2"]


def test_mention_in_a_thread_is_answered_in_the_thread() -> None:
    replies = bot_replies(message(f"<@{BOT_USER}> hi", ts="5.2", kind="app_mention", thread_ts="5.1"))
    assert replies == [Reply("C1", bot.GREETING, thread_ts="5.1")]


def test_plain_message_and_other_users_mentions_get_nothing() -> None:
    assert bot_replies(message("just chatting"), message("<@U0SOMEONE> look")) == []


def test_message_mention_needs_the_bot_user_id_but_app_mention_does_not() -> None:
    text = f"<@{BOT_USER}> hi"
    assert bot_replies(message(text), bot_user_id=None) == []
    assert bot_replies(message(text, kind="app_mention"), bot_user_id=None) == [Reply("C1", bot.GREETING)]


@pytest.mark.parametrize("extra", [{"bot_id": "B0OTHER"}, {"subtype": "bot_message"}, {"user": BOT_USER}])
@pytest.mark.parametrize("kind", ["message", "app_mention"])
def test_messages_from_bots_and_itself_are_ignored(extra: dict[str, str], kind: str) -> None:
    assert bot_replies(message(f"<@{BOT_USER}> echo", kind=kind, **extra)) == []


def test_file_shared_is_acknowledged_by_name_in_its_channel() -> None:
    event = {"type": "file_shared", "file_id": "F1", "user_id": "U0HUMAN", "channel_id": "C0FILES",
             "file": {"id": "F1", "name": "design.pdf"}, "event_ts": "1.1"}
    assert bot_replies(event) == [Reply("C0FILES", "File received: design.pdf")]


def test_file_shared_without_a_name_still_gets_an_answer() -> None:
    event = {"type": "file_shared", "file_id": "F9", "channel_id": "C0FILES", "file": {"id": "F9"}}
    assert bot_replies(event) == [Reply("C0FILES", "File received: F9")]


def test_buidl_command_answers_with_ephemeral_help() -> None:
    envelope = command_envelope("/buidl", "help")
    ctx = make_ctx(envelope)
    assert run(bot.app, envelope, ctx) == [{"response_type": "ephemeral", "text": bot.HELP_TEXT}]
    assert ctx.replies == []


def test_threaded_handlers_are_registered_as_such_and_kept_by_include() -> None:
    app = EdgeApp()

    def plain(event: dict[str, Any], ctx: Context) -> None:
        return None

    def heavy(event: dict[str, Any], ctx: Context) -> None:
        return None

    app.event("message")(plain)
    app.event("message", threaded=True)(heavy)
    app.command("/crunch", threaded=True)(heavy)
    app.interactive("block_actions", threaded=True)(heavy)
    app.register_handler("file_shared", heavy, threaded=True)
    envelope = event_envelope(message("x"))
    assert app.handlers_for(envelope) == [plain, heavy]
    assert [(r.fn, r.threaded, r.name) for r in app.registrations_for(envelope)] == [
        (plain, False, "plain"), (heavy, True, "heavy")]
    assert [r.threaded for r in app.registrations_for(command_envelope("/crunch"))] == [True]
    assert [r.threaded for r in app.registrations_for(action_envelope())] == [True]
    combined = EdgeApp().include(app)
    assert [r.threaded for r in combined.registrations_for(envelope)] == [False, True]
    assert [r.threaded for r in combined.registrations_for(
        event_envelope({"type": "file_shared", "channel_id": "C1"}))] == [True]
