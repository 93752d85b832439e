"""`mcdaemon report` and `mcdaemon record-booking`: what texting back missed calls achieves.

`ReportBuilder` is the sans-IO core: the store's aggregates (`Store.report_counts`, and
`report_callers`: the texted callers), the latest missed calls (`report_recent`), the booked
texts (`report_booked`) and the sent texts of the callers who answered by number, a batch of
whole callers at a time (`report_texts`) in, a `Report` out, holding counts, not rows (a
year of a busy PBX in 78 MB); `commands/report.read_report` feeds it from read-only
connections. `as_json`, `as_csv` and `as_table` print the report and `report.html` draws
it. The README's "KPI report" section is the user's version of these definitions; keep both
in step.

Calls are those that *ended* in the window `[since, until]`; everything else hangs off them:

- inbound calls: every recorded call. Missed: outcomes in `records.MISSED_OUTCOMES` (not
  `answered`, not `dead_end`; a dead end counts as inbound, never as missed).
- missed-call rate = missed / inbound calls.
- contactability = mobile missed calls / missed calls. Mobile: the call has an E.164 caller
  number and its stored policy reason is not `withheld`, `invalid_number` or `not_mobile`
  (a call refused earlier, e.g. `not_triggered`, never had its number judged: it counts as
  mobile when it has a number).
- auto-text send rate = sent texts / textable missed calls (the policy said text: `textable`).
  Sent: the call's first text reached `submitted`, `delivered` or `undeliverable`.
- delivery rate = delivered / sent texts (sent texts still awaiting a receipt count against).
- time to first text: `submitted_at - ended` of sent texts, nearest-rank p50 and p90 (deferred
  texts, sent at the next opening, included).
- texted callers: distinct numbers with a sent text. Reply rate = texted callers with an
  inbound text (not an opt-out/opt-in keyword) within `REPLY_WINDOW` after one of their sent
  texts / texted callers. Opt-out rate: the same with an opt-out (a STOP-like reply or an
  `opt_outs` row) within `REPLY_WINDOW` after a sent text.
- call-back reach rate: call-back campaigns opened in the period that reached the caller
  (`done`: an attempt was answered) / those that ended, reached or `exhausted`. Campaigns
  still open, and those `cancelled` because the caller got through by calling in (or an agent
  called them), are left out of both. n/a when no campaign ended.
- bookings (`record-booking`) are attributed when recorded to the most recent texted missed
  call from the number that ended within `BOOKING_WINDOW` before the booking. Revenue per
  missed call = value of bookings attributed to the window's calls / missed calls; booking
  rate = texted callers with an attributed booking / texted callers.
- A/B tests, per group and template with variants: texted callers per variant, reply rate and
  booking rate, lift against the control (the variant named `control`, else the first in the
  config), a two-sided two-proportion z-test (pooled) on each rate, and a verdict on the reply
  rate: "not enough data yet" below `MIN_SAMPLE` texted callers in either variant, else
  "X beats control (p=…)", "X does worse than control (p=…)" or "no significant difference"
  at `ALPHA`.
A rate whose denominator is zero is n/a (None), never 0 %.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from mcdaemon.config.model import Config
from mcdaemon.core import keywords
from mcdaemon.core.policy import INVALID_NUMBER, NOT_MOBILE, WITHHELD, match_group
from mcdaemon.core.records import MISSED_OUTCOMES, CallRecord, Outcome
from mcdaemon.logs import mask_number
from mcdaemon.store.report import BUCKET, SentText, TextBatch


def _columns(*names: str) -> itemgetter[Any]:
    """The named `SentText` columns of a streamed row (a plain row: no attribute names)."""
    return itemgetter(*(SentText._fields.index(name) for name in names))


#: `SentText` rows' keys, counted by `Counter` in C
_NUMBER = _columns("number")
_GROUP = _columns("group")
_SUBMITTED = _columns("submitted_at")
_ID = _columns("id")
_ARM_OF_TEXT = _columns("group", "template", "variant")

DAY = 86400.0
#: a reply or an opt-out counts for a text if it comes within this long after it
REPLY_WINDOW = 7 * DAY
#: a booking is attributed to a texted missed call that ended at most this long before it
BOOKING_WINDOW = 30 * DAY
#: texted callers each A/B variant needs before the test says anything
MIN_SAMPLE = 100
#: significance level of the A/B verdict (two-sided)
ALPHA = 0.05
#: states of a text the SMSC took ("sent")
SENT_STATES = frozenset({"submitted", "delivered", "undeliverable", "unknown"})
PENDING_STATES = frozenset({"queued", "sending"})
#: stored policy reasons that mean the caller cannot get a text whatever the policy
NOT_CONTACTABLE = frozenset({WITHHELD, INVALID_NUMBER, NOT_MOBILE})
NO_GROUP = "(no group)"
_MISSED = frozenset(str(outcome) for outcome in MISSED_OUTCOMES)
_RELATIVE = re.compile(r"(\d+)\s*([dhm])")
_UNITS = {"d": DAY, "h": 3600.0, "m": 60.0}


# ---------------------------------------------------------------------- --since

@dataclass(frozen=True, slots=True)
class Since:
    """A parsed `--since`: seconds back from now, or a date/time (naive: the config's zone)."""

    text: str
    seconds: float | None = None
    moment: dt.datetime | None = None

    def start(self, now: float, timezone: str) -> float:
        """The epoch the window starts at; ValueError if it is not before `now`."""
        if self.seconds is not None:
            return now - self.seconds
        assert self.moment is not None
        moment = self.moment
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(timezone))
        start = moment.timestamp()
        if start >= now:
            raise ValueError(f"--since {self.text}: that is not in the past")
        return start


