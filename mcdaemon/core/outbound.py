"""The outbound observer: which numbers an answered outbound call reached (sans-IO).

The call tracker follows inbound calls only. Follow-ups and call-back campaigns also stop when
someone at the PBX *called the customer* and the customer answered: an agent dialling the
number by hand, or one of our own call-backs. This observer is fed the same AMI events as the
tracker and reads two of them (both already in the daemon's event filter, so nothing more is
asked of Asterisk):

* `DialBegin`: a channel starts dialling another. The number dialled is taken from the
  `DialString` (`+447700900123@carrier`, `carrier/sip:07700900123@host`: the first run of
  at least 6 digits, with its `+`), else from `DestCallerIDNum` (Asterisk shows the dialled
  number there on outgoing channels), and made E.164 with the config's `region`.
* `DialEnd` with `DialStatus: ANSWER` for the same destination channel (`DestUniqueid`): the
  number answered. Any other DialStatus, or a `Hangup` of the destination first, forgets it.

It reports every answered dial, inbound calls' agent legs included (their dial strings hold
extensions, not customer numbers); only numbers with an open follow-up sequence or campaign
matter to the caller of `feed`. Memory: one entry per dial in progress, bounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from mcdaemon.core.phone import to_e164

#: dials in progress remembered at most (the oldest is forgotten first)
MAX_PENDING = 10_000
_NUMBER = re.compile(r"\+?\d{6,15}")


@dataclass(frozen=True, slots=True)
class Reached:
    """An outbound dial to `number` was answered at `at`, in the call `linkedid`."""

    number: str
    at: float
    linkedid: str
    dest_channel: str


def dialled_number(event: Mapping[str, str], region: str) -> str | None:
    """The E.164 number a DialBegin dials, or None (an extension, a queue member)."""
    for text in (event.get("DialString", ""), event.get("DestCallerIDNum", "")):
        match = _NUMBER.search(text.replace(" ", ""))
        if match:
            e164 = to_e164(match.group(0), region)
            if e164:
                return e164
    return None


class OutboundWatch:
    """Feed it every AMI event of one PBX; `feed` returns the answered outbound dials."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._pending: dict[str, tuple[str, str]] = {}  # DestUniqueid -> (number, linkedid)

    def feed(self, event: Mapping[str, str], at: float) -> list[Reached]:
        name = event.get("Event", "")
        if name == "DialBegin":
            dest = event.get("DestUniqueid", "")
            number = dialled_number(event, self.region) if dest else None
            if number:
                if len(self._pending) >= MAX_PENDING:
                    self._pending.pop(next(iter(self._pending)))
                self._pending[dest] = (number, event.get("Linkedid", ""))
        elif name == "DialEnd":
            found = self._pending.pop(event.get("DestUniqueid", ""), None)
            if found and event.get("DialStatus", "").upper() == "ANSWER":
                return [Reached(found[0], at, found[1], event.get("DestChannel", ""))]
        elif name == "Hangup":
            self._pending.pop(event.get("Uniqueid", ""), None)
        return []
