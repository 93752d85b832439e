"""SMS encoding arithmetic: GSM-7 or UCS-2, characters used, parts, and UDH splitting.

Pure functions shared by the templates (length checks, preview) and the SMPP sender.
The GSM-7 table is smpplib's (`smpplib.gsm`); the splitting is done here because smpplib's
splits by bytes and can cut a GSM-7 escape sequence (``€`` = ESC + e) or a UTF-16 surrogate
pair (an emoji) in two, which phones show as garbage.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Final, Generic, NamedTuple, TypeVar

from smpplib import gsm

GSM7 = "gsm7"
UCS2 = "ucs2"

GSM7_SINGLE = 160  # septets in one SMS
GSM7_PART = 153  # septets per part of a concatenated SMS (6-byte UDH)
UCS2_SINGLE = 70  # UTF-16 code units in one SMS
UCS2_PART = 67

DATA_CODING_UCS2 = 0x08
ESM_CLASS_UDHI = 0x40

# smpplib's table uses '`' as a filler for unused positions: it is not a GSM-7 character.
_NOT_GSM7 = frozenset("`")

Tag = TypeVar("Tag")


@dataclass(frozen=True, slots=True)
class SmsPlan:
    """How a text goes over the air."""

    encoding: str  # GSM7 or UCS2
    units: int  # septets (GSM-7, extension characters count 2) or UTF-16 code units (UCS-2)
    parts: int
    per_part: int  # capacity of one part for this encoding and part count

    @property
    def capacity(self) -> int:
        return self.per_part * self.parts

    @property
    def left(self) -> int:
        return self.capacity - self.units


def _gsm7_table() -> dict[str, str]:
    """Every character GSM-7 can carry, to its septets in smpplib's encoding (one byte per
    septet, two for the extension table: €, [, ]…)."""
    septets: dict[str, str] = {}
    for ch in set(gsm.GSM_CHARACTER_TABLE) - _NOT_GSM7:
        try:
            septets[ch] = gsm.gsm_encode(ch).decode("latin-1")
        except UnicodeError:
            continue
    return septets


# Read once, then set operations in C: a storm of hangups renders and sizes hundreds of texts
# at once, and a loop over their characters in Python would be a good share of the latency.
_GSM7_SEPTETS: Final = _gsm7_table()
_GSM7: Final = frozenset(_GSM7_SEPTETS)
_GSM7_DOUBLE: Final = frozenset(ch for ch, septets in _GSM7_SEPTETS.items()
                                if len(septets) == 2)
_GSM7_TRANSLATION: Final = str.maketrans(_GSM7_SEPTETS)


def is_gsm7(text: str) -> bool:
    return _GSM7.issuperset(text)


def encoding_for(text: str) -> str:
    return GSM7 if is_gsm7(text) else UCS2


def units(text: str, encoding: str) -> int:
    """The text's size in the encoding's units: septets, or UTF-16 code units."""
    if encoding == GSM7:
        return len(text) + sum(text.count(ch) for ch in _GSM7_DOUBLE.intersection(text))
    return len(text.encode("utf-16-le")) // 2


def _unit_sizes(text: str, encoding: str) -> list[int]:
    """The size of each character in the encoding's units (0: GSM-7 cannot carry it)."""
    if encoding == GSM7:
        return [len(_GSM7_SEPTETS.get(ch, "")) for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def plan(text: str, encoding: str | None = None) -> SmsPlan:
    encoding = encoding or encoding_for(text)
    size = units(text, encoding)
    single, part = (GSM7_SINGLE, GSM7_PART) if encoding == GSM7 else (UCS2_SINGLE, UCS2_PART)
    if size <= single:
        return SmsPlan(encoding, size, 1, single)
    return SmsPlan(encoding, size, len(_chunks(text, _unit_sizes(text, encoding), part)), part)


def _chunks(text: str, sizes: list[int], limit: int) -> list[str]:
    """Split on character boundaries so no part exceeds `limit` units."""
    chunks: list[str] = []
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if used + size > limit:
            chunks.append(text[start:index])
            start, used = index, 0
        used += size
    chunks.append(text[start:])
    return chunks


def encode(text: str, encoding: str) -> bytes:
    """The payload: GSM-7 unpacked septets (smpplib's table) or UTF-16 big-endian."""
    if encoding != GSM7:
        return text.encode("utf-16-be")
    if not is_gsm7(text):
        raise UnicodeError(text)
    return text.translate(_GSM7_TRANSLATION).encode("latin-1")


@dataclass(frozen=True, slots=True)
class EncodedSms:
    encoding: str
    data_coding: int
    esm_class: int
    parts: tuple[bytes, ...]  # short_message payloads, UDH included when concatenated


def split(text: str, *, reference: int, gsm_data_coding: int = 0) -> EncodedSms:
    """Encode `text` into SMPP payloads; `reference` (0-255) ties the parts together."""
    encoding = encoding_for(text)
    single, part = (GSM7_SINGLE, GSM7_PART) if encoding == GSM7 else (UCS2_SINGLE, UCS2_PART)
    data_coding = gsm_data_coding if encoding == GSM7 else DATA_CODING_UCS2
    if units(text, encoding) <= single:
        return EncodedSms(encoding, data_coding, 0, (encode(text, encoding),))
    chunks = _chunks(text, _unit_sizes(text, encoding), part)
    if len(chunks) > 255:
        raise ValueError("text too long for a concatenated SMS (255 parts at most)")
    ref = reference & 0xFF
    payloads = tuple(
        bytes((0x05, 0x00, 0x03, ref, len(chunks), number)) + encode(chunk, encoding)
        for number, chunk in enumerate(chunks, start=1)
    )
    return EncodedSms(encoding, data_coding, ESM_CLASS_UDHI, payloads)


#: the GSM-7 character of every byte, masked to a septet (a `codecs.charmap_decode` table)
_GSM7_DECODING: Final = "".join(gsm.GSM_CHARACTER_TABLE[byte & 0x7F] for byte in range(256))


def gsm_decode(data: bytes) -> str:
    """Unpacked GSM-7 septets (one per byte, as SMPP carries them) back to text.

    A text without an escape (nearly all: receipts, most replies) is decoded by a character
    map, the rest a character at a time."""
    if b"\x1b" not in data and b"\x9b" not in data:
        return codecs.charmap_decode(data, "strict", _GSM7_DECODING)[0]
    table = gsm.GSM_CHARACTER_TABLE
    chars: list[str] = []
    index = 0
    while index < len(data):
        septet = data[index] & 0x7F
        if septet == 0x1B and index + 1 < len(data):
            index += 1
            chars.append(table[0x80 + (data[index] & 0x7F)])
        else:
            chars.append(table[septet])
        index += 1
    return "".join(chars)


def decode(payload: bytes, data_coding: int, esm_class: int) -> tuple[str, bytes]:
    """(text, UDH) of a received short_message; the UDH is empty when there is none."""
    udh = b""
    if esm_class & ESM_CLASS_UDHI and payload:
        length = payload[0] + 1
        udh, payload = payload[:length], payload[length:]
    coding = data_coding & 0x0F if data_coding & 0xF0 in (0x00, 0xF0) else data_coding
    if data_coding == DATA_CODING_UCS2 or coding == DATA_CODING_UCS2:
        return payload.decode("utf-16-be", errors="replace"), udh
    if data_coding in (0x03,):  # latin-1
        return payload.decode("latin-1"), udh
    if data_coding == 0x01:  # IA5 / ASCII
        return payload.decode("ascii", errors="replace"), udh
    return gsm_decode(payload), udh


def concatenation(udh: bytes) -> tuple[int, int, int] | None:
    """(reference, total, part number) from a UDH's concatenation element (IE 0x00, 8-bit
    reference, or IE 0x08, 16-bit), or None when the text is not a part of a longer one."""
    position = 1  # udh[0] is the header's length
    while position + 1 < len(udh):
        element, length = udh[position], udh[position + 1]
        value = udh[position + 2:position + 2 + length]
        if element == 0x00 and length == 3 and len(value) == 3:
            return value[0], value[1], value[2]
        if element == 0x08 and length == 4 and len(value) == 4:
            return (value[0] << 8) | value[1], value[2], value[3]
        position += 2 + length
    return None


@dataclass(slots=True)
class _Pending(Generic[Tag]):
    total: int
    first_at: float
    parts: dict[int, str]
    tags: list[Tag] = field(default_factory=list)  # one per part received, repeats too


class Released(NamedTuple, Generic[Tag]):
    """A text the reassembler lets go: whole, or with a gap where parts never came."""

    sender: tuple[str, str]
    text: str
    whole: bool
    tags: tuple[Tag, ...]  # those given with its parts (the SMPP link: how to answer each)


class Reassembler(Generic[Tag]):
    """Joins the parts of long texts received (a caller's reply) into one text, sans-IO.

    Parts come in any order, maybe twice, maybe never: a text whose parts do not all arrive
    within `timeout` seconds is released with what came, a gap marked "[…]", so a reply is
    never lost. At most `max_pending` texts wait at once (the oldest is released first).
    Each part may carry a tag, given back with the text it ends up in: the SMPP link tags a
    part with the answer to its deliver_sm, sent once the whole text is stored."""

    GAP = "[…]"

    def __init__(self, timeout: float = 120.0, max_pending: int = 1000) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self._pending: dict[tuple[tuple[str, str], int, int], _Pending[Tag]] = {}

    def add(self, sender: tuple[str, str], reference: int, total: int, number: int, text: str,
            at: float, tag: Tag | None = None) -> list[Released[Tag]]:
        """Take one part from `sender` (source, destination); returns the texts now complete
        (or pushed out). A part that does not say where it belongs is a whole text by
        itself."""
        tags = () if tag is None else (tag,)
        if total <= 1 or not 1 <= number <= total:
            return [Released(sender, text, True, tags)]
        key = (sender, reference, total)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(total, at, {})
        pending.parts.setdefault(number, text)
        pending.tags.extend(tags)
        released: list[Released[Tag]] = []
        if len(pending.parts) == total:
            del self._pending[key]
            released.append(self._release(sender, pending, True))
        while len(self._pending) > self.max_pending:
            oldest = min(self._pending, key=lambda k: self._pending[k].first_at)
            released.append(self._release(oldest[0], self._pending.pop(oldest), False))
        return released

    def expire(self, now: float) -> list[Released[Tag]]:
        """Release the texts still missing parts after `timeout` seconds."""
        late = [key for key, pending in self._pending.items()
                if now - pending.first_at >= self.timeout]
        return [self._release(key[0], self._pending.pop(key), False) for key in late]

    def _release(self, sender: tuple[str, str], pending: _Pending[Tag],
                 whole: bool) -> Released[Tag]:
        text = "".join(pending.parts.get(number, self.GAP)
                       for number in range(1, pending.total + 1))
        return Released(sender, text, whole, tuple(pending.tags))
