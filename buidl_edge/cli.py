"""The `buidl-edge` command. Thin: parse, call, print. Heavy modules load inside commands,
so that `worker` can patch the standard library for gevent before anything else does."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from buidl_edge.config import ConfigError, Settings, load_settings


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """buidl-edge: the Slack Socket Mode edge of Buidl.

    Tokens come from SLACK_APP_TOKEN (xapp-) and SLACK_BOT_TOKEN (xoxb-),
    or from the files `buidl-edge token set` writes.
    Try `buidl-edge demo` to see it work against the bundled simulator.
    """


@cli.command()
@click.option("--connections", "-c", type=click.IntRange(1, 10), default=None,
              help="Socket Mode connections in this process (default BUIDL_CONNECTIONS or 1).")
@click.option("--app", "app_spec", default=None, metavar="MODULE:ATTR",
              help="Handler app to run (default BUIDL_APP or the Buidl bot).")
def worker(connections: int | None, app_spec: str | None) -> None:
    """Run one worker process: connections, handlers and reply sender, until SIGTERM."""
    from buidl_edge import worker as worker_module  # patches for gevent first

    settings = _settings(connections=connections, app_spec=app_spec)
    from buidl_edge.app import AppError

    try:
        code = worker_module.run_worker(settings)
    except AppError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", "-p", type=int, default=8765, show_default=True, help="Port; 0 picks a free one.")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write the bound port here once listening.")
def simulate(host: str, port: int, ready_file: str | None) -> None:
    """Run the bundled fake Slack (Web API + Socket Mode + control API) alone."""
    from buidl_edge.simulator import serve

    serve(host, port, ready_file)


@cli.command()
def demo() -> None:
    """Play a scripted conversation against the simulator; no tokens, no network needed."""
    from buidl_edge.demo import run_demo

    sys.exit(run_demo(click.echo))


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show_config(as_json: bool) -> None:
    """Print the resolved settings with tokens masked."""
    values = _settings().redacted()
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    width = max(len(k) for k in values)
    for key, value in values.items():
        click.echo(f"{key.ljust(width)}  {value}")


@cli.command()
@click.option("--processes", "-n", type=click.IntRange(1, 10), default=None,
              help="Worker processes (default BUIDL_PROCESSES or 2).")
@click.option("--connections", "-c", type=click.IntRange(1, 10), default=None,
              help="Connections per process (default BUIDL_CONNECTIONS or 1).")
def run(processes: int | None, connections: int | None) -> None:
    """Run the whole stack under supervisord in the foreground (the Procfile command).

    Renders deploy/supervisord.conf.tmpl into BUIDL_STATE_DIR and keeps
    supervisord as a child. Exits non-zero with the reason when a worker stops
    for good (link_disabled, a refused token).
    """
    from buidl_edge.supervise import run_stack

    settings = _settings(processes=processes, connections=connections)
    try:
        sys.exit(run_stack(settings))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("fatal-watch", hidden=True)
def fatal_watch() -> None:
    """supervisord event listener that stops the stack after a fatal worker exit."""
    from buidl_edge.supervise import fatal_watch as watch

    watch()


def _state_settings() -> Settings:
    """Settings for admin commands that only read local state: tokens are not needed."""
    import os

    # Placeholders in the env itself: load_settings reads the token variables before overrides.
    env = {**os.environ, "SLACK_APP_TOKEN": "xapp-unused", "SLACK_BOT_TOKEN": "xoxb-unused"}
    try:
        return load_settings(env)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _admin_store(settings: Settings):  # type: ignore[no-untyped-def]
    from buidl_edge.store import open_store
    from buidl_edge.store.errors import StoreError

    try:
        return open_store(settings, threaded=False)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Show each worker process: supervisord's state joined with the worker's heartbeat."""
    from buidl_edge.status import collect_status

    settings = _state_settings()
    report = collect_status(settings, _admin_store(settings))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        if report["supervisor"] != "running":
            click.echo(f"supervisor: {report['supervisor']}")
        _print_table(report["processes"], ["process", "state", "pid", "uptime", "connections",
                                           "acked", "duplicates", "handler_errors", "running", "queued",
                                           "reconnects", "last_ack_ms", "sent", "429s", "post_failed", "degraded",
                                           "slot_wait"])
        box = report.get("outbox")
        if box:
            click.echo(f"outbox: depth {box['depth']} (pending {box['pending']}, sending {box['sending']}), "
                       f"sent {box['sent']}, failed {box['failed']}, 429s {box['rate_limited']}")
        slots = report.get("slots")
        if slots:
            waiting = sum(row.get("slot_wait", 0) for row in report["processes"])
            click.echo(f"connection slots: {slots['held']}/{slots['limit']} held"
                       + (f", {waiting} connection(s) waiting for one" if waiting else ""))
    if report["supervisor"] != "running":
        sys.exit(1)


@cli.group()
def inbox() -> None:
    """Inspect and repair the durable inbox of received envelopes."""


