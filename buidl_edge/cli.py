"""The `buidl-edge` command. Thin: parse, call, print. Heavy modules load inside commands,
so that `worker` can patch the standard library for gevent before anything else does."""
from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import click

from buidl_edge.config import (
    MAX_CONNECTIONS_PER_PROCESS,
    MAX_PROCESSES,
    SLACK_MAX_CONNECTIONS,
    ConfigError,
    Settings,
    load_settings,
)

SIZING_RULE = (f"each process holds its connections plus one spare for a refresh: "
               f"processes x (connections + 1) <= {SLACK_MAX_CONNECTIONS}")


def _expected_errors() -> tuple[type[BaseException], ...]:
    """What a user's input or environment can cause: said in one line, never as a traceback.
    Imported only once one was raised, so that `worker` still patches gevent first."""
    from buidl_edge.app import AppError
    from buidl_edge.message import MessageError
    from buidl_edge.store.errors import StoreError

    return (ConfigError, StoreError, AppError, MessageError)


class EdgeGroup(click.Group):
    """The CLI's one error boundary: an expected error from any command becomes `Error: <line>`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if isinstance(exc, _expected_errors()):
                raise click.ClickException(" ".join(str(exc).split()) or type(exc).__name__) from None
            raise


def _state_settings() -> Settings:
    """Settings for commands that never call Slack: a missing token is not an error there."""
    return load_settings(require_tokens=False)


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else (many or word + 's')}"


# C0/C1 controls (terminal escapes among them) and the bidi overrides that reorder what is shown.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _cell(value: Any) -> str:
    """A table cell: '-' for no value, control characters escaped (\\x1b, \\n …) so that text from
    Slack or a store cannot drive the operator's terminal."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def ago(timestamp: float | None) -> str | None:
    """Seconds since `timestamp` as 42s / 12m / 5h / 3d."""
    if timestamp is None:
        return None
    seconds = max(0.0, time.time() - timestamp)
    for size, unit in ((86400, "d"), (3600, "h"), (120, "m")):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@click.group(cls=EdgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """buidl-edge: the Slack Socket Mode edge of Buidl.

    Tokens come from SLACK_APP_TOKEN (xapp-) and SLACK_BOT_TOKEN (xoxb-),
    or from the files `buidl-edge token set` writes.
    Try `buidl-edge demo` to see it work against the bundled simulator.
    """


def _app_option(fn: Any) -> Any:
    return click.option("--app", "app_spec", default=None, metavar="MODULE:ATTR",
                        help="Handler app (default BUIDL_APP or the Buidl bot); the working directory "
                             "is on the import path.")(fn)


@cli.command()
@click.option("--connections", "-c", type=click.IntRange(1, MAX_CONNECTIONS_PER_PROCESS), default=None,
              help="Socket Mode connections in this process (default BUIDL_CONNECTIONS or 1); "
                   "it keeps one more for a refresh.")
@_app_option
def worker(connections: int | None, app_spec: str | None) -> None:
    """Run one worker process: connections, handlers and reply sender, until SIGTERM.

    A worker that cannot start (config, app import, store) says why in one line and exits 3.
    """
    from buidl_edge.gevent_patch import patch

    patch()  # first: before the worker's modules import sockets, threads or locks
    from buidl_edge.worker import start

    sys.exit(start(connections=connections, app_spec=app_spec))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", "-p", type=int, default=8765, show_default=True, help="Port; 0 picks a free one.")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write the bound port here once listening.")
def simulate(host: str, port: int, ready_file: str | None) -> None:
    """Run the bundled fake Slack (Web API + Socket Mode + control API) alone."""
    from buidl_edge.simulator import serve

    try:
        serve(host, port, ready_file)
    except OSError as exc:  # the port is taken, the address is not ours, the ready file cannot be written
        raise click.ClickException(f"simulator: {exc}") from None


@cli.command()
def demo() -> None:
    """Play a scripted conversation against the simulator; no tokens, no network needed."""
    from buidl_edge.demo import run_demo

    sys.exit(run_demo(click.echo))


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show_config(as_json: bool) -> None:
    """Print the resolved settings: tokens masked (a missing one marked), URLs without userinfo."""
    settings = _state_settings()
    values = settings.redacted()
    problems = settings.token_problems()
    if as_json:
        click.echo(json.dumps({**values, "token_problems": problems}, indent=2))
        return
    width = max(len(k) for k in values)
    for key, value in values.items():
        shown = f"NOT USABLE: {problems[key]}" if key in problems else _cell(value)
        click.echo(f"{key.ljust(width)}  {shown}")


