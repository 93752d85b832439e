"""Business hours: weekly schedule, holidays, midnight crossings and DST edges (Europe/London)."""

from __future__ import annotations

import datetime as dt

import pytest

from mcdaemon.core.hours import BusinessHours, Interval, parse_days, parse_intervals

UTC = dt.UTC


def at(text: str) -> float:
    """An instant written in UTC, e.g. '2025-03-30 08:30'."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def utc(epoch: float | None) -> str:
    assert epoch is not None
    return dt.datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def schedule(days: dict[str, str], holidays: tuple[str, ...] = (),
             zone: str = "Europe/London") -> BusinessHours:
    weekly: list[tuple[Interval, ...]] = [() for _ in range(7)]
    for key, ranges in days.items():
        for day in parse_days(key):
            weekly[day] = parse_intervals(ranges)
    return BusinessHours(zone, tuple(weekly), frozenset(dt.date.fromisoformat(h)
                                                        for h in holidays))


OFFICE = schedule({"mon-fri": "09:00-17:30"})


@pytest.mark.parametrize(("instant", "is_open"), [
    ("2025-01-06 09:00", True),    # Monday 09:00 GMT: opens on the minute
    ("2025-01-06 08:59", False),
    ("2025-01-06 17:29", True),
    ("2025-01-06 17:30", False),   # closing time is closed
    ("2025-01-04 12:00", False),   # Saturday
    ("2025-07-07 08:30", True),    # Monday 09:30 BST is 08:30 UTC
    ("2025-07-07 16:45", False),   # 17:45 BST
])
def test_office_hours_are_read_on_the_local_wall_clock(instant: str, is_open: bool) -> None:
    assert OFFICE.is_open(at(instant)) is is_open


def test_next_opening_after_friday_evening_is_monday_morning() -> None:
    assert utc(OFFICE.next_opening(at("2025-01-03 18:00"))) == "2025-01-06 09:00"


def test_next_opening_while_open_is_now() -> None:
    assert OFFICE.next_opening(at("2025-01-06 10:00")) == at("2025-01-06 10:00")


def test_spring_forward_day_opens_at_local_nine_which_is_eight_utc() -> None:
    sundays = schedule({"sun": "09:00-17:00"})
    assert utc(sundays.next_opening(at("2025-03-30 00:30"))) == "2025-03-30 08:00"
    assert sundays.is_open(at("2025-03-30 08:00"))
    assert not sundays.is_open(at("2025-03-30 07:59"))


def test_opening_inside_the_spring_forward_gap_happens_when_the_clock_gets_there() -> None:
    # 01:30 does not exist in London on 30 March 2025: clocks jump from 01:00 GMT to 02:00 BST
    night = schedule({"sun": "01:30-04:00"})
    opening = night.next_opening(at("2025-03-29 23:00"))
    assert utc(opening) == "2025-03-30 01:30"  # 02:30 BST, the first instant at or after 01:30
    assert opening is not None and night.is_open(opening)


def test_fall_back_day_opens_at_local_nine_which_is_nine_utc() -> None:
    sundays = schedule({"sun": "09:00-17:00"})
    assert utc(sundays.next_opening(at("2025-10-26 00:00"))) == "2025-10-26 09:00"


def test_an_opening_in_the_repeated_hour_takes_its_first_occurrence() -> None:
    # 01:30 happens twice in London on 26 October 2025: 00:30 UTC (BST) and 01:30 UTC (GMT)
    night = schedule({"sun": "01:30-03:00"})
    assert utc(night.next_opening(at("2025-10-25 23:00"))) == "2025-10-26 00:30"
    assert night.is_open(at("2025-10-26 01:45"))  # second 01:45, GMT: still open


def test_a_range_crossing_midnight_stays_open_into_the_next_day() -> None:
    late = schedule({"fri": "22:00-02:00"})
    assert late.is_open(at("2025-01-03 22:00"))     # Friday
    assert late.is_open(at("2025-01-04 01:59"))     # Saturday, after midnight
    assert not late.is_open(at("2025-01-04 02:00"))
    assert not late.is_open(at("2025-01-03 21:59"))
    assert utc(late.next_opening(at("2025-01-04 03:00"))) == "2025-01-10 22:00"


def test_a_holiday_cancels_the_ranges_that_start_on_it() -> None:
    late = schedule({"fri": "22:00-02:00"}, holidays=("2025-01-03",))
    assert not late.is_open(at("2025-01-03 23:00"))
    assert not late.is_open(at("2025-01-04 01:00"))


def test_next_opening_skips_holidays() -> None:
    christmas = schedule({"mon-fri": "09:00-17:30"}, holidays=("2025-12-25", "2025-12-26"))
    assert not christmas.is_open(at("2025-12-25 10:00"))
    assert utc(christmas.next_opening(at("2025-12-24 18:00"))) == "2025-12-29 09:00"


def test_a_schedule_that_never_opens_has_no_next_opening() -> None:
    assert schedule({}).next_opening(at("2025-01-06 10:00")) is None


def test_other_time_zones_use_their_own_wall_clock() -> None:
    new_york = schedule({"mon-fri": "09:00-17:00"}, zone="America/New_York")
    assert not new_york.is_open(at("2025-01-06 10:00"))  # 05:00 in New York
    assert new_york.is_open(at("2025-01-06 14:00"))


@pytest.mark.parametrize(("text", "expected"), [
    ("09:00-17:30", (Interval(540, 1050),)),
    ("13:30-17:30, 09:00-12:30", (Interval(540, 750), Interval(810, 1050))),
    ("00:00-24:00", (Interval(0, 1440),)),
    ("closed", ()),
])
def test_time_ranges_parse(text: str, expected: tuple[Interval, ...]) -> None:
    assert parse_intervals(text) == expected


@pytest.mark.parametrize("text", ["9-5", "09:00-25:00", "09:60-10:00", "nine to five"])
def test_broken_time_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_intervals(text)


def test_day_ranges_may_wrap_over_the_weekend() -> None:
    assert parse_days("mon-fri") == (0, 1, 2, 3, 4)
    assert parse_days("fri-mon") == (4, 5, 6, 0)
    with pytest.raises(ValueError):
        parse_days("weekdays")
