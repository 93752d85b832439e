"""What `mcdaemon report` reads, and the bookings `mcdaemon record-booking` adds.

The report never holds the window's rows: the store aggregates what can be counted in SQL
(`report_counts`: calls, texts and bookings by group key, missed calls by quarter hour), and
streams what is decided per caller (`report_callers`: each texted caller's sent texts, replies
and opt-outs, one caller at a time, merged from three queries ordered by number). `report.kpis`
turns both into the KPIs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from mcdaemon.core.records import MISSED_OUTCOMES
from mcdaemon.store.plumbing import RowCursor
from mcdaemon.store.receipts import Receipts
from mcdaemon.store.schema import TRANSITIONS, _quoted

log = structlog.get_logger("mcdaemon.store")

#: states of a first text the SMSC took ("sent")
_SENT_STATES = ("submitted", "delivered", "undeliverable", "unknown")
_UNSENT = _quoted([state for state in TRANSITIONS if state not in _SENT_STATES])
_MISSED = _quoted(sorted(str(outcome) for outcome in MISSED_OUTCOMES))
#: `report_counts`' quarter hours: every time zone's midnight falls on one
BUCKET = 900
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


@dataclass(frozen=True, slots=True)
class SentText:
    """A sent first text of a call of the report's window, with what the report groups by."""

    pbx: str
    call_id: str
    submitted_at: float
    ended: float | None
    variant: str | None
    template: str | None
    decision_group: str | None
    did: str | None
    grp: str | None
    state: str


@dataclass(slots=True)
class CallerHistory:
    """One texted caller: their sent texts of the window (by time), and their texts to us
    and opt-outs since the window began (by time)."""

    number: str
    texts: list[SentText] = field(default_factory=list)
    inbound: list[tuple[str, float]] = field(default_factory=list)  # (text, at)
    opt_outs: list[float] = field(default_factory=list)


#: read in the order of the index `messages_callers`, joined through `calls_texts`: neither
#: the texts' nor the calls' rows are read, nothing is sorted (the state is checked as read)
_CALLER_TEXTS = (
    "SELECT m.destination, m.pbx, m.call_id, m.submitted_at, c.ended, m.variant, c.template,"
    " c.decision_group, c.did, c.grp, m.state"
    " FROM messages AS m JOIN calls AS c ON c.pbx = m.pbx AND c.call_id = m.call_id"
    " WHERE m.kind = 'first' AND m.submitted_at IS NOT NULL"
    " AND c.ended >= ? AND c.ended <= ? ORDER BY m.destination{order}, m.submitted_at")


