"""The queue_log reader: lines in, queue calls out (no files, no clock)."""

from __future__ import annotations

from pathlib import Path

from mcdaemon.core.queue_log import (
    EXIT_WITH_KEY,
    NO_ENTER,
    STILL_OPEN,
    completed,
    parse_line,
    read_queue_log,
    to_record,
)
from mcdaemon.core.records import CallRecord, Outcome

FIXTURE = (Path(__file__).resolve().parent.parent / "fixtures" / "outage"
           / "outage_dev.queue_log")


def log(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def enter(at: int, callid: str, caller: str = "+447700900123", queue: str = "support") -> str:
    return f"{at}|{callid}|{queue}|NONE|ENTERQUEUE||{caller}|1"


def outcomes(*texts: str, **kwargs: object) -> dict[str, Outcome | None]:
    return {call.callid: call.outcome
            for call in read_queue_log(list(texts), **kwargs).calls}  # type: ignore[arg-type]


def test_a_line_is_split_on_bars() -> None:
    line = parse_line("1700000010|1.5|support|NONE|ABANDON|1|2|8")
    assert line is not None
    assert (line.epoch, line.callid, line.queue, line.agent, line.event, line.data) == (
        1700000010.0, "1.5", "support", "NONE", "ABANDON", ("1", "2", "8"))
    assert parse_line("not a queue_log line") is None
    assert parse_line("12ab|1.5|support|NONE|ABANDON") is None


def test_each_ending_event_gives_its_outcome() -> None:
    text = log(
        enter(100, "1.1"), "105|1.1|support|NONE|ABANDON|1|1|5",
        enter(100, "1.2"), "160|1.2|support|NONE|EXITWITHTIMEOUT|1|1|60",
        enter(100, "1.3"), "101|1.3|support|NONE|EXITEMPTY|1|1|1",
        enter(100, "1.4"), "104|1.4|support|NONE|EXITWITHKEY|5|1|1|4",
        enter(100, "1.5"), "103|1.5|support|Agent 101|RINGNOANSWER|2000",
        "106|1.5|support|Agent 102|CONNECT|6|1.9|2",
        "190|1.5|support|Agent 102|COMPLETECALLER|6|84|1",
        enter(100, "1.6"), "106|1.6|support|Agent 102|CONNECT|6|1.10|2",
        "190|1.6|support|Agent 102|COMPLETEAGENT|6|84|1",
        enter(100, "1.7"), "106|1.7|support|Agent 102|CONNECT|6|1.11|2",
        "150|1.7|support|Agent 102|TRANSFER|200|from-internal|6|44",
        enter(100, "1.8"), "106|1.8|support|Agent 101|AGENTDUMP|",
        "107|1.8|support|NONE|ABANDON|1|1|7",
        enter(100, "1.9"))
    calls = {call.callid: call for call in read_queue_log([text]).calls}
    assert {callid: call.outcome for callid, call in calls.items()} == {
        "1.1": Outcome.QUEUE_ABANDON, "1.2": Outcome.QUEUE_TIMEOUT, "1.3": Outcome.QUEUE_TIMEOUT,
        "1.4": None, "1.5": Outcome.ANSWERED, "1.6": Outcome.ANSWERED, "1.7": Outcome.ANSWERED,
        "1.8": Outcome.QUEUE_ABANDON, "1.9": None}
    assert calls["1.4"].reason == EXIT_WITH_KEY and calls["1.4"].key == "5"
    assert calls["1.9"].reason == STILL_OPEN and calls["1.9"].ended is None
    first = calls["1.1"]
    assert (first.caller, first.queue, first.entered, first.ended, first.wait_seconds) == (
        "+447700900123", "support", 100.0, 105.0, 5.0)


def test_queue_wide_lines_are_ignored() -> None:
    text = log("90|NONE|NONE|NONE|QUEUESTART|", "91|NONE|NONE|NONE|CONFIGRELOAD|",
               "92|NONE|support|PJSIP/101|ADDMEMBER|", "93|NONE|support|PJSIP/101|PAUSE|lunch",
               enter(100, "1.1"), "105|1.1|support|NONE|ABANDON|1|1|5")
    result = read_queue_log([text])
    assert [call.callid for call in result.calls] == ["1.1"]
    assert result.garbage == 0


def test_a_partial_last_line_is_left_for_the_next_read() -> None:
    text = log(enter(100, "1.1")) + "105|1.1|support|NONE|ABAN"
    result = read_queue_log([text])
    assert result.partial_tail == 1 and result.garbage == 0
    assert [call.reason for call in result.calls] == [STILL_OPEN]


def test_garbage_lines_are_counted_and_skipped() -> None:
    text = log("\x00\x00garbage", enter(100, "1.1"), "|||", "105|1.1|support|NONE|ABANDON|1|1|5",
               "hello world")
    result = read_queue_log([text])
    assert result.garbage == 3
    assert [call.outcome for call in result.calls] == [Outcome.QUEUE_ABANDON]


def test_other_queues_are_skipped_when_queues_are_named() -> None:
    text = log(enter(100, "1.1"), "105|1.1|support|NONE|ABANDON|1|1|5",
               enter(100, "1.2", queue="sales"), "105|1.2|sales|NONE|ABANDON|1|1|5")
    result = read_queue_log([text], queues={"support"})
    assert [call.callid for call in result.calls] == ["1.1"]
    assert result.other_queues == 2
    assert len(read_queue_log([text]).calls) == 2


def test_rotated_files_are_merged_in_time_order_and_duplicates_dropped() -> None:
    older = log(enter(100, "1.1"), enter(101, "1.2"), "105|1.1|support|NONE|ABANDON|1|1|5")
    # the rotation copied the last line into the new file as well
    newer = log("105|1.1|support|NONE|ABANDON|1|1|5", "170|1.2|support|NONE|EXITWITHTIMEOUT|1|1|69")
    result = read_queue_log([older, newer])
    assert result.duplicates == 1
    assert [(call.callid, call.outcome) for call in result.calls] == [
        ("1.1", Outcome.QUEUE_ABANDON), ("1.2", Outcome.QUEUE_TIMEOUT)]
    assert result.calls[1].caller == "+447700900123"


def test_lines_out_of_order_after_a_clock_jump_are_sorted_within_a_call() -> None:
    text = log("105|1.1|support|NONE|ABANDON|1|1|5", enter(100, "1.1"),
               "190|1.2|support|Agent 1|COMPLETECALLER|6|84|1",
               "106|1.2|support|Agent 1|CONNECT|6|1.9|2", enter(100, "1.2"))
    calls = {call.callid: call for call in read_queue_log([text]).calls}
    assert calls["1.1"].outcome == Outcome.QUEUE_ABANDON
    assert calls["1.1"].caller == "+447700900123" and calls["1.1"].entered == 100.0
    assert calls["1.2"].outcome == Outcome.ANSWERED


def test_the_window_end_leaves_later_calls_open() -> None:
    text = log(enter(100, "1.1"), "205|1.1|support|NONE|ABANDON|1|1|105")
    assert outcomes(text, until=200.0) == {"1.1": None}
    assert outcomes(text, until=300.0) == {"1.1": Outcome.QUEUE_ABANDON}


def test_a_call_whose_entry_came_before_the_files_is_partial() -> None:
    call = read_queue_log([log("105|1.1|support|NONE|ABANDON|1|1|5")]).calls[0]
    assert call.reason == NO_ENTER and call.caller is None
    assert to_record(call, "pbx", "GB").partial is True


def test_a_record_is_made_for_the_policy_and_marked_backfilled() -> None:
    call = read_queue_log([log(enter(100, "1.1", "07700 900123"),
                               "105|1.1|support|NONE|ABANDON|1|1|5")]).calls[0]
    record = to_record(call, "pbx1", "GB")
    assert (record.pbx, record.call_id, record.caller_e164, record.group, record.outcome) == (
        "pbx1", "1.1", "+447700900123", "support", Outcome.QUEUE_ABANDON)
    assert record.extra["backfilled"] == "true" and "backfilled" in record.stages
    assert (record.started, record.ended, record.wait_seconds) == (100.0, 105.0, 5.0)


def test_the_outage_recording_has_eleven_abandons() -> None:
    result = read_queue_log([FIXTURE.read_text()])
    assert result.garbage == 0
    assert len(result.calls) == 11
    assert {call.outcome for call in result.calls} == {Outcome.QUEUE_ABANDON}


def test_a_call_that_ended_in_an_ami_gap_is_completed_by_the_queue_log() -> None:
    """The tracker saw the call enter the queue, not its end (the link was down): its record,
    closed partial at the reconnect, takes the queue_log's outcome and stays the tracker's
    otherwise (DID, caller name, what it saw)."""
    seen = CallRecord(pbx="pbx1", call_id="1.1", caller="+447700900123",
                      caller_name="Ann", caller_e164="+447700900123", did="442071230001",
                      group="support", outcome=Outcome.QUEUE_TIMEOUT,
                      stages=("queue:support",), started=100.0, ended=130.0,
                      wait_seconds=30.0, partial=True, extra={"ended_during_gap": "1"})
    call = read_queue_log([log(enter(100, "1.1"), "112|1.1|support|NONE|ABANDON|1|1|12")]
                          ).calls[0]
    record = completed(seen, call)
    assert (record.outcome, record.ended, record.wait_seconds, record.partial) == (
        Outcome.QUEUE_ABANDON, 112.0, 12.0, False)
    assert (record.did, record.caller_name, record.started) == ("442071230001", "Ann", 100.0)
    assert record.stages == ("queue:support", "queue:support:abandon", "backfilled")
    assert record.extra["backfilled"] == "true" and record.extra["ended_during_gap"] == "1"
