"""Token files: `buidl-edge token set/show/rm`, their modes, and how load_settings falls back to them."""
from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buidl_edge.config import ConfigError, load_settings
from buidl_edge.ops import tokens
from buidl_edge.sandbox.harness import WorkerProcess, fake_tokens, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from support import assert_no_secret

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake() -> dict[str, str]:
    return fake_tokens()


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BUIDL_", "SENTRY_"))}
    env.update(BUIDL_HOME=str(home), **extra)
    return env


def token_cli(home: Path, *args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buidl_edge", "token", *args], input=stdin, env=cli_env(home, **extra),
                          capture_output=True, text=True, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_set_show_rm_round_trip(tmp_path: Path, fake: dict[str, str]) -> None:
    home = tmp_path / "buidl-home"
    app, bot = fake["SLACK_APP_TOKEN"], fake["SLACK_BOT_TOKEN"]
    for flag, value in (("--app", app), ("--bot", bot)):
        result = token_cli(home, "set", flag, stdin=value + "\n")
        assert result.returncode == 0, result.stderr
        assert_no_secret(result.stdout + result.stderr, fake)
    assert (home / "token").read_text().strip() == app  # the old Buidl client's file name
    assert (home / "bot_token").read_text().strip() == bot
    assert mode(home) == 0o700 and mode(home / "token") == 0o600 and mode(home / "bot_token") == 0o600
    assert sorted(p.name for p in home.iterdir()) == ["bot_token", "token"]  # no temporary file left

    shown = token_cli(home, "show")
    assert shown.returncode == 0, shown.stderr
    assert_no_secret(shown.stdout, fake)
    assert f"app  xapp-…{app[-4:]}  from {home / 'token'}" in shown.stdout
    assert f"bot  xoxb-…{bot[-4:]}  from {home / 'bot_token'}" in shown.stdout

    # The environment wins, and show says so.
    other = fake_tokens()["SLACK_BOT_TOKEN"]
    shown = token_cli(home, "show", SLACK_BOT_TOKEN=other)
    assert f"bot  xoxb-…{other[-4:]}  from SLACK_BOT_TOKEN (overrides {home / 'bot_token'})" in shown.stdout

    removed = token_cli(home, "rm", "--bot")
    assert removed.returncode == 0 and f"removed {home / 'bot_token'}" in removed.stdout
    assert (home / "token").exists() and not (home / "bot_token").exists()
    assert "bot  not set" in token_cli(home, "show").stdout
    assert token_cli(home, "rm").returncode == 0
    assert list(home.iterdir()) == []


def test_set_refuses_a_malformed_token_without_echoing_it(tmp_path: Path, fake: dict[str, str]) -> None:
    home = tmp_path / "home"
    pasted = f'"{fake["SLACK_BOT_TOKEN"]}"'  # quotes pasted along
    result = token_cli(home, "set", "--bot", stdin=pasted)
    assert result.returncode != 0 and "must start with xoxb-" in result.stderr
    wrong_kind = token_cli(home, "set", "--app", stdin=fake["SLACK_BOT_TOKEN"])
    assert wrong_kind.returncode != 0 and "bot token" in wrong_kind.stderr
    two = token_cli(home, "set", "--bot", stdin=f"{fake['SLACK_BOT_TOKEN']} {fake['SLACK_BOT_TOKEN']}")
    assert two.returncode != 0 and "characters no Slack token has" in two.stderr
    assert token_cli(home, "set", stdin=fake["SLACK_BOT_TOKEN"]).returncode == 2  # --app or --bot is required
    for output in (result, wrong_kind, two):
        assert_no_secret(output.stdout + output.stderr, fake)
    assert not (home / "token").exists() and not (home / "bot_token").exists()


def test_set_on_a_terminal_prompts_without_echo(tmp_path: Path, fake: dict[str, str]) -> None:
    home = tmp_path / "home"
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of its own
        os.execve(sys.executable, [sys.executable, "-m", "buidl_edge", "token", "set", "--app"], cli_env(home))
    seen = b""
    try:
        seen += _read_until(fd, b"(xapp-", 15)
        os.write(fd, fake["SLACK_APP_TOKEN"].encode() + b"\r")
        seen += _read_until(fd, b"mode 600", 15)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert_no_secret(seen.decode(errors="replace"), fake)
    assert (home / "token").read_text().strip() == fake["SLACK_APP_TOKEN"]


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    assert marker in data, data
    return data


def test_save_writes_0600_whatever_the_umask_and_tightens_the_directory(tmp_path: Path, fake: dict[str, str]) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    old = os.umask(0)
    try:
        path = tokens.save("app", fake["SLACK_APP_TOKEN"], {"BUIDL_HOME": str(home)})
    finally:
        os.umask(old)
    assert path == home / "token" and mode(path) == 0o600 and mode(home) == 0o700


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o660])
def test_a_file_group_or_others_can_read_is_refused(tmp_path: Path, fake: dict[str, str], bits: int) -> None:
    path = tokens.save("app", fake["SLACK_APP_TOKEN"], {"BUIDL_HOME": str(tmp_path)})
    env = {"BUIDL_HOME": str(tmp_path), "SLACK_BOT_TOKEN": fake["SLACK_BOT_TOKEN"]}
    assert load_settings(env).app_token.reveal() == fake["SLACK_APP_TOKEN"]  # 0600 is used
    os.chmod(path, bits)
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert f"chmod 600 {path}" in message and "\n" not in message
    assert_no_secret(message, fake)
    shown = token_cli(tmp_path, "show")
    assert shown.returncode == 1 and f"chmod 600 {path}" in shown.stdout


