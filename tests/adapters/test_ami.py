"""The AMI adapter against the test AMI server, over real TCP, speaking the real protocol."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from mcdaemon.adapters.ami import (
    AmiConnection,
    AmiEvent,
    AmiEvents,
    AmiFeed,
    AmiItem,
    AmiStatus,
    FramedProtocol,
    connection_failure,
)
from mcdaemon.config.model import AmiConfig, InboundConfig
from mcdaemon.core.records import CallRecord
from mcdaemon.core.tracker import NEEDED_EVENTS, NEEDED_VARIABLES, CallTracker
from mcdaemon.core.transcript import Frame, Transcript, parse_frame, read_transcript
from mcdaemon.sim.amiserver import AmiTestServer

from recordings import recording_path

Item = AmiEvent | AmiStatus


def recording(name: str) -> Transcript:
    return read_transcript(recording_path(name))


def ami_config(port: int, name: str = "pbx", **overrides: object) -> AmiConfig:
    values: dict[str, object] = dict(name=name, port=port, username="mcd", secret="mcdsecret",
                                     ping_interval=1.0, ping_timeout=1.0, connect_timeout=2.0,
                                     reconnect_min=0.05, reconnect_max=0.2)
    values.update(overrides)
    return AmiConfig(**values)  # type: ignore[arg-type]


def count_events(transcript: Transcript, event: str) -> int:
    return sum(1 for frame in transcript.frames if parse_frame(frame.raw).get("Event") == event)


@contextlib.asynccontextmanager
async def running(connection: AmiConnection) -> AsyncIterator[AmiConnection]:
    task = asyncio.create_task(connection.run())
    try:
        yield connection
    finally:
        await connection.stop()
        await asyncio.wait_for(task, 5)


def flat(item: AmiItem) -> list[Item]:
    """A queue item as the events and states it holds (a read's events come together)."""
    return list(item) if isinstance(item, AmiEvents) else [item]


async def collect_until(queue: asyncio.Queue[AmiItem], done: Callable[[list[Item]], bool],
                        limit: float = 10.0) -> list[Item]:
    """Take events and states off the queue until `done(items)` (asked after each one); the
    limit only stops a hung test."""
    items: list[Item] = []

    async def take() -> None:
        finished = done(items)
        while not finished:
            for piece in flat(await queue.get()):
                items.append(piece)
                finished = done(items)

    await asyncio.wait_for(take(), limit)
    return items


def states(items: list[Item]) -> list[str]:
    return [item.state for item in items if isinstance(item, AmiStatus)]


def events(items: list[Item], name: str) -> list[AmiEvent]:
    return [item for item in items
            if isinstance(item, AmiEvent) and item.fields.get("Event") == name]


async def test_login_with_the_right_secret_reports_connected() -> None:
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    async with AmiTestServer([recording("queue_abandon")], speed=0) as server, \
            running(AmiConnection(ami_config(server.port), queue)) as connection:
        items = await collect_until(queue, lambda got: "connected" in states(got))
        assert states(items) == ["connecting", "connected"]
        assert connection.state == "connected"
        assert server.actions[0]["Action"] == "Login"


async def test_refused_login_reports_auth_failed_and_keeps_retrying() -> None:
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    with capture_logs() as logged:
        async with AmiTestServer([recording("queue_abandon")], speed=0) as server, \
                running(AmiConnection(ami_config(server.port, secret="wrong-secret"),
                                      queue)):
            items = await collect_until(queue,
                                        lambda got: states(got).count("auth_failed") >= 2)
    failures = [item for item in items if isinstance(item, AmiStatus)
                and item.state == "auth_failed"]
    assert "refused: check ami[pbx].username/secret and manager.conf permit=" in \
        failures[0].detail
    assert "wrong-secret" not in failures[0].detail
    assert [entry["event"] for entry in logged if entry["log_level"] != "debug"].count(
        "AMI login refused") >= 2  # one line per attempt, nothing else
    assert "wrong-secret" not in repr(logged)
    assert [action["Action"] for action in server.actions].count("Login") >= 2
    assert "connected" not in states(items)


async def test_connection_refused_is_retried() -> None:
    async with AmiTestServer([], speed=0) as server:
        port = server.port  # nothing listens here any more
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    async with running(AmiConnection(ami_config(port), queue)):
        items = await collect_until(queue, lambda got: states(got).count("disconnected") >= 2)
    assert states(items)[:2] == ["connecting", "disconnected"]


async def test_each_failed_connect_is_one_warning_naming_the_host_and_port() -> None:
    async with AmiTestServer([], speed=0) as server:
        port = server.port  # nothing listens here any more
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    with capture_logs() as logged:
        async with running(AmiConnection(ami_config(port, name="lab"), queue)):
            items = await collect_until(queue,
                                        lambda got: states(got).count("disconnected") >= 3)
    attempts = states(items).count("connecting")
    shown = [entry for entry in logged if entry["log_level"] != "debug"]
    assert len(shown) == attempts
    assert {entry["event"] for entry in shown} == {"AMI connection failed"}
    assert all((entry["pbx"], entry["host"], entry["port"]) == ("lab", "127.0.0.1", port)
               for entry in shown)
    assert f"127.0.0.1:{port} refused the connection: check" in shown[0]["error"]
    assert "ami[lab].host/port" in shown[0]["error"]


def test_a_host_that_cannot_be_resolved_names_the_setting_to_check() -> None:
    config = ami_config(5038, name="lab", host="pbx.example")
    error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    assert connection_failure(config, error) == (
        "ami[lab].host 'pbx.example' cannot be resolved (Name or service not known): "
        "check ami[lab].host")


async def test_a_connection_that_drops_after_login_is_one_lost_warning() -> None:
    structlog.reset_defaults()  # every level reaches capture_logs, whatever ran before
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    with capture_logs() as logged:
        async with AmiTestServer([recording("queue_abandon")], speed=0) as server, \
                running(AmiConnection(ami_config(server.port, name="lab"), queue)):
            server.drop_after_frames = 40
            await collect_until(queue, lambda got: "disconnected" in states(got))
    shown = [(entry["event"], entry["log_level"]) for entry in logged
             if entry["log_level"] != "debug"]
    assert shown[:2] == [("AMI connected", "info"), ("AMI connection lost", "warning")]


async def test_filters_are_asked_for_and_only_wanted_events_arrive() -> None:
    transcript = recording("queue_abandon")
    wanted = frozenset({"Newchannel", "Hangup", "VarSet"})
    raw_after_list: list[bytes] = []
    listed = False

    def sink(raw: bytes, at: float) -> None:
        nonlocal listed
        if listed:
            raw_after_list.append(raw)
        listed = listed or raw.startswith(b"Event: CoreShowChannelsComplete")

    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    connection = AmiConnection(ami_config(51), queue, event_names=wanted,
                               variables=frozenset({"QUEUESTATUS"}), raw_sink=sink)
    async with AmiTestServer([transcript], speed=0) as server:
        connection.config = ami_config(server.port)
        async with running(connection):
            items = await collect_until(
                queue, lambda got: len(events(got, "Hangup")) == count_events(transcript,
                                                                              "Hangup"))
    filters = [action["Filter"] for action in server.actions if action["Action"] == "Filter"]
    assert filters == ["Event: (CoreShowChannel|CoreShowChannelsComplete|FullyBooted|Hangup|"
                       "Newchannel|OriginateResponse)[^A-Za-z0-9_]"
                       "|Variable: (QUEUESTATUS)[^A-Za-z0-9_]"]
    received = {item.fields["Event"] for item in items if isinstance(item, AmiEvent)}
    assert received <= wanted | {"FullyBooted"}
    assert len(events(items, "Newchannel")) == count_events(transcript, "Newchannel")
    assert all(item.fields["Variable"] == "QUEUESTATUS" for item in events(items, "VarSet"))
    # after the filters were in place the server itself sent nothing else
    sent = {parse_frame(raw).get("Event") for raw in raw_after_list}
    assert sent <= {"Newchannel", "Hangup", "VarSet", None}


async def test_an_old_pbx_without_filters_is_filtered_here() -> None:
    transcript = recording("queue_abandon")
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    async with AmiTestServer([transcript], speed=0) as server:
        connection = AmiConnection(ami_config(server.port, event_filter=False), queue,
                                   event_names=frozenset({"Hangup"}))
        async with running(connection):
            items = await collect_until(
                queue, lambda got: len(events(got, "Hangup")) == count_events(transcript,
                                                                              "Hangup"))
    assert not any(action["Action"] == "Filter" for action in server.actions)
    assert {item.fields["Event"] for item in items if isinstance(item, AmiEvent)} <= \
        {"Hangup", "FullyBooted"}


async def test_unanswered_ping_means_a_dead_link_and_the_adapter_reconnects() -> None:
    transcript = recording("queue_abandon")
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    async with AmiTestServer([transcript], speed=0) as server:
        server.half_open_after_frames = 30
        config = ami_config(server.port, ping_interval=0.2, ping_timeout=0.3)
        async with running(AmiConnection(config, queue)):
            items = await collect_until(queue, lambda got: states(got).count("connected") >= 2)
            await asyncio.wait_for(server.finished(), 5)
    assert states(items) == ["connecting", "connected", "disconnected", "connecting",
                             "connected"]
    dead = next(item for item in items if isinstance(item, AmiStatus)
            and item.state == "disconnected")
    assert "Ping" in dead.detail
    assert server.connections == 2


async def test_reconnect_after_a_drop_reports_the_channels_still_alive() -> None:
    transcript = recording("queue_abandon")
    caller = transcript.labels[0]["uniqueid"]
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    async with AmiTestServer([transcript], speed=0) as server:
        server.drop_after_frames = 40
        server.gap_frames = 10
        async with running(AmiConnection(ami_config(server.port), queue)):
            items = await collect_until(queue, lambda got: states(got).count("connected") >= 2)
    connected = [item for item in items if isinstance(item, AmiStatus)
                 and item.state == "connected"]
    assert "disconnected" in states(items)
    assert connected[1].live_uniqueids is not None
    assert caller in connected[1].live_uniqueids
    # and their fields, for the tracker to adopt the calls in progress
    assert connected[1].live_channels is not None
    [listed] = [fields for fields in connected[1].live_channels
                if fields["Uniqueid"] == caller]
    assert listed["Channel"] == "PJSIP/carrier-00000000"
    assert listed["Linkedid"] == caller and listed["CallerIDNum"] == "+447700900123"
    assert listed["Context"] == "queue-support"
    assert listed["Application"] == "Queue" and listed["ApplicationData"].startswith("support,")


async def test_a_name_split_across_two_tcp_writes_arrives_intact() -> None:
    raw = ("Event: Newchannel\r\nChannel: PJSIP/carrier-00000001\r\nCallerIDNum: "
           "+447700900777\r\nCallerIDName: Zoë\r\nUniqueid: 1.1\r\nLinkedid: 1.1\r\n\r\n"
           ).encode()
    middle_of_e_umlaut = raw.index("ë".encode()) + 1
    transcript = Transcript(path=Path("zoe.ami"), frames=[Frame(0.0, raw)])
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    async with AmiTestServer([transcript], speed=0) as server:
        server.split_at = (0, middle_of_e_umlaut)
        async with running(AmiConnection(ami_config(server.port), queue)):
            items = await collect_until(queue, lambda got: bool(events(got, "Newchannel")))
    assert events(items, "Newchannel")[0].fields["CallerIDName"] == "Zoë"


async def test_garbage_and_a_huge_header_do_not_kill_the_connection() -> None:
    transcript = recording("queue_abandon")
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    async with AmiTestServer([transcript], speed=0) as server:
        server.inject = {
            0: b"this is not a frame at all\r\n\r\n",
            1: b"\xff\xfe\x00Event: \xc3\x28Bad\r\nUniqueid: \xe2\r\n\r\n",
            2: b"Event: Huge\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
            3: b"Response: Success\r\nActionID: nobody-asked\r\n\r\n",
            4: b"Response: Error\r\n\r\n",
            5: b"\r\n\r\n",
        }
        async with running(AmiConnection(ami_config(server.port), queue)):
            items = await collect_until(
                queue, lambda got: len(events(got, "Hangup")) == count_events(transcript,
                                                                              "Hangup"))
    assert server.connections == 1
    assert "disconnected" not in states(items)
    assert len(events(items, "Newchannel")) == count_events(transcript, "Newchannel")


async def test_two_pbxs_on_one_queue_are_told_apart_by_name() -> None:
    first, second = recording("queue_abandon"), recording("answered")
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    expected = count_events(first, "Hangup") + count_events(second, "Hangup")
    async with AmiTestServer([first], speed=0) as one, \
            AmiTestServer([second], speed=0) as two, \
            running(AmiConnection(ami_config(one.port, name="london"), queue)), \
            running(AmiConnection(ami_config(two.port, name="leeds"), queue)):
        items = await collect_until(queue, lambda got: len(events(got, "Hangup")) == expected)
    hangups = events(items, "Hangup")
    assert sum(1 for item in hangups if item.pbx == "london") == count_events(first, "Hangup")
    assert sum(1 for item in hangups if item.pbx == "leeds") == count_events(second, "Hangup")


async def test_a_connection_ahead_of_its_consumer_stops_reading_and_loses_nothing() -> None:
    """An AmiFeed holds a bounded amount of events: the connection adding beyond it stops
    reading its socket until the consumer has caught up; every event arrives, in order, on
    the same connection (a Ping unanswered meanwhile is not a dead link: its answer waits
    unread behind the events)."""
    storm = recording("busy_storm")
    limit = 32 * 1024
    feed = AmiFeed(limit)
    async with AmiTestServer([storm], speed=0) as server, \
            running(AmiConnection(ami_config(server.port, event_filter=False), feed)):
        await asyncio.sleep(2.5)  # nobody consumes meanwhile: longer than ping_timeout
        held = feed.size
        assert 0 < held <= limit + 256 * 1024  # the limit, and the read that crossed it
        expected = count_events(storm, "Hangup")
        items = await collect_until(feed, lambda got: len(events(got, "Hangup")) >= expected,
                                    limit=30.0)
        assert feed.size <= limit
        assert server.connections == 1
    received = [item.fields.get("Uniqueid") for item in events(items, "Hangup")]
    sent = [parse_frame(frame.raw).get("Uniqueid") for frame in storm.frames
            if frame.raw.startswith(b"Event: Hangup\r")]
    assert received == sent


async def test_originate_is_queued_and_its_response_arrives_as_an_event() -> None:
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    async with AmiTestServer([], speed=0, originate_result="busy") as server, \
            running(AmiConnection(ami_config(server.port), queue,
                                  event_names=NEEDED_EVENTS)) as connection:
        await collect_until(queue, lambda got: "connected" in states(got))
        answer = await connection.originate(Channel="PJSIP/101", Context="callback",
                                            Exten="+447700900123", Priority="1")
        items = await collect_until(queue, lambda got: bool(events(got, "OriginateResponse")))
    assert answer["Response"] == "Success"
    assert events(items, "OriginateResponse")[0].fields["Reason"] == "5"
    originate = next(action for action in server.actions if action["Action"] == "Originate")
    assert originate["Async"] == "true"


@pytest.mark.parametrize("name", ["queue_abandon", "answered", "repeat_caller", "busy_storm"])
async def test_recorded_calls_through_the_adapter_get_their_labelled_outcomes(
        name: str) -> None:
    transcript = recording(name)
    expected = {label["linkedid"]: label["expected"] for label in transcript.labels}
    tracker = CallTracker("pbx", InboundConfig(contexts=("from-carrier",),
                                               after_hours_contexts=("closed",)), "GB")
    outcomes: dict[str, str] = {}
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()

    def track(items: list[Item]) -> bool:
        item = items[-1] if items else None
        if isinstance(item, AmiEvent):
            for record in tracker.feed(item.fields, item.at):
                outcomes[record.call_id] = str(record.outcome)
        elif isinstance(item, AmiStatus) and item.live_uniqueids is not None:
            tracker.reconcile(set(item.live_uniqueids), item.at)
        return len(outcomes) >= len(expected)

    async with AmiTestServer([transcript], speed=0) as server, \
            running(AmiConnection(ami_config(server.port), queue, event_names=NEEDED_EVENTS,
                                  variables=NEEDED_VARIABLES)):
        await collect_until(queue, track, limit=30)
    assert outcomes == expected


def last_hangup_frame_of_each_call(transcript: Transcript) -> dict[str, int]:
    """Linkedid -> index of the frame with the call's last Hangup (of any of its legs)."""
    calls = {label["linkedid"] for label in transcript.labels}
    last: dict[str, int] = {}
    for index, frame in enumerate(transcript.frames):
        fields = parse_frame(frame.raw)
        if fields.get("Event") == "Hangup" and fields.get("Linkedid") in calls:
            last[fields["Linkedid"]] = index
    return last


async def test_a_drop_mid_storm_closes_the_calls_that_ended_in_the_gap_and_doubles_nothing(
        ) -> None:
    transcript = recording("busy_storm")
    drop_at, gap = 2000, 400
    expected = {label["linkedid"]: label["expected"] for label in transcript.labels}
    last_hangup = last_hangup_frame_of_each_call(transcript)
    ended_before = {call for call, index in last_hangup.items() if index < drop_at}
    ended_in_gap = {call for call, index in last_hangup.items()
                    if drop_at <= index < drop_at + gap}
    assert ended_before and ended_in_gap  # the drop really falls mid-storm
    tracker = CallTracker("pbx", InboundConfig(contexts=("from-carrier",)), "GB")
    records: list[CallRecord] = []
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()

    def track(item: Item) -> None:
        if isinstance(item, AmiEvent):
            records.extend(tracker.feed(item.fields, item.at))
        elif item.live_uniqueids is not None:
            records.extend(tracker.reconcile(set(item.live_uniqueids), item.at))

    def all_recorded(items: list[Item]) -> bool:
        if items:
            track(items[-1])
        return len(records) >= len(expected)

    async with AmiTestServer([transcript], speed=0) as server:
        server.drop_after_frames, server.gap_frames = drop_at, gap
        connection = AmiConnection(ami_config(server.port), queue, event_names=NEEDED_EVENTS,
                                   variables=NEEDED_VARIABLES)
        async with running(connection):
            items = await collect_until(queue, all_recorded, limit=30)
            await asyncio.wait_for(server.finished(), 10)
        while not queue.empty():  # everything sent before the Logoff answer
            for piece in flat(queue.get_nowait()):
                track(piece)
    assert states(items).count("connected") == 2
    assert sorted(record.call_id for record in records) == sorted(expected)  # once each
    by_call = {record.call_id: record for record in records}
    assert all(by_call[call].extra.get("ended_during_gap") == "1" for call in ended_in_gap)
    assert all(by_call[call].partial for call in ended_in_gap)
    assert {call: str(by_call[call].outcome) for call in ended_before} == \
        {call: expected[call] for call in ended_before}
    assert not any(by_call[call].partial for call in ended_before)


# ---------------------------------------------------------------- the read path


def test_the_events_of_one_read_reach_the_queue_as_one_item_in_order() -> None:
    async def scenario() -> list[AmiItem]:
        queue: asyncio.Queue[AmiItem] = asyncio.Queue()
        connection = AmiConnection(ami_config(1), queue)
        protocol = FramedProtocol(connection._on_frames)
        protocol.banner.set_result("Asterisk Call Manager/11.0.0")
        protocol.data_received(b"Event: Newchannel\r\nUniqueid: 1\r\n\r\n"
                               b"Event: Hangup\r\nUniqueid: 1\r\nCause: 16\r\n\r\n"
                               b"Event: Newchannel\r\nUnique")  # the third, cut by TCP
        protocol.data_received(b"id: 2\r\n\r\n")
        return [queue.get_nowait() for _ in range(queue.qsize())]

    first, second = asyncio.run(scenario())
    assert isinstance(first, AmiEvents) and isinstance(second, AmiEvents)
    assert [(event.fields["Event"], event.fields["Uniqueid"]) for event in first] == \
        [("Newchannel", "1"), ("Hangup", "1")]
    assert [dict(event.fields) for event in second] == [{"Event": "Newchannel",
                                                          "Uniqueid": "2"}]


def test_a_thousand_garbage_frames_give_a_bounded_number_of_warnings() -> None:
    async def scenario() -> list[dict[str, object]]:
        queue: asyncio.Queue[AmiItem] = asyncio.Queue()
        connection = AmiConnection(ami_config(1, name="lab"), queue)
        protocol = FramedProtocol(connection._on_frames)
        protocol.banner.set_result("Asterisk Call Manager/11.0.0")
        with capture_logs() as logged:
            for number in range(1000):
                protocol.data_received(b"\x00garbage %d\r\n\r\n" % number)
        return logged

    logged = asyncio.run(scenario())

    assert 1 <= len(logged) <= 10
    assert {entry["event"] for entry in logged} == {"AMI frame not understood: dropped"}
    assert "check that ami[lab].host/port is an Asterisk manager" in str(logged[0]["hint"])


def test_a_frame_read_without_its_last_line_end_keeps_its_last_field() -> None:
    """A read's frames come without their closing empty line: the last line has no CRLF."""
    events = AmiEvents("pbx", 0.0, [b"Event: VarSet\r\nUniqueid: 1\r\nVariable: QUEUESTATUS",
                                    b"Event: VarSet\r\nUniqueid: 1\r\nVariable: OTHER",
                                    b"Event: Hangup"],
                       wanted=frozenset({"VarSet", "Hangup"}),
                       variables=frozenset({"QUEUESTATUS"}))

    read = [dict(event.fields) for event in events]

    assert read == [{"Event": "VarSet", "Uniqueid": "1", "Variable": "QUEUESTATUS"},
                    {"Event": "Hangup"}]