def parse_since(text: str) -> Since:
    """`7d`, `24h`, `30m`, or an ISO date (`2025-01-06`) or date-time
    (`2025-01-06T09:00`, `2025-01-06T09:00+01:00`); ValueError with the fix otherwise."""
    value = text.strip()
    match = _RELATIVE.fullmatch(value)
    if match:
        amount = int(match.group(1))
        if amount <= 0:
            raise ValueError(f"--since {text!r}: must be more than zero")
        return Since(text, seconds=amount * _UNITS[match.group(2)])
    moment = _iso_moment(value)
    if moment is None:
        raise ValueError(f"--since {text!r}: use a duration back from now (7d, 24h, 30m) or "
                         "an ISO date or date-time (2025-01-06, 2025-01-06T09:00)")
    return Since(text, moment=moment)


def _iso_moment(value: str) -> dt.datetime | None:
    """`2025-01-06` (its midnight) or an ISO date-time, with or without an offset."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = dt.date.fromisoformat(value)
            return dt.datetime(day.year, day.month, day.day)
        if re.match(r"\d{4}-\d{2}-\d{2}[T ]\d", value):
            return dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return None


def parse_moment(text: str, timezone: str) -> float:
    """An ISO date-time or date (its midnight) as an epoch; naive ones are in `timezone`."""
    moment = _iso_moment(text.strip())
    if moment is None:
        raise ValueError(f"{text!r} is not an ISO date or date-time (e.g. 2025-01-06T14:30)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(timezone))
    return moment.timestamp()


# ---------------------------------------------------------------------- the numbers

@dataclass(frozen=True, slots=True)
class Ratio:
    """numerator / denominator, shown with both; None (n/a) when the denominator is zero."""

    numerator: float
    denominator: int

    @property
    def value(self) -> float | None:
        return None if self.denominator == 0 else self.numerator / self.denominator

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "numerator": self.numerator,
                "denominator": self.denominator}


@dataclass(frozen=True, slots=True)
class Spread:
    """Nearest-rank percentiles of some durations (seconds); None when there are none."""

    count: int
    p50: float | None
    p90: float | None


def histogram_percentile(counts: Mapping[int, int], p: float) -> float | None:
    """Nearest rank, of durations held as {milliseconds: how many}: the smallest with at
    least p % of them at or below it, in seconds; None when there are none."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(p / 100 * total))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value / 1000
    raise AssertionError("unreachable: the ranks add up to the total")


@dataclass(frozen=True, slots=True)
class Kpis:
    inbound_calls: int
    missed_calls: int
    missed_call_rate: Ratio
    contactability: Ratio
    send_rate: Ratio
    texts_pending: int  # queued or in flight: neither sent nor given up
    texts_not_sent: int  # failed or expired
    delivery_rate: Ratio
    time_to_first_text: Spread
    texted_callers: int
    reply_rate: Ratio
    opt_out_rate: Ratio
    callback_reach_rate: Ratio | None  # None (n/a): no group has call-backs configured
    bookings: int
    revenue: float
    revenue_per_missed_call: Ratio
    booking_rate: Ratio

    def as_dict(self) -> dict[str, Any]:
        spread = self.time_to_first_text
        return {
            "inbound_calls": self.inbound_calls,
            "missed_calls": self.missed_calls,
            "missed_call_rate": self.missed_call_rate.as_dict(),
            "contactability": self.contactability.as_dict(),
            "auto_text_send_rate": self.send_rate.as_dict(),
            "texts_pending": self.texts_pending,
            "texts_not_sent": self.texts_not_sent,
            "delivery_rate": self.delivery_rate.as_dict(),
            "time_to_first_text": {"count": spread.count, "p50_seconds": spread.p50,
                                   "p90_seconds": spread.p90},
            "texted_callers": self.texted_callers,
            "reply_rate": self.reply_rate.as_dict(),
            "opt_out_rate": self.opt_out_rate.as_dict(),
            "callback_reach_rate": (None if self.callback_reach_rate is None
                                    else self.callback_reach_rate.as_dict()),
            "bookings": self.bookings,
            "revenue": self.revenue,
            "revenue_per_missed_call": self.revenue_per_missed_call.as_dict(),
            "booking_rate": self.booking_rate.as_dict(),
        }


