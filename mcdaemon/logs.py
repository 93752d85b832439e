"""structlog set-up: console for people, JSON for machines, `<N>`-prefixed lines for journald."""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# syslog priorities that journald reads from a `<N>` line prefix
_PRIORITY = {"critical": 2, "error": 3, "exception": 3, "warning": 4, "warn": 4, "info": 6,
             "debug": 7}

_SECRET_KEYS = ("secret", "password", "token", "authorization")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        if _is_secret(key):
            event[key] = "***"
    return event


@functools.lru_cache(maxsize=1024)
def _is_secret(key: str) -> bool:
    """Memoised: every line of a storm asks about the same dozen keys."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_KEYS)


def _journald_render(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    level = str(event.pop("level", method))
    message = str(event.pop("event", ""))
    fields = " ".join(f"{key}={value!r}" if isinstance(value, str) and " " in value
                      else f"{key}={value}" for key, value in event.items())
    line = f"{message} {fields}".strip().replace("\n", "\\n")
    return f"<{_PRIORITY.get(level, 6)}>{line}"


class LineWriter:
    """structlog's PrintLogger, except that in an event loop the lines logged during one turn
    of the loop are written together, at the start of the next turn: a storm's hundreds of
    "call decided" lines cost one system call instead of one each (and under a storm each
    system call also waits for the GIL). Elsewhere (the CLI, the SMPP thread) a line is
    written at once. A crash (kill -9) loses at most the lines of the turn it interrupts."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(message + "\n")
            return
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append(message)

    log = debug = info = warn = warning = error = err = critical = exception = msg
    fatal = failure = msg

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        if lines:
            self._write("\n".join(lines) + "\n")

    def _write(self, text: str) -> None:
        with self._lock:
            self._stream.write(text)
            self._stream.flush()


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
        logger_factory=_factory(LineWriter(stream)),
        cache_logger_on_first_use=False,
    )


def _factory(writer: LineWriter) -> Any:
    def logger_factory(*_args: Any) -> LineWriter:
        return writer  # one writer: the lines of every logger keep their order
    return logger_factory


def mask_number(number: str | None, full: bool = False) -> str:
    """`+447700900123` -> `*********123`: logs show enough to match a complaint, no more."""
    if not number:
        return "-"
    if full or len(number) <= 3:
        return number
    return "*" * (len(number) - 3) + number[-3:]