class ReportQueries(Receipts):
    """What `mcdaemon report` reads: aggregates and one caller at a time."""

    async def report_counts(self, since: float, until: float) -> dict[str, list[Any]]:
        """The window's aggregates, as rows of plain values. Calls are those that ended in
        [since, until]; a group key is (decision_group, did, grp).

        `calls`: (key…, outcome, reason, textable, count, of them with a number); `unsent`:
        their first texts not sent (key…, state, count; the sent ones, submitted, come with
        `report_callers`); `bookings`: attributed to missed calls of the window since `since`
        (key…, count, value); `booked`: the calls (pbx, call_id) with a booking since `since`;
        `missed`: missed calls by quarter hour (BUCKET) (bucket, key…, count); `currencies`:
        (currency) of attributed bookings since `since`; `unattributed`: (count) of
        unattributed bookings in the window; `campaigns`: call-back campaigns opened in the
        window (id, e164, grp, state, reason, created_at, closed_at); `receipts_unmatched`:
        one (unmatched, ambiguous). A table the store does not have yet gives no rows.

        Each reads an index: the calls' counts walk `calls_groups` in the order of their
        groups (`+ended`: not a search by time followed by a sort of every call)."""
        tables = await self.tables()
        window = (since, until)
        queries: dict[str, tuple[str, tuple[Any, ...]]] = {
            "calls": ("SELECT decision_group, did, grp, outcome, reason, textable, COUNT(*),"
                      " SUM(CASE WHEN caller_e164 IS NOT NULL AND caller_e164 <> '' THEN 1"
                      " ELSE 0 END) FROM calls WHERE +ended >= ? AND +ended <= ?"
                      " GROUP BY decision_group, did, grp, outcome, reason, textable", window),
            "unsent": ("SELECT c.decision_group, c.did, c.grp, m.state, COUNT(*)"
                       " FROM messages AS m JOIN calls AS c ON c.pbx = m.pbx"
                       " AND c.call_id = m.call_id WHERE m.kind = 'first'"
                       f" AND m.state IN ({_UNSENT})"
                       " AND c.ended >= ? AND c.ended <= ?"
                       " GROUP BY c.decision_group, c.did, c.grp, m.state", window),
            "missed": (f"SELECT {self._WHOLE.format(f'ended / {BUCKET}')}, decision_group,"
                       " did, grp,"
                       f" COUNT(*) FROM calls WHERE ended >= ? AND ended <= ? AND outcome IN"
                       f" ({_MISSED}) GROUP BY 1, decision_group, did, grp", window),
        }
        if "bookings" in tables:
            queries["bookings"] = (
                "SELECT c.decision_group, c.did, c.grp, COUNT(*), SUM(b.value) FROM bookings"
                " AS b JOIN calls AS c ON c.pbx = b.pbx AND c.call_id = b.call_id WHERE"
                f" c.ended >= ? AND c.ended <= ? AND c.outcome IN ({_MISSED}) AND b.at >= ?"
                " GROUP BY c.decision_group, c.did, c.grp", (since, until, since))
            queries["booked"] = ("SELECT DISTINCT pbx, call_id FROM bookings WHERE at >= ?"
                                 " AND call_id IS NOT NULL", (since,))
            queries["currencies"] = (
                "SELECT DISTINCT currency FROM bookings WHERE at >= ? AND pbx IS NOT NULL"
                " AND call_id IS NOT NULL AND currency IS NOT NULL AND currency <> ''"
                " ORDER BY currency", (since,))
            queries["unattributed"] = (
                "SELECT COUNT(*) FROM bookings WHERE call_id IS NULL AND at >= ? AND at <= ?",
                window)
        if "campaigns" in tables:
            queries["campaigns"] = ("SELECT id, e164, grp, state, reason, created_at, closed_at"
                                    " FROM campaigns WHERE created_at >= ? AND created_at <= ?"
                                    " ORDER BY id", window)

        async def work() -> dict[str, list[Any]]:
            found: dict[str, list[Any]] = {"bookings": [], "booked": [], "currencies": [],
                                           "unattributed": [(0,)], "campaigns": []}
            for name, (sql, params) in queries.items():
                found[name] = [tuple(row) for row in await self._rows(sql, params)]
            return found

        counts = await self._read(work)
        receipts = await self.unmatched_receipts(since, until)
        counts["receipts_unmatched"] = [(receipts["unmatched"], receipts["ambiguous"])]
        return counts

    async def report_recent(self, since: float, until: float, limit: int,
                            offset: int = 0) -> list[dict[str, Any]]:
        """Missed calls of the window, latest first (then by pbx, call_id), `limit` from
        `offset`, each with its first text's state, destination and submit time (or None)."""
        sql = ("SELECT c.pbx, c.call_id, c.caller, c.caller_e164, c.caller_name, c.outcome,"
               " c.reason, c.ended, c.decision_group, c.did, c.grp, m.state AS text_state,"
               " m.destination, m.submitted_at FROM calls AS c LEFT JOIN messages AS m"
               " ON m.pbx = c.pbx AND m.call_id = c.call_id AND m.kind = 'first'"
               f" WHERE c.ended >= ? AND c.ended <= ? AND c.outcome IN ({_MISSED})"
               " ORDER BY c.ended DESC, c.pbx, c.call_id LIMIT ? OFFSET ?")

        return await self._read(lambda: self._dict_rows(sql, (since, until, limit, offset)))

    async def report_callers(self, since: float,
                             until: float) -> AsyncIterator[CallerHistory]:
        """Each caller with a sent first text of a call that ended in [since, until], one at
        a time, by number: three queries ordered by number (the first texts through the
        index `messages_callers`), merged as they are read, so only one caller's rows are
        held at once."""
        order = self._BYTE_ORDER  # the numbers in the order Python compares them
        async with self._streaming():
            inbound = _Rows(await self._cursor(
                f"SELECT source, text, at FROM inbound WHERE at >= ?"
                f" ORDER BY source{order}, at, id", (since,)))
            opt_outs = _Rows(await self._cursor(
                f"SELECT e164, at FROM opt_outs WHERE at >= ? ORDER BY e164{order}", (since,)))
            texts = await self._cursor(_CALLER_TEXTS.format(order=order), (since, until))
            caller: CallerHistory | None = None
            while rows := await texts.fetch(_FETCH):
                for (number, pbx, call_id, submitted_at, ended, variant, template,
                     decision_group, did, grp, state) in rows:
                    if state not in _SENT_STATES:  # submitted, then failed: not sent
                        continue
                    if caller is None or caller.number != number:
                        if caller is not None:
                            yield caller
                        caller = CallerHistory(number)
                        while (row := await inbound.head(number)) is not None:
                            caller.inbound.append((str(row[1] or ""), float(row[2])))
                        while (row := await opt_outs.head(number)) is not None:
                            caller.opt_outs.append(float(row[1]))
                    caller.texts.append(SentText(pbx, call_id, submitted_at, ended, variant,
                                                 template, decision_group, did, grp, state))
            await texts.close()
            await inbound.close()
            await opt_outs.close()
            if caller is not None:
                yield caller

    async def add_booking(self, e164: str, value: float, at: float, *,
                          currency: str | None = None, note: str | None = None,
                          window: float = 30 * 86400.0, now: float | None = None) -> Booking:
        """Record a booking (a sale, an appointment) from `e164` worth `value`.

        It is attributed to the most recent texted missed call from that number: the call
        ended at most `window` seconds before `at` and its first text was submitted (or got
        further) by `at`. None found: it is kept unattributed.
        """
        recorded = time.time() if now is None else now
        sent = _quoted(("submitted", "delivered", "undeliverable", "unknown"))

        async def work() -> Booking:
            rows = await self._rows(
                "SELECT c.pbx, c.call_id FROM messages AS m JOIN calls AS c"
                " ON c.pbx = m.pbx AND c.call_id = m.call_id WHERE m.destination = ?"
                f" AND m.kind = 'first' AND m.state IN ({sent}) AND m.submitted_at <= ?"
                " AND c.ended <= ? AND c.ended >= ? ORDER BY c.ended DESC, m.id DESC LIMIT 1",
                (e164, at, at, at - window))
            pbx, call_id = (str(rows[0][0]), str(rows[0][1])) if rows else (None, None)
            row_id = await self._scalar(
                "INSERT INTO bookings (e164, value, currency, note, at, pbx, call_id,"
                " created_at) VALUES (?,?,?,?,?,?,?,?) RETURNING id",
                (e164, value, currency, note, at, pbx, call_id, recorded))
            return Booking(int(row_id or 0), e164, value, currency, note, at, pbx, call_id)

        return await self._transaction(work)


class _Rows:
    """A query's rows ordered by number, read `_FETCH` at a time as the numbers asked for
    come: `head(number)` takes the next row of that number (None: there is no more)."""

    def __init__(self, cursor: RowCursor) -> None:
        self._cursor = cursor
        self._rows: list[Any] = []
        self._at = 0
        self._done = False

    async def head(self, number: str) -> Any:
        while True:
            if self._at >= len(self._rows):
                if self._done:
                    return None
                self._rows, self._at = await self._cursor.fetch(_FETCH), 0
                self._done = not self._rows
                continue
            row = self._rows[self._at]
            if row[0] < number:  # a number without texts in the window
                self._at += 1
                continue
            if row[0] == number:
                self._at += 1
                return row
            return None

    async def close(self) -> None:
        await self._cursor.close()