@dataclass(frozen=True, slots=True)
class ZTest:
    z: float
    p_value: float


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> ZTest | None:
    """Two-sided pooled z-test of x2/n2 against x1/n1; None when it cannot be computed (an
    empty group, or both rates 0 % or both 100 %)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return None
    z = (x2 / n2 - x1 / n1) / se
    return ZTest(z, math.erfc(abs(z) / math.sqrt(2)))


def format_p(p_value: float) -> str:
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.2g}"


def lift(control: Ratio, other: Ratio) -> float | None:
    """Relative change of `other`'s rate against the control's; None if not computable."""
    if control.value is None or other.value is None or control.value == 0:
        return None
    return other.value / control.value - 1


@dataclass(frozen=True, slots=True)
class Arm:
    variant: str
    texts: int
    texted_callers: int
    reply_rate: Ratio
    booking_rate: Ratio
    reply_lift: float | None = None
    reply_test: ZTest | None = None
    booking_lift: float | None = None
    booking_test: ZTest | None = None
    verdict: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "texts": self.texts,
                "texted_callers": self.texted_callers,
                "reply_rate": self.reply_rate.as_dict(),
                "booking_rate": self.booking_rate.as_dict(),
                "reply_lift": self.reply_lift,
                "reply_p_value": None if self.reply_test is None else self.reply_test.p_value,
                "booking_lift": self.booking_lift,
                "booking_p_value": (None if self.booking_test is None
                                    else self.booking_test.p_value),
                "verdict": self.verdict}


@dataclass(frozen=True, slots=True)
class AbTest:
    group: str
    template: str
    control: str
    arms: tuple[Arm, ...]  # the control first

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "template": self.template, "control": self.control,
                "arms": [arm.as_dict() for arm in self.arms]}


@dataclass(frozen=True, slots=True)
class Day:
    date: dt.date
    missed_calls: int
    texts: int  # sent that day
    replies: int  # texted callers whose first counted reply came that day


@dataclass(frozen=True, slots=True)
class RecentCall:
    """One missed call for the HTML page's list (raw strings: escape them to show them)."""

    ended: str
    group: str
    caller: str
    caller_name: str
    outcome: str
    reason: str
    text: str
    replied: bool


@dataclass(frozen=True, slots=True)
class Report:
    since: float
    until: float
    timezone: str
    group: str | None
    overall: Kpis
    groups: dict[str, Kpis]
    ab_tests: tuple[AbTest, ...]
    currencies: tuple[str, ...]
    unattributed_bookings: int
    days: tuple[Day, ...] = ()
    #: the times to first text of the sent texts: {milliseconds: how many texts}
    times_to_first_text: Mapping[int, int] = field(default_factory=dict)
    recent: tuple[RecentCall, ...] = field(default=())
    #: delivery receipts of the period matched to no text, of those naming several texts:
    #: the delivery rate misses what they would say (docs/receipts.md)
    unmatched_receipts: int = 0
    ambiguous_receipts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": local_iso(self.since, self.timezone),
            "until": local_iso(self.until, self.timezone),
            "timezone": self.timezone, "group": self.group,
            "definitions": {"reply_window_days": REPLY_WINDOW / DAY,
                            "booking_window_days": BOOKING_WINDOW / DAY,
                            "min_sample_per_variant": MIN_SAMPLE, "alpha": ALPHA},
            "overall": self.overall.as_dict(),
            "groups": {name: kpis.as_dict() for name, kpis in self.groups.items()},
            "ab_tests": [test.as_dict() for test in self.ab_tests],
            "currencies": list(self.currencies),
            "unattributed_bookings": self.unattributed_bookings,
            "unmatched_receipts": {"unmatched": self.unmatched_receipts,
                                   "ambiguous": self.ambiguous_receipts},
        }


def local_iso(epoch: float, timezone: str) -> str:
    return dt.datetime.fromtimestamp(epoch, ZoneInfo(timezone)).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- compute

def call_group(decision_group: str | None, did: str | None, grp: str | None,
               config: Config) -> str:
    """The group a stored call counts in: its decision's, else the one the current config
    matches by its queue or DID (answered calls are decided without a group), else
    `NO_GROUP`."""
    if decision_group:
        return str(decision_group)
    stub = CallRecord(pbx="", call_id="", caller="", caller_name=None, caller_e164=None,
                      did=did, group=grp, outcome=Outcome.ANSWERED, stages=(), started=0.0,
                      ended=0.0, wait_seconds=0.0)
    matched = match_group(stub, config)
    return matched.name if matched else NO_GROUP


def _answered(times: Sequence[float], events: Iterable[float]) -> list[tuple[float, range]]:
    """Which of the sorted text `times` each of the sorted `events` (replies, opt-outs)
    follows within `REPLY_WINDOW`: the texts sent in the window before it, found by bisection
    (a caller's texts are not each looked at); (event, indexes) for each that follows any."""
    found = []
    for event in events:
        end = bisect.bisect_right(times, event)
        start = bisect.bisect_left(times, event - REPLY_WINDOW, 0, end)
        while start > 0 and times[start - 1] + REPLY_WINDOW >= event:  # the window's edge
            start -= 1  # as `text + REPLY_WINDOW >= event` rounds, not `event - …`
        while start < end and times[start] + REPLY_WINDOW < event:
            start += 1
        if start < end:
            found.append((event, range(start, end)))
    return found


def _reply_times(inbound: Iterable[tuple[str, float]],
                 opt_outs: Iterable[float]) -> tuple[list[float], list[float]]:
    """A caller's replies (texts to us that are no keyword) and opt-outs (STOP-like texts
    and `opt_outs` rows), each sorted by time."""
    replies: list[float] = []
    stops = list(opt_outs)
    for text, at in inbound:
        kind = keywords.classify_reply(text)
        if kind is None:
            replies.append(at)
        elif kind == "opt_out":
            stops.append(at)
    replies.sort()
    stops.sort()
    return replies, stops


