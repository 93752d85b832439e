"""The hot path's two builds: compiled by mypyc where it can be (setup.py), plain Python where
it cannot. Both must behave the same, and the suite must never test stale compiled code."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mcdaemon import __version__
from mcdaemon.build_info import HOT_PATH, build_summary, compiled_modules
from mcdaemon.config import InboundConfig
from mcdaemon.records import CallRecord
from mcdaemon.tracker import CallTracker
from mcdaemon.transcript import FrameFields, read_transcript

from conftest import stale_extensions

PACKAGE = Path(__file__).resolve().parent.parent / "mcdaemon"
FIXTURES = Path(__file__).parent / "fixtures"
RECORDINGS = sorted(FIXTURES.glob("*.ami"))
INBOUND = InboundConfig(contexts=("from-carrier",), after_hours_contexts=("closed",))


@functools.cache
def plain_python(name: str) -> ModuleType:
    """mcdaemon.<name> read from its .py, whatever the installation imports instead."""
    spec = importlib.util.spec_from_file_location(f"mcdaemon._plain_{name}",
                                                  PACKAGE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def records_of(tracker: CallTracker, path: Path) -> list[CallRecord]:
    records: list[CallRecord] = []
    for at, event in read_transcript(path).events():
        records.extend(tracker.feed(event, at))
    return records + tracker.expire(1e12)


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_the_installed_tracker_and_the_plain_python_one_give_the_same_records(
        path: Path) -> None:
    plain = plain_python("tracker").CallTracker("lab", INBOUND, "GB")
    installed = records_of(CallTracker("lab", INBOUND, "GB"), path)
    assert installed == records_of(plain, path)
    assert installed  # every recording has calls


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_the_installed_frame_reader_and_the_plain_python_one_read_the_same_fields(
        path: Path) -> None:
    plain = plain_python("transcript").FrameFields
    keys = ("Event", "Uniqueid", "Linkedid", "Channel", "Context", "Exten", "CallerIDNum",
            "DialStatus", "Variable", "Value", "Queue", "HoldTime", "Cause", "NoSuchKey")
    for frame in read_transcript(path).frames:
        installed, reference = FrameFields(frame.raw), plain(frame.raw)
        assert [installed.get(key) for key in keys] == [reference.get(key) for key in keys]
        assert dict(installed) == dict(reference)


def test_the_build_names_what_runs_compiled() -> None:
    compiled = compiled_modules()
    assert set(compiled) <= set(HOT_PATH)
    assert all((PACKAGE / f"{name}.py").is_file() for name in HOT_PATH)
    summary = build_summary()
    if len(compiled) == len(HOT_PATH):
        assert summary == "hot path compiled with mypyc"
    elif not compiled:
        assert summary == "hot path in plain Python"
    else:
        assert all(name in summary for name in compiled)
    version = subprocess.run([sys.executable, "-m", "mcdaemon", "--version"],
                             capture_output=True, text=True, check=True).stdout
    assert summary in version


def test_a_source_edited_after_its_module_was_compiled_is_reported_stale(
        tmp_path: Path) -> None:
    for name in ("tracker", "policy"):
        (tmp_path / f"{name}.py").write_text("")
        (tmp_path / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    os.utime(tmp_path / "tracker.py", (2_000_000_000, 2_000_000_000))  # edited later
    os.utime(tmp_path / "policy.py", (1_000_000_000, 1_000_000_000))  # compiled later
    assert stale_extensions(tmp_path) == ["tracker.py"]


def test_a_build_without_a_c_compiler_warns_and_goes_on_as_plain_python() -> None:
    root = PACKAGE.parent
    built = subprocess.run([sys.executable, "setup.py", "--version"], cwd=root,
                           env={**os.environ, "CC": "/nonexistent/cc"},
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip().splitlines()[-1] == __version__
    assert "hot path is not compiled (no C compiler (/nonexistent/cc))" in built.stderr
    assert "apt-get install gcc python3-dev" in built.stderr
