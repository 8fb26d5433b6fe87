"""`buidl-edge sim …`: drive a running simulator (`buidl-edge simulate`) over its control API:
inject what a person does in Slack, see what the bot did, break its links.

Thin: each command reaches the simulator once through simulator/client.py and activity.py, and
prints. Nothing here imports gevent.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from buidl_edge.cli.base import cli, json_option
from buidl_edge.cli.output import plural, print_json, print_table
from buidl_edge.sandbox.simulator.access import DEFAULT_SIM_URL, SIM_URL_VARIABLE, export_lines

if TYPE_CHECKING:
    from buidl_edge.sandbox.simulator.activity import Followed, Row
    from buidl_edge.sandbox.simulator.client import SimulatorClient

F = TypeVar("F", bound=Callable[..., Any])
BOT_USER_ID = "U0BUIDL"  # the simulator's bot (simulator/events.py), whom a mention names
ROW_COLUMNS = ["what", "channel", "ts", "thread", "text"]
# Faults by the name a user knows them by: (the simulator's kind, its fields).
FAULTS: dict[str, tuple[str, dict[str, str]]] = {
    "drop": ("drop", {}),
    "refresh": ("disconnect", {"reason": "refresh_requested"}),
    "warning": ("disconnect", {"reason": "warning"}),
    "link-disabled": ("disconnect", {"reason": "link_disabled"}),
    "too-many-websockets": ("disconnect", {"reason": "too_many_websockets"}),
    "silence": ("silence", {}),
    "blackhole": ("blackhole", {}),
    "bad-frame": ("bad_frame", {}),
}


def sim_url_option(command: F) -> F:
    return click.option(
        "--sim-url", envvar=SIM_URL_VARIABLE, default=DEFAULT_SIM_URL, show_default=True, metavar="URL",
        help=f"Where the simulator listens (or set {SIM_URL_VARIABLE}).")(command)


def wait_option(command: F) -> F:
    return click.option(
        "--wait", type=click.FloatRange(0, 600), default=10.0, show_default=True, metavar="SECONDS",
        help="How long to wait for the ack and the bot's answer; 0 returns at once.")(command)


def where_options(command: F) -> F:
    """Who does it, and where: shared by the commands that inject."""
    command = click.option("--user", default="U0HUMAN", show_default=True, help="The person's user id.")(command)
    return click.option("--channel", default="C0GENERAL", show_default=True, help="The channel id.")(command)


@cli.group()
def sim() -> None:
    """Drive a running simulator: inject events, see what the bot did, break its links.

    \b
    buidl-edge simulate &                        # the fake Slack, on 127.0.0.1:8765
    eval "$(buidl-edge sim env)"                 # point this shell's workers at it
    BUIDL_APP=hello:app buidl-edge worker &      # your bot
    buidl-edge sim mention "hello"               # someone mentions the bot: prints what it did
    buidl-edge sim shows                         # everything the bot did so far
    """


@contextlib.contextmanager
def reaching(sim_url: str) -> Iterator[SimulatorClient]:
    """The simulator's client; a simulator that is not there, or refuses, is one line."""
    import requests

    from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorError

    try:
        yield SimulatorClient(sim_url, timeout=5)
    except requests.ConnectionError:
        raise click.ClickException(f"no simulator answers at {sim_url}: start one with `buidl-edge simulate`, "
                                   f"or name where it is with --sim-url or {SIM_URL_VARIABLE}") from None
    except requests.RequestException as exc:
        raise click.ClickException(f"the simulator at {sim_url} did not answer: {type(exc).__name__}") from None
    except SimulatorError as exc:
        if exc.error == "no_target":
            raise click.ClickException("no open link matches --target: is a worker connected? "
                                       "(`buidl-edge sim links`)") from None
        raise click.ClickException(f"the simulator refused: {exc.error or exc}") from None


@sim.command(short_help="Print the exports that point a worker at the simulator.")
@sim_url_option
@click.option("--wait", type=click.FloatRange(0, 600), default=10.0, show_default=True, metavar="SECONDS",
              help="How long to wait for a simulator that is still starting.")
def env(sim_url: str, wait: float) -> None:
    """Print what to export to point a worker at the simulator: SLACK_API_URL and tokens made up
    now (it takes any xapp- and xoxb- token).

    \b
    eval "$(buidl-edge sim env)"
    """
    with reaching(sim_url) as client:
        deadline = time.monotonic() + wait
        while not client.health() and time.monotonic() < deadline:
            time.sleep(0.1)
        client.summary()  # a simulator still not there is said here, in one line
    for line in export_lines(sim_url):
        click.echo(line)


