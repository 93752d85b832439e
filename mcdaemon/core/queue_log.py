"""Asterisk's queue_log, read back: the queue calls of a window, as the tracker would see them.

Asterisk writes one line per queue event (`/var/log/asterisk/queue_log`):

    epoch|callid|queue|agent|event|data1|data2|data3…

`callid` is the caller channel's Uniqueid (for an inbound caller, the call's Linkedid: the
`call_id` live calls are stored under), or `NONE` on queue-wide lines (`QUEUESTART`,
`CONFIGRELOAD`, `ADDMEMBER`, `PAUSE`…), which are skipped. The events that settle a caller:

| event | data | outcome |
|---|---|---|
| `ENTERQUEUE` | url, caller number, position | (the call starts) |
| `CONNECT` | holdtime, bridged uniqueid, ring time | `answered` |
| `COMPLETECALLER` / `COMPLETEAGENT` | holdtime, talk time, position | `answered` |
| `TRANSFER` | extension, context, holdtime, talk time | `answered` |
| `ABANDON` | position, original position, wait | `queue_abandon` |
| `EXITWITHTIMEOUT` | position, original position, wait | `queue_timeout` |
| `EXITEMPTY` | position, original position, wait | `queue_timeout` |
| `EXITWITHKEY` | key, position, original position, wait | not known here (`exit_with_key`) |
| `RINGNOANSWER`, `AGENTDUMP`, `RINGCANCELED` | | (noted, not an end) |

This module is sans-IO: it is given the files' texts (oldest first, `queue_log.1` before
`queue_log`), merges them in time order, drops the lines a rotation copied twice, and
tolerates a partial last line (still being written: ignored), garbage (counted, skipped),
lines out of order after a clock jump (sorted by epoch within each call).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from mcdaemon.core.phone import to_e164
from mcdaemon.core.records import CallRecord, Outcome

ENTER = "ENTERQUEUE"
ANSWERED_EVENTS = frozenset({"CONNECT", "COMPLETECALLER", "COMPLETEAGENT", "TRANSFER"})
ENDS: dict[str, Outcome | None] = {
    "ABANDON": Outcome.QUEUE_ABANDON,
    "EXITWITHTIMEOUT": Outcome.QUEUE_TIMEOUT,
    "EXITEMPTY": Outcome.QUEUE_TIMEOUT,
    "EXITWITHKEY": None,  # the caller pressed a key: the dialplan after the queue decides
    "COMPLETECALLER": Outcome.ANSWERED,
    "COMPLETEAGENT": Outcome.ANSWERED,
    "TRANSFER": Outcome.ANSWERED,
}

#: reasons for a queue call the policy is not asked about
EXIT_WITH_KEY = "exit_with_key"
STILL_OPEN = "still_open"
NO_ENTER = "no_enterqueue"

_WITHHELD = frozenset({"", "anonymous", "unknown", "restricted", "private", "withheld"})


@dataclass(frozen=True, slots=True)
class QueueLogLine:
    epoch: float
    callid: str
    queue: str
    agent: str
    event: str
    data: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueueCall:
    """One caller's visit to the queues, from ENTERQUEUE to what ended it."""

    callid: str
    queue: str
    caller: str | None
    entered: float | None
    ended: float | None
    outcome: Outcome | None  # None: not known from the queue_log (see `reason`)
    reason: str = ""  # why there is no outcome: EXIT_WITH_KEY, STILL_OPEN, NO_ENTER
    wait_seconds: float = 0.0
    events: tuple[str, ...] = ()
    key: str | None = None  # EXITWITHKEY's key

    @property
    def decided(self) -> bool:
        return self.outcome is not None


@dataclass(slots=True)
class QueueLog:
    """What was read: the calls, and what was skipped."""

    calls: list[QueueCall] = field(default_factory=list)
    lines: int = 0  # usable lines, duplicates dropped
    garbage: int = 0
    other_queues: int = 0
    duplicates: int = 0
    partial_tail: int = 0  # files whose last line had no newline yet


def parse_line(text: str) -> QueueLogLine | None:
    """One line, or None if it is not a queue_log line."""
    parts = text.rstrip("\r\n").split("|")
    if len(parts) < 5:
        return None
    epoch_text, callid, queue, agent, event = (part.strip() for part in parts[:5])
    if not epoch_text.isdigit() or not callid or not event or not event.isupper() \
            or not event.replace("_", "").isalnum():
        return None
    return QueueLogLine(float(epoch_text), callid, queue, agent, event,
                        tuple(parts[5:]))


def _lines(text: str, log: QueueLog) -> Iterable[QueueLogLine]:
    chunks = text.split("\n")
    if chunks and chunks[-1] != "":
        log.partial_tail += 1  # still being written: the next read will have it whole
    for chunk in chunks[:-1]:
        if not chunk.strip():
            continue
        line = parse_line(chunk)
        if line is None:
            log.garbage += 1
            continue
        yield line


