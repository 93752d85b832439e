"""The daemons sharing a store: each one's heartbeat row, and who counts as alive.

Every running daemon writes one status row, `daemon:<id>`, once a second: its process
(`PID@HOST`), the state of its SMSC bind and of each PBX link it watches, with the time as
the row's `at`. A clean stop deletes it. A daemon is alive while its row is younger than
ALIVE_WITHIN: the peers then share `smpp.throughput` (`throughput_share`), and `mcdaemon
status` lists it. One format, read and written here only.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

#: the status rows of the daemons' heartbeats are named this, then the daemon's id
DAEMON_ROW = "daemon:"
#: a heartbeat younger than this (seconds) means its daemon runs: it beats every second, so
#: this leaves room for a slow commit, and a daemon whose peers died takes their share of the
#: throughput back within this long
ALIVE_WITHIN = 5.0
#: the row of a daemon not seen for this long (killed, never restarted) is deleted
FORGET_AFTER = 3600.0


def process_id() -> str:
    """`PID@HOST`: `status` on the same host (not another container or machine sharing the
    store) can ask whether that process still runs."""
    return f"{os.getpid()}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class DaemonBeat:
    """One daemon's heartbeat: who it is, its SMSC bind, the PBXs it watches and their links."""

    id: str  # `daemon.name`, or its process (`PID@HOST`)
    process: str  # `PID@HOST`
    smsc: str = "down"
    pbxs: Mapping[str, str] = field(default_factory=dict)  # PBX name -> link state
    seen: float = 0.0  # when it last beat (epoch seconds)

    @property
    def row(self) -> str:
        return DAEMON_ROW + self.id

    def value(self) -> str:
        return json.dumps({"process": self.process, "smsc": self.smsc, "pbxs": dict(self.pbxs)},
                          separators=(",", ":"))


def gone_pid(process: str) -> int | None:
    """The pid of `process` (`PID@HOST`) when it ran on this host and runs no more; None for
    another host (or PID namespace), where only the heartbeat's age can tell."""
    pid_text, _, host = process.partition("@")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return int(pid_text)
    except PermissionError:  # alive, as another user (the daemon's)
        pass
    return None


def read_beats(statuses: Mapping[str, tuple[str, float]]) -> list[DaemonBeat]:
    """Every daemon heartbeat among the status rows, newest first (a row that does not parse,
    from another version, is left out)."""
    beats = []
    for name, (value, at) in statuses.items():
        if not name.startswith(DAEMON_ROW):
            continue
        try:
            fields = json.loads(value)
            beats.append(DaemonBeat(name.removeprefix(DAEMON_ROW), str(fields["process"]),
                                    str(fields["smsc"]),
                                    {str(pbx): str(state)
                                     for pbx, state in dict(fields["pbxs"]).items()},
                                    float(at)))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(beats, key=lambda beat: (-beat.seen, beat.id))


def alive(beats: list[DaemonBeat], now: float) -> list[DaemonBeat]:
    """The daemons whose heartbeat is fresh at `now`."""
    return [beat for beat in beats if now - beat.seen < ALIVE_WITHIN]


def throughput_share(throughput: float, daemons_alive: int) -> float:
    """This daemon's part of `smpp.throughput`, the account's limit: an equal share among
    the daemons alive (itself included, alive or not yet seen)."""
    return throughput / max(1, daemons_alive)
