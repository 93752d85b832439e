"""structlog set-up: console for people, JSON for machines, `<N>`-prefixed lines for journald."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# syslog priorities that journald reads from a `<N>` line prefix
_PRIORITY = {"critical": 2, "error": 3, "exception": 3, "warning": 4, "warn": 4, "info": 6,
             "debug": 7}

_SECRET_KEYS = ("secret", "password", "token", "authorization")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_KEYS):
            event[key] = "***"
    return event


def _journald_render(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    level = str(event.pop("level", method))
    message = str(event.pop("event", ""))
    fields = " ".join(f"{key}={value!r}" if isinstance(value, str) and " " in value
                      else f"{key}={value}" for key, value in event.items())
    line = f"{message} {fields}".strip().replace("\n", "\\n")
    return f"<{_PRIORITY.get(level, 6)}>{line}"


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Choose the renderer: `journald` when JOURNAL_STREAM is set (auto), else console/json."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "journald" if os.environ.get("JOURNAL_STREAM") else "console"
    processors: list[Any] = [structlog.contextvars.merge_contextvars,
                             structlog.processors.add_log_level, _redact]
    if fmt == "journald":
        processors.append(_journald_render)
    elif fmt == "json":
        processors += [structlog.processors.TimeStamper(fmt="iso", utc=True),
                       structlog.processors.format_exc_info,
                       structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
                       structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def mask_number(number: str | None, full: bool = False) -> str:
    """`+447700900123` -> `*********123`: logs show enough to match a complaint, no more."""
    if not number:
        return "-"
    if full or len(number) <= 3:
        return number
    return "*" * (len(number) - 3) + number[-3:]