def _reach(campaigns: Sequence[tuple[Any, ...]] | None) -> Ratio | None:
    """Campaign rows (id, e164, grp, state, reason, created_at, closed_at)."""
    if campaigns is None:
        return None
    reached = sum(1 for campaign in campaigns if campaign[3] == "done")
    ended = sum(1 for campaign in campaigns if campaign[3] in ("done", "exhausted"))
    return Ratio(reached, ended)


@dataclass(slots=True)
class _Scope:
    """The counts of one scope (overall, or a group) as the window is read."""

    inbound: int = 0
    missed: int = 0
    mobile: int = 0
    textable: int = 0
    sent: int = 0
    delivered: int = 0
    pending: int = 0
    not_sent: int = 0
    waits: Counter[int] = field(default_factory=Counter)  # milliseconds: how many
    callers: int = 0
    replied: int = 0
    opted: int = 0
    booked: int = 0
    bookings: int = 0
    revenue: float = 0.0

    def kpis(self, reach: Ratio | None) -> Kpis:
        return Kpis(
            inbound_calls=self.inbound, missed_calls=self.missed,
            missed_call_rate=Ratio(self.missed, self.inbound),
            contactability=Ratio(self.mobile, self.missed),
            send_rate=Ratio(self.sent, self.textable),
            texts_pending=self.pending, texts_not_sent=self.not_sent,
            delivery_rate=Ratio(self.delivered, self.sent),
            time_to_first_text=Spread(self.waits.total(),
                                      histogram_percentile(self.waits, 50),
                                      histogram_percentile(self.waits, 90)),
            texted_callers=self.callers,
            reply_rate=Ratio(self.replied, self.callers),
            opt_out_rate=Ratio(self.opted, self.callers),
            callback_reach_rate=reach,
            bookings=self.bookings, revenue=self.revenue,
            revenue_per_missed_call=Ratio(self.revenue, self.missed),
            booking_rate=Ratio(self.booked, self.callers))


@dataclass(slots=True)
class _ArmCounts:
    texts: int = 0
    callers: int = 0
    replied: int = 0
    booked: int = 0


