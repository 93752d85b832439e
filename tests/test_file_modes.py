"""Files with callers' numbers (the store and its -wal/-shm, a capture, the HTML report) are
created readable by their owner only, whatever the umask; a capture never overwrites a file
unless told to."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcdaemon.commands.capture import capture, capture_async
from mcdaemon.config.load import load_config
from mcdaemon.config.model import AmiConfig
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.store import Store

from commands.test_cli_errors import write_config


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """022, as a shell outside systemd has (systemd's UMask= would hide the problem)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_store_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    path = tmp_path / "mcdaemon.db"
    store = await Store.open(str(path))
    try:
        await store.set_switch("global", False, 0.0)  # a write: the -wal and -shm exist
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert {file.name: mode(file) for file in files} == {file.name: 0o600 for file in files}
    finally:
        await store.close()


async def test_a_capture_is_private(tmp_path: Path) -> None:
    out = tmp_path / "c.ami"
    async with AmiTestServer([], speed=0) as server:
        config = AmiConfig(name="pbx", port=server.port, username="mcd", secret="mcdsecret")
        await asyncio.wait_for(capture_async(config, out, 0.3), 10)
    assert mode(out) == 0o600


def test_capture_refuses_to_overwrite_a_file_without_force(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "yesterday.ami"
    out.write_text("keep me", encoding="utf-8")
    config = load_config(write_config(tmp_path))
    assert capture(config, str(out), pbx=None, duration=0.1) == 1
    assert capsys.readouterr().err == (f"capture: {out} exists; choose another --out, or add "
                                       "--force to overwrite it\n")
    assert out.read_text(encoding="utf-8") == "keep me"


def test_the_html_report_is_private(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    mcdaemon = [sys.executable, "-m", "mcdaemon"]
    subprocess.run([*mcdaemon, "disable", "-c", str(config)], check=True, timeout=60,
                   capture_output=True)  # creates the store
    page = tmp_path / "report.html"
    result = subprocess.run([*mcdaemon, "report", "-c", str(config), "--html", str(page)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert mode(page) == 0o600
