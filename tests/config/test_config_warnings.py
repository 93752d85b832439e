"""Config warnings are log lines (JSON under --log-format json), at start and on reload, and
a secret file that other users can read is warned about like an inline secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mcdaemon import cli
from mcdaemon.config.load import load_config, log_warnings, reload_config


def lab_config(secret_line: str) -> str:
    return f"ami:\n  - name: lab\n    username: mcd\n    {secret_line}\n"


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_a_secret_file_others_can_read_is_warned_about_naming_the_key(tmp_path: Path) -> None:
    secret = write(tmp_path / "ami.secret", "s3cret\n", 0o644)
    path = write(tmp_path / "config.yaml", lab_config("secret_file: ami.secret"), 0o600)

    (warning,) = load_config(path).warnings

    assert f"ami[0].secret_file: {secret} is readable by other users (mode 644)" in warning
    assert f"chmod 600 {secret}" in warning
    secret.chmod(0o640)  # the daemon's group may read it
    assert load_config(path).warnings == ()


def test_warnings_are_logged_on_reload(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", lab_config("secret: inline"), 0o600)
    old = load_config(path)
    path.chmod(0o644)

    with capture_logs() as logged:
        reload_config(old, path)

    assert [(entry["event"], entry["log_level"]) for entry in logged] == [
        ("config warning", "warning")]
    assert "readable by other users" in str(logged[0]["warning"])


def test_log_warnings_gives_one_line_per_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", lab_config("secret: inline"), 0o644)

    with capture_logs() as logged:
        log_warnings(load_config(path))

    assert [entry["source"] for entry in logged] == [str(path)]


def test_under_json_logs_the_config_warning_is_a_json_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "config.yaml",
                 "region: GB\ninbound:\n  contexts: [from-carrier]\n"
                 f"store: {{path: {tmp_path / 'm.db'}}}\n"
                 "smpp: {host: 127.0.0.1, system_id: x, password: p, source_addr: Acme}\n"
                 + lab_config("secret: inline"), 0o644)

    assert cli.main(["--log-format", "json", "check-config", "-c", str(path)]) == 0

    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["config warning"]
