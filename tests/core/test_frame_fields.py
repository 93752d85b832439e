"""FrameFields: the fields of a frame found where asked for equal those of a full parse."""

from __future__ import annotations

import asyncio
import random

import pytest

from mcdaemon.adapters.ami import AmiConnection, AmiEvent, AmiItem
from mcdaemon.config.model import AmiConfig
from mcdaemon.core.transcript import FrameFields, parse_frame, read_transcript

from recordings import ALL_RECORDINGS


def keys_stand_at_line_starts(raw: bytes) -> bool:
    """Asterisk's shape: no key with spaces around it (`parse_frame` would strip them)."""
    for line in raw.decode("utf-8", errors="replace").split("\n"):
        key, colon, _ = line.rstrip("\r").partition(":")
        if colon and (not key or " " in key or key != key.strip()):
            return False
    return True


def test_every_field_of_every_recorded_frame_reads_as_the_full_parse() -> None:
    frames = [frame.raw for path in ALL_RECORDINGS
              for frame in read_transcript(path).frames]
    assert len(frames) > 1000
    for raw in frames:
        full = parse_frame(raw)
        lazy = FrameFields(raw)
        assert {key: lazy.get(key) for key in full} == full
        assert lazy.get("NoSuchField") is None and "NoSuchField" not in lazy
        assert dict(lazy) == full and len(lazy) == len(full)


def test_odd_bytes_read_as_the_full_parse_whatever_the_key() -> None:
    """Random frames of keys, colons, bare CRs and LFs, broken UTF-8 and injected lines."""
    pieces = [b"Event", b"Uniqueid", b"Uniqueid2", b"x", b":", b": ", b"::", b"\r", b"\n",
              b"\r\n", b"\xc3\xab", b"\xff", b"\xe2", b"Linkedid: 1.2\r\n", b"\r\nUniqueid: 9"]
    keys = ["Event", "Uniqueid", "Uniqueid2", "Linkedid", "x", "ë", "Missing"]
    rnd = random.Random(7)
    checked = 0
    for _ in range(40000):
        raw = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 24)))
        if not keys_stand_at_line_starts(raw):
            continue
        checked += 1
        full = parse_frame(raw)
        lazy = FrameFields(raw)
        for key in {*keys, *full}:
            assert lazy.get(key) == full.get(key), (raw, key)
    assert checked > 10000


def test_the_first_of_two_lines_with_one_key_wins_as_in_the_full_parse() -> None:
    raw = (b"Event: Newchannel\r\nCallerIDName: x\r\nUniqueid: injected\r\n"
           b"Uniqueid: 1.1\r\n\r\n")

    assert FrameFields(raw)["Uniqueid"] == parse_frame(raw)["Uniqueid"] == "injected"


@pytest.mark.parametrize("key", ["", " Event", "Event ", "Ev:ent", "Evënt"])
def test_a_key_that_is_no_plain_word_is_looked_up_in_the_full_parse(key: str) -> None:
    raw = b"Event: Hangup\r\nEv\xc3\xabnt: x\r\n\r\n"

    assert FrameFields(raw).get(key) == parse_frame(raw).get(key)
    with pytest.raises(KeyError):
        FrameFields(raw)["Missing"]


def test_the_event_name_the_adapter_reads_from_the_first_line_is_the_full_parse_s() -> None:
    """The AMI adapter reads an event's name to choose it, and hands it to FrameFields."""
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    connection = AmiConnection(AmiConfig(name="pbx"), queue)
    frames = [frame.raw for path in ALL_RECORDINGS
              for frame in read_transcript(path).frames if frame.raw.startswith(b"Event: ")]
    frames += [b"Event: Hangup \r\nUniqueid: 1\r\n\r\n", b"Event: \xc3\xab\r\n\r\n"]
    for raw in frames:
        connection._on_frames([raw.removesuffix(b"\r\n\r\n")], 0.0)  # as a read hands it
        [event] = list(queue.get_nowait())  # type: ignore[arg-type]
        assert isinstance(event, AmiEvent)
        assert event.fields.get("Event") == parse_frame(raw)["Event"], raw
