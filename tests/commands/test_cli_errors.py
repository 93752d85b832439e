"""The administrator's first hour: expected failures are one line naming what to fix, with a
non-zero exit; a traceback only with --log-level debug; a closed pipe ends quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from recordings import recording_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.yaml"


def write_config(tmp_path: Path, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "ami": [{"name": "lab", "port": 1, "username": "mcd", "secret": "s"}],
        "smpp": {"host": "127.0.0.1", "port": 1, "system_id": "mcd", "password": "p",
                 "source_addr": "+447700900000"},
        "store": {"path": str(tmp_path / "mcdaemon.db")},
        **overrides,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    path.chmod(0o600)
    return path


def mcdaemon(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcdaemon", *args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=60)


@pytest.fixture
def store_under_a_file(tmp_path: Path) -> Path:
    """A config whose store.path goes through a regular file: no user can create it."""
    (tmp_path / "afile").write_text("", encoding="utf-8")
    return write_config(tmp_path, store={"path": str(tmp_path / "afile" / "mcdaemon.db")})


def test_check_config_refuses_a_store_the_daemon_could_not_create(
        store_under_a_file: Path) -> None:
    result = mcdaemon("check-config", "-c", str(store_under_a_file))
    assert result.returncode == 1
    afile = store_under_a_file.parent / "afile"
    assert result.stderr.splitlines()[0] == (
        f"{store_under_a_file}: store.path: {afile} is a file, not a directory (store.path "
        "names the database file, e.g. /var/lib/mcdaemon/mcdaemon.db)")


@pytest.mark.parametrize("command", ["run", "disable", "enable"])
def test_a_store_that_cannot_be_opened_is_one_line_not_a_traceback(
        store_under_a_file: Path, command: str) -> None:
    result = mcdaemon(command, "-c", str(store_under_a_file))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and "afile" in result.stderr


def test_under_json_logs_the_failure_is_one_json_line(store_under_a_file: Path) -> None:
    result = mcdaemon("--log-format", "json", "disable", "-c", str(store_under_a_file))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    event = json.loads(line)
    assert event["level"] == "error" and "afile" in event["event"]


def test_log_level_debug_shows_the_traceback(store_under_a_file: Path) -> None:
    result = mcdaemon("--log-level", "debug", "disable", "-c", str(store_under_a_file))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "StoreError" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_config_refuses_a_store_directory_it_may_not_write(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = write_config(tmp_path, store={"path": str(locked / "mcdaemon.db")})
    result = mcdaemon("check-config", "-c", str(config))
    assert result.returncode == 1
    assert f"store.path: the directory {locked} is not writable by this user" in result.stderr
    disable = mcdaemon("disable", "-c", str(config))
    assert disable.returncode == 1 and len(disable.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", [
    ["preview", "-c", str(EXAMPLE)],
    ["replay", "-c", str(EXAMPLE), str(recording_path("queue_abandon")),
     str(recording_path("ivr_abandon"))],
    ["report", "-c", "CONFIG"],
])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, command: list[str]) -> None:
    """`mcdaemon report | head`: the reader went away before the output was written."""
    config = write_config(tmp_path)
    assert mcdaemon("disable", "-c", str(config)).returncode == 0  # creates the store
    command = [str(config) if arg == "CONFIG" else arg for arg in command]
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `head` that has exited: every write now fails with EPIPE
    try:
        result = mcdaemon(*command, stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode in (0, 141)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_runtime_problems_name_a_store_directory_this_user_may_not_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the daemon's user sees it (tests run as root, who may write anywhere)."""
    from mcdaemon.config.load import load_config, runtime_problems

    config = load_config(write_config(tmp_path))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    assert runtime_problems(config) == [
        f"{config.source}: store.path: the directory {tmp_path} is not writable by this user; "
        "the store and its -wal and -shm files are created there (create it for the daemon's "
        f"user: install -d -o mcdaemon {tmp_path})"]
    (tmp_path / "mcdaemon.db").write_text("", encoding="utf-8")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert runtime_problems(config)[0] == (
        f"{config.source}: store.path: {tmp_path / 'mcdaemon.db'} is not readable and writable "
        f"by this user (check its owner and mode: chown mcdaemon {tmp_path / 'mcdaemon.db'})")
