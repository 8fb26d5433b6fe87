"""Settings from the environment: defaults, validation, one-line errors that never echo a token."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from buidl_edge.config import (
    DEFAULT_API_URL,
    DEFAULT_APP,
    ConfigError,
    Secret,
    Settings,
    check_transport_url,
    is_loopback_host,
    load_settings,
)
from buidl_edge.harness import fake_tokens


@pytest.fixture
def tokens() -> dict[str, str]:
    return fake_tokens()


def env_with(tokens: dict[str, str], **extra: str) -> dict[str, str]:
    return {**tokens, **extra}


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return str(caught.value)


def assert_safe_one_liner(message: str, tokens: dict[str, str]) -> None:
    assert message and "\n" not in message
    for token in tokens.values():
        assert token not in message
        assert token.split("-", 1)[1] not in message


# -- good settings ----------------------------------------------------------------------


def test_defaults_from_tokens_alone(tokens: dict[str, str]) -> None:
    settings = load_settings(tokens)
    assert settings.app_token.reveal() == tokens["SLACK_APP_TOKEN"]
    assert settings.bot_token.reveal() == tokens["SLACK_BOT_TOKEN"]
    assert settings.api_url == DEFAULT_API_URL == "https://slack.com/api/"
    assert settings.connections == 1
    assert settings.app_spec == DEFAULT_APP
    assert settings.bot_user_id is None
    assert settings.websocket_debug is False
    assert (settings.backoff_base, settings.backoff_cap) == (1.0, 30.0)
    assert settings.ack_payload_deadline == 2.5


def test_every_variable_is_read(tokens: dict[str, str]) -> None:
    settings = load_settings(env_with(
        tokens, BOT_USER_ID="U0BOT", SLACK_API_URL="http://127.0.0.1:9/api/", BUIDL_CONNECTIONS="10",
        BUIDL_APP="my.pkg:app", WEBSOCKET_DEBUG="1", BUIDL_PING_INTERVAL="0.2", BUIDL_STALE_TIMEOUT="0.7",
        BUIDL_BACKOFF_BASE="0.5", BUIDL_BACKOFF_CAP="4", BUIDL_ACK_DEADLINE="1.5",
    ))
    assert settings.bot_user_id == "U0BOT"
    assert settings.api_url == "http://127.0.0.1:9/api/"
    assert settings.connections == 10
    assert settings.app_spec == "my.pkg:app"
    assert settings.websocket_debug is True
    assert (settings.ping_interval, settings.stale_timeout) == (0.2, 0.7)
    assert (settings.backoff_base, settings.backoff_cap) == (0.5, 4.0)
    assert settings.ack_payload_deadline == 1.5


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("on", True), ("0", False), ("", False)])
def test_websocket_debug_flag(tokens: dict[str, str], value: str, expected: bool) -> None:
    assert load_settings(env_with(tokens, WEBSOCKET_DEBUG=value)).websocket_debug is expected


def test_overrides_win_over_env_and_are_validated(tokens: dict[str, str]) -> None:
    settings = load_settings(env_with(tokens, BUIDL_CONNECTIONS="2"), connections=5, app_spec=None)
    assert settings.connections == 5 and settings.app_spec == DEFAULT_APP
    with pytest.raises(ConfigError):
        load_settings(tokens, connections=11)


def test_tokens_are_stripped_of_whitespace(tokens: dict[str, str]) -> None:
    settings = load_settings({k: f"  {v}\n" for k, v in tokens.items()})
    assert settings.app_token.reveal() == tokens["SLACK_APP_TOKEN"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765/api/", "http://localhost/api/", "http://[::1]:80/api/",
                                 "http://127.5.6.7/api/", "https://slack.example/api/"])
def test_loopback_http_and_any_https_api_url_are_allowed(tokens: dict[str, str], url: str) -> None:
    assert load_settings(env_with(tokens, SLACK_API_URL=url)).api_url == url


@pytest.mark.parametrize("n", ["1", "10"])
def test_connections_limits_are_inclusive(tokens: dict[str, str], n: str) -> None:
    assert load_settings(env_with(tokens, BUIDL_CONNECTIONS=n)).connections == int(n)


# -- errors: one line, never the token ------------------------------------------------------


@pytest.mark.parametrize("missing", ["SLACK_APP_TOKEN", "SLACK_BOT_TOKEN"])
@pytest.mark.parametrize("blank", [None, "", "   "])
def test_missing_token_names_the_variable(tokens: dict[str, str], missing: str, blank: str | None) -> None:
    env = dict(tokens)
    if blank is None:
        del env[missing]
    else:
        env[missing] = blank
    message = config_error(env)
    assert missing in message and "not set" in message
    assert_safe_one_liner(message, tokens)


def test_bot_token_given_as_app_token_says_what_it_is_without_echoing_it(tokens: dict[str, str]) -> None:
    env = env_with(tokens, SLACK_APP_TOKEN=tokens["SLACK_BOT_TOKEN"])
    message = config_error(env)
    assert "SLACK_APP_TOKEN" in message and "xapp-" in message and "bot token" in message
    assert_safe_one_liner(message, tokens)


def test_app_token_given_as_bot_token_is_refused(tokens: dict[str, str]) -> None:
    message = config_error(env_with(tokens, SLACK_BOT_TOKEN=tokens["SLACK_APP_TOKEN"]))
    assert "SLACK_BOT_TOKEN" in message and "xoxb-" in message and "app-level token" in message
    assert_safe_one_liner(message, tokens)


def test_user_token_and_garbage_are_named_as_such(tokens: dict[str, str]) -> None:
    user_token = "xoxp-" + tokens["SLACK_BOT_TOKEN"].split("-", 1)[1]
    message = config_error(env_with(tokens, SLACK_BOT_TOKEN=user_token))
    assert "user token" in message and user_token not in message
    garbage = "sk_live_" + tokens["SLACK_APP_TOKEN"][-20:]
    message = config_error(env_with(tokens, SLACK_APP_TOKEN=garbage))
    assert "not a Slack token" in message and garbage not in message and garbage[-20:] not in message


@pytest.mark.parametrize("url", ["http://slack.com/api/", "http://10.0.0.5/api/", "http://127.0.0.1.nip.io/api/",
                                 "http://localhost.evil.example/api/"])
def test_non_loopback_http_api_url_is_refused(tokens: dict[str, str], url: str) -> None:
    message = config_error(env_with(tokens, SLACK_API_URL=url))
    assert "SLACK_API_URL" in message and "https://" in message and "refused" in message
    assert_safe_one_liner(message, tokens)


@pytest.mark.parametrize("url", ["ftp://slack.com/api/", "slack.com/api/"])
def test_api_url_with_wrong_scheme_is_refused(tokens: dict[str, str], url: str) -> None:
    message = config_error(env_with(tokens, SLACK_API_URL=url))
    assert "SLACK_API_URL" in message and "https://" in message
    assert_safe_one_liner(message, tokens)


def test_api_url_must_end_with_slash(tokens: dict[str, str]) -> None:
    message = config_error(env_with(tokens, SLACK_API_URL="https://slack.com/api"))
    assert "end with '/'" in message


@pytest.mark.parametrize("value", ["0", "11", "-1", "100"])
def test_connections_out_of_range(tokens: dict[str, str], value: str) -> None:
    message = config_error(env_with(tokens, BUIDL_CONNECTIONS=value))
    assert "BUIDL_CONNECTIONS" in message and "1..10" in message and f"got {value}" in message
    assert_safe_one_liner(message, tokens)


@pytest.mark.parametrize("name", ["BUIDL_CONNECTIONS", "BUIDL_PING_INTERVAL", "BUIDL_BACKOFF_BASE"])
def test_non_numbers_are_named(tokens: dict[str, str], name: str) -> None:
    message = config_error(env_with(tokens, **{name: "lots\nmore"}))
    assert name in message and "number" in message
    assert_safe_one_liner(message, tokens)


def test_stale_timeout_must_exceed_ping_interval(tokens: dict[str, str]) -> None:
    message = config_error(env_with(tokens, BUIDL_PING_INTERVAL="5", BUIDL_STALE_TIMEOUT="5"))
    assert "BUIDL_STALE_TIMEOUT" in message


def test_ack_deadline_must_stay_under_slacks_three_seconds(tokens: dict[str, str]) -> None:
    assert "3 s" in config_error(env_with(tokens, BUIDL_ACK_DEADLINE="3"))


def test_nonpositive_timings_are_refused(tokens: dict[str, str]) -> None:
    assert "backoff_base" in config_error(env_with(tokens, BUIDL_BACKOFF_BASE="0"))


def test_app_spec_needs_a_colon(tokens: dict[str, str]) -> None:
    assert "module:attribute" in config_error(env_with(tokens, BUIDL_APP="buidl_edge.bot"))


# -- transport rule and the Secret wrapper ----------------------------------------------------


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
                                           ("localhost", True), ("10.0.0.1", False), ("example.com", False),
                                           ("", False), (None, False)])
def test_loopback_hosts(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_ws_socket_url_only_to_loopback() -> None:
    assert check_transport_url("wss://wss-primary.slack.com/link/?ticket=x", "wss", "ws", "URL")
    assert check_transport_url("ws://127.0.0.1:1/link/", "wss", "ws", "URL")
    with pytest.raises(ConfigError) as caught:
        check_transport_url("ws://wss-primary.slack.com/link/?ticket=abc", "wss", "ws", "Socket Mode URL")
    assert "wss://" in str(caught.value) and "ticket" not in str(caught.value)
    with pytest.raises(ConfigError):
        check_transport_url("https://slack.com/link/", "wss", "ws", "Socket Mode URL")


def test_secret_never_prints_whole(tokens: dict[str, str]) -> None:
    raw = tokens["SLACK_APP_TOKEN"]
    secret = Secret(raw)
    for shown in (str(secret), repr(secret), f"{secret}", secret.masked()):
        assert raw not in shown and shown.startswith(("xapp-", "Secret(xapp-"))
    assert secret.masked().endswith(raw[-4:])
    assert secret.kind == "xapp"
    assert Secret("xoxb-short").masked() == "xoxb-…"


def test_settings_repr_and_redacted_hide_tokens(tokens: dict[str, str]) -> None:
    settings = load_settings(tokens)
    shown = repr(settings) + str(settings.redacted())
    for token in tokens.values():
        assert token not in shown
    assert settings.redacted()["app_token"] == Secret(tokens["SLACK_APP_TOKEN"]).masked()
    assert isinstance(settings, Settings)


@pytest.mark.parametrize("command", ["config", "worker"])
def test_cli_config_error_is_one_line_without_token(tokens: dict[str, str], tmp_path: Path, command: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "SLACK_APP_TOKEN": tokens["SLACK_BOT_TOKEN"],
           "SLACK_BOT_TOKEN": tokens["SLACK_BOT_TOKEN"], "BUIDL_STATE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "buidl_edge", command], env=env, capture_output=True,
                            text=True, timeout=30, cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "SLACK_APP_TOKEN must start with xapp-" in lines[0]
    for token in tokens.values():
        assert token not in output
