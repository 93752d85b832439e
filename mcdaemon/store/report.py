"""What `mcdaemon report` reads (rows, not KPIs: `report.kpis` computes) and the bookings
`mcdaemon record-booking` adds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from mcdaemon.store.receipts import Receipts
from mcdaemon.store.schema import _quoted

log = structlog.get_logger("mcdaemon.store")


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


class ReportQueries(Receipts):
    """What `mcdaemon report` reads (rows, not KPIs."""

    async def report_rows(self, since: float, until: float) -> dict[str, list[dict[str, Any]]]:
        """What `mcdaemon report` computes from, as rows (dicts by column name).

        `calls`: calls that ended in [since, until]; `texts`: their first texts (kind
        `first`); `inbound`, `opt_outs`, `bookings`: from `since` on (a reply, an opt-out or a
        booking follows its call); `receipts_unmatched`: one row, `unmatched_receipts` of the
        period. A table the store does not have yet gives no rows.
        """
        tables = await self.tables()
        queries = {
            "calls": ("SELECT pbx, call_id, caller, caller_e164, caller_name, did, grp, outcome,"
                      " ended, partial, textable, reason, decision_group, template, variant"
                      " FROM calls WHERE ended >= ? AND ended <= ? ORDER BY ended, pbx, call_id",
                      (since, until)),
            "texts": ("SELECT m.id, m.pbx, m.call_id, m.destination, m.grp, m.variant, m.state,"
                      " m.created_at, m.submitted_at, m.final_at FROM messages AS m JOIN calls"
                      " AS c ON c.pbx = m.pbx AND c.call_id = m.call_id WHERE m.kind = 'first'"
                      " AND c.ended >= ? AND c.ended <= ? ORDER BY m.id", (since, until)),
            "inbound": ("SELECT source, text, at FROM inbound WHERE at >= ? ORDER BY at, id",
                        (since,)),
            "opt_outs": ("SELECT e164, at, keyword FROM opt_outs WHERE at >= ? ORDER BY at",
                         (since,)),
        }
        if "bookings" in tables:
            queries["bookings"] = ("SELECT id, e164, value, currency, note, at, pbx, call_id"
                                   " FROM bookings WHERE at >= ? ORDER BY at, id", (since,))
        if "campaigns" in tables:
            queries["campaigns"] = ("SELECT id, e164, grp, state, reason, created_at, closed_at"
                                    " FROM campaigns WHERE created_at >= ? AND created_at <= ?"
                                    " ORDER BY id", (since, until))

        async def work() -> dict[str, list[dict[str, Any]]]:
            result: dict[str, list[dict[str, Any]]] = {"bookings": []}
            for name, (sql, params) in queries.items():
                result[name] = await self._dict_rows(sql, params)
            return result

        rows = await self._read(work)
        # one row: the receipts of the period still unmatched, and of those the ambiguous
        rows["receipts_unmatched"] = [await self.unmatched_receipts(since, until)]
        return rows

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