class ReportBuilder:
    """The report, built from the store's aggregates and the texts of the callers who
    answered a batch of callers at a time (`Store.report_counts`, `report_callers`,
    `report_recent`, `report_booked`, `report_texts`): what it holds is counts per scope,
    quarter hour and A/B arm, and the times to first text to the millisecond.

    Feed it `add_booked` and `add_recent`, then every `add_texts`, and `add_counts` (before
    or after the texts); `report()` is the result. `commands/report.read_report` does that
    from a store."""

    def __init__(self, config: Config, *, since: float, until: float,
                 group: str | None = None) -> None:
        self._config = config
        self._since, self._until, self._group = since, until, group
        self._zone = ZoneInfo(config.timezone)
        self._groups: dict[tuple[Any, Any, Any], str] = {}
        self._seen: set[str] = set()  # groups of the calls in scope
        self._overall = _Scope()
        self._scopes: dict[str, _Scope] = defaultdict(_Scope)
        self._arms: dict[tuple[str, str, str], _ArmCounts] = defaultdict(_ArmCounts)
        self._missed_days: dict[dt.date, int] = defaultdict(int)
        #: the sent texts, counted as the store names their group (`SentText.group`),
        #: mapped to the report's groups when it is made: texts, of them delivered, and
        #: their callers by (group, template, variant), texts by (group, wait_ms) and by
        #: quarter hour sent; their callers by group, and overall (all `add_counts`)
        self._texts: Counter[tuple[Any, Any, Any]] = Counter()
        self._delivered: Counter[tuple[Any, Any, Any]] = Counter()
        self._waits: Counter[tuple[Any, Any]] = Counter()
        self._text_buckets: Counter[int] = Counter()
        self._callers: Counter[Any] = Counter()
        self._arm_callers: Counter[tuple[Any, Any, Any]] = Counter()
        self._overall_callers = 0
        self._text_days: dict[dt.date, int] = defaultdict(int)
        self._text_groups: dict[Any, str] = {}  # a text's group as the report names it
        self._counted = False
        self._reply_days: dict[dt.date, int] = defaultdict(int)
        self._bucket_days: dict[int, dt.date] = {}
        self._counts: dict[str, list[Any]] = {}
        self._booked: set[int] = set()  # first texts of calls with a booking
        self._booked_numbers: set[str] = set()  # and their numbers
        self._recent: list[dict[str, Any]] = []
        self._recent_replied: dict[int, bool] = {}  # by text id
        self._recent_numbers: set[str] = set()

    def group_of(self, decision_group: Any, did: Any, grp: Any) -> str:
        key = (decision_group, did, grp)
        found = self._groups.get(key)
        if found is None:
            found = self._groups[key] = call_group(decision_group, did, grp, self._config)
        return found

    def _in_scope(self, group: str) -> bool:
        return self._group is None or group == self._group

    def _day(self, epoch: float) -> dt.date:
        bucket = int(epoch // BUCKET)
        day = self._bucket_days.get(bucket)
        if day is None:
            day = self._bucket_days[bucket] = dt.datetime.fromtimestamp(
                bucket * BUCKET, self._zone).date()
        return day

    def text_groups(self) -> list[str | None] | None:
        """The groups the store names texts by (`SentText.group`) that count in the report:
        None for all; with --group its name, and no group (None) if that is where texts
        without one count. `Store.report_callers` counts the texted callers of those only."""
        if self._group is None:
            return None
        return [self._group, *([None] if self._text_group(None) == self._group else [])]

    def groups_seen(self) -> set[str]:
        """The groups of the window's calls (before a --group filter)."""
        return {self.group_of(*row[:3]) for row in self._counts.get("calls", [])}

    def add_booked(self, booked: Iterable[tuple[int, str]]) -> None:
        """`Store.report_booked(since)`, before the texts."""
        for text_id, number in booked:
            self._booked.add(text_id)
            self._booked_numbers.add(number)

    def add_counts(self, counts: dict[str, list[Any]]) -> None:
        """`Store.report_counts(since, until)` with `report_callers(since, until,
        text_groups())`'s rows."""
        self._counts = counts
        for *key, outcome, reason, textable, count, numbered in counts.get("calls", []):
            group = self.group_of(*key)
            if not self._in_scope(group):
                continue
            self._seen.add(group)
            for scope in (self._overall, self._scopes[group]):
                scope.inbound += count
                if outcome in _MISSED:
                    scope.missed += count
                    scope.mobile += int(numbered or 0) if reason not in NOT_CONTACTABLE else 0
                    scope.textable += count if textable else 0
        for *key, state, count in counts.get("unsent", []):
            group = self.group_of(*key)
            if self._in_scope(group):
                for scope in (self._overall, self._scopes[group]):
                    scope.pending += count if state in PENDING_STATES else 0
                    scope.not_sent += count if state in ("failed", "expired") else 0
        for *key, count, value in counts.get("bookings", []):
            group = self.group_of(*key)
            if self._in_scope(group):
                for scope in (self._overall, self._scopes[group]):
                    scope.bookings += count
                    scope.revenue += float(value or 0)
        for bucket, *key, count in counts.get("missed", []):
            if self._in_scope(self.group_of(*key)):
                self._missed_days[self._day(float(bucket) * BUCKET)] += count
        # the sent texts, as the store names their group (`_count_texts` maps it)
        for decided_by, template, variant, sent, delivered, callers in counts.get("texts", []):
            if self._in_scope(self._text_group(decided_by)):
                self._texts[(decided_by, template, variant)] += sent
                self._delivered[(decided_by, template, variant)] += delivered
                self._arm_callers[(decided_by, template, variant)] += callers
        for decided_by, wait_ms, count in counts.get("waits", []):
            if self._in_scope(self._text_group(decided_by)):
                self._waits[(decided_by, wait_ms)] += count
        for bucket, decided_by, count in counts.get("text_buckets", []):
            if self._in_scope(self._text_group(decided_by)):
                self._text_buckets[bucket] += count
        for decided_by, callers in counts.get("callers", []):
            if self._in_scope(self._text_group(decided_by)):
                self._callers[decided_by] += callers
        [(overall_callers,)] = counts.get("all_callers") or [(0,)]
        self._overall_callers = int(overall_callers or 0)

    def add_recent(self, calls: Iterable[dict[str, Any]], limit: int) -> bool:
        """Missed calls latest first (`Store.report_recent`); True while more are wanted."""
        for call in calls:
            if len(self._recent) >= limit:
                break
            if self._in_scope(self.group_of(call["decision_group"], call["did"], call["grp"])):
                self._recent.append(call)
                if call["text_state"] in SENT_STATES and call["submitted_at"] is not None:
                    self._recent_numbers.add(str(call["destination"]))
        return len(self._recent) < limit

    def add_texts(self, batch: TextBatch) -> None:
        """A batch of callers who texted us, opted out or booked, with their sent texts
        (`Store.report_texts`); the texted callers are counted by `add_counts`."""
        rows = batch.texts
        if self._group is not None:  # --group: only its texts count, for everything
            rows = [row for row in rows if self._text_group(_GROUP(row)) == self._group]
        for number, texts in groupby(rows, _NUMBER):
            self._add_engaged(number, list(texts), batch.inbound.get(number, ()),
                              batch.opt_outs.get(number, ()))

    def _add_engaged(self, number: str, texts: list[Any], inbound: Sequence[tuple[str, float]],
                     opt_outs: Sequence[float]) -> None:
        """A texted caller who texted us, opted out, booked or is on the recent calls' list:
        `texts` are its sent texts (rows of `SentText`'s columns) by time.

        Per scope (overall, group) and A/B arm the caller counts once: as replied, opted out
        or booked when any of its texts there was followed by a reply or an opt-out within
        `REPLY_WINDOW`, or led to a booking. Only the texts a reply, an opt-out or a booking
        points at are looked at (`_answered`): a frequent caller has many."""
        replies, stops = _reply_times(inbound, opt_outs)
        times = list(map(_SUBMITTED, texts))
        replied = _answered(times, replies)
        opted = _answered(times, stops)
        booked: list[int] = []
        if number in self._booked_numbers:
            booked = [index for index, text_id in enumerate(map(_ID, texts))
                      if text_id in self._booked]
        if number in self._recent_numbers:
            followed = {index for _, indexes in replied for index in indexes}
            for index, text_id in enumerate(map(_ID, texts)):
                self._recent_replied[text_id] = index in followed
        # the (group, template, variant) of the texts each points at, taken in C
        pointed: list[set[tuple[Any, Any, Any]]] = [
            set(), set(), set(map(_ARM_OF_TEXT, map(texts.__getitem__, booked)))]
        for flag, events in enumerate((replied, opted)):
            for _, indexes in events:
                pointed[flag].update(map(_ARM_OF_TEXT, texts[indexes.start:indexes.stop]))
        groups: dict[str, list[bool]] = {}  # group: [replied, opted out, booked]
        arms: dict[tuple[str, str, str], list[bool]] = {}  # arm: [replied, booked]
        for flag, found in enumerate(pointed):
            for decided_by, template, variant in found:
                group = self._text_group(decided_by)
                flags = groups.get(group)
                if flags is None:
                    flags = groups[group] = [False, False, False]
                flags[flag] = True
                if variant is not None and flag != 1:
                    key = (group, template or "-", variant)
                    arm = arms.get(key)
                    if arm is None:
                        arm = arms[key] = [False, False]
                    arm[flag // 2] = True
        if not groups:
            return
        reached = [any(column) for column in zip(*groups.values(), strict=True)]
        for scope, (was_replied, was_opted, was_booked) in [
                (self._overall, reached),
                *((self._scopes[group], flags) for group, flags in groups.items())]:
            scope.replied += was_replied
            scope.opted += was_opted
            scope.booked += was_booked
        for key, (was_replied, was_booked) in arms.items():
            counts = self._arms[key]
            counts.replied += was_replied
            counts.booked += was_booked
        if replied:  # the earliest reply that followed a text
            self._reply_days[self._day(replied[0][0])] += 1

    def _text_group(self, decided_by: Any) -> str:
        """A text's group (`SentText.group`) as the report names it."""
        group = self._text_groups.get(decided_by)
        if group is None:
            group = self._text_groups[decided_by] = self.group_of(decided_by, None, None)
        return group

    def _count_texts(self) -> None:
        """The streamed counts, by the store's group names, into the report's scopes, arms
        and days (once, when the report is made)."""
        if self._counted:
            return
        self._counted = True
        overall, scopes, group_of = self._overall, self._scopes, self._text_group
        for (decided_by, template, variant), count in self._texts.items():
            group = group_of(decided_by)
            delivered = self._delivered[(decided_by, template, variant)]
            for counted in (overall, scopes[group]):
                counted.sent += count
                counted.delivered += delivered
            if variant is not None:
                self._arms[(group, str(template or "-"), variant)].texts += count
        for (decided_by, wait_ms), count in self._waits.items():
            if wait_ms is not None:
                scopes[group_of(decided_by)].waits[max(0, int(wait_ms))] += count
                overall.waits[max(0, int(wait_ms))] += count
        for bucket, count in self._text_buckets.items():
            self._text_days[self._day(float(bucket) * BUCKET)] += count
        for decided_by, callers in self._callers.items():
            scopes[group_of(decided_by)].callers += callers
        overall.callers = self._overall_callers
        for (decided_by, template, variant), callers in self._arm_callers.items():
            if variant is not None:
                key = (group_of(decided_by), str(template or "-"), variant)
                self._arms[key].callers += callers

    def report(self) -> Report:
        self._count_texts()
        config, group = self._config, self._group
        names = [configured.name for configured in config.groups] if group is None else [group]
        names += sorted(self._seen - set(names))
        # call-backs: counted where some group has them configured, or campaigns exist
        campaigns: list[tuple[Any, ...]] | None = list(self._counts.get("campaigns", []))
        if not campaigns and not any(configured.callback for configured in config.groups):
            campaigns = None
        if campaigns is not None and group is not None:
            campaigns = [campaign for campaign in campaigns if campaign[2] == group]
        per_group = {name: self._scopes[name].kpis(
            None if campaigns is None else _reach([c for c in campaigns if c[2] == name]))
            for name in names}
        [(unmatched, ambiguous)] = self._counts.get("receipts_unmatched") or [(0, 0)]
        [(unattributed,)] = self._counts.get("unattributed") or [(0,)]
        return Report(
            since=self._since, until=self._until, timezone=config.timezone, group=group,
            overall=self._overall.kpis(_reach(campaigns)), groups=per_group,
            ab_tests=tuple(self._ab_tests()),
            currencies=tuple(str(row[0]) for row in self._counts.get("currencies", [])),
            unattributed_bookings=int(unattributed), days=self._days(),
            times_to_first_text=dict(self._overall.waits), recent=self._recent_calls(),
            unmatched_receipts=int(unmatched or 0), ambiguous_receipts=int(ambiguous or 0))

    def _ab_tests(self) -> list[AbTest]:
        experiments: dict[tuple[str, str], dict[str, _ArmCounts]] = defaultdict(dict)
        for (group, template, variant), counts in self._arms.items():
            experiments[(group, template)][variant] = counts
        tests: list[AbTest] = []
        for (group, template), by_variant in sorted(experiments.items()):
            control = _control_of(self._config, group, template, by_variant)
            configured = self._config.group(group)
            order = list(configured.variants.get(template, {})) if configured else []
            names = sorted(by_variant, key=lambda name: (
                name != control, order.index(name) if name in order else len(order), name))
            base: Arm | None = None
            arms: list[Arm] = []
            for name in names:
                counts = by_variant[name]
                arm = Arm(name, counts.texts, counts.callers,
                          Ratio(counts.replied, counts.callers),
                          Ratio(counts.booked, counts.callers))
                if base is None:
                    base = arm
                else:
                    arm = _compare(base, arm)
                arms.append(arm)
            tests.append(AbTest(group, template, control, tuple(arms)))
        return tests

    def _days(self) -> tuple[Day, ...]:
        first = self._day(self._since)
        text_days = self._text_days
        last = max([self._day(self._until), *text_days, *self._reply_days])
        result: list[Day] = []
        current = first
        while current <= last:
            result.append(Day(current, self._missed_days[current], text_days[current],
                              self._reply_days[current]))
            current += dt.timedelta(days=1)
        return tuple(result)

    def _recent_calls(self) -> tuple[RecentCall, ...]:
        result: list[RecentCall] = []
        for call in self._recent:
            number = call["caller_e164"] or call["caller"]
            ended = dt.datetime.fromtimestamp(float(call["ended"] or 0), self._zone)
            result.append(RecentCall(
                ended=ended.strftime("%Y-%m-%d %H:%M"),
                group=self.group_of(call["decision_group"], call["did"], call["grp"]),
                caller=mask_number(str(number) if number else None,
                                   self._config.log_full_numbers),
                caller_name=str(call["caller_name"] or ""), outcome=str(call["outcome"]),
                reason=str(call["reason"]),
                text=str(call["text_state"]) if call["text_state"] else "-",
                replied=call["text_id"] is not None and self._recent_replied.get(
                int(call["text_id"]), False)))
        return tuple(result)


def _control_of(config: Config, group: str, template: str, names: Iterable[str]) -> str:
    """`control` if a variant has that name, else the first in the config, else the first
    by name (a variant since removed from the config)."""
    present = sorted(names)
    if "control" in present:
        return "control"
    configured = config.group(group)
    order = list(configured.variants.get(template, {})) if configured else []
    return next((name for name in order if name in present), present[0])


def _compare(control: Arm, arm: Arm) -> Arm:
    reply_test = two_proportion_z_test(
        int(control.reply_rate.numerator), control.texted_callers,
        int(arm.reply_rate.numerator), arm.texted_callers)
    booking_test = two_proportion_z_test(
        int(control.booking_rate.numerator), control.texted_callers,
        int(arm.booking_rate.numerator), arm.texted_callers)
    smallest = min(control.texted_callers, arm.texted_callers)
    if smallest < MIN_SAMPLE:
        verdict = (f"not enough data yet ({arm.texted_callers} vs {control.texted_callers} "
                   f"texted callers; {MIN_SAMPLE} per variant needed)")
    elif reply_test is None or reply_test.p_value >= ALPHA:
        verdict = "no significant difference" + (
            f" ({format_p(reply_test.p_value)})" if reply_test else "")
    elif reply_test.z > 0:
        verdict = f"{arm.variant} beats {control.variant} ({format_p(reply_test.p_value)})"
    else:
        verdict = (f"{arm.variant} does worse than {control.variant} "
                   f"({format_p(reply_test.p_value)})")
    return Arm(arm.variant, arm.texts, arm.texted_callers, arm.reply_rate, arm.booking_rate,
               reply_lift=lift(control.reply_rate, arm.reply_rate), reply_test=reply_test,
               booking_lift=lift(control.booking_rate, arm.booking_rate),
               booking_test=booking_test, verdict=verdict)


# ---------------------------------------------------------------------- output

def _percent(ratio: Ratio) -> str:
    value = ratio.value
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _money(value: float, currencies: Sequence[str]) -> str:
    unit = f" {currencies[0]}" if len(currencies) == 1 else ""
    return f"{value:,.2f}{unit}"


def kpi_lines(kpis: Kpis, currencies: Sequence[str]) -> list[tuple[str, str, str]]:
    """(name, value, counts) rows, as the table and the HTML page show them."""
    spread = kpis.time_to_first_text
    per_missed = kpis.revenue_per_missed_call.value
    return [
        ("inbound calls", str(kpis.inbound_calls), ""),
        ("missed calls", str(kpis.missed_calls), ""),
        ("missed-call rate", _percent(kpis.missed_call_rate),
         f"{kpis.missed_calls} missed / {kpis.inbound_calls} inbound calls"),
        ("contactability", _percent(kpis.contactability),
         f"{_count(kpis.contactability.numerator)} mobile / {kpis.missed_calls} missed calls"),
        ("auto-text send rate", _percent(kpis.send_rate),
         f"{_count(kpis.send_rate.numerator)} sent / {kpis.send_rate.denominator} textable "
         f"missed calls ({kpis.texts_pending} pending, {kpis.texts_not_sent} failed or "
         "expired)"),
        ("delivery rate", _percent(kpis.delivery_rate),
         f"{_count(kpis.delivery_rate.numerator)} delivered / "
         f"{kpis.delivery_rate.denominator} sent texts"),
        ("time to first text", f"p50 {_seconds(spread.p50)}",
         f"p90 {_seconds(spread.p90)} ({spread.count} sent texts)"),
        ("reply rate", _percent(kpis.reply_rate),
         f"{_count(kpis.reply_rate.numerator)} replied / {kpis.texted_callers} texted callers"),
        ("opt-out rate", _percent(kpis.opt_out_rate),
         f"{_count(kpis.opt_out_rate.numerator)} opted out / {kpis.texted_callers} texted "
         "callers"),
        ("call-back reach rate", "n/a" if kpis.callback_reach_rate is None
         else _percent(kpis.callback_reach_rate),
         f"{_count(kpis.callback_reach_rate.numerator)} reached / "
         f"{kpis.callback_reach_rate.denominator} campaigns ended"
         if kpis.callback_reach_rate is not None else "no group has call-backs"),
        ("bookings", str(kpis.bookings), f"worth {_money(kpis.revenue, currencies)}"),
        ("revenue per missed call", "n/a" if per_missed is None
         else _money(per_missed, currencies),
         f"{_money(kpis.revenue, currencies)} / {kpis.missed_calls} missed calls"),
        ("booking rate", _percent(kpis.booking_rate),
         f"{_count(kpis.booking_rate.numerator)} booked / {kpis.texted_callers} texted "
         "callers"),
    ]


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}%"


def arm_lines(test: AbTest) -> list[tuple[str, ...]]:
    """The A/B table: a header and one row per variant (the control first)."""
    rows: list[tuple[str, ...]] = [("variant", "texts", "texted callers", "reply rate",
                                    "lift", "p", "booking rate", "lift", "p", "verdict")]
    for arm in test.arms:
        control = arm.variant == test.control
        name = arm.variant if arm.variant == "control" or not control else (
            f"{arm.variant} (control)")
        rows.append((
            name, str(arm.texts), str(arm.texted_callers),
            f"{_percent(arm.reply_rate)} ({_count(arm.reply_rate.numerator)}/"
            f"{arm.reply_rate.denominator})",
            "" if control else _signed(arm.reply_lift),
            "" if control else _p_cell(arm.reply_test),
            f"{_percent(arm.booking_rate)} ({_count(arm.booking_rate.numerator)}/"
            f"{arm.booking_rate.denominator})",
            "" if control else _signed(arm.booking_lift),
            "" if control else _p_cell(arm.booking_test),
            arm.verdict))
    return rows


def _p_cell(test: ZTest | None) -> str:
    return "n/a" if test is None else format_p(test.p_value).removeprefix("p=")


def as_table(report: Report, out: TextIO) -> None:
    scope = f" (group {report.group})" if report.group else ""
    print(f"mcdaemon report{scope}: calls ended {local_iso(report.since, report.timezone)} to "
          f"{local_iso(report.until, report.timezone)} ({report.timezone})", file=out)
    sections = [("overall", report.overall)] if report.group is None else []
    sections += [(f"group {name}", kpis) for name, kpis in report.groups.items()]
    for title, kpis in sections:
        print(f"\n== {title}", file=out)
        for name, value, counts in kpi_lines(kpis, report.currencies):
            print(f"   {name:<24} {value:>9}   {counts}".rstrip(), file=out)
    if len(report.currencies) > 1:
        print(f"\nnote: bookings in several currencies ({', '.join(report.currencies)}) are "
              "summed as they are", file=out)
    if report.unattributed_bookings:
        print(f"\n{report.unattributed_bookings} booking(s) in this period could not be "
              "attributed to a texted missed call", file=out)
    if report.unmatched_receipts:
        print(f"\n{report.unmatched_receipts} delivery receipt(s) in this period matched no "
              f"text ({report.ambiguous_receipts} named more than one); see docs/receipts.md",
              file=out)
    for test in report.ab_tests:
        print(f"\n== A/B test: group {test.group}, template {test.template}", file=out)
        rows = arm_lines(test)
        widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]) - 1)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            print("   " + "  ".join([*cells, row[-1]]).rstrip(), file=out)


