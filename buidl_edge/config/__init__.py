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
"""
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
