"""Logs: journald priorities, masked numbers, secrets never printed."""

from __future__ import annotations

import asyncio
import io
import json

import structlog

from mcdaemon import logs


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


def test_in_an_event_loop_the_lines_of_one_turn_go_out_in_one_write_at_the_next() -> None:
    out = CountingStream()
    logs.configure("json", "info", stream=out)
    log = structlog.get_logger("t")

    async def storm() -> tuple[str, str]:
        for number in range(100):
            log.info("call decided", call_id=f"1.{number}")
        during = out.getvalue()
        await asyncio.sleep(0)
        return during, out.getvalue()

    during, after = asyncio.run(storm())

    assert during == ""
    assert [json.loads(line)["call_id"] for line in after.splitlines()] == [
        f"1.{number}" for number in range(100)]
    assert out.writes == 1


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
