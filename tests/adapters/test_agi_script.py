"""`mcdaemon-agi`, the classic AGI script: driven like Asterisk drives it, with the agi_*
headers, a blank line, then one `200 result=1` line per command on stdin, and read back on
stdout. Its commands are the FastAGI server's, for the same hooks."""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from mcdaemon.adapters import agi_script
from mcdaemon.store import Store

CONFIG = """\
region: GB
inbound:
  contexts: [from-carrier]
ami:
  - name: lab
    username: mcd
    secret_env: MCD_TEST_SECRET_NOBODY_SET   # the script needs no secret
smpp:
  system_id: mcdaemon
  source_addr: Acme
  password_file: /nonexistent/smpp.secret
store:
  path: {store}
groups:
  sales: {{}}
  support: {{}}
"""


def session(callerid: str = "07700900123", answers: int = 5,
            answer: str = "200 result=1") -> str:
    """What Asterisk writes to an AGI script: its headers, then an answer per command."""
    headers = (f"agi_request: mcdaemon-agi\nagi_channel: PJSIP/carrier-00000001\n"
               f"agi_language: en\nagi_type: PJSIP\nagi_uniqueid: 1795369867.0\n"
               f"agi_callerid: {callerid}\nagi_calleridname: Alice\n"
               f"agi_context: from-carrier\nagi_extension: s\nagi_priority: 1\n"
               f"agi_arg_1: x\n\n")
    return headers + f"{answer}\n" * answers


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    """The script configures logging at WARNING: the tests that follow must not inherit it."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(store=tmp_path / "mcdaemon.sqlite"), encoding="utf-8")
    return path


def run(config: Path, *argv: str, stdin: str | None = None) -> tuple[int, list[str], str]:
    """(exit status, the commands written on stdout, what went to stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = agi_script.main(["-c", str(config), *argv], stdin=io.StringIO(stdin or session()),
                             stdout=out, stderr=err)
    return status, out.getvalue().splitlines(), err.getvalue()


def test_tag_sets_the_same_variables_as_the_fastagi_hook(config: Path) -> None:
    assert run(config, "tag", "group=sales", "after_hours=1")[:2] == (
        0, ['SET VARIABLE MCD_GROUP "sales"', 'SET VARIABLE MCD_AFTER_HOURS "1"'])
    # the FastAGI URL's form works as well
    assert run(config, "tag?group=support&did=442071230000")[:2] == (
        0, ['SET VARIABLE MCD_GROUP "support"', 'SET VARIABLE MCD_DID "442071230000"'])


def test_a_call_back_request_marks_the_call_under_either_name(config: Path) -> None:
    for hook in ("callback-request", "callback"):
        assert run(config, hook)[:2] == (0, ['SET VARIABLE MCD_CALLBACK "1"'])


def test_optout_check_answers_from_committed_rows_only(config: Path, tmp_path: Path) -> None:
    store_path = str(tmp_path / "mcdaemon.sqlite")

    async def daemon_records_an_opt_out() -> None:
        store = await Store.open(store_path)
        await store.opt_out("+447700900123", "STOP", 1_800_000_000.0)  # committed on return
        await store.close()

    asyncio.run(daemon_records_an_opt_out())
    assert run(config, "optout-check")[:2] == (0, ['SET VARIABLE MCD_OPTED_OUT "1"'])
    assert run(config, "optout-check", stdin=session(callerid="anonymous"))[:2] == (
        0, ['SET VARIABLE MCD_OPTED_OUT "0"'])

    other = session(callerid="+447700900999")
    writer = sqlite3.connect(store_path)  # the daemon, busy writing beside the script
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO opt_outs (e164, at, keyword) VALUES (?, ?, ?)",
                       ("+447700900999", 1_800_000_001.0, "STOP"))
        assert run(config, "optout-check", stdin=other)[:2] == (
            0, ['SET VARIABLE MCD_OPTED_OUT "0"'])  # not committed: not reported
        writer.commit()
        assert run(config, "optout-check", stdin=other)[:2] == (
            0, ['SET VARIABLE MCD_OPTED_OUT "1"'])
    finally:
        writer.close()


def test_no_store_yet_answers_nothing_and_fails(config: Path) -> None:
    status, commands, err = run(config, "optout-check")
    assert (status, commands) == (1, [])  # Asterisk: AGISTATUS=FAILURE, the dialplan goes on
    assert "the store cannot be read" in err and "check store.path" in err


def test_an_unknown_hook_or_group_sets_nothing(config: Path) -> None:
    status, commands, err = run(config, "nonsense")
    assert (status, commands) == (1, []) and "hook unknown" in err
    status, commands, err = run(config, "tag", "group=marketing")
    assert (status, commands) == (0, []) and "not a configured group" in err


def test_a_refused_command_stops_the_hook(config: Path) -> None:
    status, commands, _ = run(config, "tag", "group=sales", "ignore=1",
                              stdin=session(answer="510 Invalid or unknown command"))
    assert (status, commands) == (0, ['SET VARIABLE MCD_GROUP "sales"'])


def test_an_unreadable_config_answers_nothing_and_says_what_to_check(tmp_path: Path) -> None:
    status, commands, err = run(tmp_path / "missing.yaml", "callback")
    assert (status, commands) == (1, [])
    assert "cannot read" in err and "check-config" in err


def test_the_installed_console_script_speaks_agi_on_stdin_and_stdout(config: Path) -> None:
    script = Path(sys.executable).with_name("mcdaemon-agi")
    environment = {key: value for key, value in os.environ.items()
                   if key != "JOURNAL_STREAM"}
    result = subprocess.run([str(script), "-c", str(config), "tag", "group=sales"],
                            input=session(), capture_output=True, text=True, timeout=60,
                            env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'SET VARIABLE MCD_GROUP "sales"\n'
    assert "07700900123" not in result.stderr  # pyst2's header dump stays out of the log
