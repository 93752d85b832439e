"""The tracker under hostile or messy input: it must neither crash, nor mix calls, nor grow."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcdaemon.config.model import InboundConfig
from mcdaemon.core.records import CallRecord, Outcome
from mcdaemon.core.tracker import FINISHED_MEMORY, CallTracker
from mcdaemon.core.transcript import parse_frame, read_transcript

from recordings import recording_path

INBOUND = InboundConfig(contexts=("from-carrier",), after_hours_contexts=("closed",))
STORM = list(read_transcript(recording_path("busy_storm")).events())
OTHERS = [event for name in ("answered", "queue_timeout_voicemail", "ivr_abandon",
                             "ring_no_answer_direct", "after_hours")
          for event in read_transcript(recording_path(name)).events()]


def feed_all(events: Iterable[tuple[float, Mapping[str, str]]],
             tracker: CallTracker | None = None) -> list[CallRecord]:
    tracker = tracker or CallTracker("lab", INBOUND, "GB")
    records: list[CallRecord] = []
    for at, event in events:
        records.extend(tracker.feed(event, at))
    return records


def summary(records: list[CallRecord]) -> dict[str, tuple[str, str | None, tuple[str, ...]]]:
    return {r.call_id: (str(r.outcome), r.did, r.stages) for r in records}


def test_malformed_frames_and_missing_keys_are_ignored() -> None:
    tracker = CallTracker("lab", INBOUND, "GB")
    junk: list[Mapping[str, str]] = [
        {}, {"Event": ""}, {"Event": "Hangup"}, {"Event": "Newchannel"},
        {"Event": "Newchannel", "Uniqueid": "1.1", "Linkedid": "1.1"},
        {"Event": "Newexten", "Uniqueid": "1.1"}, {"Event": "VarSet", "Variable": "MCD_GROUP"},
        {"Event": "DialEnd", "Linkedid": "1.1", "DialStatus": "ANSWER"},
        {"Event": "QueueCallerAbandon", "Linkedid": "nope"},
        {"Event": "MessageWaiting", "Mailbox": "2000@default"},
        parse_frame(b"Event: Newchannel\r\nno colon here\r\n: empty key\r\n\r\n"),
        {"Event": "Hangup", "Uniqueid": "1.1", "Linkedid": "1.1"},
    ]
    for at, event in enumerate(junk):
        tracker.feed(event, float(at))
    tracker.expire(1e12)
    assert tracker.active_calls == 0
    # and it still tracks a real call afterwards
    assert len(feed_all(read_transcript(recording_path("queue_abandon")).events(), tracker)) == 1


def test_non_utf8_caller_name_and_huge_header_values_stay_bounded() -> None:
    events = list(read_transcript(recording_path("answered")).events())
    at, first = events[0]
    raw = (b"Event: Newchannel\r\nChannel: PJSIP/carrier-00000017\r\nChannelStateDesc: Ring\r\n"
           b"CallerIDNum: +447700900777\r\nCallerIDName: Zo\xeb \xff\xfe\x1b[31m" + b"A" * 100_000
           + b"\r\nContext: from-carrier\r\nExten: " + b"4" * 100_000 + b"\r\nUniqueid: "
           + first["Uniqueid"].encode() + b"\r\nLinkedid: " + first["Linkedid"].encode()
           + b"\r\n\r\n")
    events[0] = (at, parse_frame(raw))
    [record] = feed_all(events)
    assert record.outcome == Outcome.ANSWERED
    assert record.caller_name is not None and record.caller_name.startswith("Zo")
    assert len(record.caller_name) <= 80 and "\x1b" not in record.caller_name
    assert record.did is not None and len(record.did) <= 80


def test_interleaved_calls_keep_their_own_outcomes() -> None:
    separate = summary(feed_all(STORM)) | summary(feed_all(OTHERS))
    together = sorted(STORM + OTHERS, key=lambda item: item[0])
    assert summary(feed_all(together)) == separate
    assert len(separate) == 55


Timed = tuple[float, dict[str, str]]


def calls_of(events: list[Timed]) -> list[list[Timed]]:
    by_call: dict[str, list[Timed]] = {}
    for at, event in events:
        key = event.get("Linkedid") or "-"
        by_call.setdefault(key, []).append((at, event))
    return list(by_call.values())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_any_interleaving_of_different_calls_gives_the_same_records(seed: int) -> None:
    """Shuffle which call speaks next, keeping each call's own events in order."""
    expected = summary(feed_all(STORM)) | summary(feed_all(OTHERS))
    streams = [list(reversed(call)) for call in calls_of(STORM + OTHERS)]
    rng = random.Random(seed)
    shuffled = []
    while streams:
        stream = rng.choice(streams)
        shuffled.append(stream.pop())
        if not stream:
            streams.remove(stream)
    assert summary(feed_all(shuffled)) == expected


def rewrite_id(value: str, round_number: int) -> str:
    head, dot, tail = value.partition(".")
    return f"{head}.{round_number}{tail}" if dot and head.isdigit() else value


def test_memory_stays_flat_over_many_storms() -> None:
    tracker = CallTracker("lab", INBOUND, "GB")
    total = 0
    ids = ("Uniqueid", "Linkedid", "DestUniqueid", "DestLinkedid")
    for round_number in range(20):
        events = [(at, {key: rewrite_id(value, round_number) if key in ids else value
                        for key, value in event.items()})
                  for at, event in STORM]
        total += len(feed_all(events, tracker))
    assert total == 20 * 50
    assert tracker.active_calls == 0
    assert tracker._calls == {} and tracker._channels == {}
    assert len(tracker._finished) <= FINISHED_MEMORY
    assert len(tracker._finished) == 20 * 50


def test_finished_call_memory_is_bounded() -> None:
    tracker = CallTracker("lab", INBOUND, "GB")
    for n in range(FINISHED_MEMORY + 10):
        uid = f"{n}.0"
        chan = {"Channel": f"IAX2/carrier-{n}", "Uniqueid": uid, "Linkedid": uid}
        tracker.feed({"Event": "Newchannel", **chan, "Context": "from-carrier",
                      "ChannelStateDesc": "Ring"}, float(n))
        tracker.feed({"Event": "Hangup", **chan}, float(n))
    assert len(tracker._finished) == FINISHED_MEMORY
    assert tracker.active_calls == 0
