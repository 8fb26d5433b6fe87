"""`status`, `inbox …` and `outbox …`: what the workers are doing, read from supervisord and the
shared store, and the repairs an operator makes there."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from buidl_edge.cli.base import admin_store, cli, json_option, limit_option, state_option, state_settings
from buidl_edge.cli.output import ago, cell, plural, print_json, print_mapping, print_table

if TYPE_CHECKING:
    from buidl_edge.store.base import OutboxRow

INBOX_COLUMNS = ["envelope_id", "kind", "state", "owner", "attempts", "deliveries", "age", "error"]
OUTBOX_COLUMNS = ["id", "channel", "state", "attempts", "rate_limited", "age", "error", "text"]


@cli.command()
@json_option("Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Show each worker process: supervisord's state joined with the worker's heartbeat."""
    from buidl_edge.ops.status import collect_status

    settings = state_settings()
    with admin_store(settings) as store:
        report = collect_status(settings, store)
    if as_json:
        print_json(report)
    else:
        print_status(report)
    if report["supervisor"] != "running":
        sys.exit(1)


def print_status(report: dict[str, Any]) -> None:
    from buidl_edge.ops.status import table_columns

    if report["supervisor"] != "running":
        click.echo(f"supervisor: {cell(report['supervisor'])}")
    columns = table_columns(report["processes"])
    print_table([{header: column(row) for header, column in columns.items()} for row in report["processes"]],
                list(columns))
    box = report.get("outbox")
    if box:
        click.echo(f"outbox: depth {box['depth']} (pending {box['pending']}, sending {box['sending']}), "
                   f"sent {box['sent']}, failed {box['failed']}, 429s {box['rate_limited']}")
    relay = report.get("relay")
    if relay:
        oldest = relay["oldest_pending_age_s"]
        click.echo(f"relay: {relay['pending']} waiting for delivery to the app, {relay['processing']} in flight, "
                   f"{relay['failed']} failed" + (f", oldest waiting {oldest:.0f}s" if oldest is not None else ""))
    slots = report.get("slots")
    if slots:
        waiting = sum(row.get("slot_wait") or 0 for row in report["processes"])
        click.echo(f"connection slots: {slots['held']}/{slots['limit']} held"
                   + (f", {plural(waiting, 'connection')} waiting for one" if waiting else ""))


# -- inbox ---------------------------------------------------------------------------------------

@cli.group()
def inbox() -> None:
    """Inspect and repair the durable inbox of received envelopes."""


@inbox.command("stats")
@json_option()
def inbox_stats(as_json: bool) -> None:
    """Envelopes per state, keys held, and the oldest one still processing."""
    with admin_store() as store:
        stats = store.inbox_stats()
    if as_json:
        print_json(stats)
    else:
        print_mapping(stats)


@inbox.command("list")
@state_option("processing", "pending", "done", "failed")
@limit_option
@json_option()
def inbox_list(state: str | None, limit: int, as_json: bool) -> None:
    """The newest envelopes in the inbox."""
    with admin_store() as store:
        rows = store.inbox_list(state=state, limit=limit)
    if as_json:
        print_json(rows)
    else:
        print_table([{**row, "age": ago(row.get("received_at"))} for row in rows], INBOX_COLUMNS)


@inbox.command("retry")
@click.argument("envelope_id")
def inbox_retry(envelope_id: str) -> None:
    """Hand ENVELOPE_ID to the sweeper again (a running worker re-runs its handlers; in relay mode,
    delivers it to the app again, with a fresh attempt budget)."""
    with admin_store() as store:
        queued = store.retry(envelope_id)
    if not queued:
        raise click.ClickException(f"no envelope {envelope_id} in the inbox")
    click.echo(f"{envelope_id} queued for a re-run")


@inbox.command("prune")
@click.option("--retention", type=float, default=None,
              help="Seconds to keep (default BUIDL_RETENTION_S; never under 600).")
def inbox_prune(retention: float | None) -> None:
    """Drop handled envelopes and dedup keys older than the retention."""
    settings = state_settings()
    with admin_store(settings) as store:
        dropped = store.prune(settings.retention_s if retention is None else retention)
    click.echo(f"pruned {plural(dropped, 'row')}")


