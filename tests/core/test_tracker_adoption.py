"""Calls in progress at an AMI connect: `CallTracker.adopt` fed CoreShowChannel fields.

A real recording is cut where the caller waits in the queue: the channels alive at that point
(`sim.channels.LiveChannels`, as CoreShowChannels lists them) are adopted, then the rest of
the recording is fed as the daemon would have received it after connecting.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mcdaemon.config.model import InboundConfig
from mcdaemon.core.records import CallRecord, Outcome
from mcdaemon.core.tracker import CallTracker, _duration
from mcdaemon.core.transcript import Frame, parse_frame, read_transcript
from mcdaemon.sim.channels import LiveChannels

from recordings import recording_path

INBOUND = InboundConfig(contexts=("from-carrier",), after_hours_contexts=("closed",),
                        trunks=("PJSIP/carrier",))
CALLER = "1795369867.0"


def frames(name: str) -> list[Frame]:
    return read_transcript(recording_path(name)).frames


def cut_after(all_frames: list[Frame], test: Callable[[bytes], bool]) -> int:
    """The index just after the first frame `test` accepts."""
    return next(index for index, frame in enumerate(all_frames) if test(frame.raw)) + 1


def listing(before: list[Frame]) -> list[dict[str, str]]:
    live = LiveChannels()
    for frame in before:
        live.feed(frame.raw, frame.offset)
    return live.listing(before[-1].offset)


def feed_rest(call_tracker: CallTracker, after: list[Frame]) -> list[CallRecord]:
    records: list[CallRecord] = []
    for frame in after:
        records.extend(call_tracker.feed(parse_frame(frame.raw), frame.offset))
    return records


def adopt_at(name: str, test: Callable[[bytes], bool], inbound: InboundConfig = INBOUND
             ) -> tuple[CallTracker, int, list[CallRecord]]:
    all_frames = frames(name)
    cut = cut_after(all_frames, test)
    call_tracker = CallTracker("lab", inbound, "GB")
    adopted = call_tracker.adopt(listing(all_frames[:cut]), all_frames[cut - 1].offset)
    return call_tracker, adopted, feed_rest(call_tracker, all_frames[cut:])


def in_queue(raw: bytes) -> bool:
    return raw.startswith(b"Event: QueueCallerJoin\r\n")


def test_caller_waiting_in_the_queue_at_connect_is_adopted_and_abandons() -> None:
    call_tracker, adopted, records = adopt_at("queue_abandon", in_queue)
    assert adopted == 1
    [record] = records
    assert record.call_id == CALLER
    assert record.outcome == Outcome.QUEUE_ABANDON
    assert record.adopted and not record.partial and not record.evicted
    assert record.stages == ("queue:support:abandon",)
    assert record.group == "support"
    assert record.caller_e164 == "+447700900123"
    assert record.wait_seconds > 5  # from the adoption to the abandon
    assert record.started < 1  # the listing's Duration (whole seconds): it began at 0
    assert record.extra["adopted_in"] == "queue-support/Queue"
    assert call_tracker.active_calls == 0


def test_caller_adopted_while_agents_ring_ends_with_its_last_channel() -> None:
    # the agents' legs (PJSIP/101, 102, Local/103…) are alive: they join the call
    call_tracker, adopted, records = adopt_at(
        "queue_abandon", lambda raw: raw.startswith(b"Event: AgentCalled\r\n"))
    assert adopted == 1
    [record] = records
    assert record.outcome == Outcome.QUEUE_ABANDON and record.adopted
    assert call_tracker.active_calls == 0


def test_the_inbound_context_alone_does_not_adopt_a_call_that_moved_on() -> None:
    no_trunks = InboundConfig(contexts=("from-carrier",))
    call_tracker, adopted, records = adopt_at("queue_abandon", in_queue, no_trunks)
    assert adopted == 0 and records == [] and call_tracker.active_calls == 0


def test_a_caller_still_in_the_inbound_context_is_adopted_without_trunks() -> None:
    no_trunks = InboundConfig(contexts=("from-carrier",))
    _, adopted, records = adopt_at(
        "queue_abandon", lambda raw: raw.startswith(b"Event: Newexten\r\n") and b"Set" in raw,
        no_trunks)
    assert adopted == 1
    [record] = records
    assert record.outcome == Outcome.QUEUE_ABANDON and record.adopted
    assert record.did == "442071230001"


def test_a_call_the_tracker_already_follows_is_not_adopted_again() -> None:
    all_frames = frames("queue_abandon")
    cut = cut_after(all_frames, in_queue)
    call_tracker = CallTracker("lab", INBOUND, "GB")
    records = feed_rest(call_tracker, all_frames[:cut])
    assert records == [] and call_tracker.active_calls == 1
    assert call_tracker.adopt(listing(all_frames[:cut]), all_frames[cut - 1].offset) == 0
    [record] = feed_rest(call_tracker, all_frames[cut:])
    assert record.outcome == Outcome.QUEUE_ABANDON and not record.adopted
    assert record.stages[0].startswith("queue:support")


def test_adopting_twice_gives_one_call() -> None:
    all_frames = frames("queue_abandon")
    cut = cut_after(all_frames, in_queue)
    call_tracker = CallTracker("lab", INBOUND, "GB")
    channels = listing(all_frames[:cut])
    assert call_tracker.adopt(channels, 10.0) == 1
    assert call_tracker.adopt(channels, 11.0) == 0  # a second connect
    assert call_tracker.active_calls == 1
    assert len(feed_rest(call_tracker, all_frames[cut:])) == 1


def channel(**fields: str) -> dict[str, str]:
    base = {"Channel": "PJSIP/carrier-0000000a", "ChannelState": "6",
            "ChannelStateDesc": "Up", "CallerIDNum": "+447700900123", "CallerIDName": "",
            "Context": "queue-support", "Exten": "s", "Priority": "3",
            "Uniqueid": "9.1", "Linkedid": "9.1", "Application": "Queue",
            "ApplicationData": "support,t,,,20", "Duration": "00:00:12", "BridgeId": ""}
    return {**base, **fields}


@pytest.mark.parametrize("fields", [
    # an agent calling out through the trunk: the trunk leg is not its Linkedid's own channel
    {"Uniqueid": "9.2", "Linkedid": "9.1", "Context": "from-internal",
     "Application": "AppDial", "ApplicationData": "(Outgoing Line)"},
    # an internal call between phones, waiting in a queue
    {"Channel": "PJSIP/101-0000000b"},
    # a channel of another trunk, in a context that is not inbound
    {"Channel": "PJSIP/carrier2-0000000c"},
], ids=["outgoing", "internal", "other-trunk"])
def test_internal_and_outgoing_channels_are_never_adopted(fields: dict[str, str]) -> None:
    call_tracker = CallTracker("lab", INBOUND, "GB")
    assert call_tracker.adopt([channel(**fields)], 100.0) == 0
    assert call_tracker.active_calls == 0


def test_adopted_queue_caller_answered_by_an_agent_is_answered() -> None:
    call_tracker = CallTracker("lab", INBOUND, "GB")
    assert call_tracker.adopt([channel()], 100.0) == 1
    trunk = {"Channel": "PJSIP/carrier-0000000a", "Uniqueid": "9.1", "Linkedid": "9.1"}
    assert call_tracker.feed({"Event": "AgentConnect", **trunk, "Queue": "support",
                              "DestChannel": "PJSIP/101-1"}, 104.0) == []
    [record] = call_tracker.feed({"Event": "Hangup", **trunk}, 160.0)
    assert record.outcome == Outcome.ANSWERED and record.adopted
    assert record.started == 88.0 and record.wait_seconds == 4.0


def test_adopted_caller_already_bridged_is_answered() -> None:
    call_tracker = CallTracker("lab", INBOUND, "GB")
    assert call_tracker.adopt([channel(BridgeId="b-1")], 100.0) == 1
    [record] = call_tracker.feed({"Event": "Hangup", "Channel": "PJSIP/carrier-0000000a",
                                  "Uniqueid": "9.1", "Linkedid": "9.1"}, 130.0)
    assert record.outcome == Outcome.ANSWERED


def test_adopted_caller_in_an_ivr_menu_who_hangs_up_is_ivr_abandon() -> None:
    call_tracker = CallTracker("lab", INBOUND, "GB")
    assert call_tracker.adopt([channel(Context="from-carrier", Exten="442071230000",
                                       Application="BackGround",
                                       ApplicationData="custom/menu")], 100.0) == 1
    [record] = call_tracker.feed({"Event": "Hangup", "Uniqueid": "9.1",
                                  "Linkedid": "9.1"}, 105.0)
    assert record.outcome == Outcome.IVR_ABANDON and record.did == "442071230000"


def test_reconcile_then_adopt_after_a_gap() -> None:
    call_tracker = CallTracker("lab", INBOUND, "GB")
    assert call_tracker.adopt([channel()], 100.0) == 1
    # the call ended during a gap, a new one began: reconcile closes it, adopt takes the new
    [gone] = call_tracker.reconcile({"9.5"}, 200.0)
    assert gone.call_id == "9.1" and gone.partial and gone.adopted
    assert call_tracker.adopt([channel(Uniqueid="9.5", Linkedid="9.5")], 200.0) == 1
    assert call_tracker.active_calls == 1


@pytest.mark.parametrize(("text", "seconds"), [
    ("00:00:12", 12.0), ("01:02:03", 3723.0), ("42", 42.0), ("", 0.0), ("x:y", 0.0),
    ("nan", 0.0)])
def test_duration(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


def test_a_partial_call_seen_just_before_the_list_is_made_whole() -> None:
    call_tracker = CallTracker("lab", InboundConfig(contexts=("from-carrier",)), "GB")
    trunk = {"Channel": "PJSIP/carrier-0000000a", "Uniqueid": "9.1", "Linkedid": "9.1"}
    call_tracker.feed({"Event": "Newexten", **trunk, "Context": "from-carrier",
                       "Exten": "442071230000", "Application": "BackGround",
                       "AppData": "custom/menu"}, 100.0)
    assert call_tracker.adopt([channel(Context="from-carrier", Exten="442071230000",
                                       Application="BackGround", Duration="00:00:30")],
                              100.5) == 1
    [record] = call_tracker.feed({"Event": "Hangup", **trunk}, 105.0)
    assert record.outcome == Outcome.IVR_ABANDON
    assert record.adopted and not record.partial and record.started == 70.5
