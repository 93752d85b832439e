"""Small things an administrator meets in the first hour: where options go, the default
config path, messages said once and about what is in the file, `status` after a crash."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mcdaemon.cli import DEFAULT_CONFIG, build_parser
from mcdaemon.commands.control import gather_status
from mcdaemon.config.load import config_from_dict
from mcdaemon.config.reader import ConfigError
from mcdaemon.core.daemons import DaemonBeat
from mcdaemon.store import Store

from commands.test_cli_errors import write_config


@pytest.mark.parametrize("argv", [
    ["--log-format", "json", "--log-level", "debug", "run", "-c", "F"],
    ["run", "-c", "F", "--log-format", "json", "--log-level", "debug"],
    ["--log-format", "json", "run", "--log-level", "debug", "-c", "F"],
    ["contacts", "list", "-c", "F", "--log-level", "debug", "--log-format", "json"],
])
def test_log_options_work_before_and_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_format, args.log_level) == ("json", "debug")


def test_log_options_given_before_the_command_are_not_undone_by_its_defaults() -> None:
    args = build_parser().parse_args(["--log-level", "warning", "status"])
    assert (args.log_format, args.log_level) == ("auto", "warning")


def test_config_defaults_to_the_path_of_the_installation_and_help_says_so() -> None:
    assert build_parser().parse_args(["status"]).config == DEFAULT_CONFIG == \
        "/etc/mcdaemon/config.yaml"
    result = subprocess.run([sys.executable, "-m", "mcdaemon", "check-config", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert "(default: /etc/mcdaemon/config.yaml)" in " ".join(result.stdout.split())


def test_a_bad_duration_is_named_once() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"policy": {"cooldown": "1 hour"}}, source="c.yaml")
    assert caught.value.problems == [
        "c.yaml: policy.cooldown: '1 hour' is not a duration (use e.g. 30s, 15m, 1h, 2d)"]


def test_a_refused_cap_is_the_only_complaint_about_the_caps() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"policy": {"caps": {"per_hour": 2000, "per_day": -5}}},
                         source="c.yaml")
    assert caught.value.problems == ["c.yaml: policy.caps.per_day: -5 is below the minimum 1"]
    with pytest.raises(ConfigError, match=r"per_day: 10 is below per_hour \(50\)"):
        config_from_dict({"policy": {"caps": {"per_hour": 50, "per_day": 10}}})


def a_pid_that_is_gone() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize(("heartbeat", "daemon"), [
    (f"{a_pid_that_is_gone()}@{socket.gethostname()}", "not running"),
    ("PID@" + socket.gethostname(), "running"),  # this process: alive
    (f"{a_pid_that_is_gone()}@another-host", "running"),  # can't tell: the heartbeat decides
])
async def test_status_says_not_running_as_soon_as_the_daemons_process_is_gone(
        tmp_path: Path, heartbeat: str, daemon: str) -> None:
    import os

    from mcdaemon.config.load import load_config

    config = load_config(write_config(tmp_path))
    store = await Store.open(config.store.path)
    now = 1_700_000_000.0
    try:
        process = heartbeat.replace("PID", str(os.getpid()))
        beat = DaemonBeat(process, process, "bound", {"lab": "connected"})
        await store.set_status(beat.row, beat.value(), now - 1)
    finally:
        await store.close()
    status = await gather_status(config, now)
    assert status["daemon"] == daemon
    if daemon == "not running":
        pid = heartbeat.split("@")[0]
        assert status["daemon_detail"] == f"pid {pid} is gone"