def read_queue_log(texts: Sequence[str], *, queues: Collection[str] | None = None,
                   until: float | None = None) -> QueueLog:
    """The queue calls of these files (oldest first). `queues`: only these (None: all);
    `until`: the window's end (later lines are not read; calls open then are not decided)."""
    log = QueueLog()
    seen: set[QueueLogLine] = set()
    per_call: dict[str, list[tuple[int, QueueLogLine]]] = {}
    order = 0
    for text in texts:
        for line in _lines(text, log):
            if line.callid.upper() == "NONE":
                continue  # queue-wide: QUEUESTART, CONFIGRELOAD, ADDMEMBER, PAUSE…
            if queues is not None and line.queue not in queues:
                log.other_queues += 1
                continue
            if until is not None and line.epoch > until:
                continue
            if line in seen:
                log.duplicates += 1
                continue
            seen.add(line)
            log.lines += 1
            per_call.setdefault(line.callid, []).append((order, line))
            order += 1
    calls = [_call(callid, [line for _, line in sorted(
        items, key=lambda item: (item[1].epoch, _rank(item[1].event), item[0]))])
        for callid, items in per_call.items()]
    calls.sort(key=lambda call: (call.ended or call.entered or 0.0, call.callid))
    log.calls = calls
    return log


def _rank(event: str) -> int:
    """Within one second: the entry first, the end last."""
    if event == ENTER:
        return 0
    return 2 if event in ENDS else 1


def _call(callid: str, lines: list[QueueLogLine]) -> QueueCall:
    caller: str | None = None
    entered: float | None = None
    queue = lines[0].queue
    connected = False
    end: QueueLogLine | None = None
    for line in lines:
        if line.event == ENTER:
            if entered is None:
                entered = line.epoch
                caller = _field(line, 1) or None
            queue = line.queue
            end = None  # in a queue again (after a timeout, another queue)
        elif line.event == "CONNECT":
            connected = True
        elif line.event in ENDS:
            end = line
    events = tuple(line.event for line in lines)
    if end is None:
        # still in the queue, or talking to an agent, when the window ends: not decided
        return QueueCall(callid, queue, caller, entered, None, None, STILL_OPEN, events=events)
    outcome = Outcome.ANSWERED if connected else ENDS[end.event]
    wait = end.epoch - entered if entered is not None else 0.0
    if end.event in ("ABANDON", "EXITWITHTIMEOUT", "EXITEMPTY"):
        wait = _number(_field(end, 2), wait)
    key: str | None = None
    if end.event == "EXITWITHKEY":
        key = _field(end, 0) or None
        wait = _number(_field(end, 3), wait)
    reason = ""
    if outcome is None:
        reason = EXIT_WITH_KEY
    elif entered is None:
        reason = NO_ENTER  # began before the files do: the caller's number is not known
    return QueueCall(callid, queue, caller, entered, end.epoch, outcome, reason,
                     wait_seconds=max(wait, 0.0), events=events, key=key)


def _field(line: QueueLogLine, index: int) -> str:
    return line.data[index].strip() if index < len(line.data) else ""


def _number(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


def to_record(call: QueueCall, pbx: str, region: str) -> CallRecord:
    """A decided queue call as the CallRecord the policy decides (marked `backfilled`); the
    group is the queue's name, which `policy.match_group` matches against `groups.*.queues`."""
    assert call.outcome is not None and call.ended is not None
    caller = call.caller or ""
    e164 = None if caller.lower() in _WITHHELD else to_e164(caller, region)
    started = call.entered if call.entered is not None else call.ended
    return CallRecord(
        pbx=pbx, call_id=call.callid, caller=caller, caller_name=None, caller_e164=e164,
        did=None, group=call.queue or None, outcome=call.outcome,
        stages=(f"queue:{call.queue}:{call.events[-1].lower()}", "backfilled"),
        started=started, ended=call.ended, wait_seconds=round(call.wait_seconds, 3),
        partial=call.entered is None, extra={"backfilled": "true", "queue": call.queue,
                                             "source": "queue_log"})


def completed(record: CallRecord, call: QueueCall) -> CallRecord:
    """The tracker's record of a call whose end it did not see (it ended while the AMI link
    was down), completed by the queue_log's: its outcome, end and wait."""
    assert call.outcome is not None and call.ended is not None
    return dataclasses.replace(
        record, outcome=call.outcome, ended=call.ended, partial=False,
        wait_seconds=round(call.wait_seconds, 3),
        stages=(*record.stages, f"queue:{call.queue}:{call.events[-1].lower()}", "backfilled"),
        extra={**record.extra, "backfilled": "true", "queue": call.queue,
               "source": "queue_log"})


__all__ = ["QueueCall", "QueueLog", "QueueLogLine", "completed", "parse_line",
           "read_queue_log", "to_record"]
