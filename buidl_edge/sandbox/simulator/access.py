"""How to reach the simulator: its URL, the tokens it takes, and what to export to point a worker
at it. Pure: no I/O, no gevent (the CLI and the tests import it in plain processes).

The simulator checks a token's type, not its value: any `xapp-…` opens a Socket Mode link
(`apps.connections.open`), any `xoxb-…` calls the Web API (`auth.test` takes either). Tokens
are made up at run time, so that no token-shaped string lives in the repository.
"""
from __future__ import annotations

import secrets
from urllib.parse import urlsplit

SIM_URL_VARIABLE = "BUIDL_SIM_URL"  # where `simulate` listens and `buidl-edge sim …` finds it
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_SIM_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
ACCEPTED = "any xapp- token opens a Socket Mode link, any xoxb- token calls the Web API"


def fake_tokens() -> dict[str, str]:
    """A fresh app and bot token pair of the right shapes, for the simulator only."""
    return {
        "SLACK_APP_TOKEN": "xapp-" + "-".join(["1", "A0SIM", secrets.token_hex(6), secrets.token_hex(16)]),
        "SLACK_BOT_TOKEN": "xoxb-" + "-".join([secrets.token_hex(5), secrets.token_hex(6), secrets.token_hex(12)]),
    }


def worker_exports(base_url: str) -> dict[str, str]:
    """The variables that aim a worker (and `buidl-edge sim …`) at the simulator at `base_url`."""
    base = base_url.rstrip("/")
    return {"SLACK_API_URL": f"{base}/api/", **fake_tokens(), SIM_URL_VARIABLE: base}


def export_lines(base_url: str) -> list[str]:
    """`export NAME=value` lines a shell can eval (the values need no quoting)."""
    return [f"export {name}={value}" for name, value in worker_exports(base_url).items()]


def listen_address(sim_url: str | None) -> tuple[str, int]:
    """(host, port) from a simulator URL such as `http://127.0.0.1:8765`; ValueError if it is not one."""
    if not sim_url:
        return DEFAULT_HOST, DEFAULT_PORT
    parts = urlsplit(sim_url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = -1
    if parts.scheme != "http" or not parts.hostname or parts.path.strip("/") or port == -1:
        raise ValueError(f"{SIM_URL_VARIABLE} must look like {DEFAULT_SIM_URL}, got {sim_url!r}")
    return parts.hostname, DEFAULT_PORT if port is None else port
