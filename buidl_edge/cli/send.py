"""`send`: a message from the command line, queued for the workers or (`--now`) posted at once.

Bad input is refused (a MessageError, said as `not sent: …`) before anything is queued or sent.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import click

from buidl_edge.cli.base import admin_store, cli, json_option, state_settings
from buidl_edge.cli.output import print_json
from buidl_edge.config import Settings, load_settings, mask_url_password

if TYPE_CHECKING:
    from buidl_edge.store.base import Reply


@cli.command()
@click.argument("channel")
@click.argument("text", required=False)
@click.option("--blocks-file", type=click.File("rb"), default=None,
              help="JSON blocks: a list, or Block Kit Builder's {\"blocks\": [...]}; '-' reads stdin.")
@click.option("--thread-ts", default=None, help="Reply in the thread of this message ts.")
@click.option("--now", is_flag=True, help="Post at once with chat.postMessage (needs SLACK_BOT_TOKEN) "
                                          "instead of queueing for the workers.")
@json_option()
def send(channel: str, text: str | None, blocks_file: IO[bytes] | None, thread_ts: str | None, now: bool,
         as_json: bool) -> None:
    """Queue a message to CHANNEL (an id like C0123ABCD); running workers post it within the rate limits.

    TEXT '-' reads the text from stdin. Bad input is refused before anything is queued or sent.
    """
    if text == "-":
        text = stdin_text()
    reply = build_reply(channel, text, blocks_file, thread_ts)
    if now:
        result = post_now(load_settings(), reply)
        out = {"sent": True, "channel": result.get("channel", channel), "ts": result.get("ts")}
        if as_json:
            print_json(out, indent=None)
        else:
            click.echo(f"sent to {out['channel']} (ts {out['ts']})")
        return
    queued = queue(state_settings(), reply)
    if as_json:  # one document on stdout, the warning in it
        print_json(queued.as_dict(), indent=None)
        return
    click.echo(f"queued message {queued.id} to {channel}"
               + ("" if queued.warning else "; a running worker posts it"))
    if queued.warning:
        click.echo(f"warning: {queued.warning}", err=True)


def stdin_text() -> str:
    """TEXT '-': stdin, less one trailing newline (the one `echo` adds), as $(...) would drop it."""
    text = utf8(sys.stdin.buffer.read(), "stdin")
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def utf8(raw: bytes, source: str) -> str:
    from buidl_edge.api.message import MessageError

    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"{source} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                           f"at offset {exc.start})") from None


def build_reply(channel: str, text: str | None, blocks_file: IO[bytes] | None, thread_ts: str | None) -> Reply:
    """A validated Reply from command-line input; MessageError says what is wrong."""
    from buidl_edge.api.message import MessageError, parse_blocks_json, validate_reply
    from buidl_edge.store.base import Reply

    source = str(getattr(blocks_file, "name", "blocks file"))
    source = "stdin" if source == "<stdin>" else source
    try:
        blocks = parse_blocks_json(utf8(blocks_file.read(), source), source) if blocks_file else None
        return validate_reply(Reply(channel=channel, text=text, blocks=blocks, thread_ts=thread_ts))
    except RecursionError:
        raise MessageError(f"{source} nests JSON too deeply to be Block Kit") from None


def post_now(settings: Settings, reply: Reply) -> dict[str, Any]:
    """One chat.postMessage outside the outbox (`send --now`): no queue, no retry; errors raise."""
    from buidl_edge.webapi.client import WebApi

    api = WebApi(settings.api_url, timeout=settings.http_timeout)
    return api.post_message(settings.bot_token, reply.channel, reply.text, reply.blocks, reply.thread_ts)


@dataclass(frozen=True)
class Queued:
    id: int
    channel: str
    live_workers: int
    warning: str | None  # why nothing may post it soon

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"queued": True, "id": self.id, "channel": self.channel,
                               "live_workers": self.live_workers}
        return {**out, "warning": self.warning} if self.warning else out


def queue(settings: Settings, reply: Reply) -> Queued:
    """Into the workers' outbox; a warning when no worker is heartbeating on that store."""
    from buidl_edge.ops.status import live_workers

    with admin_store(settings) as store:
        if not store.lifespan.outlives_the_process:
            raise click.ClickException("not sent: the outbox lives in each worker's memory (BUIDL_STORE_URL="
                                       "memory://), so nothing here reaches it; use --now")
        row_id = store.outbox_enqueue([reply])[0]
        workers = live_workers(store)
    warning = None
    if not workers:
        where = mask_url_password(str(settings.store_url or settings.database_path))
        warning = (f"no worker is heartbeating on {where}: the message waits there until one runs with "
                   "this store (BUIDL_STATE_DIR / BUIDL_STORE_URL)")
    return Queued(row_id, reply.channel, len(workers), warning)
