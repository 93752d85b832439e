"""Variants of a recording for load tests: the same real calls, as other calls.

A storm of many PBXs, or of one PBX over a longer time, is made of one recording served many
times; for the daemon to see distinct calls, each copy needs call ids of its own (Asterisk's
are unique per PBX and time, so copies on one connection must differ), and, to be texted,
callers of its own (the policy's cooldown texts a number once). Nothing else is changed: the
events, their order and their pace are the recording's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from mcdaemon.core.transcript import Frame, Transcript

#: Uniqueid, Linkedid and their Dest.../Bridge... forms: `1795370359.156`
_CALL_IDS = re.compile(rb"^([A-Za-z]*(?:Uniqueid|Linkedid)): (\d+)\.(\d+)", re.MULTILINE)


def with_call_ids(transcript: Transcript, copy: int) -> Transcript:
    """The recording with every call id made unique to `copy` (the same for copy 0)."""
    if copy == 0:
        return transcript
    tag = str(copy).encode()
    frames = [Frame(frame.offset, _CALL_IDS.sub(rb"\1: " + tag + rb"0\2.\3", frame.raw))
              for frame in transcript.frames]
    return dataclasses.replace(transcript, frames=frames)


def with_callers(transcript: Transcript, numbers: Mapping[str, str]) -> Transcript:
    """The recording with each caller number of `numbers` replaced by another wherever it
    appears (caller, connected line). Give the digits without `+` (`447700900123`): both
    forms are then replaced."""
    frames = []
    for frame in transcript.frames:
        raw = frame.raw
        for old, new in numbers.items():
            raw = raw.replace(old.encode(), new.encode())
        frames.append(Frame(frame.offset, raw))
    return dataclasses.replace(transcript, frames=frames)
