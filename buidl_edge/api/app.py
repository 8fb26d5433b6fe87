"""EdgeApp: the handler registry users write against, and the Context a handler receives."""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from re import Pattern
from typing import TYPE_CHECKING, Any

from buidl_edge.api.handler_signature import signature_problem
from buidl_edge.api.matching import MessageFilter
from buidl_edge.api.message import validate_reply
from buidl_edge.api.stream import INTERRUPTED_NOTE, Stream, StreamSink, stream_target
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import Reply

if TYPE_CHECKING:
    from slack_sdk import WebClient
    from slack_sdk.web import SlackResponse

Handler = Callable[[dict[str, Any], "Context"], dict[str, Any] | None]
# Where app.send_message goes once a worker binds one (the outbox).
ReplySink = Callable[[Reply], None]
# Runs a call on the worker's hub, from any thread (handler_threads.HubCall).
HubRunner = Callable[..., Any]

log = logging.getLogger("buidl_edge.app")


class AppError(ValueError):
    """A handler app that cannot be loaded or a message that cannot be sent.

    `details` holds the traceback of an error raised inside the user's module, when there is one.
    """

    details: str | None = None


class HandlerSignatureError(AppError):
    """A handler that EdgeApp cannot call as `fn(payload, ctx)` (handler_signature.py); the message
    names its file and line itself, so no traceback goes with it."""


def checked_handler(fn: Handler) -> Handler:
    problem = signature_problem(fn)
    if problem:
        raise HandlerSignatureError(problem)
    return fn


def reply_from(channel: str, text_or_dict: str | Mapping[str, Any], thread_ts: str | None = None) -> Reply:
    """Build a Reply from text or a dict with text/blocks, as the Buidl API allowed."""
    if isinstance(text_or_dict, str):
        return Reply(channel=channel, text=text_or_dict, thread_ts=thread_ts)
    if isinstance(text_or_dict, Mapping):
        text, blocks = text_or_dict.get("text"), text_or_dict.get("blocks")
        if text is None and blocks is None:
            raise AppError("a message dict needs 'text' or 'blocks'")
        return Reply(channel=channel, text=text, blocks=blocks,
                     thread_ts=text_or_dict.get("thread_ts", thread_ts))
    raise AppError(f"a message is text or a dict, not {type(text_or_dict).__name__}")


