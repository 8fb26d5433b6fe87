"""Relay mode's settings: the backend URL (BUIDL_RELAY_URL), the signing secret
(SLACK_SIGNING_SECRET), and where plain http:// may go.

A relay posts Slack's own HTTP-mode requests to an app that trusts them by their signature, so
the URL is held to the rule the rest of the edge follows: https:// anywhere (TLS verified), and
http:// only to loopback or to a private host the user named in BUIDL_RELAY_PRIVATE_HOSTS
(a Bolt app in the same pod or compose network). A name given there must resolve to private
addresses only; that is checked where the request is made (buidl_edge/relay/client.py).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from buidl_edge.config.env import ConfigError
from buidl_edge.config.secret import MissingSecret, Secret
from buidl_edge.config.urls import is_loopback_host

SIGNING_SECRET_VARIABLE = "SLACK_SIGNING_SECRET"


class SigningSecret(Secret):
    """The app's Signing Secret: shown as its last four characters, never whole."""

    __slots__ = ()

    @property
    def kind(self) -> str:
        return "signing-secret"

    def masked(self) -> str:
        return f"…{self._value[-4:]}" if len(self._value) > 12 else "…"

    def __repr__(self) -> str:
        return f"SigningSecret({self.masked()})"

    __str__ = masked


def load_signing_secret(env: Mapping[str, str], required: bool) -> Secret:
    """SLACK_SIGNING_SECRET, checked; a MissingSecret carrying the reason when not `required`."""
    raw = (env.get(SIGNING_SECRET_VARIABLE) or "").strip()
    problem = None
    if not raw:
        problem = (f"{SIGNING_SECRET_VARIABLE} is not set: relay mode signs each request with the app's "
                   "Signing Secret (Basic Information page of the app), as Slack does")
    elif len(raw) < 16 or any(c.isspace() or c in "\"'" for c in raw):
        problem = (f"{SIGNING_SECRET_VARIABLE} does not look like a Slack Signing Secret "
                   "(too short, or it holds spaces or quotes)")
    if problem is None:
        return SigningSecret(raw)
    if required:
        raise ConfigError(problem)
    return MissingSecret(problem)


def private_hosts(raw: str | None) -> tuple[str, ...]:
    """BUIDL_RELAY_PRIVATE_HOSTS: host names or addresses, comma or space separated, lower-cased."""
    names = (raw or "").replace(",", " ").split()
    return tuple(dict.fromkeys(name.strip("[]").lower() for name in names))


def is_private_address(address: str) -> bool:
    """An address that is not on the public internet: RFC 1918, ULA, link-local, CGNAT, loopback."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return not ip.is_global and not ip.is_multicast and not ip.is_unspecified


def check_relay_url(url: str, allowed: tuple[str, ...]) -> str:
    """The backend URL as the relay may use it; a one-line ConfigError that says how to fix it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (property: parses and range-checks the port)
    except ValueError:
        raise ConfigError("BUIDL_RELAY_URL is not a valid URL (check its port)") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError("BUIDL_RELAY_URL must be the app's Request URL, like "
                          "http://127.0.0.1:3000/slack/events or https://app.internal/slack/events")
    if parts.scheme == "https" or is_loopback_host(host):
        return url
    if host not in allowed:
        raise ConfigError(f"BUIDL_RELAY_URL: http:// to {host} is refused; use https://, a loopback address, "
                          f"or name the host in BUIDL_RELAY_PRIVATE_HOSTS if it is a private one")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return url  # a name: resolved (and held to private addresses) where each request is made
    if not is_private_address(host):
        raise ConfigError(f"BUIDL_RELAY_URL: http:// to {host} is refused: it is a public address "
                          "(BUIDL_RELAY_PRIVATE_HOSTS admits private ones only); use https://")
    return url
