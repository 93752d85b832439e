"""Logs: journald priorities, masked numbers, secrets never printed, libraries' lines in the
same format, repeats limited."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from mcdaemon import logs, store


def test_under_journald_each_event_is_one_line_with_its_syslog_priority() -> None:
    out = io.StringIO()
    logs.configure("journald", "debug", stream=out)
    log = structlog.get_logger("t")
    log.warning("text failed", status=11, detail="ESME_RINVDSTADR\nsecond line")
    log.info("call decided", reason="text")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("<4>text failed") and "\\n" in lines[0]
    assert lines[1].startswith("<6>call decided")
    assert "20" not in lines[1][:8]  # no timestamp: journald adds its own


def test_secrets_are_redacted_in_every_format() -> None:
    for fmt in ("journald", "json", "console"):
        out = io.StringIO()
        logs.configure(fmt, "info", stream=out)
        structlog.get_logger("t").info("bind", password="hunter2", ami_secret="s3cr3t")
        assert "hunter2" not in out.getvalue() and "s3cr3t" not in out.getvalue()


def test_json_format_is_one_object_per_line() -> None:
    out = io.StringIO()
    logs.configure("json", "info", stream=out)
    structlog.get_logger("t").info("call decided", call_id="1.0")
    assert json.loads(out.getvalue())["call_id"] == "1.0"


def test_numbers_are_masked_but_the_last_three_digits() -> None:
    assert logs.mask_number("+447700900123") == "**********123"
    assert logs.mask_number("+447700900123", full=True) == "+447700900123"
    assert logs.mask_number(None) == "-"


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_in_an_event_loop_each_line_is_written_at_once_in_order() -> None:
    """Nothing logged waits in memory: a `kill -9` loses no line that was logged."""
    out = CountingStream()
    logs.configure("json", "info", stream=out)
    log = structlog.get_logger("t")

    async def storm() -> str:
        for number in range(100):
            log.info("call decided", call_id=f"1.{number}")
        return out.getvalue()

    during = asyncio.run(storm())

    assert [json.loads(line)["call_id"] for line in during.splitlines()] == [
        f"1.{number}" for number in range(100)]
    assert out.writes == 100


def test_outside_an_event_loop_a_line_is_written_at_once() -> None:
    out = CountingStream()
    logs.configure("json", "info", stream=out)

    structlog.get_logger("t").warning("config reload refused")

    assert json.loads(out.getvalue())["event"] == "config reload refused"


def test_lines_logged_as_the_event_loop_ends_are_not_lost() -> None:
    out = io.StringIO()
    logs.configure("json", "info", stream=out)

    async def last_words() -> None:
        structlog.get_logger("t").info("stopped")

    asyncio.run(last_words())

    assert json.loads(out.getvalue())["event"] == "stopped"


def test_under_json_a_library_warning_is_one_json_line_with_its_logger_and_level(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    logs.configure("json", "info", stream=out)

    logging.getLogger("smpplib.client").warning("Receive broken pdu... %s", "b''")

    [line] = out.getvalue().splitlines()
    assert json.loads(line) | {"timestamp": "-"} == {
        "event": "Receive broken pdu... b''", "logger": "smpplib.client",
        "level": "warning", "timestamp": "-"}
    assert capsys.readouterr().err == ""  # nothing beside the stream: no bare text


def test_library_chatter_below_warning_and_smpplibs_per_pdu_notes_stay_out() -> None:
    out = io.StringIO()
    logs.configure("json", "info", stream=out)

    logging.getLogger("aiosqlite").info("executing a query")
    logging.getLogger("smpplib.command").warning(
        "Unknown optional parameter type 0x%x, skipping", 0x1403)

    assert out.getvalue() == ""


def test_at_debug_smpplibs_per_pdu_note_is_a_debug_line() -> None:
    out = io.StringIO()
    logs.configure("json", "debug", stream=out)

    logging.getLogger("smpplib.command").warning(
        "Unknown optional parameter type 0x%x, skipping", 0x1403)

    assert json.loads(out.getvalue())["level"] == "debug"


def test_a_library_exception_is_json_too() -> None:
    out = io.StringIO()
    logs.configure("json", "info", stream=out)
    try:
        raise ValueError("bad pdu")
    except ValueError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")

    [line] = out.getvalue().splitlines()
    assert json.loads(line)["logger"] == "asyncio"
    assert "ValueError: bad pdu" in json.loads(line)["exception"]


def test_configuring_again_replaces_the_library_handler() -> None:
    logs.configure("json", "info", stream=io.StringIO())
    out = io.StringIO()
    logs.configure("json", "info", stream=out)

    logging.getLogger("aiohttp.client").error("server disconnected")

    assert len(out.getvalue().splitlines()) == 1


def test_fields_without_a_value_are_left_out_in_every_format() -> None:
    for fmt in ("journald", "json", "console"):
        out = io.StringIO()
        logs.configure(fmt, "info", stream=out)
        structlog.get_logger("t").info("call decided", group=None, reason="text")
        assert "group" not in out.getvalue() and "reason" in out.getvalue()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_warnings_are_limited_per_key_then_summarised_with_the_next_window() -> None:
    clock = FakeClock()
    with capture_logs() as logged:
        limiter = logs.RepeatLimiter(structlog.get_logger("t"), burst=3, window=60,
                                     clock=clock)
        for _ in range(1000):
            limiter.warning("lab", "AMI frame not understood: dropped", pbx="lab")
        limiter.warning("branch", "AMI frame not understood: dropped", pbx="branch")
        clock.now += 60
        limiter.warning("lab", "AMI frame not understood: dropped", pbx="lab")

    assert [(entry["event"], entry["pbx"]) for entry in logged] == [
        *[("AMI frame not understood: dropped", "lab")] * 3,
        ("AMI frame not understood: dropped", "branch"),
        ("AMI frame not understood: dropped (997 more suppressed in the last 60 s)", "lab"),
        ("AMI frame not understood: dropped", "lab"),
    ]
    assert logged[4]["suppressed"] == 997


def test_in_an_event_loop_the_summary_comes_when_the_window_ends() -> None:
    async def flood() -> list[dict[str, object]]:
        with capture_logs() as logged:
            limiter = logs.RepeatLimiter(structlog.get_logger("t"), burst=1, window=0.01)
            for _ in range(10):
                limiter.warning("k", "garbage")
            await asyncio.sleep(0.05)  # the window's timer is due before this sleep ends
        return logged

    assert [entry["event"] for entry in asyncio.run(flood())] == [
        "garbage", "garbage (9 more suppressed in the last 0.01 s)"]


async def test_a_store_says_once_that_it_was_created_or_migrated(tmp_path: Path) -> None:
    fresh, old = tmp_path / "fresh.sqlite", tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # a store an older mcdaemon left at schema 3
        for number in range(3):
            for statement in store.migration_steps(number, "sqlite"):
                db.execute(statement)
        db.execute("PRAGMA user_version = 3")

    with capture_logs() as logged:
        for path in (fresh, fresh, old):
            await (await store.Store.open(str(path))).close()

    assert [entry["event"] for entry in logged if entry["log_level"] == "info"] == [
        "store created", "migrating the store: the daemon starts when it is done",
        f"store migrated from schema 3 to {store.SCHEMA_VERSION}"]