@dataclass
class Context:
    """What a handler gets besides its payload.

    `say` queues a reply (durable, ordered, rate-limited, sent once); `stream` shows an answer
    in the thread as it is written; `client` calls the Web API at once; `respond` answers
    through the payload's response_url. Everything here is
    safe from a threaded handler: what touches the store, the outbox or the network runs on
    the hub (`hub_call`).
    """

    envelope: Envelope
    logger: logging.LoggerAdapter
    bot_user_id: str | None = None
    claim_once: Callable[[str], bool] | None = None
    replies: list[Reply] = field(default_factory=list)
    app: EdgeApp | None = None
    hub_call: HubRunner | None = None
    # What the pattern of an @app.message handler matched (its regex groups), while it runs.
    matches: tuple[str | None, ...] = ()
    received_at: float = field(default_factory=time.monotonic)
    stream_sink: StreamSink | None = None
    streams: list[Stream] = field(default_factory=list)
    _response_url: Any = field(default=None, repr=False)

    def once(self, key: str) -> bool:
        """True the first time any worker sees `key` (shared store), False after."""
        if self.claim_once is None:
            raise AppError("ctx.once needs a store; run the handler inside a worker")
        return self.claim_once(key)

    @property
    def default_channel(self) -> str | None:
        payload = self.envelope.payload
        event = payload.get("event") or {}
        channel = (event.get("channel") or event.get("channel_id") or payload.get("channel_id")
                   or (payload.get("channel") or {}).get("id"))
        return channel if isinstance(channel, str) else None

    def say(self, text: str | None = None, blocks: list[dict[str, Any]] | None = None,
            channel: str | None = None, thread_ts: str | None = None) -> Reply:
        target = channel or self.default_channel
        if not target:
            raise AppError("ctx.say needs a channel: this envelope carries none")
        if text is None and blocks is None:
            raise AppError("ctx.say needs text or blocks")
        # Checked now, so a bad reply fails its handler instead of reaching Slack (MessageError).
        reply = validate_reply(Reply(channel=target, text=text, blocks=blocks, thread_ts=thread_ts))
        self.replies.append(reply)
        return reply

    def stream(self, thread_ts: str | None = None, channel: str | None = None,
               recipient_user_id: str | None = None, recipient_team_id: str | None = None) -> Stream:
        """An answer streamed into the event's thread as it is written (api/stream.py); use it as
        `with ctx.stream() as stream: stream.append(...)`."""
        if self.stream_sink is None:
            raise AppError("ctx.stream needs a running worker")
        target = stream_target(self.envelope.payload, self.default_channel, thread_ts, channel,
                               recipient_user_id, recipient_team_id)
        run = self.hub_call or (lambda fn, *args: fn(*args))
        stream = Stream(self.stream_sink, run(self.stream_sink.open, self.envelope.envelope_id, target), self.hub_call)
        self.streams.append(stream)
        return stream

    def stop_streams(self, failed: bool) -> None:
        """A handler returned (or raised) with streams left open: stop them (with the note if it raised)."""
        for stream in self.streams:
            stream.stop(INTERRUPTED_NOTE if failed else None)

    @property
    def client(self) -> WebClient:
        """The worker's slack_sdk WebClient (the bot token, SLACK_API_URL): calls go out at once."""
        if self.app is None:
            raise AppError("ctx.client needs a running worker (or use app.client)")
        return self.app.client

    def respond(self, text: str | None = None, blocks: list[dict[str, Any]] | None = None,
                response_type: str = "ephemeral", replace_original: bool = False,
                delete_original: bool = False, thread_ts: str | None = None) -> None:
        """Post to the payload's response_url (slash commands, interactions): at once, retried on
        5xx and network errors; ResponseUrlExpired once it is used up (5 posts, 30 minutes)."""
        from buidl_edge.api.respond import ResponseUrl, response_body

        body = response_body(text, blocks, response_type, replace_original, delete_original, thread_ts)
        if self._response_url is None:
            self._response_url = ResponseUrl.of(self.envelope.payload, self.received_at)
        if self.hub_call is None:
            self._response_url.post(body)
        else:
            self.hub_call(self._response_url.post, body)

    def assistant_thread(self) -> tuple[str, str]:
        """(channel_id, thread_ts) of the event's thread: the assistant thread of
        assistant_thread_started, else the message's thread (its own ts if it starts one)."""
        event = self.envelope.payload.get("event") or {}
        thread = event.get("assistant_thread") or {}
        channel = thread.get("channel_id") or event.get("channel")
        ts = thread.get("thread_ts") or event.get("thread_ts") or event.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str) or not channel or not ts:
            raise AppError("ctx.set_status needs an event in a thread (assistant_thread_started or a message); "
                           "this one names none")
        return channel, ts

    def set_status(self, status: str, loading_messages: list[str] | None = None) -> SlackResponse:
        """Show `status` (e.g. "is thinking…") in the event's thread: assistant.threads.setStatus.
        Slack clears it when the app posts in the thread, or after two minutes."""
        channel, thread_ts = self.assistant_thread()
        return self.client.assistant_threads_setStatus(channel_id=channel, thread_ts=thread_ts, status=status,
                                                       loading_messages=loading_messages)

    def clear_status(self) -> SlackResponse:
        return self.set_status("")


@dataclass(frozen=True)
class Registration:
    """A handler and how it runs: on the hub (a greenlet) or, `threaded`, on a native thread."""

    fn: Handler
    threaded: bool = False

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


