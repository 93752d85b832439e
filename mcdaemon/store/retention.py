"""Retention: history older than `store.retention` is removed, oldest first, in batches.

What is never removed: opt-outs (an opt-out holds for ever: the number and when), texts still
queued or being sent, webhook deliveries still pending, open call-back campaigns, contacts.

References are never left dangling: a text goes with its parts and the receipts matched to
it; a call goes only once none of its texts, bookings or campaign links is left (its texts
are created after it ended, so they come due after it); a campaign goes with its attempts
and its links to calls. Each kind is one short transaction of at most `limit` rows of its
main table, found through an index on its time, so a decision never waits long behind it
(`pipeline/retention.py` runs the steps; `tests/store/test_sqlite_query_plans.py` checks the
indexes).

The report's figures for a window inside the retention stay what they were: a call and its
texts leave together, and replies, receipts and campaigns of the window are kept as long.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcdaemon.config.model import RetentionConfig
from mcdaemon.store.plumbing import Plumbing

#: dead webhook deliveries are kept at least this long, whatever store.retention.webhooks
DEAD_WEBHOOKS_KEPT = 30 * 86400.0

#: per table: the column that says when a row happened (its age), for `history`
_TIME_COLUMNS: dict[str, str | None] = {
    "calls": "ended", "messages": "created_at", "message_parts": None, "receipts": "at",
    "inbound": "at", "opt_outs": "at", "bookings": "at", "webhooks": "created_at",
    "contact_events": "at", "campaigns": "created_at", "campaign_attempts": "due_at",
    "campaign_calls": None, "contacts": "updated_at",
}

#: texts in these states are still to be sent: never removed
_UNSENT = "('queued', 'sending')"


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


class Retention(Plumbing):
    """Removing history past its retention, and what `mcdaemon store info` shows of it."""

    async def prune_step(self, retention: RetentionConfig, now: float,
                         limit: int = 500) -> dict[str, int]:
        """Remove up to `limit` rows of each kind past its retention, one transaction per
        kind; the rows removed per table (a table left out: none)."""
        removed: dict[str, int] = {}
        for step in (self._prune_receipts, self._prune_replies, self._prune_webhooks,
                     self._prune_calls, self._prune_outreach):
            async def work(step: Any = step) -> dict[str, int]:
                return dict(await step(retention, now, limit))

            for table, count in (await self._transaction(work)).items():
                if count:
                    removed[table] = removed.get(table, 0) + count
        return removed

    async def _delete_ids(self, table: str, column: str, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        return await self._change(f"DELETE FROM {table} WHERE {column} IN ({_marks(ids)})",
                                  ids)

    async def _oldest_ids(self, sql: str, params: Sequence[Any]) -> list[int]:
        return [int(row[0]) for row in await self._rows(sql, params)]

    async def _prune_receipts(self, retention: RetentionConfig, now: float,
                              limit: int) -> dict[str, int]:
        ids = await self._oldest_ids("SELECT id FROM receipts WHERE at < ? ORDER BY at LIMIT ?",
                                     (now - retention.receipts, limit))
        return {"receipts": await self._delete_ids("receipts", "id", ids)}

    async def _prune_replies(self, retention: RetentionConfig, now: float,
                             limit: int) -> dict[str, int]:
        ids = await self._oldest_ids("SELECT id FROM inbound WHERE at < ? ORDER BY at LIMIT ?",
                                     (now - retention.replies, limit))
        return {"inbound": await self._delete_ids("inbound", "id", ids)}

    async def _prune_webhooks(self, retention: RetentionConfig, now: float,
                              limit: int) -> dict[str, int]:
        delivered_before = now - retention.webhooks
        dead_before = now - max(retention.webhooks, DEAD_WEBHOOKS_KEPT)
        ids = await self._oldest_ids(
            "SELECT id FROM webhooks WHERE state <> 'pending' AND final_at < ?"
            " AND (state = 'delivered' OR final_at < ?) ORDER BY final_at LIMIT ?",
            (delivered_before, dead_before, limit))
        return {"webhooks": await self._delete_ids("webhooks", "id", ids)}

    async def _prune_calls(self, retention: RetentionConfig, now: float,
                           limit: int) -> dict[str, int]:
        before = now - retention.calls
        ids = await self._oldest_ids(
            f"SELECT id FROM messages WHERE created_at < ? AND state NOT IN {_UNSENT}"
            " ORDER BY created_at LIMIT ?", (before, limit))
        removed = {"message_parts": await self._delete_ids("message_parts", "message_id", ids),
                   "receipts": await self._delete_ids("receipts", "message_id", ids),
                   "messages": await self._delete_ids("messages", "id", ids)}
        bookings = await self._oldest_ids(
            "SELECT id FROM bookings WHERE at < ? ORDER BY at LIMIT ?", (before, limit))
        removed["bookings"] = await self._delete_ids("bookings", "id", bookings)
        calls = await self._rows(
            "SELECT c.pbx, c.call_id FROM calls AS c WHERE c.ended < ?"
            " AND NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.pbx = c.pbx"
            "  AND m.call_id = c.call_id)"
            " AND NOT EXISTS (SELECT 1 FROM bookings AS b WHERE b.pbx = c.pbx"
            "  AND b.call_id = c.call_id)"
            " AND NOT EXISTS (SELECT 1 FROM campaign_calls AS k WHERE k.pbx = c.pbx"
            "  AND k.call_id = c.call_id)"
            " ORDER BY c.ended LIMIT ?", (before, limit))
        removed["calls"] = await self._change(
            "DELETE FROM calls WHERE " + " OR ".join("(pbx = ? AND call_id = ?)" for _ in calls),
            [value for key in calls for value in key]) if calls else 0
        return removed

    async def _prune_outreach(self, retention: RetentionConfig, now: float,
                              limit: int) -> dict[str, int]:
        before = now - retention.outreach
        events = await self._oldest_ids(
            "SELECT id FROM contact_events WHERE at < ? ORDER BY at LIMIT ?", (before, limit))
        campaigns = await self._oldest_ids(
            "SELECT id FROM campaigns WHERE state <> 'open' AND closed_at < ?"
            " ORDER BY closed_at LIMIT ?", (before, limit))
        return {
            "contact_events": await self._delete_ids("contact_events", "id", events),
            "campaign_attempts": await self._delete_ids("campaign_attempts", "campaign_id",
                                                        campaigns),
            "campaign_calls": await self._delete_ids("campaign_calls", "campaign_id",
                                                     campaigns),
            "campaigns": await self._delete_ids("campaigns", "id", campaigns),
        }

    async def retention_due(self, retention: RetentionConfig, now: float) -> dict[str, int]:
        """Rows past their retention, per table: what retention removes next (a call or a
        text still referenced, or not sent yet, waits)."""
        kinds = {
            "calls": ("SELECT COUNT(*) FROM calls WHERE ended < ?", now - retention.calls),
            "messages": (f"SELECT COUNT(*) FROM messages WHERE created_at < ?"
                         f" AND state NOT IN {_UNSENT}", now - retention.calls),
            "bookings": ("SELECT COUNT(*) FROM bookings WHERE at < ?", now - retention.calls),
            "receipts": ("SELECT COUNT(*) FROM receipts WHERE at < ?", now - retention.receipts),
            "inbound": ("SELECT COUNT(*) FROM inbound WHERE at < ?", now - retention.replies),
            "webhooks": ("SELECT COUNT(*) FROM webhooks WHERE state <> 'pending'"
                         " AND final_at < ? AND state = 'delivered'", now - retention.webhooks),
            "contact_events": ("SELECT COUNT(*) FROM contact_events WHERE at < ?",
                               now - retention.outreach),
            "campaigns": ("SELECT COUNT(*) FROM campaigns WHERE state <> 'open'"
                          " AND closed_at < ?", now - retention.outreach),
        }
        tables = await self.tables()

        async def work() -> dict[str, int]:
            return {table: int(await self._scalar(sql, (before,)) or 0)
                    for table, (sql, before) in kinds.items() if table in tables}

        return await self._read(work)

    async def history(self) -> dict[str, dict[str, Any]]:
        """Per table: `rows`, and the `oldest` and `newest` time of a row (epoch seconds;
        None for an empty table or one without times). Counts every row: for
        `mcdaemon store info`, not for anything periodic."""
        tables = await self.tables()

        async def work() -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            for table, column in _TIME_COLUMNS.items():
                if table not in tables:
                    continue
                times = f"MIN({column}), MAX({column})" if column else "NULL, NULL"
                rows, oldest, newest = (await self._rows(
                    f"SELECT COUNT(*), {times} FROM {table}"))[0]
                found[table] = {"rows": int(rows), "oldest": oldest, "newest": newest}
            return found

        return await self._read(work)
