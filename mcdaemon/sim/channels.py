"""The live channels of a replayed AMI stream, as Asterisk's `CoreShowChannels` lists them.

Fed the frames a replay has sent so far, `LiveChannels` answers which channels are alive and,
for each, the fields of its `CoreShowChannel` event: the channel's snapshot from its latest
event (Channel, ChannelState, CallerIDNum, Context, Exten, Uniqueid, Linkedid…), the
application its latest `Newexten` started (Application, ApplicationData), its `Duration`
(HH:MM:SS) and the bridge it is in (BridgeId). Only the frames that change these are read,
lazily (`FrameFields`): the test AMI server feeds it every frame it sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcdaemon.core.transcript import FrameFields

#: the snapshot fields of a channel an event carries, in CoreShowChannel's order
SNAPSHOT_FIELDS = ("Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum",
                   "CallerIDName", "ConnectedLineNum", "ConnectedLineName", "Language",
                   "AccountCode", "Context", "Exten", "Priority", "Uniqueid", "Linkedid")
_READ = tuple(f"Event: {name}\r\n".encode() for name in (
    "Newchannel", "Newexten", "Newstate", "Hangup", "BridgeEnter", "BridgeLeave",
    "NewCallerid", "NewConnectedLine"))


@dataclass(slots=True)
class _Live:
    created: float
    latest: bytes  # the channel's latest event: its snapshot
    newexten: bytes | None = None  # its latest Newexten: the application it runs
    bridge: str = ""


class LiveChannels:
    """Channels created and not hung up yet, in creation order."""

    def __init__(self) -> None:
        self._live: dict[str, _Live] = {}

    def __len__(self) -> int:
        return len(self._live)

    def clear(self) -> None:
        self._live.clear()

    def feed(self, raw: bytes, at: float) -> None:
        """One frame sent at `at` (seconds, any clock `listing` is given too)."""
        if not raw.startswith(_READ):
            return
        fields = FrameFields(raw)
        event, uid = fields.get("Event", ""), fields.get("Uniqueid", "")
        if not uid:
            return
        if event == "Newchannel":
            self._live[uid] = _Live(at, raw)
            return
        live = self._live.get(uid)
        if live is None:
            return
        if event == "Hangup":
            del self._live[uid]
            return
        live.latest = raw
        if event == "Newexten":
            live.newexten = raw
        elif event == "BridgeEnter":
            live.bridge = fields.get("BridgeUniqueid", "")
        elif event == "BridgeLeave":
            live.bridge = ""

    def uniqueids(self) -> list[str]:
        return list(self._live)

    def listing(self, now: float) -> list[dict[str, str]]:
        """The CoreShowChannel fields of each live channel at `now` (no Event, no ActionID)."""
        channels = []
        for uid, live in self._live.items():
            snapshot = FrameFields(live.latest)
            fields = {key: snapshot.get(key, "") for key in SNAPSHOT_FIELDS}
            fields["Uniqueid"] = uid
            fields["Linkedid"] = fields["Linkedid"] or uid
            application = data = ""
            if live.newexten is not None:
                newexten = FrameFields(live.newexten)
                application = newexten.get("Application", "")
                data = newexten.get("AppData", "")
            fields["Application"], fields["ApplicationData"] = application, data
            seconds = max(0, int(now - live.created))
            fields["Duration"] = (f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
                                  f"{seconds % 60:02d}")
            fields["BridgeId"] = live.bridge
            channels.append(fields)
        return channels


__all__ = ["SNAPSHOT_FIELDS", "LiveChannels"]