@cli.command(epilog=f"Sizing: {SIZING_RULE}.")
@click.option("--processes", "-n", type=click.IntRange(1, MAX_PROCESSES), default=None,
              help="Worker processes (default BUIDL_PROCESSES or 2).")
@click.option("--connections", "-c", type=click.IntRange(1, MAX_CONNECTIONS_PER_PROCESS), default=None,
              help="Connections per process (default BUIDL_CONNECTIONS or 1).")
@_app_option
def run(processes: int | None, connections: int | None, app_spec: str | None) -> None:
    """Run the whole stack under supervisord in the foreground (the Procfile command).

    Renders the supervisord template shipped in the package (or ./deploy/supervisord.conf.tmpl,
    when there is one) into BUIDL_STATE_DIR and keeps supervisord as a child. Exits non-zero with
    the worker's reason when one stops for good (a worker that cannot start, link_disabled, a
    refused token).
    """
    from buidl_edge.stack import run_stack

    sys.exit(run_stack(load_settings(processes=processes, connections=connections, app_spec=app_spec)))


def _admin_store(settings: Settings):  # type: ignore[no-untyped-def]
    """The store the workers use; never a new one (a missing store is one line, exit 1)."""
    from buidl_edge.store import open_store
    from buidl_edge.store.errors import StoreError

    try:
        return open_store(settings, threaded=False, create=False)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [{c: _cell(row.get(c)) for c in columns} for row in rows]
    widths = {c: max([len(c)] + [len(r[c]) for r in cells]) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in cells:
        click.echo("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Show each worker process: supervisord's state joined with the worker's heartbeat."""
    from buidl_edge.status import TABLE_COLUMNS, collect_status

    settings = _state_settings()
    report = collect_status(settings, _admin_store(settings))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        if report["supervisor"] != "running":
            click.echo(f"supervisor: {_cell(report['supervisor'])}")
        _print_table([{header: cell(row) for header, cell in TABLE_COLUMNS.items()} for row in report["processes"]],
                     list(TABLE_COLUMNS))
        box = report.get("outbox")
        if box:
            click.echo(f"outbox: depth {box['depth']} (pending {box['pending']}, sending {box['sending']}), "
                       f"sent {box['sent']}, failed {box['failed']}, 429s {box['rate_limited']}")
        slots = report.get("slots")
        if slots:
            waiting = sum(row.get("slot_wait") or 0 for row in report["processes"])
            click.echo(f"connection slots: {slots['held']}/{slots['limit']} held"
                       + (f", {plural(waiting, 'connection')} waiting for one" if waiting else ""))
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
        _print_table([{**row, "age": ago(row.get("received_at"))} for row in rows],
                     ["envelope_id", "kind", "state", "owner", "attempts", "age", "error"])


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
    click.echo(f"pruned {plural(dropped, 'row')}")


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
    except OSError as exc:
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
@click.option("--json", "as_json", is_flag=True, help="Print what was checked as JSON.")
def check(as_json: bool) -> None:
    """Validate the config, import the app, test both tokens with Slack, and say what `run` would start."""
    from buidl_edge.app import AppError, load_app
    from buidl_edge.supervise import check_connection_budget, connection_need
    from buidl_edge.webapi import SlackApiError, WebApi

    settings = load_settings()
    check_connection_budget(settings)
    try:
        app = load_app(settings.app_spec)
    except AppError as exc:
        if exc.details:  # an error inside the user's module: where it happened
            click.echo(exc.details.rstrip("\n"), err=True)
        raise
    from buidl_edge.outbox import OutboxConfig

    OutboxConfig.from_env()  # the reply sender's settings, which workers read at start
    report: dict[str, Any] = {"app": {"spec": settings.app_spec, "name": app.name}}
    lines = [f"app ok: {settings.app_spec} imports (EdgeApp {app.name!r})"]
    api = WebApi(settings.api_url, timeout=settings.http_timeout)
    try:
        auth = api.auth_test(settings.bot_token)
        report["bot_token"] = {"ok": True, "user_id": auth.user_id, "team_id": auth.team_id}
        lines.append(f"bot token ok: user {auth.user_id} in team {auth.team_id}")
        api.open_connection(settings.app_token)
        report["app_token"] = {"ok": True}
        lines.append("app token ok: apps.connections.open returned a Socket Mode URL")
    except SlackApiError as exc:
        raise click.ClickException(f"Slack refused: {exc}") from None
    processes, connections = settings.processes, settings.connections
    need = connection_need(processes, connections)
    report["plan"] = {"processes": processes, "connections": connections, "links": processes * connections,
                      "links_with_refresh_spares": need, "slack_limit": SLACK_MAX_CONNECTIONS}
    lines.append(f"would run {plural(processes, 'process', 'processes')} x {plural(connections, 'connection')} "
                 f"= {plural(processes * connections, 'link')}, {need} with one refresh spare per process, "
                 f"of Slack's {SLACK_MAX_CONNECTIONS}")
    if (settings.store_url or "").startswith(("redis://", "rediss://")):
        store = _admin_store(settings)
        store.ping()
        where = store.describe()
        report["store"] = {"ok": True, "where": where, "max_app_connections": settings.max_app_connections}
        lines.append(f"store ok: {where} answers; the app may hold "
                     f"{plural(settings.max_app_connections, 'connection')} over every dyno")
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(lines))


@cli.command()
@click.argument("channel")
@click.argument("text", required=False)
@click.option("--blocks-file", type=click.File("rb"), default=None,
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
    from buidl_edge.status import live_workers
    from buidl_edge.webapi import RateLimited, SlackApiError

    if text == "-":
        text = _utf8(sys.stdin.buffer.read(), "stdin")
        # One trailing newline (the one `echo` adds) goes, as $(...) would drop it.
        text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    source = getattr(blocks_file, "name", "blocks file")
    source = "stdin" if source == "<stdin>" else str(source)
    blocks = _utf8(blocks_file.read(), source) if blocks_file else None
    try:
        reply = build_reply(channel, text, blocks, thread_ts, blocks_source=source)
    except MessageError as exc:
        raise click.ClickException(f"not sent: {exc}") from None
    except RecursionError:
        raise click.ClickException(f"not sent: {source} nests JSON too deeply to be Block Kit") from None
    if now:
        settings = load_settings()
        try:
            result = post_now(sender_webapi(settings.api_url, settings.http_timeout, 1), settings.bot_token, reply)
        except RateLimited as exc:
            raise click.ClickException(f"Slack rate-limited {channel}: retry after {exc.retry_after:g}s") from None
        except SlackApiError as exc:
            raise click.ClickException(f"Slack refused: {exc.error}") from None
        out = {"sent": True, "channel": result.get("channel", channel), "ts": result.get("ts")}
        click.echo(json.dumps(out) if as_json else f"sent to {out['channel']} (ts {out['ts']})")
        return
    settings = _state_settings()
    store = _admin_store(settings)
    try:
        if not store.durable:
            raise click.ClickException("not sent: the outbox lives in each worker's memory (BUIDL_STORE_URL="
                                       "memory://), so nothing here reaches it; use --now")
        row_id = store.outbox_enqueue([reply])[0]
        workers = live_workers(store)
    finally:
        store.close()
    out: dict[str, Any] = {"queued": True, "id": row_id, "channel": channel, "live_workers": len(workers)}
    warning = None
    if not workers:
        from buidl_edge.config import mask_url_password

        where = mask_url_password(str(settings.store_url or settings.database_path))
        warning = (f"no worker is heartbeating on {where}: the message waits there until one runs with "
                   "this store (BUIDL_STATE_DIR / BUIDL_STORE_URL)")
    if as_json:  # one document on stdout, the warning in it
        click.echo(json.dumps({**out, "warning": warning} if warning else out))
        return
    click.echo(f"queued message {row_id} to {channel}" + ("" if warning else "; a running worker posts it"))
    if warning:
        click.echo(f"warning: {warning}", err=True)


def _utf8(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"not sent: {source} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                                   f"at offset {exc.start})") from None


@cli.group()
def outbox() -> None:
    """Inspect and repair the durable outbox of messages to post."""


_OUTBOX_COLUMNS = ["id", "channel", "state", "attempts", "rate_limited", "age", "error", "text"]


def _outbox_line(row: Any) -> dict[str, Any]:
    text = row.text if row.text is not None else f"[{plural(len(row.blocks or []), 'block')}]"
    # A row retried and then sent keeps its last error in the store; here it is history, not news.
    error = None if row.state == "sent" else row.error
    return {"id": row.id, "channel": row.channel, "state": row.state, "attempts": row.attempts,
            "rate_limited": row.rate_limited, "age": ago(row.created_at),
            "error": error, "text": text if len(text) <= 40 else text[:39] + "…"}


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
@click.argument("row_id", metavar="ID", type=click.IntRange(1, 2**63 - 1))
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
    click.echo(f"purged {plural(_admin_store(_state_settings()).outbox_purge('failed'), 'failed row')}")


def main() -> None:
    cli(prog_name="buidl-edge")