def _csv_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def as_csv(report: Report, out: TextIO) -> None:
    """One row per number: scope, kpi, value, numerator, denominator, note. Rates are
    fractions (0.25), times seconds, n/a where a denominator is zero."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("scope", "kpi", "value", "numerator", "denominator", "note"))
    scopes = [("overall", report.overall), *report.groups.items()]
    for scope, kpis in scopes:
        for name, data in kpis.as_dict().items():
            if isinstance(data, dict) and "value" in data:
                writer.writerow((scope, name, _csv_value(data["value"]),
                                 _count(data["numerator"]), data["denominator"], ""))
            elif name == "time_to_first_text":
                for key in ("p50_seconds", "p90_seconds"):
                    writer.writerow((scope, f"time_to_first_text_{key}",
                                     _csv_value(data[key]), "", data["count"], ""))
            elif data is None:
                writer.writerow((scope, name, "n/a", "", "", "no group has call-backs"))
            else:
                writer.writerow((scope, name, _csv_value(data), "", "", ""))
    for test in report.ab_tests:
        for arm in test.arms:
            scope = f"ab:{test.group}/{test.template}/{arm.variant}"
            note = "control" if arm.variant == test.control else arm.verdict
            for name, ratio, test_result, change in (
                    ("reply_rate", arm.reply_rate, arm.reply_test, arm.reply_lift),
                    ("booking_rate", arm.booking_rate, arm.booking_test, arm.booking_lift)):
                writer.writerow((scope, name, _csv_value(ratio.value), _count(ratio.numerator),
                                 ratio.denominator, note))
                if arm.variant != test.control:
                    writer.writerow((scope, f"{name}_lift", _csv_value(change), "", "", ""))
                    writer.writerow((scope, f"{name}_p_value", _csv_value(
                        None if test_result is None else test_result.p_value), "", "", ""))


def as_json(report: Report, out: TextIO) -> None:
    json.dump(report.as_dict(), out, indent=2)
    out.write("\n")