class EdgeApp:
    """Register handlers by event type, slash command or interaction type.

    `threaded=True` runs a handler on the worker's native thread pool instead of a
    greenlet: for CPU-bound work or blocking C calls, which would otherwise hold every
    ack of the process until they return.
    """

    def __init__(self, name: str = "buidl-edge") -> None:
        self.name = name
        self._events: dict[str, list[Registration]] = {}
        self._commands: dict[str, list[Registration]] = {}
        self._interactive: dict[str, list[Registration]] = {}
        self._sink: ReplySink | None = None
        self._client: WebClient | None = None
        self._client_factory: Callable[[], WebClient] | None = None
        self._hub_call: HubRunner | None = None
        self._included_in: EdgeApp | None = None

    def _register(self, table: dict[str, list[Registration]], key: str,
                  threaded: bool) -> Callable[[Handler], Handler]:
        def decorator(fn: Handler) -> Handler:
            table.setdefault(key, []).append(Registration(checked_handler(fn), threaded))
            return fn
        return decorator

    def event(self, event_type: str, threaded: bool = False) -> Callable[[Handler], Handler]:
        return self._register(self._events, event_type, threaded)

    def message(self, pattern: str | Pattern[str] | None = None, *, threaded: bool = False,
                include_self: bool = False, include_bots: bool = False, include_edits: bool = False,
                include_mentions: bool = False) -> Callable[[Handler], Handler]:
        """A handler for `message` events whose text holds `pattern` (a substring) or matches it
        (a `re.compile(...)` pattern; `ctx.matches` holds its groups). Which messages it sees:
        matching.py; by default not the bot's own, other bots', edits and deletions."""
        try:
            wanted = MessageFilter(pattern, include_self, include_bots, include_edits, include_mentions)
        except (TypeError, ValueError) as exc:
            raise AppError(str(exc)) from None

        def decorator(fn: Handler) -> Handler:
            checked_handler(fn)

            @functools.wraps(fn)
            def on_message(event: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
                running = ctx.app or self  # the app the worker runs, which may have included this one
                matches = wanted.match(event, ctx.bot_user_id, running.has_handlers("app_mention"))
                if matches is None:
                    return None
                ctx.matches = matches
                try:
                    return fn(event, ctx)
                finally:
                    ctx.matches = ()
            self._events.setdefault("message", []).append(Registration(on_message, threaded))
            return fn
        return decorator

    def has_handlers(self, event_type: str) -> bool:
        return bool(self._events.get(event_type))

    def command(self, command: str, threaded: bool = False) -> Callable[[Handler], Handler]:
        if not command.startswith("/"):
            raise AppError(f"a slash command starts with '/', got {command!r}")
        return self._register(self._commands, command, threaded)

    def interactive(self, interaction_type: str, threaded: bool = False) -> Callable[[Handler], Handler]:
        return self._register(self._interactive, interaction_type, threaded)

    def register_handler(self, event_type: str, fn: Handler, threaded: bool = False) -> Handler:
        """The Buidl API's name for `event`."""
        return self.event(event_type, threaded)(fn)

    def include(self, other: EdgeApp) -> EdgeApp:
        """Add every handler of `other` (after this app's own); returns self for chaining."""
        for mine, theirs in ((self._events, other._events), (self._commands, other._commands),
                             (self._interactive, other._interactive)):
            for key, handlers in theirs.items():
                mine.setdefault(key, []).extend(handlers)
        other._included_in = self  # its app.client is this app's
        return self

    def registrations_for(self, envelope: Envelope) -> list[Registration]:
        table = {"events_api": self._events, "slash_commands": self._commands,
                 "interactive": self._interactive}.get(envelope.type, {})
        return list(table.get(envelope.kind, ()))

    def handlers_for(self, envelope: Envelope) -> list[Handler]:
        return [registration.fn for registration in self.registrations_for(envelope)]

    def handler_argument(self, envelope: Envelope) -> dict[str, Any]:
        """Events get the inner event; commands and interactions get the whole payload."""
        if envelope.type == "events_api":
            return dict(envelope.payload.get("event") or {})
        return envelope.payload

    def bind(self, sink: ReplySink | None) -> None:
        self._sink = sink

    def bind_client(self, factory: Callable[[], WebClient] | None, hub_call: HubRunner | None = None) -> None:
        """The worker's way to build `client` on first use (on the hub, with `hub_call`)."""
        self._client_factory, self._hub_call, self._client = factory, hub_call, None

    @property
    def client(self) -> WebClient:
        """slack_sdk's WebClient for the bot, one per process, made on first use: in a worker the
        one every handler's ctx.client is; outside one, from SLACK_BOT_TOKEN and SLACK_API_URL."""
        client = self._client
        if client is not None:
            return client
        if self._client_factory is None and self._included_in is not None:
            return self._included_in.client
        if self._hub_call is not None:  # built on the hub, so two threads cannot build two
            return self._hub_call(self._make_client)
        return self._make_client()

    def _make_client(self) -> WebClient:
        if self._client is None:
            if self._client_factory is not None:
                self._client = self._client_factory()
            else:
                from buidl_edge.api.webclient import client_from_env
                from buidl_edge.config import ConfigError

                try:
                    self._client = client_from_env()
                except ConfigError as exc:
                    raise AppError(f"app.client outside a worker needs SLACK_BOT_TOKEN: {exc}") from None
        return self._client

    def send_message(self, channel: str, text_or_dict: str | Mapping[str, Any]) -> Reply:
        """Queue a message outside a handler (inside one, prefer ctx.say); MessageError for bad input."""
        if self._sink is None and self._included_in is not None:  # the worker bound the app it runs
            return self._included_in.send_message(channel, text_or_dict)
        reply = validate_reply(reply_from(channel, text_or_dict))
        if self._sink is None:
            raise AppError("send_message needs a running worker (or `buidl-edge send`)")
        self._sink(reply)
        return reply
