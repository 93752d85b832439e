"""What `mcdaemon report` reads, and the bookings `mcdaemon record-booking` adds.

The report never holds the window's rows: the store aggregates what can be counted in SQL
(`report_counts`: calls, texts and bookings by group key, missed calls by quarter hour), and
streams what is decided per caller (`report_callers`: each texted caller's sent texts, replies
and opt-outs, one caller at a time, merged from three queries ordered by number). `report.kpis`
turns both into the KPIs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import structlog

from mcdaemon.core.records import MISSED_OUTCOMES
from mcdaemon.store.receipts import Receipts
from mcdaemon.store.schema import _quoted

log = structlog.get_logger("mcdaemon.store")

#: states of a first text the SMSC took ("sent")
_SENT = _quoted(("submitted", "delivered", "undeliverable", "unknown"))
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
    booked: bool  # a booking (recorded since the window began) is attributed to its call


@dataclass(slots=True)
class CallerHistory:
    """One texted caller: their sent texts of the window (by time), and their texts to us
    and opt-outs since the window began (by time)."""

    number: str
    texts: list[SentText] = field(default_factory=list)
    inbound: list[tuple[str, float]] = field(default_factory=list)  # (text, at)
    opt_outs: list[float] = field(default_factory=list)


_CALLER_TEXTS = (
    "SELECT m.destination, m.pbx, m.call_id, m.submitted_at, c.ended, m.variant, c.template,"
    " c.decision_group, c.did, c.grp, {booked}"
    " FROM messages AS m JOIN calls AS c ON c.pbx = m.pbx AND c.call_id = m.call_id"
    f" WHERE m.kind = 'first' AND m.state IN ({_SENT}) AND m.submitted_at IS NOT NULL"
    " AND c.ended >= ? AND c.ended <= ? ORDER BY m.destination, m.submitted_at, m.id")
_BOOKED = ("CASE WHEN EXISTS (SELECT 1 FROM bookings AS b WHERE b.pbx = m.pbx"
           " AND b.call_id = m.call_id AND b.at >= ?) THEN 1 ELSE 0 END")


class ReportQueries(Receipts):
    """What `mcdaemon report` reads: aggregates and one caller at a time."""

    async def report_counts(self, since: float, until: float) -> dict[str, list[Any]]:
        """The window's aggregates, as rows of plain values. Calls are those that ended in
        [since, until]; a group key is (decision_group, did, grp).

        `calls`: (key…, outcome, has a number, reason, textable, count); `texts`: their first
        texts (key…, state, submitted, count); `bookings`: attributed to missed calls of the
        window since `since` (key…, count, value); `missed`: missed calls by quarter hour
        (BUCKET) (bucket, key…, count); `currencies`: (currency) of attributed bookings since
        `since`; `unattributed`: (count) of unattributed bookings in the window; `campaigns`:
        call-back campaigns opened in the window (id, e164, grp, state, reason, created_at,
        closed_at); `receipts_unmatched`: one (unmatched, ambiguous). A table the store does
        not have yet gives no rows."""
        tables = await self.tables()
        window = (since, until)
        queries: dict[str, tuple[str, tuple[Any, ...]]] = {
            "calls": ("SELECT decision_group, did, grp, outcome, CASE WHEN caller_e164 IS NOT"
                      " NULL AND caller_e164 <> '' THEN 1 ELSE 0 END, reason, textable,"
                      " COUNT(*) FROM calls WHERE ended >= ? AND ended <= ?"
                      " GROUP BY decision_group, did, grp, outcome, 5, reason, textable",
                      window),
            "texts": ("SELECT c.decision_group, c.did, c.grp, m.state, CASE WHEN"
                      " m.submitted_at IS NOT NULL THEN 1 ELSE 0 END, COUNT(*)"
                      " FROM messages AS m JOIN calls AS c ON c.pbx = m.pbx"
                      " AND c.call_id = m.call_id WHERE m.kind = 'first' AND c.ended >= ?"
                      " AND c.ended <= ? GROUP BY c.decision_group, c.did, c.grp, m.state, 5",
                      window),
            "missed": (f"SELECT CAST(ended / {BUCKET} AS INTEGER), decision_group, did, grp,"
                       f" COUNT(*) FROM calls WHERE ended >= ? AND ended <= ? AND outcome IN"
                       f" ({_MISSED}) GROUP BY 1, decision_group, did, grp", window),
        }
        if "bookings" in tables:
            queries["bookings"] = (
                "SELECT c.decision_group, c.did, c.grp, COUNT(*), SUM(b.value) FROM bookings"
                " AS b JOIN calls AS c ON c.pbx = b.pbx AND c.call_id = b.call_id WHERE"
                f" c.ended >= ? AND c.ended <= ? AND c.outcome IN ({_MISSED}) AND b.at >= ?"
                " GROUP BY c.decision_group, c.did, c.grp", (since, until, since))
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
            found: dict[str, list[Any]] = {"bookings": [], "currencies": [],
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

        async def work() -> list[dict[str, Any]]:
            async with self._db.execute(sql, (since, until, limit, offset)) as cursor:
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]

        return await self._read(work)

    async def report_callers(self, since: float,
                             until: float) -> AsyncIterator[CallerHistory]:
        """Each caller with a sent first text of a call that ended in [since, until], one at
        a time, by number: three queries ordered by number, merged as they are read, so only
        one caller's rows are held at once."""
        params: tuple[float, ...] = (since, until)
        if "bookings" in await self.tables():
            texts_sql, params = _CALLER_TEXTS.format(booked=_BOOKED), (since, *params)
        else:  # an older store's
            texts_sql = _CALLER_TEXTS.format(booked="0")
        async with self._lock:
            texts = _stream(self._db, texts_sql, params)
            inbound = _stream(self._db, "SELECT source, text, at FROM inbound WHERE at >= ?"
                                        " ORDER BY source, at, id", (since,))
            opt_outs = _stream(self._db, "SELECT e164, at FROM opt_outs WHERE at >= ?"
                                         " ORDER BY e164", (since,))
            next_inbound = await anext(inbound, None)
            next_opt_out = await anext(opt_outs, None)
            caller: CallerHistory | None = None
            async for row in texts:
                number = str(row[0])
                if caller is not None and caller.number != number:
                    yield caller
                    caller = None
                if caller is None:
                    caller = CallerHistory(number)
                    while next_inbound is not None and str(next_inbound[0]) < number:
                        next_inbound = await anext(inbound, None)
                    while next_inbound is not None and str(next_inbound[0]) == number:
                        caller.inbound.append((str(next_inbound[1] or ""),
                                               float(next_inbound[2])))
                        next_inbound = await anext(inbound, None)
                    while next_opt_out is not None and str(next_opt_out[0]) < number:
                        next_opt_out = await anext(opt_outs, None)
                    while next_opt_out is not None and str(next_opt_out[0]) == number:
                        caller.opt_outs.append(float(next_opt_out[1]))
                        next_opt_out = await anext(opt_outs, None)
                caller.texts.append(SentText(
                    str(row[1]), str(row[2]), float(row[3]),
                    None if row[4] is None else float(row[4]), row[5], row[6], row[7],
                    row[8], row[9], bool(row[10])))
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
            _, row_id = await self._change(
                "INSERT INTO bookings (e164, value, currency, note, at, pbx, call_id,"
                " created_at) VALUES (?,?,?,?,?,?,?,?)",
                (e164, value, currency, note, at, pbx, call_id, recorded))
            return Booking(int(row_id or 0), e164, value, currency, note, at, pbx, call_id)

        return await self._transaction(work)


async def _stream(db: aiosqlite.Connection, sql: str,
                  params: Sequence[Any]) -> AsyncIterator[Any]:
    """The rows of one query, fetched `_FETCH` at a time."""
    async with db.execute(sql, params) as cursor:
        while rows := await cursor.fetchmany(_FETCH):
            for row in rows:
                yield row
