"""The replayed PBX's queue_log: the lines Asterisk's app_queue writes, from the AMI events.

Asterisk writes its queue_log whether or not an AMI client listens; a test (or a bench) that
drops the AMI link mid-replay gives `QueueLogWriter.feed` every frame the PBX "plays"
(`AmiTestServer(on_frame=…)`), sent or not, and gets the file a real PBX would have written
alongside: ENTERQUEUE (caller number, position), CONNECT, ABANDON, COMPLETECALLER /
COMPLETEAGENT, and EXITWITHTIMEOUT for a caller who left a queue otherwise (AMI does not say
whether it was a timeout, an empty queue or a key: a simulator's approximation). Stamped with
the wall clock when fed, as Asterisk stamps them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mcdaemon.core.transcript import Frame, FrameFields

_READ = tuple(f"Event: {name}\r\n".encode() for name in (
    "QueueCallerJoin", "QueueCallerAbandon", "QueueCallerLeave", "AgentConnect",
    "AgentComplete", "Newexten", "Hangup"))


class QueueLogWriter:
    """Appends a queue_log line per queue event of the frames it is fed."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._entered: dict[str, float] = {}  # caller uniqueid -> when it joined
        self._settled: set[str] = set()  # callers whose queue visit has its end line
        #: callers who left a queue, not yet known how: AgentConnect follows a Leave when
        #: answered; the dialplan going on (Newexten) or a Hangup means a timeout
        self._left: dict[str, tuple[str, str, float]] = {}  # uid -> (queue, position, at)

    def feed(self, frame: Frame) -> None:
        raw = frame.raw
        if not raw.startswith(_READ):
            return
        fields = FrameFields(raw)
        event, uid = fields.get("Event", ""), fields.get("Uniqueid", "")
        queue, now = fields.get("Queue", ""), self._clock()
        line: str | None = None
        if event in ("Newexten", "Hangup"):
            left = self._left.pop(uid, None)
            if left is not None:
                queue, position, at = left
                wait = int(at - self._entered.get(uid, at))
                self._write(at, uid, queue, "NONE", f"EXITWITHTIMEOUT|{position}|1|{wait}")
            return
        if event == "QueueCallerJoin":
            self._entered[uid] = now
            self._settled.discard(uid)
            line = f"ENTERQUEUE||{fields.get('CallerIDNum', '')}|{fields.get('Position', '')}"
        elif event == "QueueCallerAbandon":
            self._settled.add(uid)
            line = (f"ABANDON|{fields.get('Position', '')}|{fields.get('OriginalPosition', '')}"
                    f"|{fields.get('HoldTime', '')}")
        elif event == "AgentConnect":
            self._settled.add(uid)
            self._left.pop(uid, None)
            line = (f"CONNECT|{fields.get('HoldTime', '')}|{fields.get('DestUniqueid', '')}"
                    f"|{fields.get('RingTime', '')}")
        elif event == "AgentComplete":
            ended = "COMPLETEAGENT" if fields.get("Reason") == "agent" else "COMPLETECALLER"
            line = f"{ended}|{fields.get('HoldTime', '')}|{fields.get('TalkTime', '')}|1"
        elif event == "QueueCallerLeave" and uid not in self._settled and uid in self._entered:
            self._left[uid] = (queue, fields.get("Position", ""), now)
        if line is not None:
            agent = fields.get("MemberName", "NONE") if event.startswith("Agent") else "NONE"
            self._write(now, uid, queue, agent, line)

    def _write(self, at: float, uid: str, queue: str, agent: str, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(f"{int(at)}|{uid}|{queue}|{agent}|{line}\n")


__all__ = ["QueueLogWriter"]
