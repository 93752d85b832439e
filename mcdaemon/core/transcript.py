"""The AMI recording format: `@SECONDS` lines, each followed by one frame exactly as received.

Header lines start with `#`; `# recorded: ... t0_epoch=...` gives the wall-clock time of
`@0`, and `# call N: key=value ...` lines label the calls (used by tests, ignored by replay).
The frames keep their CRLF line ends, byte for byte, so a capture can be replayed over TCP
exactly as Asterisk sent it. `capture` writes this format; `replay` and `demo` read it.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

_T0 = re.compile(rb"t0_epoch=([0-9.]+)")


@dataclass(frozen=True, slots=True)
class Frame:
    offset: float  # seconds after the first frame of the recording
    raw: bytes  # the frame as received, CRLF line ends and the closing empty line included


@dataclass(slots=True)
class Transcript:
    path: Path
    header: list[str] = field(default_factory=list)
    t0_epoch: float = 0.0
    frames: list[Frame] = field(default_factory=list)

    @property
    def labels(self) -> list[dict[str, str]]:
        """The `# call N:` header lines as dicts (linkedid, callerid, did, expected, ...)."""
        calls = []
        for line in self.header:
            if not line.startswith("# call "):
                continue
            _, _, rest = line.partition(":")
            fields: dict[str, str] = {}
            for token in shlex.split(rest.split(" note:", 1)[0]):
                key, sep, value = token.partition("=")
                if sep:
                    fields[key] = value
            calls.append(fields)
        return calls

    def events(self) -> Iterator[tuple[float, dict[str, str]]]:
        """(epoch receive time, parsed frame) for every frame."""
        for frame in self.frames:
            yield self.t0_epoch + frame.offset, parse_frame(frame.raw)


def parse_frame(raw: bytes) -> dict[str, str]:
    """Parse one AMI frame into a dict; tolerant of LF-only ends and junk lines.

    Undecodable bytes are replaced (not dropped), so a caller name stays recognisable.
    A repeated key keeps its first value, as the tracker only needs the first.
    """
    text = raw.decode("utf-8", errors="replace")
    result: dict[str, str] = {}
    for line in text.split("\n"):
        key, sep, value = line.rstrip("\r").partition(":")
        if not sep or key in result:
            continue
        if " " in key:  # " Key " is read as "Key"; "two words" is no key
            key = key.strip()
            if not key or " " in key or key in result:
                continue
        elif not key:
            continue
        result[key] = value[1:] if value[:1] == " " else value
    return result


class FrameFields(Mapping[str, str]):
    """The fields of one frame, each found in the bytes when first asked for.

    The tracker reads three or four fields of an event that carries twenty: finding those is
    half the cost of parsing them all, and a storm of hangups is thousands of events while
    callers wait for their texts. A field found this way equals `parse_frame`'s (first line
    wins, one leading space dropped, CRs stripped, bad bytes replaced) for every frame whose
    keys stand at the start of their lines, as Asterisk writes them; a key that is not a
    plain word, and iterating, parse the whole frame with `parse_frame`.
    """

    __slots__ = ("_all", "_found", "_raw")

    def __init__(self, raw: bytes, event: str | None = None) -> None:
        """`event`: the frame's `Event` field when the caller has already read it (it must
        be what `get("Event")` would find)."""
        self._raw = raw
        self._found: dict[str, str | None] = {} if event is None else {"Event": event}
        self._all: dict[str, str] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        value = self._found.get(key, _UNREAD)
        if value is _UNREAD:  # most keys are asked for once: a miss must be cheap
            value = self._found[key] = self._find(key)
        return default if value is None else value

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return str(value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __repr__(self) -> str:
        return repr(self._parsed())

    def _find(self, key: str) -> str | None:
        needles = _NEEDLES.get(key) or _needles(key)
        if needles is None or self._all is not None:
            return self._parsed().get(key)
        at_start, in_line = needles
        raw = self._raw
        if raw.startswith(at_start):
            start = len(at_start)
        else:
            start = raw.find(in_line)
            if start < 0:
                return None
            start += len(in_line)
        end = raw.find(b"\n", start)
        value = (raw[start:] if end < 0 else raw[start:end]).rstrip(b"\r")
        if value[:1] == b" ":
            value = value[1:]
        return value.decode("utf-8", errors="replace")

    def _parsed(self) -> dict[str, str]:
        if self._all is None:
            self._all = parse_frame(self._raw)
        return self._all


#: the needles of the plain keys asked for so far (a dict: cheaper to ask than a cache)
_NEEDLES: dict[str, tuple[bytes, bytes]] = {}
_UNREAD: Any = object()


def _needles(key: str) -> tuple[bytes, bytes] | None:
    """`Key:` at the frame's start and after a line end; None for what is no plain key."""
    if not key or not key.isascii() or not key.isprintable() or " " in key or ":" in key:
        return None
    needles = key.encode() + b":", b"\n" + key.encode() + b":"
    if len(_NEEDLES) < 256:  # the keys come from code: a bound, not a cache policy
        _NEEDLES[key] = needles
    return needles


def read_transcript(path: str | Path) -> Transcript:
    path = Path(path)
    data = path.read_bytes()
    transcript = Transcript(path=path)
    position = 0
    offset: float | None = None
    body_start = 0
    while position < len(data):
        end = data.find(b"\n", position)
        end = len(data) if end < 0 else end + 1
        line = data[position:end]
        if offset is None and line.startswith(b"#"):
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            transcript.header.append(text)
            match = _T0.search(line)
            if match:
                transcript.t0_epoch = float(match.group(1))
        elif line.startswith(b"@") and _is_offset_line(line):
            if offset is not None:
                transcript.frames.append(Frame(offset, data[body_start:position]))
            offset = float(line[1:].strip())
            body_start = end
        position = end
    if offset is not None:
        transcript.frames.append(Frame(offset, data[body_start:]))
    return transcript


def _is_offset_line(line: bytes) -> bool:
    try:
        float(line[1:].strip())
    except ValueError:
        return False
    return True


class TranscriptWriter:
    """Writes a live AMI stream in the recording format (for `mcdaemon capture`)."""

    def __init__(self, out: BinaryIO, *, source: str, banner: str = "") -> None:
        self._out = out
        self._t0: float | None = None
        self._source = source
        self._banner = banner
        self.frames = 0

    def write(self, raw: bytes, at: float | None = None) -> None:
        at = time.time() if at is None else at
        if self._t0 is None:
            self._t0 = at
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(at))
            self._out.write(
                f"# {self._banner or 'Asterisk'} -- AMI events captured by mcdaemon capture "
                f"from {self._source}\n"
                f"# recorded: {stamp} t0_epoch={at:.6f}\n"
                "# format: '@SECONDS' (receive time relative to t0), then the frame exactly "
                "as received (CRLF line ends) ending with its empty line\n".encode()
            )
        if not raw.endswith(b"\r\n\r\n"):
            raw = raw.rstrip(b"\r\n") + b"\r\n\r\n"
        self._out.write(f"@{at - self._t0:.6f}\n".encode() + raw)
        self.frames += 1
        self._out.flush()
