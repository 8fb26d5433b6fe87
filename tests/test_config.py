"""Settings from the environment: defaults, validation, one-line errors that never echo a token."""
from __future__ import annotations

import json
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
from buidl_edge.sandbox.harness import fake_tokens
from support import assert_no_secret


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
    assert_no_secret(message, tokens, "the error message")


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
        tokens, BOT_USER_ID="U0BOT", SLACK_API_URL="http://127.0.0.1:9/api/", BUIDL_CONNECTIONS="9",
        BUIDL_APP="my.pkg:app", WEBSOCKET_DEBUG="1", BUIDL_PING_INTERVAL="0.2", BUIDL_STALE_TIMEOUT="0.7",
        BUIDL_BACKOFF_BASE="0.5", BUIDL_BACKOFF_CAP="4", BUIDL_ACK_DEADLINE="1.5",
    ))
    assert settings.bot_user_id == "U0BOT"
    assert settings.api_url == "http://127.0.0.1:9/api/"
    assert settings.connections == 9
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


@pytest.mark.parametrize("n", ["1", "9"])
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


def test_api_url_without_its_trailing_slash_is_the_same_base(tokens: dict[str, str]) -> None:
    for url in ("https://slack.com/api", "https://slack.com/api/"):
        assert load_settings(env_with(tokens, SLACK_API_URL=url)).api_url == "https://slack.com/api/"


@pytest.mark.parametrize("value", ["0", "10", "-1", "100"])
def test_connections_out_of_range(tokens: dict[str, str], value: str) -> None:
    # 10 is Slack's limit per app, and a process keeps one link spare for a refresh overlap.
    message = config_error(env_with(tokens, BUIDL_CONNECTIONS=value))
    assert "BUIDL_CONNECTIONS" in message and "1..9" in message and f"got {value}" in message
    assert "one spare for a refresh" in message
    assert_safe_one_liner(message, tokens)


@pytest.mark.parametrize("name", ["BUIDL_CONNECTIONS", "BUIDL_PING_INTERVAL", "BUIDL_BACKOFF_BASE"])
def test_non_numbers_are_named(tokens: dict[str, str], name: str) -> None:
    message = config_error(env_with(tokens, **{name: "lots\nmore"}))
    assert name in message and "number" in message
    assert_safe_one_liner(message, tokens)


@pytest.mark.parametrize("value", ["-1", "101"])
def test_finish_delay_out_of_range(tokens: dict[str, str], value: str) -> None:
    message = config_error(env_with(tokens, BUIDL_FINISH_DELAY_MS=value))
    assert "BUIDL_FINISH_DELAY_MS" in message and "0 (write at once) to 100" in message and f"got {value}" in message
    assert_safe_one_liner(message, tokens)


def test_finish_delay_is_25_ms_unless_set(tokens: dict[str, str]) -> None:
    assert load_settings(env_with(tokens)).finish_delay_ms == 25
    assert load_settings(env_with(tokens, BUIDL_FINISH_DELAY_MS="0")).finish_delay_ms == 0


def test_stale_timeout_must_exceed_ping_interval(tokens: dict[str, str]) -> None:
    message = config_error(env_with(tokens, BUIDL_PING_INTERVAL="5", BUIDL_STALE_TIMEOUT="5"))
    assert "BUIDL_STALE_TIMEOUT" in message


def test_ack_deadline_must_stay_under_slacks_three_seconds(tokens: dict[str, str]) -> None:
    assert "3 s" in config_error(env_with(tokens, BUIDL_ACK_DEADLINE="3"))


def test_nonpositive_timings_are_refused(tokens: dict[str, str]) -> None:
    assert "backoff_base" in config_error(env_with(tokens, BUIDL_BACKOFF_BASE="0"))


def test_app_spec_needs_a_colon(tokens: dict[str, str]) -> None:
    assert "module:attribute" in config_error(env_with(tokens, BUIDL_APP="buidl_edge.api.bot"))


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


