"""`token set/show/rm`: the Slack tokens kept in files under BUIDL_HOME."""
from __future__ import annotations

import sys

import click

from buidl_edge.cli.base import F, also_expects, cli
from buidl_edge.config import TOKEN_KINDS, Secret, token_file
from buidl_edge.ops import tokens


@cli.group()
def token() -> None:
    """Keep the Slack tokens in files: ~/.buidl/token (app) and ~/.buidl/bot_token (bot).

    BUIDL_HOME moves the directory. SLACK_APP_TOKEN / SLACK_BOT_TOKEN, when set, win over the files.
    """


def kind_options(command: F) -> F:
    command = click.option("--bot", "kind", flag_value="bot", help="The bot token (xoxb-…).")(command)
    return click.option("--app", "kind", flag_value="app", help="The app-level token (xapp-…).")(command)


@token.command("set")
@kind_options
@also_expects(OSError)  # BUIDL_HOME cannot be made or written
def token_set(kind: str | None) -> None:
    """Store a token read from stdin (a prompt that does not echo on a terminal)."""
    if kind is None:
        raise click.UsageError("say which token: --app (xapp-…) or --bot (xoxb-…)")
    spec = TOKEN_KINDS[kind]
    if sys.stdin.isatty():
        raw = click.prompt(f"{spec.what} ({spec.prefix}…)", hide_input=True, err=True)
    else:
        raw = sys.stdin.readline()
    path = tokens.save(kind, raw)
    click.echo(f"stored the {kind} token ({Secret(tokens.check(kind, raw)).masked()}) in {path} (mode 600)")
    if tokens.status(kind).source == spec.variable:
        click.echo(f"note: {spec.variable} is set in this environment and takes precedence over the file",
                   err=True)


@token.command("show")
def token_show() -> None:
    """Say where each token comes from, showing only its type and last four characters."""
    statuses = [tokens.status(kind) for kind in TOKEN_KINDS]
    for item in statuses:
        click.echo(item.line())
    if any(item.problem for item in statuses):
        sys.exit(1)


@token.command("rm")
@kind_options
def token_rm(kind: str | None) -> None:
    """Delete a stored token file (both without --app/--bot). The environment is not touched."""
    for each in [kind] if kind else list(TOKEN_KINDS):
        removed = tokens.remove(each)
        click.echo(f"removed {removed}" if removed else f"no {each} token file at {token_file(each)}")
