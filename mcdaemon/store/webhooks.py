"""The webhook queue: one row per event and endpoint, claimed, delivered, retried or dead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from mcdaemon.store.plumbing import Plumbing

log = structlog.get_logger("mcdaemon.store")


@dataclass(frozen=True, slots=True)
class WebhookIn:
    """One delivery to queue: an event's body for one endpoint."""

    delivery_id: str  # X-Mcdaemon-Delivery: receivers dedupe on it
    endpoint: str
    event: str
    event_key: str  # what makes the event unique (a replay queues nothing new)
    order_key: str  # one endpoint gets the events of one key in order
    body: str


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """A pending delivery, as claimed by the worker."""

    id: int
    delivery_id: str
    endpoint: str
    event: str
    body: str
    attempts: int  # made so far
    created_at: float


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What became of one attempt: `delivered`, `dead`, or `pending` again at `next_at`."""

    id: int
    state: str
    next_at: float | None = None
    error: str | None = None


class WebhookQueue(Plumbing):
    """The webhook queue."""

    async def enqueue_webhooks(self, rows: Sequence[WebhookIn], now: float) -> int:
        """Queue deliveries (one transaction); a row whose (endpoint, event_key) is already
        queued is skipped. Returns how many were new."""
        if not rows:
            return 0

        values = [(row.delivery_id, row.endpoint, row.event, row.event_key, row.order_key,
                   row.body, now, now) for row in rows]

        async def work() -> int:
            added = 0
            for start in range(0, len(values), 500):
                chunk = values[start:start + 500]
                added += len(await self._rows(
                    "INSERT INTO webhooks (delivery_id, endpoint, event, event_key, order_key,"
                    " body, next_at, created_at) VALUES "
                    + ",".join("(?,?,?,?,?,?,?,?)" for _ in chunk)
                    + " ON CONFLICT DO NOTHING RETURNING id",
                    [value for row in chunk for value in row]))
            return added

        return await self._transaction(work)

    async def claim_due_webhooks(self, now: float, limit: int,
                                 busy: Sequence[int] = ()) -> list[WebhookDelivery]:
        """Up to `limit` pending deliveries due by `now`, oldest first, leaving out `busy`
        (in flight) and any row behind an older pending one of its endpoint and order_key."""
        if limit <= 0:
            return []
        busy_ids = sorted(set(busy))
        marks = ",".join("?" * len(busy_ids))
        # the due rows are picked from `webhooks_due` first (MATERIALIZED): written as one
        # SELECT … ORDER BY id LIMIT ?, SQLite plans a walk of every row in id order (the
        # delivered ones of `store.retention.webhooks` included: 15-30 ms on a busy store,
        # the store's lock held)
        sql = ("WITH due AS MATERIALIZED (SELECT id FROM webhooks"
               " WHERE state = 'pending' AND next_at <= ?"
               + (f" AND id NOT IN ({marks})" if busy_ids else "")
               + ") SELECT id, delivery_id, endpoint, event, body, attempts, created_at"
               " FROM webhooks AS w WHERE id IN (SELECT id FROM due) AND state = 'pending'"
               " AND NOT EXISTS (SELECT 1 FROM webhooks AS e WHERE e.state = 'pending'"
               "  AND e.endpoint = w.endpoint AND e.order_key = w.order_key AND e.id < w.id)"
               " ORDER BY id LIMIT ?")
        rows = await self._read(lambda: self._rows(sql, [now, *busy_ids, limit]))
        return [WebhookDelivery(int(row[0]), str(row[1]), str(row[2]), str(row[3]),
                                str(row[4]), int(row[5]), float(row[6])) for row in rows]

    async def next_webhook_at(self, after: float) -> float | None:
        """When the earliest pending delivery due later than `after` is due (None: none)."""
        value = await self._read(lambda: self._scalar(
            "SELECT MIN(next_at) FROM webhooks WHERE state = 'pending' AND next_at > ?",
            (after,)))
        return None if value is None else float(value)

    async def settle_webhooks(self, results: Sequence[WebhookResult], now: float) -> None:
        """Record attempts in one transaction: `delivered`, `dead`, or `pending` again at
        `next_at` (a retry). Each counts one attempt; a row no longer pending is left."""
        async def work() -> None:
            await self._many(
                "UPDATE webhooks SET state = ?, attempts = attempts + 1,"
                " next_at = COALESCE(?, next_at), last_error = ?, final_at = ?"
                " WHERE id = ? AND state = 'pending'",
                [(result.state, result.next_at, result.error,
                  None if result.state == "pending" else now, result.id)
                 for result in results])

        if results:
            await self._transaction(work)

    async def mark_webhook_delivered(self, webhook_id: int, now: float) -> None:
        await self.settle_webhooks([WebhookResult(webhook_id, "delivered")], now)

    async def mark_webhook_retry(self, webhook_id: int, *, next_at: float, error: str,
                                 now: float) -> None:
        await self.settle_webhooks([WebhookResult(webhook_id, "pending", next_at, error)], now)

    async def mark_webhook_dead(self, webhook_id: int, *, error: str, now: float) -> None:
        await self.settle_webhooks([WebhookResult(webhook_id, "dead", None, error)], now)

    async def webhooks(self, *, state: str | None = None) -> list[dict[str, Any]]:
        """The queue's rows (columns by name), oldest first: for tests and inspection."""
        where = "" if state is None else " WHERE state = ?"

        return await self._read(lambda: self._dict_rows(
            f"SELECT * FROM webhooks{where} ORDER BY id", () if state is None else (state,)))