@pytest.mark.parametrize("command", ["check", "worker", "run"])
def test_cli_config_error_is_one_line_without_token(tokens: dict[str, str], tmp_path: Path, command: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "SLACK_APP_TOKEN": tokens["SLACK_BOT_TOKEN"],
           "SLACK_BOT_TOKEN": tokens["SLACK_BOT_TOKEN"], "BUIDL_STATE_DIR": str(tmp_path)}
    result = run_cli(env, tmp_path, command)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "SLACK_APP_TOKEN must start with xapp-" in lines[0]
    for token in tokens.values():
        assert token not in output


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buidl_edge", *args], env=env, capture_output=True,
                          text=True, timeout=30, cwd=cwd, stdin=subprocess.DEVNULL)


# -- the state dir: one place, whatever the working directory ---------------------------------


def test_state_dir_defaults_to_buidl_home_and_is_absolute_for_every_command(tokens: dict[str, str],
                                                                             tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(env_with(tokens, BUIDL_HOME=str(home)))
    assert settings.state_dir == home / "state" and settings.state_dir.is_absolute()
    assert settings.database_path == home / "state" / "edge.sqlite3"
    # BUIDL_STATE_DIR wins, and a relative one is taken from the working directory once, here.
    relative = load_settings(env_with(tokens, BUIDL_HOME=str(home), BUIDL_STATE_DIR="rel/state",
                                      BUIDL_STORE_URL="sqlite:///rel/edge.sqlite3"))
    assert relative.state_dir == Path.cwd() / "rel" / "state"
    assert relative.store_url == f"sqlite:///{Path.cwd() / 'rel' / 'edge.sqlite3'}"

    # Two commands started in two directories agree on where the store is.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "user"), "BUIDL_HOME": str(home), **tokens}
    seen = []
    for cwd in (tmp_path, tmp_path / "elsewhere"):
        cwd.mkdir(exist_ok=True)
        result = run_cli(env, cwd, "config", "--json")
        assert result.returncode == 0, result.stderr
        seen.append(json.loads(result.stdout)["state_dir"])
        assert not (cwd / ".buidl").exists()
    assert seen == [str(home / "state")] * 2


# -- config output: every setting, a missing token marked, URLs without userinfo ----------------


def test_config_prints_every_setting_with_a_missing_token_marked_and_passwords_masked(
        tokens: dict[str, str], tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BUIDL_STATE_DIR": str(tmp_path / "state"),
           "SLACK_APP_TOKEN": tokens["SLACK_APP_TOKEN"],  # no bot token, in the env or in a file
           "SLACK_API_URL": "http://apiuser:api-pass-w0rd@127.0.0.1:9/api/",
           "BUIDL_STORE_URL": "redis://default:redis-pass-w0rd@127.0.0.1:6390/0?password=query-pass-w0rd"}
    table = run_cli(env, tmp_path, "config")
    assert table.returncode == 1 and table.stderr == "Error: `run` would refuse 1 setting: bot_token\n"
    rows = dict(line.split(None, 1) for line in table.stdout.splitlines())
    assert rows["app_token"] == Secret(tokens["SLACK_APP_TOKEN"]).masked()
    assert rows["bot_token"].startswith("NOT USABLE: SLACK_BOT_TOKEN is not set")
    assert rows["processes"] == "2" and rows["state_dir"] == str(tmp_path / "state")
    assert rows["api_url"] == "http://apiuser:***@127.0.0.1:9/api/"
    assert rows["store_url"] == "redis://default:***@127.0.0.1:6390/0?password=***"

    as_json = run_cli(env, tmp_path, "config", "--json")
    values = json.loads(as_json.stdout)
    assert values["bot_token"] is None and "SLACK_BOT_TOKEN is not set" in values["token_problems"]["bot_token"]
    assert values["app_token"] == rows["app_token"]
    for output in (table.stdout, as_json.stdout):
        assert "pass-w0rd" not in output and tokens["SLACK_APP_TOKEN"] not in output


def test_settings_load_without_tokens_only_when_asked_and_a_missing_token_cannot_be_used(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN is not set"):
        load_settings(env)
    settings = load_settings(env, require_tokens=False)
    assert set(settings.token_problems()) == {"app_token", "bot_token"}
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN is not set"):
        settings.bot_token.reveal()
    assert "unused" not in repr(settings)  # no placeholder token stands in for the missing one


# -- values refused where they enter ----------------------------------------------------------------


@pytest.mark.parametrize("level", ["LOUD", "verbose", "5"])
def test_unknown_log_level_is_refused(tokens: dict[str, str], level: str) -> None:
    message = config_error(env_with(tokens, BUIDL_LOG_LEVEL=level))
    assert "BUIDL_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in message
    assert load_settings(env_with(tokens, BUIDL_LOG_LEVEL="warn")).log_level == "WARNING"
    assert "BUIDL_LOG_FORMAT" in config_error(env_with(tokens, BUIDL_LOG_FORMAT="xml"))


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:abc/0", "BUIDL_STORE_URL has a bad port 'abc'"),
    ("redis://user:s3cret-pw@127.0.0.1:99999/0", "BUIDL_STORE_URL has a bad port '99999'"),
    ("redis://127.0.0.1:6379/zero", "BUIDL_STORE_URL's database must be a number"),
    ("sqlite:///", "BUIDL_STORE_URL sqlite:/// needs a file path"),
    ("postgres://db/edge", "BUIDL_STORE_URL must be sqlite:///path, redis://… or memory://"),
])
def test_store_url_is_checked_where_it_enters(tokens: dict[str, str], url: str, expected: str) -> None:
    message = config_error(env_with(tokens, BUIDL_STORE_URL=url))
    assert message.startswith(expected), message
    assert "s3cret-pw" not in message
    assert_safe_one_liner(message, tokens)