@inbox.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inbox_stats(as_json: bool) -> None:
    """Envelopes per state, keys held, and the oldest one still processing."""
    stats = _admin_store(_state_settings()).inbox_stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        for key, value in stats.items():
            click.echo(f"{key}: {value}")


@inbox.command("list")
@click.option("--state", type=click.Choice(["processing", "done", "failed"]), default=None,
              help="Only rows in this state.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inbox_list(state: str | None, limit: int, as_json: bool) -> None:
    """The newest envelopes in the inbox."""
    rows = _admin_store(_state_settings()).inbox_list(state=state, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        _print_table(rows, ["envelope_id", "kind", "state", "owner", "attempts", "received_at", "error"])


@inbox.command("retry")
@click.argument("envelope_id")
def inbox_retry(envelope_id: str) -> None:
    """Hand ENVELOPE_ID to the sweeper again (a running worker re-runs its handlers)."""
    if not _admin_store(_state_settings()).retry(envelope_id):
        raise click.ClickException(f"no envelope {envelope_id} in the inbox")
    click.echo(f"{envelope_id} queued for a re-run")


@inbox.command("prune")
@click.option("--retention", type=float, default=None,
              help="Seconds to keep (default BUIDL_RETENTION_S; never under 600).")
def inbox_prune(retention: float | None) -> None:
    """Drop handled envelopes and dedup keys older than the retention."""
    settings = _state_settings()
    dropped = _admin_store(settings).prune(settings.retention_s if retention is None else retention)
    click.echo(f"pruned {dropped} rows")


@cli.group()
def token() -> None:
    """Keep the Slack tokens in files: ~/.buidl/token (app) and ~/.buidl/bot_token (bot).

    BUIDL_HOME moves the directory. SLACK_APP_TOKEN / SLACK_BOT_TOKEN, when set, win over the files.
    """


def _token_kind_options(fn: Any) -> Any:
    fn = click.option("--bot", "kind", flag_value="bot", help="The bot token (xoxb-…).")(fn)
    return click.option("--app", "kind", flag_value="app", help="The app-level token (xapp-…).")(fn)


@token.command("set")
@_token_kind_options
def token_set(kind: str | None) -> None:
    """Store a token read from stdin (a prompt that does not echo on a terminal)."""
    import os

    from buidl_edge import tokens
    from buidl_edge.config import Secret

    if kind is None:
        raise click.UsageError("say which token: --app (xapp-…) or --bot (xoxb-…)")
    name, prefix, what = tokens.KINDS[kind]
    if sys.stdin.isatty():
        raw = click.prompt(f"{what} ({prefix}…)", hide_input=True, err=True)
    else:
        raw = sys.stdin.readline()
    try:
        path = tokens.save(kind, raw)
    except (ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stored the {kind} token ({Secret(tokens.check(kind, raw)).masked()}) in {path} (mode 600)")
    if os.environ.get(name, "").strip():
        click.echo(f"note: {name} is set in this environment and takes precedence over the file", err=True)


@token.command("show")
def token_show() -> None:
    """Say where each token comes from, showing only its type and last four characters."""
    from buidl_edge import tokens

    statuses = [tokens.status(kind) for kind in tokens.KINDS]
    for item in statuses:
        click.echo(item.line())
    if any(item.problem for item in statuses):
        sys.exit(1)


@token.command("rm")
@_token_kind_options
def token_rm(kind: str | None) -> None:
    """Delete a stored token file (both without --app/--bot). The environment is not touched."""
    from buidl_edge import tokens

    for each in [kind] if kind else list(tokens.KINDS):
        removed = tokens.remove(each)
        click.echo(f"removed {removed}" if removed else f"no {each} token file at {tokens.path_for(each)}")


@cli.command()
def check() -> None:
    """Validate the config, test both tokens with Slack, and say what `run` would start."""
    from buidl_edge.supervise import check_connection_budget
    from buidl_edge.webapi import SlackApiError, WebApi

    settings = _settings()
    try:
        check_connection_budget(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    api = WebApi(settings.api_url, timeout=settings.http_timeout)
    try:
        auth = api.auth_test(settings.bot_token)
        click.echo(f"bot token ok: user {auth.user_id} in team {auth.team_id}")
        api.open_connection(settings.app_token)
        click.echo("app token ok: apps.connections.open returned a Socket Mode URL")
    except SlackApiError as exc:
        raise click.ClickException(f"Slack refused: {exc}") from None
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"would run {settings.processes} process(es) x {settings.connections} connection(s) "
               f"= {settings.processes * settings.connections} of Slack's 10")
    if (settings.store_url or "").startswith(("redis://", "rediss://")):
        from buidl_edge.store.errors import StoreError

        store = _admin_store(settings)
        try:
            store.ping()
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"store ok: {store.where} answers; the app may hold {settings.max_app_connections} "
                   "connection(s) over every dyno")


@cli.command()
@click.argument("channel")
@click.argument("text", required=False)
@click.option("--blocks-file", type=click.File("r"), default=None,
              help="JSON blocks: a list, or Block Kit Builder's {\"blocks\": [...]}; '-' reads stdin.")
@click.option("--thread-ts", default=None, help="Reply in the thread of this message ts.")
@click.option("--now", is_flag=True, help="Post at once with chat.postMessage (needs SLACK_BOT_TOKEN) "
                                          "instead of queueing for the workers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def send(channel: str, text: str | None, blocks_file: Any, thread_ts: str | None, now: bool, as_json: bool) -> None:
    """Queue a message to CHANNEL (an id like C0123ABCD); running workers post it within the rate limits.

    TEXT '-' reads the text from stdin. Bad input is refused before anything is queued or sent.
    """
    from buidl_edge.outbox import MessageError, build_reply, post_now, sender_webapi
    from buidl_edge.webapi import RateLimited, SlackApiError

    if text == "-":
        text = sys.stdin.read()
    try:
        reply = build_reply(channel, text, blocks_file.read() if blocks_file else None, thread_ts,
                            blocks_source=getattr(blocks_file, "name", "blocks file"))
    except MessageError as exc:
        raise click.ClickException(f"not sent: {exc}") from None
    if now:
        settings = _settings()
        try:
            result = post_now(sender_webapi(settings.api_url, settings.http_timeout, 1), settings.bot_token, reply)
        except RateLimited as exc:
            raise click.ClickException(f"Slack rate-limited {channel}: retry after {exc.retry_after:g}s") from None
        except SlackApiError as exc:
            raise click.ClickException(f"Slack refused: {exc.error}") from None
        out = {"sent": True, "channel": result.get("channel", channel), "ts": result.get("ts")}
        click.echo(json.dumps(out) if as_json else f"sent to {out['channel']} (ts {out['ts']})")
        return
    store = _admin_store(_state_settings())
    try:
        if not store.durable:
            raise click.ClickException("not sent: the outbox lives in each worker's memory (BUIDL_STORE_URL="
                                       "memory://), so nothing here reaches it; use --now")
        row_id = store.outbox_enqueue([reply])[0]
    finally:
        store.close()
    out = {"queued": True, "id": row_id, "channel": channel}
    click.echo(json.dumps(out) if as_json else f"queued message {row_id} to {channel}; a running worker posts it")


@cli.group()
def outbox() -> None:
    """Inspect and repair the durable outbox of messages to post."""


_OUTBOX_COLUMNS = ["id", "channel", "state", "attempts", "rate_limited", "age", "error", "text"]


def _outbox_line(row: Any) -> dict[str, Any]:
    import time

    text = row.text if row.text is not None else f"[{len(row.blocks or [])} blocks]"
    return {"id": row.id, "channel": row.channel, "state": row.state, "attempts": row.attempts,
            "rate_limited": row.rate_limited, "age": f"{time.time() - row.created_at:.0f}s",
            "error": row.error or "", "text": text if len(text) <= 40 else text[:39] + "…"}


@outbox.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def outbox_stats(as_json: bool) -> None:
    """Rows per state, depth, oldest unsent age, 429s seen, paused channels."""
    stats = _admin_store(_state_settings()).outbox_stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    for key, value in stats.items():
        if key == "paused":
            value = ", ".join(f"{p['bucket']} {p['for_s']:.1f}s" for p in value) or "none"
        click.echo(f"{key}: {value}")


@outbox.command("list")
@click.option("--state", type=click.Choice(["pending", "sending", "sent", "failed"]), default=None,
              help="Only rows in this state.")
@click.option("--channel", default=None, help="Only rows to this channel.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (whole rows).")
def outbox_list(state: str | None, channel: str | None, limit: int, as_json: bool) -> None:
    """The newest rows of the outbox."""
    rows = _admin_store(_state_settings()).outbox_list(state=state, channel=channel, limit=limit)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2, default=str))
    else:
        _print_table([_outbox_line(r) for r in rows], _OUTBOX_COLUMNS)


@outbox.command("retry")
@click.argument("row_id", metavar="ID", type=int)
def outbox_retry(row_id: int) -> None:
    """Queue failed row ID again, with a fresh attempt count."""
    if not _admin_store(_state_settings()).outbox_retry(row_id):
        raise click.ClickException(f"no failed row {row_id} in the outbox")
    click.echo(f"row {row_id} queued again")


@outbox.command("purge")
@click.option("--failed", is_flag=True, help="Delete every failed row.")
def outbox_purge(failed: bool) -> None:
    """Delete failed rows (see them first with `outbox list --state failed`)."""
    if not failed:
        raise click.UsageError("say what to purge: --failed")
    click.echo(f"purged {_admin_store(_state_settings()).outbox_purge('failed')} failed rows")


def main() -> None:
    from buidl_edge.store.errors import StoreError

    try:
        cli(prog_name="buidl-edge")
    except StoreError as exc:  # a store that fails mid-command (Redis away): one line, no traceback
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
