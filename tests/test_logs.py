"""Logs: journald priorities, masked numbers, secrets never printed."""

from __future__ import annotations

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
