"""`config` (the resolved settings, secrets masked) and `check` (will `run` work here?)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click

from buidl_edge.cli.base import admin_store, cli, json_option, state_settings
from buidl_edge.cli.output import cell, plural, print_json
from buidl_edge.config import SLACK_MAX_CONNECTIONS, ConfigError, Settings, load_settings


@cli.command("config")
@json_option("Print JSON instead of a table.")
def show_config(as_json: bool) -> None:
    """Print the resolved settings: tokens masked (a missing one marked), URLs without userinfo, and
    every setting `run` would refuse flagged (then the exit status is 1)."""
    from buidl_edge.ops.run_checks import refusals

    settings = state_settings()
    values = settings.redacted()
    problems = settings.token_problems()
    refused = refusals(settings)
    rows = {**values, **{key: None for key in refused if key not in values}}  # `outbox` is not a field
    if as_json:
        print_json({**values, "token_problems": problems, "refused": refused})
    else:
        width = max(len(k) for k in rows)
        for key, value in rows.items():
            shown = cell(value) if key in values else ""
            if key in problems:
                shown = f"NOT USABLE: {problems[key]}"
            elif key in refused:
                shown = f"{shown}  REFUSED: {refused[key]}".lstrip()
            click.echo(f"{key.ljust(width)}  {shown}")
    if refused:
        names = [key for key in rows if key in refused]
        raise click.ClickException(f"`run` would refuse {plural(len(names), 'setting')}: {', '.join(names)}")


@cli.command()
@json_option("Print what was checked as JSON.")
def check(as_json: bool) -> None:
    """Validate the config, import the app (in relay mode: ping the app behind the relay), test both
    tokens with Slack, and say what `run` would start."""
    found = preflight(load_settings())
    if as_json:
        print_json(found.report)
    else:
        click.echo("\n".join(found.lines))


@dataclass
class Preflight:
    """What `check` found: a report for --json, and the lines an operator reads."""

    report: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def add(self, key: str, value: dict[str, Any], line: str) -> None:
        self.report[key] = value
        self.lines.append(line)


def preflight(settings: Settings) -> Preflight:
    """Everything `run` needs, tried in the order `run` needs it; the first failure raises."""
    from buidl_edge.api.app import EdgeApp
    from buidl_edge.bolt.loading import describe_bolt_app, load_edge_or_bolt_app
    from buidl_edge.ops.run_checks import check_everything
    from buidl_edge.ops.supervise import connection_need
    from buidl_edge.webapi.client import WebApi

    check_everything(settings)  # what `run` and its workers refuse before they call Slack
    found = Preflight()
    if settings.relay:
        found.add("app", {"relay": True}, "app: relay mode, no EdgeApp (BUIDL_APP is not used)")
    else:
        app = load_edge_or_bolt_app(settings.app_spec)
        if isinstance(app, EdgeApp):
            found.add("app", {"spec": settings.app_spec, "name": app.name},
                      f"app ok: {settings.app_spec} imports (EdgeApp {app.name!r})")
        else:
            found.add("app", {"spec": settings.app_spec, "name": app.name, "bolt": True},
                      f"app ok: {settings.app_spec} imports ({describe_bolt_app(app)}); `run` runs it in-process "
                      "behind buidl-edge's links")
    api = WebApi(settings.api_url, timeout=settings.http_timeout)
    auth = api.auth_test(settings.bot_token)
    found.add("bot_token", {"ok": True, "user_id": auth.user_id, "team_id": auth.team_id},
              f"bot token ok: user {auth.user_id} in team {auth.team_id}")
    api.open_connection(settings.app_token)
    found.add("app_token", {"ok": True}, "app token ok: apps.connections.open returned a Socket Mode URL")
    if settings.relay:
        value, line = check_backend(settings)
        found.add("relay", value, line)
    processes, connections = settings.processes, settings.connections
    need = connection_need(processes, connections)
    found.add("plan", {"processes": processes, "connections": connections, "links": processes * connections,
                       "links_with_refresh_spares": need, "slack_limit": SLACK_MAX_CONNECTIONS},
              f"would run {plural(processes, 'process', 'processes')} x {plural(connections, 'connection')} "
              f"= {plural(processes * connections, 'link')}, {need} with one refresh spare per process, "
              f"of Slack's {SLACK_MAX_CONNECTIONS}")
    if (settings.store_url or "").startswith(("redis://", "rediss://")):
        with admin_store(settings) as store:
            store.ping()
            where = store.describe()
            found.add("store", {"ok": True, "where": where,
                                "max_app_connections": settings.max_app_connections},
                      f"store ok: {where} answers; the app may hold "
                      f"{plural(settings.max_app_connections, 'connection')} over every dyno")
    return found


class BackendCheckError(ConfigError):
    """The app behind the relay does not answer, or refuses what the relay signs."""


def check_backend(settings: Settings) -> tuple[dict[str, Any], str]:
    """Post the app a signed url_verification event, as Slack does to a new Request URL: an HTTP-mode
    app answers it with the challenge once its signature check passed, and it changes nothing."""
    import secrets
    import time

    from buidl_edge.observability.redaction import register_secret
    from buidl_edge.relay.client import BackendClient
    from buidl_edge.relay.request import url_verification

    assert settings.relay_url is not None and settings.signing_secret is not None
    register_secret(settings.signing_secret.reveal())
    client = BackendClient(settings.relay_url, settings.relay_private_hosts, settings.relay_timeout, 1)
    shown, challenge = client.shown, secrets.token_urlsafe(12)
    try:
        answer = client.post(url_verification(challenge, settings.signing_secret.reveal(), time.time()))
    finally:
        client.close()
    if answer.status in (401, 403):
        raise BackendCheckError(f"the app at {shown} refused the signed request (HTTP {answer.status}): "
                                "SLACK_SIGNING_SECRET is not its Signing Secret (or this host's clock is off)")
    if answer.kind != "ok":
        hint = " (is BUIDL_RELAY_URL the app's Request URL? Bolt's is /slack/events)" if answer.status == 404 else ""
        raise BackendCheckError(f"the app at {shown} cannot take deliveries: {answer.error}{hint}")
    echoed = challenge in answer.body.decode("utf-8", "replace")
    ms = round(answer.elapsed * 1000)
    value = {"ok": True, "url": shown, "status": answer.status, "signature_accepted": echoed, "latency_ms": ms,
             "signing_secret": settings.signing_secret.masked()}
    verdict = ("accepted the signature (it echoed the url_verification challenge)" if echoed else
               "answered, without echoing the url_verification challenge (not a Bolt app? its signature "
               "check is not proven)")
    return value, (f"relay ok: the app at {shown} {verdict} in {ms} ms; requests are signed with "
                   f"SLACK_SIGNING_SECRET {settings.signing_secret.masked()}")
