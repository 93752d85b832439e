"""The daemons' heartbeat rows: one format written and read, alive by age, the throughput's
share."""

from __future__ import annotations

from mcdaemon.core.daemons import (
    ALIVE_WITHIN,
    DaemonBeat,
    alive,
    read_beats,
    throughput_share,
)

NOW = 1_736_157_600.0


def test_a_beat_reads_back_as_written_and_other_status_rows_are_not_beats() -> None:
    beat = DaemonBeat("alpha", "123@host-a", "bound", {"london": "connected", "leeds": "down"})
    rows = {beat.row: (beat.value(), NOW), "watched:london": ("up", NOW),
            "daemon:garbled": ("not json", NOW)}
    assert read_beats(rows) == [DaemonBeat("alpha", "123@host-a", "bound",
                                           {"london": "connected", "leeds": "down"}, NOW)]


def test_a_daemon_is_alive_while_its_heartbeat_is_fresh() -> None:
    fresh = DaemonBeat("a", "1@h", seen=NOW - 1)
    stale = DaemonBeat("b", "2@h", seen=NOW - ALIVE_WITHIN)
    assert alive([fresh, stale], NOW) == [fresh]


def test_the_daemons_alive_share_the_accounts_throughput_equally() -> None:
    assert throughput_share(10.0, 1) == 10.0
    assert throughput_share(10.0, 4) == 2.5
    assert throughput_share(10.0, 0) == 10.0  # itself, not yet seen