# -- outbox --------------------------------------------------------------------------------------

@cli.group()
def outbox() -> None:
    """Inspect and repair the durable outbox of messages to post."""


@outbox.command("stats")
@json_option()
def outbox_stats(as_json: bool) -> None:
    """Rows per state, depth, oldest unsent age, 429s seen, paused channels."""
    with admin_store() as store:
        stats = store.outbox_stats()
    if as_json:
        print_json(stats)
        return
    if "paused" in stats:
        paused = ", ".join(f"{p['bucket']} {p['for_s']:.1f}s" for p in stats["paused"])
        stats = {**stats, "paused": paused or "none"}
    print_mapping(stats)


@outbox.command("list")
@state_option("pending", "sending", "sent", "failed")
@click.option("--channel", default=None, help="Only rows to this channel.")
@limit_option
@json_option("Print JSON (whole rows).")
def outbox_list(state: str | None, channel: str | None, limit: int, as_json: bool) -> None:
    """The newest rows of the outbox."""
    with admin_store() as store:
        rows = store.outbox_list(state=state, channel=channel, limit=limit)
    if as_json:
        print_json([row.as_dict() for row in rows])
    else:
        print_table([outbox_line(row) for row in rows], OUTBOX_COLUMNS)


def outbox_line(row: OutboxRow) -> dict[str, Any]:
    text = row.text if row.text is not None else f"[{plural(len(row.blocks or []), 'block')}]"
    # A row retried and then sent keeps its last error in the store; here it is history, not news.
    error = None if row.state == "sent" else row.error
    return {"id": row.id, "channel": row.channel, "state": row.state, "attempts": row.attempts,
            "rate_limited": row.rate_limited, "age": ago(row.created_at),
            "error": error, "text": text if len(text) <= 40 else text[:39] + "…"}


class RowId(click.ParamType):
    """An outbox row's id, as `outbox list` shows it; anything else is said plainly."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        if text.isdigit() and 1 <= int(text) < 2**63:
            return int(text)
        self.fail(f"{text[:40]!r} is not a row id: give the number in the id column of `buidl-edge outbox list` "
                  "(e.g. 42)", param, ctx)


row_id_argument = click.argument("row_id", metavar="ID", type=RowId())


@outbox.command("retry")
@row_id_argument
def outbox_retry(row_id: int) -> None:
    """Queue failed row ID again, with a fresh attempt count."""
    with admin_store() as store:
        queued = store.outbox_retry(row_id)
    if not queued:
        raise click.ClickException(f"no failed row {row_id} in the outbox")
    click.echo(f"row {row_id} queued again")


@outbox.command("cancel")
@row_id_argument
def outbox_cancel(row_id: int) -> None:
    """Cancel queued row ID: it is not sent. It stays listed as failed ('cancelled by an operator'),
    so a re-run of its envelope does not queue it again; `outbox retry ID` undoes it."""
    with admin_store() as store:
        if store.outbox_cancel(row_id):
            click.echo(f"row {row_id} cancelled: it will not be sent (listed as failed, 'cancelled by an operator'; "
                       f"`outbox retry {row_id}` queues it again)")
            return
        row = store.outbox_row(row_id)
    if row is None:
        raise click.ClickException(f"no row {row_id} in the outbox")
    raise click.ClickException({"sending": f"row {row_id} is being sent right now; it can no longer be cancelled",
                                "sent": f"row {row_id} was sent already; nothing to cancel",
                                }.get(row.state, f"row {row_id} is {row.state}, not queued; nothing to cancel"))


@outbox.command("purge")
@click.option("--failed", is_flag=True, help="Delete every failed row.")
def outbox_purge(failed: bool) -> None:
    """Delete failed rows (see them first with `outbox list --state failed`)."""
    if not failed:
        raise click.UsageError("say what to purge: --failed")
    with admin_store() as store:
        purged = store.outbox_purge("failed")
    click.echo(f"purged {plural(purged, 'failed row')}")
