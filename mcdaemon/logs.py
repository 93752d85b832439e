"""structlog set-up: console for people, JSON for machines, `<N>`-prefixed lines for journald.

The standard library's `logging` (smpplib, aiosqlite, aiohttp, panoramisk, asyncio) goes
through the same renderer and the same writer, so `--log-format json` prints nothing but JSON.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass, field
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


def _drop_none(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """`group=None` says nothing: a field without a value is left out of the line."""
    for key in [key for key, value in event.items() if value is None]:
        del event[key]
    return event


def _journald_render(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    level = str(event.pop("level", method))
    message = str(event.pop("event", ""))
    fields = " ".join(f"{key}={value!r}" if isinstance(value, str) and " " in value
                      else f"{key}={value}" for key, value in event.items())
    line = f"{message} {fields}".strip().replace("\n", "\\n")
    return f"<{_PRIORITY.get(level, 6)}>{line}"


class LineWriter:
    """structlog's PrintLogger for the daemon's stream: one line per write, flushed at once
    (journald and `kill -9` then lose nothing that was logged), and a lock, as the standard
    library's records may come from other threads (aiosqlite's)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = error = err = critical = exception = msg
    fatal = failure = msg


#: third-party libraries speak at this level or above (their INFO is per connection or PDU)
LIBRARY_LEVEL = logging.WARNING
#: what smpplib says once per PDU from some SMSCs ("Unknown optional parameter type 0x1403,
#: skipping"): not worth a warning each time, so it is demoted to DEBUG
_SMPPLIB_CHATTER = ("Unknown optional parameter",)


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Choose the renderer: `journald` when JOURNAL_STREAM is set (auto), else console/json;
    the standard library's records are rendered by it too."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "journald" if os.environ.get("JOURNAL_STREAM") else "console"
    shared: list[Any] = [structlog.contextvars.merge_contextvars,
                         structlog.processors.add_log_level, _redact, _drop_none]
    final: list[Any]
    if fmt == "journald":
        final = [_journald_render]
    elif fmt == "json":
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        final = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        shared.append(structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False))
        final = [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    writer = LineWriter(stream)
    structlog.configure(
        processors=[*shared, *final],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_factory(writer),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(writer, threshold, structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final]))


class _StdlibHandler(logging.Handler):
    """Writes the standard library's records, rendered by structlog, through the LineWriter
    (one writer: stdlib and structlog lines keep their order)."""

    def __init__(self, writer: LineWriter, threshold: int) -> None:
        super().__init__()
        self.writer = writer
        self.addFilter(_DemoteChatter(threshold))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.msg(self.format(record))
        except Exception:
            self.handleError(record)


class _DemoteChatter(logging.Filter):
    """smpplib's per-PDU notes become DEBUG lines, shown only at --log-level debug."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("smpplib") and isinstance(record.msg, str) \
                and record.msg.startswith(_SMPPLIB_CHATTER):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.threshold


def _route_stdlib_logging(writer: LineWriter, threshold: int,
                          formatter: logging.Formatter) -> None:
    """One handler on the root logger (replacing the one of an earlier `configure`), at
    WARNING for the libraries, or higher if the daemon's own level is higher."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(handler)
    handler = _StdlibHandler(writer, threshold)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(max(LIBRARY_LEVEL, threshold))
    logging.captureWarnings(True)  # Python's warnings too: no bare text among JSON lines


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


@dataclass(slots=True)
class _Window:
    start: float
    event: str
    fields: dict[str, Any]
    logged: int = 0
    suppressed: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class RepeatLimiter:
    """At most `burst` warnings per key in each `window` seconds, then one summary line
    (`… (312 more suppressed in the last 60 s)`): a peer sending garbage must not turn the
    log into a flood (52,266 lines under fuzzing) that hides everything else.

    The summary comes when the window ends (a timer, inside an event loop) or, outside one,
    with the next warning of the key after the window.
    """

    def __init__(self, logger: Any, *, burst: int = 5, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}

    def warning(self, key: Hashable, event: str, **fields: Any) -> None:
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.start >= self._window:
            self._close(key, window)
            window = None
        if window is None:
            window = self._windows[key] = _Window(now, event, fields)
        if window.logged < self._burst:
            window.logged += 1
            self._log.warning(event, **fields)
            return
        if window.suppressed == 0:
            self._schedule_summary(key, window, now)
        window.suppressed += 1

    def flush(self) -> None:
        """Write the summaries of every window now (at shutdown)."""
        for key, window in list(self._windows.items()):
            self._close(key, window)

    def _schedule_summary(self, key: Hashable, window: _Window, now: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # summarised with the next warning of this key
        window.timer = loop.call_later(max(0.0, window.start + self._window - now),
                                       self._close, key, window)

    def _close(self, key: Hashable, window: _Window) -> None:
        if self._windows.get(key) is window:
            del self._windows[key]
        if window.timer is not None:
            window.timer.cancel()
            window.timer = None
        if window.suppressed:
            count, window.suppressed = window.suppressed, 0
            self._log.warning(f"{window.event} ({count} more suppressed in the last "
                              f"{self._window:g} s)", suppressed=count, **window.fields)
