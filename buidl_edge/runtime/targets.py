"""Which target a worker feeds: its EdgeApp's handlers, the relay to an HTTP-mode app, or a Bolt
app run in-process. The relay and Bolt modules are imported only when the configuration uses them."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from buidl_edge.observability.sentry import report_relay_failure

if TYPE_CHECKING:
    from buidl_edge.api.app import EdgeApp
    from buidl_edge.config import Settings
    from buidl_edge.dispatch.targets import Target, TargetHooks
    from buidl_edge.relay.relay import Relay
    from buidl_edge.store.base import EdgeStore
    from buidl_edge.store.failover import Failover


def running_what(relay: Relay | None, bolt_app: Any, app: EdgeApp) -> str:
    """What the worker's start line says it runs."""
    if relay is not None:
        return f"relaying to {relay.client.shown}"
    if bolt_app is not None:
        from buidl_edge.bolt.loading import describe_bolt_app

        return str(describe_bolt_app(bolt_app))
    return f"app {app.name}"


def bolt_target(bolt_app: Any, handler_concurrency: int) -> Callable[[TargetHooks], Target] | None:
    """A Bolt app's target, built on the dispatcher's store calls (None for an EdgeApp)."""
    if bolt_app is None:
        return None
    from buidl_edge.bolt.target import BoltTarget  # imported only for a Bolt app

    return lambda hooks: BoltTarget(bolt_app, hooks, handler_concurrency)


def relay_target(relay: Relay | None) -> Target | None:
    if relay is None:
        return None
    from buidl_edge.relay.target import RelayTarget  # imported only in relay mode

    return RelayTarget(relay)


def start_relay(settings: Settings, store: EdgeStore, owner: str, failover: Failover) -> Relay | None:
    """Relay mode's deliverer (None otherwise): every envelope goes to the HTTP-mode app."""
    if not settings.relay or settings.relay_url is None or settings.signing_secret is None:
        return None
    from buidl_edge.relay.client import BackendClient
    from buidl_edge.relay.relay import Relay

    client = BackendClient(settings.relay_url, settings.relay_private_hosts, settings.relay_timeout,
                           settings.relay_concurrency)
    return Relay(store, client, settings.signing_secret, owner,
                 ack_deadline=settings.ack_payload_deadline, max_attempts=settings.relay_max_attempts,
                 backoff_base=settings.relay_backoff_base, backoff_cap=settings.relay_backoff_cap,
                 lease_s=settings.lease_s, concurrency=settings.relay_concurrency, failover=failover,
                 on_failed=report_relay_failure).start(own_chores=False)
