"""Configuration: every setting read from the environment (and the token files), validated
where it enters, with one-line errors that never echo a secret.

The rest of buidl-edge imports configuration from here; the modules below only divide the
work, and import nothing of ours but `ratelimit`'s PostLimits (a record, no I/O):

- `env`: the ConfigError, and the parsers of numbers and flags;
- `settings`: `Settings` and `load_settings`, what every command and worker loads;
- `secret`: the Slack tokens, `Secret`, and the token files under BUIDL_HOME;
- `urls`: wss:// and https:// outside loopback, BUIDL_STORE_URL, URLs as they may be printed;
- `proxy`: HTTPS_PROXY / NO_PROXY, for the Web API and the WebSocket alike;
- `outbox`: the reply sender's BUIDL_POST_* settings;
- `reporting`: logging's and Sentry's settings.

Names load with their module on first use (`__getattr__`), not all at once: supervisord's process
(`run`'s watch) needs only logging's settings, and `settings` alone would bring it dataclasses,
inspect and the rate-limit plans, about 1 MB it keeps for good (issue 26).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buidl_edge.config.env import ConfigError
    from buidl_edge.config.outbox import OutboxConfig
    from buidl_edge.config.proxy import Proxy, bypass_proxy, proxy_for, websocket_options
    from buidl_edge.config.reporting import log_options, process_name, sentry_options
    from buidl_edge.config.secret import TOKEN_KINDS, Secret, buidl_home, check_token_format, token_file, token_source
    from buidl_edge.config.settings import (
        DEFAULT_API_URL,
        DEFAULT_APP,
        MAX_CONNECTIONS_PER_PROCESS,
        MAX_PROCESSES,
        REFRESH_SPARE,
        SLACK_MAX_CONNECTIONS,
        Settings,
        check_app_spec,
        default_state_dir,
        load_settings,
        state_dir_from_env,
    )
    from buidl_edge.config.urls import absolute, check_transport_url, is_loopback_host, mask_url_password

__all__ = [
    "DEFAULT_API_URL", "DEFAULT_APP", "MAX_CONNECTIONS_PER_PROCESS", "MAX_PROCESSES", "REFRESH_SPARE",
    "SLACK_MAX_CONNECTIONS", "TOKEN_KINDS", "ConfigError", "OutboxConfig", "Proxy", "Secret",
    "Settings", "absolute", "buidl_home", "bypass_proxy", "check_app_spec", "check_token_format",
    "check_transport_url", "default_state_dir", "is_loopback_host", "load_settings", "log_options",
    "mask_url_password", "process_name", "proxy_for", "sentry_options", "state_dir_from_env",
    "token_file", "token_source", "websocket_options",
]

_HOMES = {
    "ConfigError": "env",
    "DEFAULT_API_URL": "settings",
    "DEFAULT_APP": "settings",
    "MAX_CONNECTIONS_PER_PROCESS": "settings",
    "MAX_PROCESSES": "settings",
    "OutboxConfig": "outbox",
    "Proxy": "proxy",
    "REFRESH_SPARE": "settings",
    "SLACK_MAX_CONNECTIONS": "settings",
    "Secret": "secret",
    "Settings": "settings",
    "TOKEN_KINDS": "secret",
    "absolute": "urls",
    "buidl_home": "secret",
    "bypass_proxy": "proxy",
    "check_app_spec": "settings",
    "check_token_format": "secret",
    "check_transport_url": "urls",
    "default_state_dir": "settings",
    "is_loopback_host": "urls",
    "load_settings": "settings",
    "log_options": "reporting",
    "mask_url_password": "urls",
    "process_name": "reporting",
    "proxy_for": "proxy",
    "sentry_options": "reporting",
    "state_dir_from_env": "settings",
    "token_file": "secret",
    "token_source": "secret",
    "websocket_options": "proxy",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found here at once from now on
    return value