@sim.command(short_help="Someone mentions the bot; prints the bot's answer.")
@click.argument("text")
@where_options
@click.option("--thread", "thread_ts", default=None, metavar="TS", help="Mention the bot in this thread.")
@click.option("--no-message", is_flag=True,
              help="Send only the app_mention event (Slack also sends a mention as a message event to "
                   "apps subscribed to message.*, and so does this by default).")
@sim_url_option
@wait_option
@json_option("Print the events, the ack and the answer as JSON.")
def mention(text: str, channel: str, user: str, thread_ts: str | None, no_message: bool, sim_url: str,
            wait: float, as_json: bool) -> None:
    """Someone mentions the bot (@bot TEXT); prints the ack and what the bot did in answer.

    \b
    buidl-edge sim mention "hello"
    buidl-edge sim mention "status?" --channel C0OPS --thread 1700000000.000100
    """
    ts = f"{time.time():.6f}"
    fields = {"text": f"<@{BOT_USER_ID}> {text}", "channel": channel, "user": user, "ts": ts,
              "thread_ts": thread_ts}
    kinds = ["app_mention"] if no_message else ["app_mention", "message"]
    follow(sim_url, [(kind, fields) for kind in kinds], wait, as_json, f"mention in {channel}, ts {ts}")


@sim.command(short_help="Someone writes in a channel; prints the bot's answer.")
@click.argument("text")
@where_options
@click.option("--thread", "thread_ts", default=None, metavar="TS", help="Write in this thread.")
@click.option("--dm", is_flag=True, help="A direct message (channel_type im; give a D… --channel).")
@sim_url_option
@wait_option
@json_option("Print the event, the ack and the answer as JSON.")
def message(text: str, channel: str, user: str, thread_ts: str | None, dm: bool, sim_url: str, wait: float,
            as_json: bool) -> None:
    """Someone writes TEXT in a channel; prints the ack and what the bot did in answer.

    \b
    buidl-edge sim message "deploy web" --channel C0OPS
    buidl-edge sim message "what broke?" --dm --channel D0ASK --thread 1700000000.000100
    """
    ts = f"{time.time():.6f}"
    fields = {"text": text, "channel": channel, "user": user, "ts": ts, "thread_ts": thread_ts,
              "channel_type": "im" if dm else None}
    follow(sim_url, [("message", fields)], wait, as_json, f"message in {channel}, ts {ts}")


@sim.command(short_help="Someone runs a slash command; prints the bot's answer.")
@click.argument("name", metavar="/COMMAND")
@click.argument("text", default="")
@where_options
@sim_url_option
@wait_option
@json_option("Print the event, the ack and the answer as JSON.")
def command(name: str, text: str, channel: str, user: str, sim_url: str, wait: float, as_json: bool) -> None:
    """Someone runs a slash command; prints the ack (with the payload a handler returned) and
    what the bot did in answer (its response_url posts among them).

    \b
    buidl-edge sim command /standup "yesterday: tests; today: docs"
    """
    if not name.startswith("/"):
        raise click.BadParameter(f"a slash command starts with /, got {name!r}", param_hint="/COMMAND")
    fields = {"command": name, "text": text, "channel": channel, "user": user}
    follow(sim_url, [("slash_command", fields)], wait, as_json, f"{name} in {channel}")


@sim.command(short_help="Someone clicks a button; prints the bot's answer.")
@click.argument("value", default="clicked")
@click.option("--action-id", default="buidl_action", show_default=True, help="The action_id of the element.")
@click.option("--message-ts", default=None, metavar="TS",
              help="The bot's message the button was on (replace_original / delete_original act on it).")
@where_options
@sim_url_option
@wait_option
@json_option("Print the event, the ack and the answer as JSON.")
def action(value: str, action_id: str, message_ts: str | None, channel: str, user: str, sim_url: str,
           wait: float, as_json: bool) -> None:
    """Someone clicks a button (a block_actions interaction carrying VALUE); prints the ack and
    what the bot did in answer.

    \b
    buidl-edge sim action approve --action-id deploy_button --message-ts 1700000000.000200
    """
    fields = {"text": value, "action_id": action_id, "message_ts": message_ts, "channel": channel, "user": user}
    follow(sim_url, [("block_action", fields)], wait, as_json, f"click on {action_id} in {channel}")


