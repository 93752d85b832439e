"""Typed reading of YAML values with key paths in every problem: the base every section of
the config builds on (`Reader`, `Section`, `ConfigError`, durations).

Every problem is collected (not only the first) and names the file, the key path and the fix,
e.g. ``config.yaml: smpp.password: 9 characters, smpplib sends at most 8``. A section marks the
keys it reads (`Reader.known`), so an unknown key is an error and a typo never passes silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
N = TypeVar("N", int, float)

# Builtin names, for annotations inside `Section`, whose getters are named after them.
_Str = str
_Int = int
_Float = float
_Bool = bool

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*"
                       r"(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*"
                       r"(?:(\d+(?:\.\d+)?)\s*ms)?\s*$")


class ConfigError(Exception):
    """One or more problems in a config file; `problems` lists each, path and fix included."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `1.5`, `"15m"`, `"1h30m"`, `"2d"`, `"250ms"`; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration, not true/false")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if text.endswith("ms"):
            number = text[:-2].strip()
            if re.fullmatch(r"\d+(?:\.\d+)?", number):
                return float(number) / 1000
        match = _DURATION.match(text)
        if match and any(match.groups()):
            d, h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
            return d * 86400 + h * 3600 + m * 60 + s + ms / 1000
    raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 15m, 1h, 2d)")


class Reader:
    """Walks a YAML mapping, collecting problems with their key paths and spotting unknown keys.

    `known` collects the schema path of every key the loader asks for (`ami[].host`,
    `groups.*.hours`), present or not: the list of settings this version understands.
    """

    def __init__(self, source: str, problems: list[str], base_dir: Path | None = None) -> None:
        self.source = source
        self.problems = problems
        self.base_dir = base_dir or Path.cwd()
        self.warnings: list[str] = []
        self.secret_files: list[tuple[str, Path]] = []  # (key path, file) of each *_file read
        self.known: set[str] = set()

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}" if path else
                             f"{self.source}: {message}")

    def mapping(self, value: Any, path: str, schema: str | None = None) -> Section:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping of keys to values, got {_kind(value)}")
            value = {}
        return Section(self, value, path, path if schema is None else schema)