@pytest.mark.parametrize("spec, expected", [
    (":x", "BUIDL_APP must look like module:attribute"),
    (".rel:x", "BUIDL_APP names a relative module ('.rel')"),
    ("my bot:app", "BUIDL_APP must be a dotted module path"),
    ("buidl_edge.api.bot", "BUIDL_APP must look like module:attribute"),
])
def test_app_spec_is_checked_where_it_enters(tokens: dict[str, str], spec: str, expected: str) -> None:
    assert config_error(env_with(tokens, BUIDL_APP=spec)).startswith(expected)


@pytest.mark.parametrize("env_extra, expected", [
    ({"BUIDL_APP": ":x"}, "Error: BUIDL_APP must look like module:attribute (e.g. my_bot:app), got ':x'"),
    ({"BUIDL_APP": ".rel:x"}, ("Error: BUIDL_APP names a relative module ('.rel'): give the full dotted "
                               "path, like my_package.rel:x")),
    ({"BUIDL_STORE_URL": "redis://127.0.0.1:abc/0"}, ("Error: BUIDL_STORE_URL has a bad port 'abc': it must be "
                                                      "a number (1..65535), like redis://host:6379/0")),
    ({"BUIDL_LOG_LEVEL": "LOUD"}, ("Error: BUIDL_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, "
                                   "CRITICAL, got 'LOUD'")),
])
def test_bad_settings_are_one_line_in_every_command(tmp_path: Path, env_extra: dict[str, str], expected: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BUIDL_STATE_DIR": str(tmp_path / "state"),
           **fake_tokens(), **env_extra}
    for args in (("config",), ("status",), ("check",), ("send", "C0ONE", "hi")):
        result = run_cli(env, tmp_path, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.splitlines() == [expected], (args, result.stderr)
    worker = run_cli(env, tmp_path, "worker")
    assert worker.returncode == 3
    assert worker.stderr.splitlines() == [expected.replace("Error: ", "buidl-edge worker: cannot start: ")]
    assert not (tmp_path / "state").exists()