def test_environment_wins_over_files_and_files_fill_in(tmp_path: Path, fake: dict[str, str]) -> None:
    stored = fake_tokens()
    tokens.save("app", stored["SLACK_APP_TOKEN"], {"BUIDL_HOME": str(tmp_path)})
    tokens.save("bot", stored["SLACK_BOT_TOKEN"], {"BUIDL_HOME": str(tmp_path)})
    home = {"BUIDL_HOME": str(tmp_path)}
    from_files = load_settings(home)
    assert from_files.app_token.reveal() == stored["SLACK_APP_TOKEN"]
    assert from_files.bot_token.reveal() == stored["SLACK_BOT_TOKEN"]
    mixed = load_settings({**home, "SLACK_APP_TOKEN": fake["SLACK_APP_TOKEN"], "SLACK_BOT_TOKEN": " "})
    assert mixed.app_token.reveal() == fake["SLACK_APP_TOKEN"]
    assert mixed.bot_token.reveal() == stored["SLACK_BOT_TOKEN"]
    # A bad value in the environment is an error, not a reason to fall back to the file.
    with pytest.raises(ConfigError):
        load_settings({**home, "SLACK_APP_TOKEN": fake["SLACK_BOT_TOKEN"]})


def test_home_defaults_to_dot_buidl_under_home(tmp_path: Path, fake: dict[str, str]) -> None:
    env = {"HOME": str(tmp_path)}
    path = tokens.save("bot", fake["SLACK_BOT_TOKEN"], env)
    assert path == tmp_path / ".buidl" / "bot_token"
    with pytest.raises(ConfigError) as caught:
        load_settings(env)  # no app token anywhere
    assert "SLACK_APP_TOKEN is not set" in str(caught.value) and "token set --app" in str(caught.value)


def test_a_malformed_file_is_named_without_its_content(tmp_path: Path, fake: dict[str, str]) -> None:
    path = tmp_path / "token"
    path.write_text(fake["SLACK_BOT_TOKEN"])  # the bot token in the app token's file
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as caught:
        load_settings({"BUIDL_HOME": str(tmp_path), "SLACK_BOT_TOKEN": fake["SLACK_BOT_TOKEN"]})
    assert str(path) in str(caught.value) and "xapp-" in str(caught.value)
    assert_no_secret(str(caught.value), fake)


def test_a_worker_runs_on_tokens_from_files(simulator: SimulatorProcess, tmp_path: Path, fake: dict[str, str]) -> None:
    home = tmp_path / "home"
    tokens.save("app", fake["SLACK_APP_TOKEN"], {"BUIDL_HOME": str(home)})
    tokens.save("bot", fake["SLACK_BOT_TOKEN"], {"BUIDL_HOME": str(home)})
    env = worker_env(simulator.api_url, fake, BUIDL_HOME=home, BUIDL_STATE_DIR=tmp_path / "state")
    del env["SLACK_APP_TOKEN"], env["SLACK_BOT_TOKEN"]
    with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
        simulator.client.wait_for(lambda s: s["open_connections"] == 1, 15, "the worker's connection")
        simulator.client.inject("app_mention", channel="C0FILES", text="<@U0BUIDL> hi")
        simulator.client.wait_for(lambda s: s["messages_posted"] == 1, 10, "the reply")
        assert worker.stop() == 0
    assert_no_secret(worker.output(), fake)
