"""Business hours: a weekly schedule plus holiday dates, read on the group's wall clock.

Pure: the instant to judge comes in as an epoch; nothing here reads the clock.

Why wall clock: opening hours are what the sign on the door says ("09:00-17:30"), so they are
compared with local time in the group's zone (zoneinfo), and DST is handled by converting
wall times to instants only when an opening is computed:

- spring forward (a wall time that does not exist, e.g. 01:30 in Europe/London on the last
  Sunday of March): the opening happens at the first instant the clock shows that time or
  later (01:30 GMT is 02:30 BST);
- fall back (a wall time that happens twice): the first occurrence opens.

An interval whose end is not after its start crosses midnight ("22:00-02:00" on Friday runs
to 02:00 on Saturday). A holiday cancels the intervals that *start* on that date; the
after-midnight tail of the evening before still counts.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_INTERVAL = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_MINUTES_PER_DAY = 24 * 60
_SEARCH_DAYS = 400  # a year of holidays plus a week: beyond that the schedule never opens


@dataclass(frozen=True, slots=True)
class Interval:
    """From `start` to `end` in minutes after local midnight; end <= start crosses midnight."""

    start: int
    end: int

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def __str__(self) -> str:
        return f"{_clock(self.start)}-{_clock(self.end)}"


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """Weekly schedule (index 0 = Monday) and closed dates, in the IANA zone `timezone`."""

    timezone: str
    weekly: tuple[tuple[Interval, ...], ...]
    holidays: frozenset[dt.date] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def ever_open(self) -> bool:
        return any(self.weekly)

    def is_open(self, at: float) -> bool:
        local = dt.datetime.fromtimestamp(at, self.zone)
        minute = local.hour * 60 + local.minute
        today, yesterday = local.date(), local.date() - dt.timedelta(days=1)
        for interval in self._intervals(today):
            if interval.crosses_midnight:
                if minute >= interval.start:
                    return True
            elif interval.start <= minute < interval.end:
                return True
        return any(interval.crosses_midnight and minute < interval.end
                   for interval in self._intervals(yesterday))

    def next_opening(self, at: float) -> float | None:
        """`at` itself when open, else the epoch of the next opening; None if it never opens."""
        if self.is_open(at):
            return at
        zone = self.zone
        first_day = dt.datetime.fromtimestamp(at, zone).date()
        for offset in range(_SEARCH_DAYS):
            day = first_day + dt.timedelta(days=offset)
            starts = sorted(
                dt.datetime.combine(day, _time(interval.start), tzinfo=zone).timestamp()
                for interval in self._intervals(day))
            for start in starts:
                if start >= at:
                    return start
        return None

    def _intervals(self, day: dt.date) -> tuple[Interval, ...]:
        if day in self.holidays:
            return ()
        return self.weekly[day.weekday()]

    def describe(self) -> str:
        days = [f"{name} {', '.join(str(i) for i in intervals)}"
                for name, intervals in zip(DAY_NAMES, self.weekly, strict=True) if intervals]
        return "; ".join(days) or "never open"


def parse_intervals(value: str) -> tuple[Interval, ...]:
    """`"09:00-12:30, 13:30-17:30"` -> intervals; `"closed"` or "" -> none; ValueError otherwise."""
    text = value.strip().lower()
    if text in ("", "closed"):
        return ()
    intervals = []
    for piece in text.split(","):
        match = _INTERVAL.match(piece)
        if not match:
            raise ValueError(f"{piece.strip()!r} is not a time range like 09:00-17:30")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(f"{piece.strip()!r} has an impossible time")
        start, end = h1 * 60 + m1, (h2 * 60 + m2) % _MINUTES_PER_DAY
        if h2 == 24 and start == 0:
            end = _MINUTES_PER_DAY  # 00:00-24:00: the whole day, not a midnight crossing
        intervals.append(Interval(start, end))
    return tuple(sorted(intervals, key=lambda i: i.start))


def parse_days(key: str) -> tuple[int, ...]:
    """`"mon"` -> (0,); `"mon-fri"` -> (0..4); `"fri-mon"` wraps; ValueError for anything else."""
    names = key.strip().lower().split("-")
    if len(names) == 1 and names[0] in DAY_NAMES:
        return (DAY_NAMES.index(names[0]),)
    if len(names) == 2 and all(name in DAY_NAMES for name in names):
        first, last = (DAY_NAMES.index(name) for name in names)
        return tuple((first + step) % 7 for step in range((last - first) % 7 + 1))
    raise ValueError(f"{key!r} is not a day (mon … sun) or a range of days (mon-fri)")


def _time(minutes: int) -> dt.time:
    return dt.time(minutes // 60, minutes % 60)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