def follow(sim_url: str, injections: list[tuple[str, dict[str, Any]]], wait: float, as_json: bool,
           what: str) -> None:
    """Inject, wait for the ack and the answer, print them; exit 1 when it was not acked in time."""
    from buidl_edge.sandbox.simulator.activity import inject_and_follow

    with reaching(sim_url) as client:
        fields = [(kind, {k: v for k, v in f.items() if v is not None}) for kind, f in injections]
        followed = inject_and_follow(client, fields, wait)
    if as_json:
        print_json(followed.to_dict())
    else:
        say_followed(followed, what, wait)
    if wait and not followed.acked:
        raise click.exceptions.Exit(1)


def say_followed(followed: Followed, what: str, wait: float) -> None:
    first = followed.events[0]
    # An Events API event is known by its event_id; a command or a click only by its envelope.
    label = "envelope" if first["key"] == first["envelope_id"] else "event"
    click.echo(f"sent {what} ({label} {first['key']})")
    if not followed.linked:
        click.echo("no worker is connected: the simulator holds the event until one connects")
    if not wait:
        return
    if not followed.acked:
        click.echo(f"Error: not acked within {wait:g}s", err=True)
        return
    ms = f" in {followed.ack_ms:.0f} ms" if followed.ack_ms is not None else ""
    click.echo(f"acked by link {followed.connection}{ms}")
    if followed.answer:
        click.echo("the bot, in answer:")
        print_rows(followed.answer)
    else:
        click.echo(f"the bot did nothing in answer within {wait:g}s")


def print_rows(rows: list[Row]) -> None:
    print_table([row.to_dict() for row in rows], ROW_COLUMNS)


@sim.command(short_help="What the bot posted, responded, reacted …")
@sim_url_option
@json_option("Print the rows as JSON, with the time of each.")
def shows(sim_url: str, as_json: bool) -> None:
    """What the bot did, oldest first: messages posted (edited or deleted since), response_url
    posts, reactions, views opened, assistant statuses and prompts, payloads on acks.

    \b
    buidl-edge sim shows
    buidl-edge sim shows --json
    """
    from buidl_edge.sandbox.simulator.activity import bot_rows

    with reaching(sim_url) as client:
        state = client.state()
    rows = bot_rows(state)
    if as_json:
        print_json([row.to_dict() for row in rows])
    elif rows:
        print_rows(rows)
    else:
        links = sum(link["state"] in ("open", "warned") for link in state["connections"])
        click.echo(f"the bot has done nothing yet ({plural(links, 'worker link')} open)")


@sim.command(short_help="Break a worker's link: drop, refresh, blackhole …")
@click.argument("kind", type=click.Choice(list(FAULTS)))
@click.option("--target", default="oldest", show_default=True, metavar="LINK",
              help="Which link: oldest, newest, all, or an id from `buidl-edge sim links`.")
@click.option("--seconds", type=click.FloatRange(0), default=None,
              help="silence: how long the link stays mute (default 5); blackhole: drop it after this long "
                   "(default never).")
@sim_url_option
def fault(kind: str, target: str, seconds: float | None, sim_url: str) -> None:
    """Break a worker's link the way Slack or the network does.

    \b
    drop                 the TCP connection ends, no close frame
    refresh              disconnect refresh_requested: Slack closes it about a second later
    warning              disconnect warning: Slack closes it about 10 s later
    link-disabled        disconnect link_disabled: Socket Mode was turned off (the worker stops)
    too-many-websockets  disconnect too_many_websockets
    silence              the link stops reading for --seconds: pings go unanswered
    blackhole            half-open: nothing more goes either way, the TCP connection stays up
    bad-frame            a frame that is not JSON
    \b
    buidl-edge sim fault refresh
    buidl-edge sim fault blackhole --target all
    """
    sim_kind, reason = FAULTS[kind]
    fields: dict[str, Any] = dict(reason)
    if seconds is not None:
        fields["seconds"] = seconds
    with reaching(sim_url) as client:
        touched = client.fault(sim_kind, target=target, **fields)["connections"]
    click.echo(f"{kind}: link {', '.join(touched)}")


@sim.command(short_help="The Socket Mode links workers opened.")
@sim_url_option
@json_option()
def links(sim_url: str, as_json: bool) -> None:
    """The Socket Mode links workers opened to the simulator, oldest first (closed ones too)."""
    with reaching(sim_url) as client:
        connections = client.state()["connections"]
    if as_json:
        print_json(connections)
        return
    print_table([{**link, "faults": ", ".join(name for name in ("silenced", "blackholed") if link[name])}
                 for link in connections], ["id", "state", "envelopes_sent", "acks", "faults"])


@sim.command(short_help="Forget what happened; links stay open.")
@sim_url_option
def reset(sim_url: str) -> None:
    """Forget the events, acks and everything the bot did; open links stay open."""
    with reaching(sim_url) as client:
        client.reset()
    click.echo("reset")
