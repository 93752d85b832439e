"""The call tracker, specified by real recordings and by small synthetic event sequences."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from mcdaemon.config.model import InboundConfig
from mcdaemon.core.records import CallRecord, Outcome
from mcdaemon.core.tracker import NEEDED_EVENTS, NEEDED_VARIABLES, CallTracker
from mcdaemon.core.transcript import read_transcript

from recordings import ALL_RECORDINGS, recording_path

RECORDINGS = ALL_RECORDINGS
INBOUND = InboundConfig(contexts=("from-carrier",), after_hours_contexts=("closed",))


def tracker(inbound: InboundConfig = INBOUND) -> CallTracker:
    return CallTracker("lab", inbound, "GB")


def run(events: Iterable[tuple[float, Mapping[str, str]]],
        call_tracker: CallTracker | None = None, *, expire: bool = True) -> list[CallRecord]:
    call_tracker = call_tracker or tracker()
    records: list[CallRecord] = []
    for at, event in events:
        records.extend(call_tracker.feed(event, at))
    if expire:
        records.extend(call_tracker.expire(1e12))
    return records


def recording(path: Path) -> list[tuple[float, dict[str, str]]]:
    return list(read_transcript(path).events())


def labelled_calls(path: Path) -> dict[str, dict[str, str]]:
    return {label["linkedid"]: label for label in read_transcript(path).labels}


def caller_number(label: dict[str, str]) -> str:
    match = re.search(r"<([^>]*)>", label["callerid"])
    return match.group(1) if match else label["callerid"]


def assert_matches_labels(path: Path, records: list[CallRecord]) -> None:
    labels = labelled_calls(path)
    by_id = {record.call_id: record for record in records}
    assert len(by_id) == len(records), "a call produced two records"
    assert set(by_id) == set(labels), "records for unlabelled calls, or labelled calls missing"
    for linkedid, label in labels.items():
        record = by_id[linkedid]
        assert record.outcome == label["expected"], (path.name, linkedid, record.stages)
        assert record.did == label["did"]
        assert record.caller == caller_number(label)
        assert not record.partial and not record.evicted
        reached_queue = any(stage.startswith("queue:") for stage in record.stages)
        if reached_queue:
            queue = next(s for s in reversed(record.stages) if s.startswith("queue:"))
            assert record.group == queue.split(":")[1]
        else:
            assert record.group is None


# ------------------------------------------------------------------ the real recordings


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_every_labelled_call_of_a_recording_gives_one_record_with_its_outcome(path: Path) -> None:
    assert_matches_labels(path, run(recording(path), expire=False))


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_recording_filtered_to_the_needed_events_gives_the_same_records(path: Path) -> None:
    events = [(at, event) for at, event in recording(path)
              if event.get("Event") in NEEDED_EVENTS
              and (event.get("Event") != "VarSet" or event.get("Variable") in NEEDED_VARIABLES)]
    assert_matches_labels(path, run(events, expire=False))


def iax2_variant(event: Mapping[str, str]) -> dict[str, str]:
    """The same call as the earlier lab variant saw it: trunk and phones over IAX2."""
    def rename(value: str) -> str:
        value = re.sub(r"PJSIP/carrier-([0-9a-f]+)",
                       lambda m: f"IAX2/carrier-{int(m.group(1), 16) + 1234}", value)
        return re.sub(r"PJSIP/(\d+)-([0-9a-f]+)",
                      lambda m: f"IAX2/{m.group(1)}-{int(m.group(2), 16) + 77}", value)
    return {key: rename(value) for key, value in event.items()}


@pytest.mark.parametrize("name", ["queue_abandon", "answered", "ring_no_answer_direct",
                                  "queue_timeout_voicemail", "repeat_caller"])
def test_iax2_channels_give_the_same_outcomes(name: str) -> None:
    path = recording_path(name)
    records = run([(at, iax2_variant(event)) for at, event in recording(path)], expire=False)
    assert_matches_labels(path, records)
    assert all(record.channel and record.channel.startswith("IAX2/carrier-")
               for record in records)


def test_queue_abandon_record_carries_the_caller_wait_and_path() -> None:
    [record] = run(recording(recording_path("queue_abandon")))
    assert record.caller_e164 == "+447700900123"
    assert record.caller_name is None
    assert record.stages == ("queue:support:abandon",)
    assert 7.5 < record.wait_seconds < 8.5  # QueueCallerJoin to QueueCallerAbandon
    assert record.extra["hangup_by"] == "caller"
    assert record.pbx == "lab"


def test_queue_timeout_then_voicemail_path_shows_both_stages() -> None:
    [record] = run(recording(recording_path("queue_timeout_voicemail")))
    assert record.stages == ("queue:support:timeout", "voicemail:2000@default:left")
    assert record.caller_name == "Carol Jones"
    assert 19.5 < record.wait_seconds < 20.5


def test_answered_call_names_the_agent_and_counts_only_the_wait_before_the_answer() -> None:
    [record] = run(recording(recording_path("answered")))
    assert record.extra["agent"] == "Agent 201"
    assert 2.5 < record.wait_seconds < 3.5


def test_anonymous_caller_has_no_e164_number() -> None:
    [record] = run(recording(recording_path("anonymous_caller_abandon")))
    assert record.caller == "anonymous"
    assert record.caller_e164 is None


def test_replaying_a_stream_twice_never_gives_a_second_record() -> None:
    events = recording(recording_path("repeat_caller"))
    call_tracker = tracker()
    first = run(events, call_tracker, expire=False)
    again = run(events, call_tracker, expire=False)
    assert len(first) == 3
    assert again == []
    assert call_tracker.active_calls == 0


def test_events_after_the_last_hangup_are_ignored() -> None:
    events = recording(recording_path("queue_abandon"))
    call_tracker = tracker()
    records = run(events, call_tracker, expire=False)
    late = dict(events[-1][1])
    late["Event"] = "Newexten"
    assert len(records) == 1
    assert call_tracker.feed(late, events[-1][0] + 1) == []
    assert call_tracker.active_calls == 0


# ------------------------------------------------------------------ synthetic calls


class Call:
    """Builds the AMI events of one synthetic call, the way Asterisk 22 shapes them."""

    def __init__(self, linkedid: str = "1700000000.1", caller: str = "+447700900123",
                 did: str = "442071230001", context: str = "from-carrier",
                 start: float = 1_700_000_000.0) -> None:
        self.linkedid = linkedid
        self.caller = caller
        self.did = did
        self.context = context
        self.at = start
        self.events: list[tuple[float, dict[str, str]]] = []
        self.legs = 0
        self.trunk = self.channel(f"IAX2/carrier-{linkedid.split('.')[-1]}", linkedid,
                                  context, did, state="Ring", cid=caller)

    def emit(self, name: str, **fields: str) -> None:
        self.at += 0.5
        self.events.append((self.at, {"Event": name, "Linkedid": self.linkedid, **fields}))

    def channel(self, name: str, uid: str, context: str, exten: str, *, state: str = "Down",
                cid: str = "<unknown>") -> dict[str, str]:
        chan = {"Channel": name, "Uniqueid": uid}
        self.emit("Newchannel", **chan, Context=context, Exten=exten,
                  ChannelStateDesc=state, CallerIDNum=cid, CallerIDName="<unknown>")
        return chan

    def app(self, application: str, data: str = "", context: str | None = None,
            exten: str | None = None, chan: dict[str, str] | None = None) -> None:
        caller = {"CallerIDNum": self.caller} if chan is None else {}
        self.emit("Newexten", **(chan or self.trunk), **caller, Context=context or self.context,
                  Exten=exten or self.did, Application=application, AppData=data)

    def var(self, name: str, value: str, chan: dict[str, str] | None = None) -> None:
        self.emit("VarSet", **(chan or self.trunk), Variable=name, Value=value)

    def leg(self, name: str) -> dict[str, str]:
        self.legs += 1
        return self.channel(f"{name}-{self.legs}", f"{self.linkedid}{self.legs}", "from-phones",
                            "s")

    def dial(self, leg: dict[str, str], status: str | None, source: dict[str, str] | None = None
             ) -> None:
        dest = {"DestChannel": leg["Channel"], "DestUniqueid": leg["Uniqueid"]}
        if status is None:
            self.emit("DialBegin", **(source or self.trunk), **dest)
        else:
            self.emit("DialEnd", **(source or self.trunk), **dest, DialStatus=status)

    def queue(self, name: str, event: str, **fields: str) -> None:
        self.emit(event, **self.trunk, Queue=name, **fields)

    def hangup(self, chan: dict[str, str] | None = None, *, by_caller: bool = True) -> None:
        chan = chan or self.trunk
        self.emit("HangupRequest" if by_caller else "SoftHangupRequest", **chan)
        self.emit("Hangup", **chan, Cause="16")


def only(call: Call, call_tracker: CallTracker | None = None) -> CallRecord:
    records = run(call.events, call_tracker)
    assert len(records) == 1, records
    return records[0]


def queue_call(call: Call, queue: str = "support") -> dict[str, str]:
    call.app("Queue", f"{queue},t,,,20", context="queue-support", exten="s")
    call.queue(queue, "QueueCallerJoin")
    agent = call.leg("IAX2/101")
    call.emit("AgentCalled", **call.trunk, Queue=queue, DestChannel=agent["Channel"])
    call.dial(agent, None)
    return agent


def test_caller_who_hangs_up_in_queue_is_queue_abandon_even_while_an_agent_rings() -> None:
    call = Call()
    agent = queue_call(call)
    call.emit("HangupRequest", **call.trunk)
    call.dial(agent, "CANCEL")
    call.emit("Hangup", **agent, Cause="0")
    call.queue("support", "QueueCallerAbandon", HoldTime="5")
    call.queue("support", "QueueCallerLeave")
    call.emit("Hangup", **call.trunk, Cause="16")
    record = only(call)
    assert record.outcome == Outcome.QUEUE_ABANDON
    assert record.group == "support"


def test_queue_abandon_event_without_a_hangup_request_is_a_timeout() -> None:
    call = Call()
    agent = queue_call(call)
    call.dial(agent, "NOANSWER")
    call.emit("Hangup", **agent, Cause="0")
    call.queue("support", "QueueCallerAbandon", HoldTime="20")
    call.queue("support", "QueueCallerLeave")
    call.app("Playback", "sorry", context="queue-support", exten="s")
    call.app("Hangup", context="queue-support", exten="s")
    call.hangup(by_caller=False)
    assert only(call).outcome == Outcome.QUEUE_TIMEOUT


@pytest.mark.parametrize("status", ["JOINEMPTY", "LEAVEEMPTY", "JOINUNAVAIL", "FULL"])
def test_empty_or_unavailable_queue_is_queue_timeout(status: str) -> None:
    call = Call()
    call.app("Queue", "support,t,,,20", context="queue-support", exten="s")
    call.var("QUEUESTATUS", status)
    call.app("Playback", "sorry", context="queue-support", exten="s")
    call.hangup()
    record = only(call)
    assert record.outcome == Outcome.QUEUE_TIMEOUT
    assert record.group == "support"


def test_queue_timeout_followed_by_voicemail_is_a_voicemail_outcome() -> None:
    call = Call()
    call.app("Queue", "support,t,,,20", context="queue-support", exten="s")
    call.var("QUEUESTATUS", "TIMEOUT")
    call.app("VoiceMail", "2000@default,u", context="queue-support", exten="s")
    call.emit("HangupRequest", **call.trunk)
    call.var("VMSTATUS", "FAILED")
    call.emit("Hangup", **call.trunk, Cause="16")
    record = only(call)
    assert record.outcome == Outcome.VOICEMAIL_NO_MESSAGE
    assert record.stages == ("queue:support:timeout", "voicemail:2000@default:no_message")


def test_message_waiting_on_the_callers_channel_means_a_message_was_left() -> None:
    call = Call()
    call.app("VoiceMail", "2000@default,u")
    call.emit("HangupRequest", **call.trunk)
    call.emit("MessageWaiting", **call.trunk, Mailbox="2000@default", New="3")
    call.emit("Hangup", **call.trunk, Cause="16")
    assert only(call).outcome == Outcome.VOICEMAIL_LEFT


def test_agent_connect_means_answered_even_if_the_call_is_later_transferred() -> None:
    call = Call()
    agent = queue_call(call, "sales")
    call.dial(agent, "ANSWER")
    call.queue("sales", "QueueCallerLeave")
    call.emit("AgentConnect", **call.trunk, Queue="sales", MemberName="Agent 201",
              DestChannel=agent["Channel"])
    colleague = call.leg("IAX2/102")  # blind transfer to a colleague who does not answer
    call.emit("Hangup", **agent, Cause="16")
    call.app("VoiceMail", "102@default", context="from-phones", exten="102")
    call.emit("Hangup", **colleague, Cause="16")
    call.hangup()
    record = only(call)
    assert record.outcome == Outcome.ANSWERED
    assert record.extra["agent"] == "Agent 201"


def test_state_up_alone_is_not_an_answer() -> None:
    call = Call()
    call.app("Answer")
    call.emit("Newstate", **call.trunk, ChannelStateDesc="Up")
    call.app("BackGround", "menu", context="ivr", exten="s")
    call.hangup()
    assert only(call).outcome == Outcome.IVR_ABANDON


def test_ring_group_answered_on_its_second_leg_is_answered() -> None:
    call = Call(did="442071230003")
    call.app("Dial", "IAX2/301&IAX2/302,15")
    first, second = call.leg("IAX2/301"), call.leg("IAX2/302")
    call.dial(first, None)
    call.dial(second, None)
    call.dial(second, "ANSWER")
    call.dial(first, "CANCEL")
    call.emit("Hangup", **first, Cause="0")
    call.emit("Hangup", **second, Cause="16")
    call.hangup()
    assert only(call).outcome == Outcome.ANSWERED


@pytest.mark.parametrize("status", ["NOANSWER", "BUSY", "CHANUNAVAIL", "CANCEL"])
def test_direct_dial_without_answer_is_ring_no_answer(status: str) -> None:
    call = Call(did="442071230003")
    call.app("BackGround", "menu", context="ivr", exten="s")
    call.app("Dial", "IAX2/301,15", context="ivr", exten="3")  # caller pressed 3
    phone = call.leg("IAX2/301")
    call.dial(phone, None)
    if status == "CANCEL":
        call.emit("HangupRequest", **call.trunk)
    call.dial(phone, status)
    call.emit("Hangup", **phone, Cause="19")
    call.hangup(by_caller=status == "CANCEL")
    record = only(call)
    assert record.outcome == Outcome.RING_NO_ANSWER
    assert record.stages == ("ivr", f"dial:{status.lower()}")
    assert record.wait_seconds > 0


def test_twinned_agents_local_channel_dial_does_not_turn_a_queue_into_ring_no_answer() -> None:
    call = Call()
    call.app("Queue", "support,t,,,20", context="queue-support", exten="s")
    call.queue("support", "QueueCallerJoin")
    half1 = call.channel("Local/103@agent-mobile-0001;1", "9.1", "agent-mobile", "103")
    half2 = call.channel("Local/103@agent-mobile-0001;2", "9.2", "agent-mobile", "103")
    call.emit("AgentCalled", **call.trunk, Queue="support", DestChannel=half1["Channel"])
    call.dial(half1, None)
    call.app("Dial", "IAX2/103,,", context="agent-mobile", exten="103", chan=half2)
    mobile = call.leg("IAX2/103")
    call.dial(mobile, None, source=half2)
    call.emit("HangupRequest", **call.trunk)
    call.dial(half1, "CANCEL")
    call.queue("support", "QueueCallerAbandon", HoldTime="6")
    call.dial(mobile, "CANCEL", source=half2)
    call.var("DIALSTATUS", "CANCEL", chan=half2)
    for chan in (half1, half2, mobile):
        call.emit("Hangup", **chan, Cause="0")
    call.emit("Hangup", **call.trunk, Cause="16")
    record = only(call)
    assert record.outcome == Outcome.QUEUE_ABANDON
    assert record.stages == ("queue:support:abandon",)


def test_call_ends_only_when_every_channel_of_its_linkedid_has_hung_up() -> None:
    call = Call()
    half2 = call.channel("Local/7@x-0001;2", "9.2", "x", "7")
    call.app("BackGround", "menu", context="ivr", exten="s")
    call.hangup()
    call_tracker = tracker()
    assert run(call.events, call_tracker, expire=False) == []
    assert call_tracker.active_calls == 1
    [record] = call_tracker.feed({"Event": "Hangup", **half2, "Linkedid": call.linkedid},
                                 call.at + 1)
    assert record.ended == call.at + 1


def test_after_hours_context_wins_over_the_voicemail_there() -> None:
    call = Call(did="442071230002")
    call.app("Goto", "closed,s,1")
    call.app("VoiceMail", "9000@default,u", context="closed", exten="s")
    call.emit("MessageWaiting", **call.trunk, Mailbox="9000@default", New="1")
    call.hangup()
    record = only(call)
    assert record.outcome == Outcome.AFTER_HOURS
    assert record.stages[0] == "after_hours"


def test_mcd_after_hours_variable_marks_after_hours() -> None:
    call = Call()
    call.var("MCD_AFTER_HOURS", "1")
    call.app("Playback", "closed")
    call.hangup()
    assert only(call).outcome == Outcome.AFTER_HOURS


def test_announcement_then_pbx_hangup_is_a_dead_end() -> None:
    call = Call(did="442071230009")
    call.app("Answer")
    call.app("Playback", "ss-noservice")
    call.app("Hangup")
    call.hangup(by_caller=False)
    assert only(call).outcome == Outcome.DEAD_END


def test_congestion_is_a_dead_end_even_when_the_caller_hangs_up() -> None:
    call = Call(did="449999")
    call.app("Congestion", "5")
    call.hangup()
    assert only(call).outcome == Outcome.DEAD_END


def test_caller_hanging_up_in_the_welcome_audio_is_ivr_abandon() -> None:
    call = Call()
    call.app("Answer")
    call.app("Playback", "welcome")
    call.hangup()
    assert only(call).outcome == Outcome.IVR_ABANDON


@pytest.mark.parametrize(("variable", "value"), [("MCD_IGNORE", "1"), ("__MCD_IGNORE", "yes")])
def test_mcd_ignore_makes_a_missed_call_a_dead_end(variable: str, value: str) -> None:
    call = Call()
    agent = queue_call(call)
    call.var(variable, value)
    call.emit("Hangup", **agent, Cause="0")
    call.hangup()
    assert only(call).outcome == Outcome.DEAD_END


def test_ignored_context_and_ignored_did_are_dead_ends() -> None:
    inbound = InboundConfig(contexts=("from-carrier",), ignore_contexts=("spam",),
                            ignore_dids=("442071230005",))
    spam = Call()
    spam.app("Goto", "spam,s,1")
    spam.app("BackGround", "menu", context="spam", exten="s")
    spam.hangup()
    fax = Call(linkedid="1700000000.9", did="442071230005")
    fax.app("BackGround", "menu", context="ivr", exten="s")
    fax.hangup()
    assert only(spam, tracker(inbound)).outcome == Outcome.DEAD_END
    assert only(fax, tracker(inbound)).outcome == Outcome.DEAD_END


def test_mcd_group_and_mcd_did_override_the_queue_name_and_the_dialled_number() -> None:
    call = Call()
    agent = queue_call(call)
    call.var("__MCD_GROUP", "Helpdesk North", chan=agent)
    call.var("MCD_DID", "08001234567")
    call.emit("Hangup", **agent, Cause="0")
    call.hangup()
    record = only(call)
    assert not record.evicted
    assert record.group == "Helpdesk North"
    assert record.did == "08001234567"


def test_callback_request_through_an_agi_script() -> None:
    call = Call(did="442071230000")
    call.app("BackGround", "menu", context="ivr", exten="s")
    call.app("AGI", "agi://127.0.0.1:4573/callback-request,+447700900123", context="ivr",
             exten="9")
    call.app("Hangup", context="ivr", exten="9")
    call.hangup(by_caller=False)
    record = only(call)
    assert record.outcome == Outcome.CALLBACK_REQUESTED
    assert record.stages == ("ivr", "callback")


def test_mcd_callback_variable_requests_a_call_back() -> None:
    call = Call()
    call.var("MCD_CALLBACK", "1")
    call.hangup()
    assert only(call).outcome == Outcome.CALLBACK_REQUESTED


def test_other_agi_scripts_are_not_call_back_requests() -> None:
    call = Call()
    call.app("AGI", "agi://127.0.0.1:4573/crm-lookup")
    call.app("BackGround", "menu", context="ivr", exten="s")
    call.hangup()
    assert only(call).outcome == Outcome.IVR_ABANDON


def test_application_names_compare_case_insensitively() -> None:
    call = Call()
    call.app("VOICEMAIL", "2000@default")
    call.var("VMSTATUS", "SUCCESS")
    call.hangup()
    assert only(call).outcome == Outcome.VOICEMAIL_LEFT


def test_outbound_call_from_an_agent_produces_no_record() -> None:
    call_tracker = tracker()
    at = 1_700_000_000.0
    phone = {"Channel": "IAX2/101-5", "Uniqueid": "1700000000.5", "Linkedid": "1700000000.5"}
    trunk = {"Channel": "IAX2/carrier-6", "Uniqueid": "1700000000.6",
             "Linkedid": "1700000000.5"}
    events = [
        {"Event": "Newchannel", **phone, "Context": "from-phones", "Exten": "07700900123",
         "ChannelStateDesc": "Ring"},
        {"Event": "Newexten", **phone, "Context": "from-phones", "Exten": "07700900123",
         "Application": "Dial", "AppData": "IAX2/carrier/07700900123"},
        {"Event": "Newchannel", **trunk, "Context": "from-carrier", "Exten": "s",
         "ChannelStateDesc": "Down"},
        {"Event": "DialEnd", **phone, "DestChannel": trunk["Channel"],
         "DestUniqueid": trunk["Uniqueid"], "DialStatus": "NOANSWER"},
        {"Event": "Hangup", **trunk}, {"Event": "Hangup", **phone},
    ]
    assert run([(at + i, e) for i, e in enumerate(events)], call_tracker) == []
    assert call_tracker.active_calls == 0


def test_channel_originated_towards_the_trunk_is_not_an_inbound_call() -> None:
    originated = {"Channel": "IAX2/carrier-8", "Uniqueid": "1.8", "Linkedid": "1.8"}
    events = [
        {"Event": "Newchannel", **originated, "Context": "from-carrier", "Exten": "s",
         "ChannelStateDesc": "Down"},
        {"Event": "Newexten", **originated, "Context": "callbacks", "Exten": "s",
         "Application": "Playback", "AppData": "hello"},
        {"Event": "Hangup", **originated},
    ]
    assert run([(float(i), e) for i, e in enumerate(events)]) == []


def test_call_already_running_in_the_inbound_context_at_connect_is_partial() -> None:
    call = Call()
    call.app("BackGround", "menu", context="from-carrier")
    call.hangup()
    events = [item for item in call.events if item[1]["Event"] != "Newchannel"]
    [record] = run(events)
    assert record.partial
    assert record.outcome == Outcome.IVR_ABANDON
    assert record.caller == "+447700900123"


def test_call_first_seen_in_a_queue_gives_no_record() -> None:
    call = Call()
    queue_call(call)
    call.hangup()
    events = [item for item in call.events if item[1]["Event"] not in ("Newchannel",)
              and item[1].get("Application") != "Queue"]
    assert run(events) == []


def test_expire_evicts_silent_calls_and_reports_only_missed_ones() -> None:
    inbound = InboundConfig(contexts=("from-carrier",), call_ttl=3600)
    call_tracker = tracker(inbound)
    waiting = Call(linkedid="1.1")
    queue_call(waiting)
    talking = Call(linkedid="2.1")
    agent = queue_call(talking, "sales")
    talking.emit("AgentConnect", **talking.trunk, Queue="sales", DestChannel=agent["Channel"])
    run(waiting.events + talking.events, call_tracker, expire=False)
    assert call_tracker.expire(waiting.at + 3599) == []
    [record] = call_tracker.expire(talking.at + 3600)
    assert record.call_id == "1.1" and record.evicted
    assert record.outcome == Outcome.QUEUE_ABANDON
    assert call_tracker.active_calls == 0


def test_reconcile_ends_calls_whose_channels_vanished_during_a_reconnect() -> None:
    call_tracker = tracker()
    gone = Call(linkedid="1.1")
    queue_call(gone)
    alive = Call(linkedid="2.1")
    queue_call(alive)
    run(gone.events + alive.events, call_tracker, expire=False)
    [record] = call_tracker.reconcile({"2.1"}, at=alive.at + 30)
    assert record.call_id == "1.1" and record.partial
    assert record.ended == alive.at + 30
    assert call_tracker.active_calls == 1
    # the surviving call lost its agent leg during the gap; its own hangup now ends it
    [last] = call_tracker.feed({"Event": "Hangup", **alive.trunk, "Linkedid": "2.1"},
                               alive.at + 31)
    assert last.call_id == "2.1" and not last.partial


def test_needed_events_and_variables_cover_what_the_tracker_reads() -> None:
    assert {"Newchannel", "Newexten", "Hangup", "QueueCallerAbandon", "AgentConnect",
            "DialEnd", "VarSet"} <= NEEDED_EVENTS
    assert {"QUEUESTATUS", "VMSTATUS", "MCD_GROUP", "__MCD_GROUP", "MCD_IGNORE"} \
        <= NEEDED_VARIABLES
    assert "RTCPSent" not in NEEDED_EVENTS


def test_internal_call_that_jumps_into_the_inbound_context_is_not_an_inbound_call() -> None:
    phone = {"Channel": "IAX2/101-5", "Uniqueid": "1.5", "Linkedid": "1.5"}
    events = [
        {"Event": "Newchannel", **phone, "Context": "from-phones", "Exten": "442071230000",
         "ChannelStateDesc": "Ring"},
        {"Event": "Newexten", **phone, "Context": "from-carrier", "Exten": "442071230000",
         "Application": "BackGround", "AppData": "menu"},
        {"Event": "Hangup", **phone},
    ]
    assert run([(float(i), e) for i, e in enumerate(events)]) == []
