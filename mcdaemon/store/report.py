"""What `mcdaemon report` reads, and the bookings `mcdaemon record-booking` adds.

The report never holds the window's rows: the store aggregates (`report_counts`: calls and
bookings by group key, missed calls by quarter hour, the calls from the counts the database
keeps as they are recorded, the bookings from their own rows, which carry what is read of
their calls; the sent texts by A/B arm, wait and quarter hour sent, and their callers per
arm; `report_callers`: the texted callers per group and overall; each from an index in the
order it counts them), and streams the sent texts of the callers who replied, opted out or
booked, by number, with their replies and opt-outs (`report_texts`: a batch of whole
callers at a time, merged from three queries ordered by number), which `report.kpis` looks
at one by one. The three are read on connections of their own, at the same time: SQLite
counts on one core while Python follows the callers who answered on the other, and a store
not in the page cache is read in three places at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

import structlog

from mcdaemon.core.records import MISSED_OUTCOMES
from mcdaemon.store.plumbing import RowCursor
from mcdaemon.store.receipts import Receipts
from mcdaemon.store.schema import (
    BOOKED_CALL,
    BOOKED_FROM_CALL,
    CALL_BUCKET,
    NEVER_SENT_STATES,
    SENT_QUARTER,
    SENT_STATES,
    SENT_WAIT_MS,
    TEXT_DAY,
    TRANSITIONS,
    _quoted,
)

log = structlog.get_logger("mcdaemon.store")

_UNSENT = _quoted([state for state in TRANSITIONS if state not in SENT_STATES])
_NEVER_SENT = _quoted(sorted(NEVER_SENT_STATES))
_NOT_YET_SENT = _quoted(sorted(set(TRANSITIONS) - SENT_STATES - NEVER_SENT_STATES))
_MISSED = _quoted(sorted(str(outcome) for outcome in MISSED_OUTCOMES))
_NUMBER = itemgetter(0)
_DELIVERED = "CASE WHEN state = 'delivered' THEN 1 ELSE 0 END"
#: `report_counts`' quarter hours: every time zone's midnight falls on one
BUCKET = CALL_BUCKET
#: rows fetched at a time from a streamed query
_FETCH = 5000


@dataclass(frozen=True, slots=True)
class Booking:
    """A recorded booking and the call it is attributed to (pbx, call_id), if any."""

    id: int
    e164: str
    value: float
    currency: str | None
    note: str | None
    at: float
    pbx: str | None
    call_id: str | None


class SentText(NamedTuple):
    """The columns of a sent first text of a call of the report's window, as `report_texts`
    reads them from the index `messages_callers` (its rows are plain rows of these columns):
    what a caller who replied, opted out or booked is counted by, per group and A/B arm.
    What the texts and the other callers are counted by `report_counts` counts."""

    number: str  # its destination
    submitted_at: float
    group: str | None  # the group that decided to text
    template: str | None
    variant: str | None
    id: int  # the text's (`report_counts`' booked texts, `report_recent`'s text_id)


@dataclass(slots=True)
class TextBatch:
    """Sent first texts of whole callers who replied, opted out or booked, by number
    (`texts`, rows of `SentText`'s columns, each caller's by time), and the texts to us
    (text, at) and opt-outs (at) since the window began of those of the batch's numbers
    that have any, each by time."""

    texts: list[Any]
    inbound: dict[str, list[tuple[str, float]]]
    opt_outs: dict[str, list[float]]


#: the sent first texts of the calls that ended in {window}: each of the report's indexes
#: of them (`messages_callers`, `messages_sent_arms`) holds all their columns it reads, so
#: the texts' rows are not read (`NOT IN`: a condition on the state that no index can
#: serve, so SQLite keeps reading in the index's order)
_SENT_WHERE = ("FROM messages WHERE kind = 'first' AND submitted_at IS NOT NULL"
               f" AND state NOT IN ({_UNSENT}) AND {{window}}")
#: … in [?, ?], in number order (`+`: SQLite does not seek by the call's end through
#: `messages_first_ended`, which has none of the other columns, for every text of a year)
_SENT_IN_WINDOW = _SENT_WHERE.format(window="+call_ended_at >= ? AND +call_ended_at <= ?")


class _BookingReads(NamedTuple):
    """What the report reads of the bookings since ?."""

    #: those attributed to the missed calls that ended in [?, ?], by the call's group key
    #: (key…, count, value)
    counts: str
    #: the first texts (id, number) of the calls booked
    texts: str


#: from the bookings' own columns (schema 15): a year's bookings are a small table
_BOOKINGS = _BookingReads(
    "SELECT call_decision_group, call_did, call_grp, COUNT(*), SUM(value) FROM bookings"
    f" WHERE at >= ? AND call_ended >= ? AND call_ended <= ? AND call_outcome IN ({_MISSED})"
    " GROUP BY call_decision_group, call_did, call_grp",
    "SELECT DISTINCT text_id AS id, e164 AS number FROM bookings WHERE at >= ?"
    " AND text_id IS NOT NULL")
#: … in a store older than schema 15 (read as it is), from the bookings to their calls and
#: texts (`CROSS JOIN`: SQLite keeps that order, not a walk of every call of the window or
#: every text looking for a booking)
_BOOKINGS_JOINED = _BookingReads(
    "SELECT c.decision_group, c.did, c.grp, COUNT(*), SUM(b.value) FROM bookings AS b"
    " CROSS JOIN calls AS c WHERE b.at >= ? AND c.pbx = b.pbx AND c.call_id = b.call_id"
    f" AND c.ended >= ? AND c.ended <= ? AND c.outcome IN ({_MISSED})"
    " GROUP BY c.decision_group, c.did, c.grp",
    "SELECT DISTINCT m.id AS id, m.destination AS number FROM bookings AS b"
    " CROSS JOIN messages AS m"
    " WHERE b.at >= ? AND m.pbx = b.pbx AND m.call_id = b.call_id AND m.kind = 'first'"
    " AND b.call_id IS NOT NULL")
#: the numbers who texted us or opted out since ? (the window's start), and booked since ?
#: (the numbers of `_BookingReads.texts`); their sent texts are read by number from
#: `messages_callers`
_ANSWERED = ("SELECT source FROM inbound WHERE at >= ? UNION SELECT e164 FROM opt_outs"
             " WHERE at >= ?")
_CALLER_TEXTS = ("SELECT destination, submitted_at, grp, {template}, variant, id"
                 f" {_SENT_IN_WINDOW} AND destination IN ({{answered}})"
                 " ORDER BY destination{order}, submitted_at")
#: the template of a store older than schema 11 (read as it is): its call's
_CALL_TEMPLATE = ("(SELECT c.template FROM calls AS c WHERE c.pbx = messages.pbx"
                  " AND c.call_id = messages.call_id)")


def _total(column: str) -> str:
    """SUM of an integer column as an integer (PostgreSQL's SUM of a BIGINT is NUMERIC)."""
    return f"CAST(SUM({column}) AS BIGINT)"


class ReportQueries(Receipts):
    """What `mcdaemon report` reads: aggregates, and the texts a batch of callers at a time."""

    async def report_counts(self, since: float, until: float) -> dict[str, list[Any]]:
        """The window's aggregates, as rows of plain values, but its texted callers
        (`report_callers`). Calls are those that ended in [since, until]; a group key is
        (decision_group, did, grp).

        `calls`: (key…, outcome, reason, textable, count, of them with a number); `unsent`:
        their first texts not sent (key…, state, count; a text's key is (its group, None,
        None)); the sent ones by `texts` (group, template, variant, count, of them
        delivered, their callers: distinct numbers), `waits` (group, milliseconds from the
        call's end to the submit, count) and `text_buckets` (quarter hour sent, group,
        count); `bookings`: attributed to missed
        calls of the window since `since` (key…, count, value); `missed`: missed calls by
        quarter hour (BUCKET) (bucket, key…, count); `currencies`: (currency) of attributed
        bookings since `since`; `unattributed`: (count) of unattributed bookings in the
        window; `campaigns`: call-back campaigns opened in the window (id, e164, grp, state,
        reason, created_at, closed_at); `receipts_unmatched`: one (unmatched, ambiguous). A
        table the store does not have yet gives no rows.

        The calls are counted from `call_counts` (schema 12), which the database keeps per
        quarter hour as calls are recorded and removed: a year is some 200,000 of its rows,
        not 3.6 million calls; only the calls of the window's two partial quarter hours
        are read one by one. The sent texts' waits and quarter hours likewise, from
        `text_waits` and `text_counts` (schema 14) per day of the call's end."""
        tables = await self.tables()
        window = (since, until)
        queries: dict[str, list[tuple[str, tuple[Any, ...]]]] = {
            # those never sent from their own index (`messages_unsent`, schema 15: the
            # same IN list, or SQLite does not see the index applies); the few queued or
            # sending now by their state
            "unsent": [("SELECT grp, NULL, NULL, state, COUNT(*) FROM messages"
                        f" WHERE kind = 'first' AND state IN ({states})"
                        " AND call_ended_at >= ? AND call_ended_at <= ?"
                        " GROUP BY grp, state", window)
                       for states in (_NEVER_SENT, _NOT_YET_SENT)]}
        queries.update(await self._sent_text_queries(since, until, tables))
        if "call_counts" in tables:
            queries.update(self._call_count_queries(since, until))
        else:  # a store older than schema 12, read as it is: every call of the window
            queries.update(self._call_queries("ended >= ? AND ended <= ?", window))
        if "bookings" in tables:
            queries["bookings"] = [((await self._booking_reads()).counts,
                                    (since, since, until))]
            queries["currencies"] = [(
                "SELECT DISTINCT currency FROM bookings WHERE at >= ? AND pbx IS NOT NULL"
                " AND call_id IS NOT NULL AND currency IS NOT NULL AND currency <> ''"
                " ORDER BY currency", (since,))]
            queries["unattributed"] = [(
                "SELECT COUNT(*) FROM bookings WHERE call_id IS NULL AND at >= ? AND at <= ?",
                window)]
        if "campaigns" in tables:
            queries["campaigns"] = [("SELECT id, e164, grp, state, reason, created_at,"
                                     " closed_at FROM campaigns WHERE created_at >= ?"
                                     " AND created_at <= ? ORDER BY id", window)]

        async def work() -> dict[str, list[Any]]:
            found: dict[str, list[Any]] = {"bookings": [], "currencies": [],
                                           "unattributed": [(0,)], "campaigns": []}
            for name, parts in queries.items():
                found[name] = [tuple(row) for sql, params in parts
                               for row in await self._rows(sql, params)]
            return found

        counts = await self._read(work)
        receipts = await self.unmatched_receipts(since, until)
        counts["receipts_unmatched"] = [(receipts["unmatched"], receipts["ambiguous"])]
        return counts

    async def report_callers(self, since: float, until: float,
                             groups: Sequence[str | None] | None = None
                             ) -> dict[str, list[Any]]:
        """The texted callers (distinct numbers) of the sent first texts of the calls that
        ended in [since, until]: `callers` per group (group, count) and `all_callers`
        (count: of the texts of `groups` only, if given; None there: the texts without a
        group). Each a distinct run of `messages_callers` (schema 13): a caller's texts by
        group, read in its order, not sorted. Apart from `report_counts` so that the two
        may be read on connections of their own at once: cold, each reads its own index
        of some 100 MB a year."""
        window = (since, until)
        scope: str = ""
        scoped: tuple[str, ...] = ()
        if groups is not None:  # an expression of `grp`: read in number order still, not
            # by an index of the group (then every caller of the group sorted)
            scoped = tuple(sorted({group or "" for group in groups}))
            scope = (f" AND COALESCE(grp, '') IN ({', '.join('?' * len(scoped))})"
                     if scoped else " AND FALSE")
        queries = {
            "callers": ("SELECT grp, COUNT(*) FROM (SELECT DISTINCT destination, grp"
                        f" {_SENT_IN_WINDOW}) AS texted GROUP BY grp", window),
            "all_callers": ("SELECT COUNT(*) FROM (SELECT DISTINCT destination"
                            f" {_SENT_IN_WINDOW}{scope}) AS texted", window + scoped)}

        async def work() -> dict[str, list[Any]]:
            return {name: [tuple(row) for row in await self._rows(sql, params)]
                    for name, (sql, params) in queries.items()}

        return await self._read(work)

    async def _sent_text_queries(self, since: float, until: float, tables: set[str]
                                 ) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
        """`texts`, `waits` and `text_buckets` of [since, until]. The waits and quarter
        hours are read from `text_waits` and `text_counts` (schema 14) for the window's
        whole days, from the texts of its two partial days one by one; the texts and
        callers per arm from an index in the order counted (schema 13), not by a sort."""
        template = await self._template_of_text()
        window = (since, until)
        first, last = math.ceil(since / TEXT_DAY), math.floor(until / TEXT_DAY)
        if "text_counts" in tables and first < last:
            queries = self._text_count_queries(first, last)
            # each partial day by its own range: SQLite seeks a lone range through
            # `messages_first_ended`, where an OR of two it would rather scan
            for ends, params in (("<", (since, first * TEXT_DAY)),
                                 ("<=", (last * TEXT_DAY, until))):
                edge = _SENT_WHERE.format(
                    window=f"call_ended_at >= ? AND call_ended_at {ends} ?")
                for name, parts in self._text_queries(edge, params).items():
                    queries[name] += parts
        else:  # a window of less than a day, or a store older than schema 14
            queries = self._text_queries(_SENT_IN_WINDOW, window)
        queries.update({
            "texts": [(f"SELECT grp, {template}, variant, COUNT(*),"
                       f" {_total(_DELIVERED)}, COUNT(DISTINCT destination) {_SENT_IN_WINDOW}"
                       " GROUP BY 1, 2, 3", window)]})
        return queries

    @staticmethod
    def _text_count_queries(first: int, last: int
                            ) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
        """`waits` and `text_buckets` of the texts of the calls that ended in the days
        [first, last), from `text_waits` and `text_counts`."""
        days = (first, last)
        return {
            "waits": [(f"SELECT NULLIF(grp, ''), wait_ms, {_total('texts')} FROM text_waits"
                       " WHERE day >= ? AND day < ? GROUP BY grp, wait_ms", days)],
            "text_buckets": [(f"SELECT quarter, NULLIF(grp, ''), {_total('texts')}"
                              " FROM text_counts WHERE day >= ? AND day < ?"
                              " GROUP BY quarter, grp", days)]}

    def _text_queries(self, sent: str, params: tuple[Any, ...]
                      ) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
        """`waits` and `text_buckets` counted from the sent first texts `sent` (a FROM …
        WHERE) one by one."""
        whole = self._WHOLE
        return {
            "waits": [(f"SELECT grp, {whole.format(SENT_WAIT_MS)}, COUNT(*) {sent}"
                       " GROUP BY 1, 2", params)],
            "text_buckets": [(f"SELECT {whole.format(SENT_QUARTER)}, grp, COUNT(*) {sent}"
                              " GROUP BY 1, 2", params)]}

    def _call_count_queries(self, since: float, until: float
                            ) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
        """`calls` and `missed` of [since, until]: the quarter hours wholly inside from
        `call_counts`, the calls of the two partial ones at its ends (minutes) one by one."""
        first, last = math.ceil(since / CALL_BUCKET), math.floor(until / CALL_BUCKET)
        if first >= last:  # no whole quarter hour: every call of the window
            return self._call_queries("ended >= ? AND ended <= ?", (since, until))
        key = "NULLIF(decision_group, ''), NULLIF(did, ''), NULLIF(grp, '')"
        whole = (first, last)
        counted = {
            "calls": [(f"SELECT {key}, outcome, reason, textable, {_total('calls')},"
                       f" {_total('numbered')}"
                       " FROM call_counts WHERE bucket >= ? AND bucket < ?"
                       " GROUP BY decision_group, did, grp, outcome, reason, textable",
                       whole)],
            "missed": [(f"SELECT bucket, {key}, {_total('calls')} FROM call_counts"
                        f" WHERE bucket >= ? AND bucket < ? AND outcome IN ({_MISSED})"
                        " GROUP BY bucket, decision_group, did, grp", whole)]}
        edges = self._call_queries(
            "((ended >= ? AND ended < ?) OR (ended >= ? AND ended <= ?))",
            (since, first * CALL_BUCKET, last * CALL_BUCKET, until))
        return {name: counted[name] + edges[name] for name in counted}

    def _call_queries(self, window: str, params: tuple[Any, ...]
                      ) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
        """`calls` and `missed` counted from the calls whose `ended` meets `window`."""
        return {
            "calls": [("SELECT decision_group, did, grp, outcome, reason, textable, COUNT(*),"
                       " SUM(CASE WHEN caller_e164 IS NOT NULL AND caller_e164 <> '' THEN 1"
                       f" ELSE 0 END) FROM calls WHERE {window}"
                       " GROUP BY decision_group, did, grp, outcome, reason, textable", params)],
            "missed": [(f"SELECT {self._WHOLE.format(f'ended / {BUCKET}')}, decision_group,"
                        f" did, grp, COUNT(*) FROM calls WHERE {window} AND outcome IN"
                        f" ({_MISSED}) GROUP BY 1, decision_group, did, grp", params)]}

    async def _template_of_text(self) -> str:
        """A first text's template: its column, or in a store older than schema 11 (read
        as it is) its call's."""
        columns = await self._read(lambda: self._columns("messages"))
        return "template" if "template" in columns else _CALL_TEMPLATE

    async def _booking_reads(self) -> _BookingReads:
        """The bookings' reads this store answers: from their own columns, or in a store
        older than schema 15 (read as it is) by joins."""
        columns = await self._read(lambda: self._columns("bookings"))
        return _BOOKINGS if "text_id" in columns else _BOOKINGS_JOINED

    async def report_booked(self, since: float) -> list[tuple[int, str]]:
        """The first texts (id, number) of the calls with a booking since `since`."""
        if "bookings" not in await self.tables():
            return []
        sql = (await self._booking_reads()).texts
        rows = await self._read(lambda: self._rows(sql, (since,)))
        return [(int(row[0]), str(row[1])) for row in rows]

    async def report_recent(self, since: float, until: float, limit: int,
                            offset: int = 0) -> list[dict[str, Any]]:
        """Missed calls of the window, latest first (then by pbx, call_id), `limit` from
        `offset`, each with its first text's state, destination, submit time and id (or None)."""
        sql = ("SELECT c.pbx, c.call_id, c.caller, c.caller_e164, c.caller_name, c.outcome,"
               " c.reason, c.ended, c.decision_group, c.did, c.grp, m.state AS text_state,"
               " m.destination, m.submitted_at, m.id AS text_id FROM calls AS c"
               " LEFT JOIN messages AS m ON m.pbx = c.pbx AND m.call_id = c.call_id"
               " AND m.kind = 'first'"
               f" WHERE c.ended >= ? AND c.ended <= ? AND c.outcome IN ({_MISSED})"
               " ORDER BY c.ended DESC, c.pbx, c.call_id LIMIT ? OFFSET ?")

        return await self._read(lambda: self._dict_rows(sql, (since, until, limit, offset)))

    async def report_texts(self, since: float, until: float) -> AsyncIterator[TextBatch]:
        """The sent first texts of the calls that ended in [since, until] to the numbers
        that texted us or opted out since `since`, or booked since then, by number, a batch
        of whole callers at a time, with their texts to us and opt-outs: three queries
        ordered by number (the texts through the index `messages_callers`), merged as they
        are read, so only a batch of rows is held at once. The next batch of texts is read
        while this one is used."""
        order = self._BYTE_ORDER  # the numbers in the order Python compares them
        answered, params = _ANSWERED, [since, until, since, since]
        if "bookings" in await self.tables():
            booked = (await self._booking_reads()).texts
            answered = f"{answered} UNION SELECT number FROM ({booked}) AS booked"
            params = [*params, since]
        sql = _CALLER_TEXTS.format(order=order, template=await self._template_of_text(),
                                   answered=answered)
        async with self._streaming():
            inbound = _Rows(await self._cursor(
                f"SELECT source, text, at FROM inbound WHERE at >= ?"
                f" ORDER BY source{order}, at, id", (since,)))
            opt_outs = _Rows(await self._cursor(
                f"SELECT e164, at FROM opt_outs WHERE at >= ? ORDER BY e164{order}, at",
                (since,)))
            texts = await self._cursor(sql, params)
            held: list[Any] = []  # the last number's texts, which may go on in the next rows
            rows = await texts.fetch(_FETCH)
            while True:
                batch = held + rows
                cut = len(batch)
                if rows:  # hold back the last number's rows
                    while cut > 0 and batch[cut - 1][0] == batch[-1][0]:
                        cut -= 1
                ready, held = batch[:cut], batch[cut:]
                if ready:
                    last = ready[-1][0]
                    await inbound.read_through(last)
                    await opt_outs.read_through(last)
                    texted = set(map(_NUMBER, ready))
                    replies = {number: [(str(text or ""), float(at)) for _, text, at in found]
                               for number, found in inbound.take_through(last).items()
                               if number in texted}
                    stops = {number: [float(at) for _, at in found]
                             for number, found in opt_outs.take_through(last).items()
                             if number in texted}
                if not rows:
                    if ready:
                        yield TextBatch(ready, replies, stops)
                    break
                # the connection is free until the next rows are taken: it reads them
                upcoming = asyncio.ensure_future(texts.fetch(_FETCH))
                try:
                    if ready:
                        yield TextBatch(ready, replies, stops)
                    rows = await upcoming
                except BaseException:
                    upcoming.cancel()
                    raise
            await texts.close()
            await inbound.close()
            await opt_outs.close()

    async def add_booking(self, e164: str, value: float, at: float, *,
                          currency: str | None = None, note: str | None = None,
                          window: float = 30 * 86400.0, now: float | None = None) -> Booking:
        """Record a booking (a sale, an appointment) from `e164` worth `value`.

        It is attributed to the most recent texted missed call from that number: the call
        ended at most `window` seconds before `at` and its first text was submitted (or got
        further) by `at`. None found: it is kept unattributed.
        """
        recorded = time.time() if now is None else now
        sent = _quoted(sorted(SENT_STATES))

        async def work() -> Booking:
            # the call (pbx, call_id), what the report reads of it, and its first text's id
            rows = await self._rows(
                f"SELECT c.pbx, c.call_id, {BOOKED_FROM_CALL}, m.id FROM messages AS m"
                " JOIN calls AS c ON c.pbx = m.pbx AND c.call_id = m.call_id"
                f" WHERE m.destination = ? AND m.kind = 'first' AND m.state IN ({sent})"
                " AND m.submitted_at <= ? AND c.ended <= ? AND c.ended >= ?"
                " ORDER BY c.ended DESC, m.id DESC LIMIT 1",
                (e164, at, at, at - window))
            call = tuple(rows[0]) if rows else (None,) * 8
            row_id = await self._scalar(
                "INSERT INTO bookings (e164, value, currency, note, at, created_at, pbx,"
                f" call_id, {BOOKED_CALL}, text_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " RETURNING id", (e164, value, currency, note, at, recorded, *call))
            pbx, call_id = (None, None) if call[0] is None else (str(call[0]), str(call[1]))
            return Booking(int(row_id or 0), e164, value, currency, note, at, pbx, call_id)

        return await self._transaction(work)


class _Rows:
    """A query's rows ordered by number, read `_FETCH` at a time as far as the numbers
    asked for next (`read_through`), then taken (`take_through`)."""

    def __init__(self, cursor: RowCursor) -> None:
        self._cursor = cursor
        self._rows: list[Any] = []
        self._done = False

    async def read_through(self, number: str) -> None:
        """Read until a row after `number` is held, or there are no more."""
        while not self._done and (not self._rows or self._rows[-1][0] <= number):
            more = await self._cursor.fetch(_FETCH)
            self._done = not more
            self._rows += more

    def take_through(self, number: str) -> dict[str, list[Any]]:
        """The rows held up to `number`, by number (read through it first)."""
        taken: dict[str, list[Any]] = {}
        rows, at = self._rows, 0
        while at < len(rows) and rows[at][0] <= number:
            taken.setdefault(rows[at][0], []).append(rows[at])
            at += 1
        del rows[:at]
        return taken

    async def close(self) -> None:
        await self._cursor.close()