class Section:
    """One mapping of the config. Read keys with the typed getters, then call `done()`."""

    def __init__(self, reader: Reader, data: dict[Any, Any], path: _Str,
                 schema: _Str | None = None) -> None:
        self.reader = reader
        self.data = data
        self.path = path
        self.schema = path if schema is None else schema
        self._seen: set[_Str] = set()

    def key_path(self, key: _Str) -> _Str:
        return f"{self.path}.{key}" if self.path else key

    def _mark(self, key: _Str) -> None:
        self._seen.add(key)
        self.reader.known.add(f"{self.schema}.{key}" if self.schema else key)

    def has(self, key: _Str) -> _Bool:
        return key in self.data

    def raw(self, key: _Str, default: Any = None) -> Any:
        self._mark(key)
        return self.data.get(key, default)

    def has_any(self) -> _Bool:
        return bool(self.data)

    def items(self) -> list[tuple[_Str, Any]]:
        """Every entry of a mapping whose keys are names the user chooses (groups, templates)."""
        self._seen.update(str(key) for key in self.data)
        return [(str(key), value) for key, value in self.data.items()]

    def error(self, key: _Str, message: _Str) -> None:
        self.reader.error(self.key_path(key), message)

    def _typed(self, key: _Str, default: T, check: Callable[[Any], T], what: _Str) -> T:
        self._mark(key)
        if key not in self.data or self.data[key] is None:
            return default
        try:
            return check(self.data[key])
        except (TypeError, ValueError) as exc:
            detail = str(exc) if str(exc) else f"must be {what}"
            given = repr(self.data[key])
            # said once: "'1 hour' is not a duration (...)", not "...; got '1 hour'" again
            self.error(key, detail if given in detail else f"{detail}; got {given}")
            return default

    def str(self, key: _Str, default: _Str = "", *, required: _Bool = False) -> _Str:
        if required and not self.data.get(key):
            self._mark(key)
            self.error(key, "is required")
            return default
        return self._typed(key, default, _as_str, "text")

    def opt_str(self, key: _Str) -> _Str | None:
        value = self._typed(key, "", _as_str, "text")
        return value or None

    def int(self, key: _Str, default: _Int, *, minimum: _Int | None = None,
            maximum: _Int | None = None) -> _Int:
        value = self._typed(key, default, _as_int, "a whole number")
        return self._bounded(key, value, default, minimum, maximum)

    def opt_int(self, key: _Str, *, minimum: _Int | None = None,
                maximum: _Int | None = None) -> _Int | None:
        value = self._typed(key, None, _as_int, "a whole number")
        if value is None:
            return None
        return self._bounded(key, value, value, minimum, maximum)

    def float(self, key: _Str, default: _Float, *, minimum: _Float | None = None,
              maximum: _Float | None = None) -> _Float:
        value = self._typed(key, default, _as_float, "a number")
        return self._bounded(key, value, default, minimum, maximum)

    def bool(self, key: _Str, default: _Bool) -> _Bool:
        return self._typed(key, default, _as_bool, "true or false")

    def duration(self, key: _Str, default: _Float, *, minimum: _Float = 0.0) -> _Float:
        value = self._typed(key, default, parse_duration, "a duration")
        return self._bounded(key, value, default, minimum, None)

    def str_list(self, key: _Str, default: tuple[_Str, ...] = ()) -> tuple[_Str, ...]:
        return self._typed(key, default, _as_str_list, "a list of text values")

    def choice(self, key: _Str, default: _Str, choices: tuple[_Str, ...]) -> _Str:
        value = self.str(key, default)
        if value not in choices:
            self.error(key, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def section(self, key: _Str) -> Section:
        self._mark(key)
        return self.reader.mapping(self.data.get(key), self.key_path(key),
                                   f"{self.schema}.{key}" if self.schema else key)

    def secret(self, key: _Str, *, required: _Bool = False) -> _Str:
        """A secret given inline, as `KEY_env: VAR` or as `KEY_file: PATH`."""
        sources = [k for k in (key, f"{key}_env", f"{key}_file") if self.data.get(k)]
        for k in (key, f"{key}_env", f"{key}_file"):
            self._mark(k)
        if len(sources) > 1:
            self.error(key, f"give only one of {', '.join(sources)}")
        if not sources:
            if required:
                self.error(key, f"is required (inline, or {key}_env: VARIABLE, or "
                                f"{key}_file: PATH)")
            return ""
        chosen = sources[0]
        value = self.data[chosen]
        if not isinstance(value, str | int):
            self.error(chosen, "must be text")
            return ""
        value = str(value)
        if chosen == key:
            self.reader.warnings.append("inline-secret")
            return value
        if chosen.endswith("_env"):
            if value not in os.environ:
                self.error(chosen, f"environment variable {value} is not set")
                return ""
            return os.environ[value]
        secret_path = Path(value)
        if not secret_path.is_absolute():
            secret_path = self.reader.base_dir / secret_path
        try:
            secret = secret_path.read_text(encoding="utf-8").strip()
            self.reader.secret_files.append((self.key_path(chosen), secret_path))
            return secret
        except OSError as exc:
            self.error(chosen, f"cannot read {secret_path}: {exc.strerror}")
            return ""

    def done(self) -> None:
        """Report keys nobody read: they are typos or settings this version does not know."""
        for key in self.data:
            if str(key) not in self._seen:
                self.reader.error(self.key_path(str(key)),
                                  "unknown key (a typo? see config.example.yaml)")

    def _bounded(self, key: _Str, value: N, default: N, minimum: N | None,
                 maximum: N | None) -> N:
        if minimum is not None and value < minimum:
            self.error(key, f"{value} is below the minimum {minimum}")
            return default
        if maximum is not None and value > maximum:
            self.error(key, f"{value} is above the maximum {maximum}")
            return default
        return value


def _kind(value: Any) -> str:
    return {list: "a list", str: "text", int: "a number", float: "a number",
            bool: "true/false"}.get(type(value), type(value).__name__)


def _as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be text")
    return str(value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return float(value)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _as_str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise ValueError("must be a list of text values")
    return tuple(str(v) for v in value)
