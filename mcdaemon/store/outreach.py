"""The store's side of follow-ups and call-back campaigns (tables of migration 7).

`Outreach`, the owner of these tables' queries, composed into `Store` like the others (called
as `store.record_stop(…)`); each method runs as one transaction (or one read) through the
store's own lock (`_transaction`, `_read`), like the other owners' methods.

Idempotency: follow-ups are messages (`UNIQUE (pbx, call_id, kind, seq)`), a call starts or
joins at most one campaign (`campaign_calls`' primary key), a number has at most one open
campaign (`campaigns_open_number`, a partial unique index), an attempt is `(campaign, seq)`,
and every state change names the states it may leave, so a repeated or late event changes
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mcdaemon.core.followups import STOP_KINDS, PlannedText, cancel_detail
from mcdaemon.store.plumbing import Plumbing

#: contact_events kinds that cancel an open campaign (a reply is not a conversation)
CAMPAIGN_STOPS = frozenset({"answered_call", "agent_call"})
_LIVE = "('dialing', 'connected')"


@dataclass(frozen=True, slots=True)
class FirstText:
    """A submitted first text that has no follow-ups planned yet."""

    message_id: int
    pbx: str
    call_id: str
    destination: str
    group: str | None
    submitted_at: float
    call_ended_at: float | None


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    campaign_id: int
    seq: int
    state: str
    due_at: float
    action_id: str | None
    uniqueid: str | None
    started_at: float | None
    ended_at: float | None
    result: str | None
    detail: str | None
    e164: str
    group: str
    pbx: str


@dataclass(frozen=True, slots=True)
class Campaign:
    id: int
    e164: str
    group: str
    pbx: str
    state: str
    reason: str | None
    source_pbx: str | None
    source_call_id: str | None
    contacts: int
    created_at: float
    closed_at: float | None


@dataclass(frozen=True, slots=True)
class Stopped:
    """What one stop event ended: follow-up message ids, and campaigns (id, new state)."""

    followups: list[int]
    campaigns: list[tuple[int, str]]


_ATTEMPT_SELECT = (
    "SELECT a.id, a.campaign_id, a.seq, a.state, a.due_at, a.action_id, a.uniqueid,"
    " a.started_at, a.ended_at, a.result, a.detail, c.e164, c.grp, c.pbx"
    " FROM campaign_attempts AS a JOIN campaigns AS c ON c.id = a.campaign_id")
_CAMPAIGN_SELECT = (
    "SELECT id, e164, grp, pbx, state, reason, source_pbx, source_call_id, contacts,"
    " created_at, closed_at FROM campaigns")


def _attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(*row)


def _campaign(row: Sequence[Any]) -> Campaign:
    return Campaign(*row)


class Outreach(Plumbing):
    """Follow-ups and call-back campaigns: contact_events, campaigns, campaign_attempts,
    campaign_calls, and the follow-up messages of the outbox."""

    # ------------------------------------------------------------------ stops

    async def record_stop(self, e164: str, kind: str, at: float,
                          detail: str = "", *, campaign_done: int | None = None) -> Stopped:
        """The caller was reached (or answered): remember it, cancel the number's queued
        follow-ups and, for an answered call or an agent's call, its open campaign.
        `campaign_done`: the campaign whose own call-back reached the number (it becomes `done`)."""
        if kind not in STOP_KINDS:
            raise ValueError(f"unknown stop kind {kind!r}")

        async def work() -> Stopped:
            await self._change("INSERT INTO contact_events (e164, kind, at, detail)"
                               " VALUES (?,?,?,?)", (e164, kind, at, detail or None))
            cancelled = [int(row[0]) for row in await self._rows(
                "UPDATE messages SET state = 'failed', final_at = ?, error_detail = ?"
                " WHERE destination = ? AND kind = 'followup' AND state = 'queued'"
                " RETURNING id", (at, cancel_detail(kind), e164))]
            campaigns: list[tuple[int, str]] = []
            if campaign_done is not None:
                campaigns += await self._close_campaign(campaign_done, "done", kind, at)
            if kind in CAMPAIGN_STOPS:
                for campaign_id, in await self._rows(
                        "SELECT id FROM campaigns WHERE e164 = ? AND state = 'open'", (e164,)):
                    campaigns += await self._close_campaign(int(campaign_id), "cancelled",
                                                            kind, at)
            return Stopped(sorted(cancelled), campaigns)

        return await self._transaction(work)

    async def close_campaign(self, campaign_id: int, state: str, reason: str,
                             at: float) -> bool:
        """Close an open campaign (its scheduled attempts are cancelled); False if not open."""
        async def work() -> list[tuple[int, str]]:
            return await self._close_campaign(campaign_id, state, reason, at)

        return bool(await self._transaction(work))

    async def _close_campaign(self, campaign_id: int, state: str, reason: str,
                              at: float) -> list[tuple[int, str]]:
        changed = await self._change(
            "UPDATE campaigns SET state = ?, reason = ?, updated_at = ?, closed_at = ?"
            " WHERE id = ? AND state = 'open'", (state, reason, at, at, campaign_id))
        if not changed:
            return []
        await self._change(
            "UPDATE campaign_attempts SET state = 'cancelled', ended_at = ?, result = 'cancelled',"
            " detail = ? WHERE campaign_id = ? AND state = 'scheduled'",
            (at, f"cancelled: {STOP_KINDS.get(reason, reason)}", campaign_id))
        return [(campaign_id, state)]

    async def stop_since(self, e164: str, since: float) -> str | None:
        """The kind of the first stop event for the number at or after `since`, or None."""
        async def work() -> Any:
            return await self._scalar(
                "SELECT kind FROM contact_events WHERE e164 = ? AND at >= ? ORDER BY at, id"
                " LIMIT 1", (e164, since))

        value = await self._read(work)
        return None if value is None else str(value)

    # ------------------------------------------------------------------ follow-ups

    async def firsts_without_followups(self, since: float) -> list[FirstText]:
        """First texts submitted at or after `since` (and not undeliverable) whose follow-ups
        are not in the outbox yet: what a crash between a submit and its planning left."""
        async def work() -> list[Any]:
            return await self._rows(
                "SELECT m.id, m.pbx, m.call_id, m.destination, m.grp, m.submitted_at,"
                " m.call_ended_at FROM messages AS m WHERE m.kind = 'first'"
                " AND m.submitted_at >= ? AND m.state IN ('submitted', 'delivered', 'unknown')"
                " AND NOT EXISTS (SELECT 1 FROM messages AS f WHERE f.pbx = m.pbx"
                " AND f.call_id = m.call_id AND f.kind = 'followup') ORDER BY m.id", (since,))

        return [FirstText(int(row[0]), str(row[1]), str(row[2]), str(row[3]), row[4],
                          float(row[5]), row[6]) for row in await self._read(work)]

    async def firsts_by_ids(self, ids: Sequence[int]) -> list[FirstText]:
        """These messages, when they are submitted first texts without follow-ups yet."""
        wanted = sorted(set(ids))
        if not wanted:
            return []

        async def work() -> list[Any]:
            return await self._rows(
                "SELECT m.id, m.pbx, m.call_id, m.destination, m.grp, m.submitted_at,"
                " m.call_ended_at FROM messages AS m WHERE m.kind = 'first'"
                f" AND m.id IN ({','.join('?' * len(wanted))}) AND m.submitted_at IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM messages AS f WHERE f.pbx = m.pbx"
                " AND f.call_id = m.call_id AND f.kind = 'followup') ORDER BY m.id", wanted)

        return [FirstText(int(row[0]), str(row[1]), str(row[2]), str(row[3]), row[4],
                          float(row[5]), row[6]) for row in await self._read(work)]

    async def plan_followups(self, first: FirstText, planned: Sequence[PlannedText],
                             now: float) -> tuple[list[int], str | None]:
        """Queue the follow-ups of one first text (idempotent). If the caller was reached since
        the call ended, they are cancelled in the same transaction. Returns (ids, stop kind)."""
        since = first.call_ended_at if first.call_ended_at is not None else first.submitted_at

        async def work() -> tuple[list[int], str | None]:
            ids: list[int] = []
            for step in planned:
                row_id = await self._scalar(
                    "INSERT INTO messages (pbx, call_id, kind, seq, destination, body,"
                    " grp, variant, not_before, expires_at, call_ended_at, created_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING id",
                    (first.pbx, first.call_id, "followup", step.seq, first.destination, step.body,
                     first.group, None, step.not_before, step.expires_at, first.call_ended_at,
                     now))
                if row_id is not None:
                    ids.append(int(row_id))
            kind = await self._scalar(
                "SELECT kind FROM contact_events WHERE e164 = ? AND at >= ? ORDER BY at, id"
                " LIMIT 1", (first.destination, since))
            opted = await self._scalar("SELECT 1 FROM opt_outs WHERE e164 = ?",
                                       (first.destination,))
            if kind is None and opted:
                kind = "opt_out"
            if kind is not None and ids:
                await self._change(
                    "UPDATE messages SET state = 'failed', final_at = ?, error_detail = ?"
                    f" WHERE id IN ({','.join('?' * len(ids))}) AND state = 'queued'",
                    (now, cancel_detail(str(kind)), *ids))
            return ids, None if kind is None else str(kind)

        return await self._transaction(work)

    async def cancel_after_undeliverable(self, now: float) -> list[int]:
        """Queued follow-ups whose first text came back undeliverable: the number cannot get
        texts (or not now); the sequence stops."""
        async def work() -> list[Any]:
            return await self._rows(
                "UPDATE messages SET state = 'failed', final_at = ?, error_detail ="
                " 'cancelled: the first text was undeliverable' WHERE kind = 'followup'"
                " AND state = 'queued' AND EXISTS (SELECT 1 FROM messages AS f"
                " WHERE f.pbx = messages.pbx AND f.call_id = messages.call_id"
                " AND f.kind = 'first' AND f.state = 'undeliverable') RETURNING id", (now,))

        return sorted(int(row[0]) for row in await self._transaction(work))

    # ------------------------------------------------------------------ campaigns

    async def start_or_merge(self, *, pbx: str, call_id: str, e164: str, group: str,
                             campaign_pbx: str, first_due: float,
                             now: float) -> tuple[int, bool] | None:
        """A call asks for a call-back: open a campaign (attempt 1 due at `first_due`) or merge
        into the number's open one. (campaign id, created); None if this call was handled
        before (a replay or a restart starts nothing)."""
        async def work() -> tuple[int, bool] | None:
            taken = await self._change(
                "INSERT INTO campaign_calls (pbx, call_id, campaign_id) VALUES (?,?,0)"
                " ON CONFLICT DO NOTHING",
                (pbx, call_id))
            if not taken:
                return None
            open_id = await self._scalar(
                "SELECT id FROM campaigns WHERE e164 = ? AND state = 'open'", (e164,))
            if open_id is not None:
                await self._change("UPDATE campaigns SET contacts = contacts + 1, updated_at = ?"
                                   " WHERE id = ?", (now, open_id))
                created = False
                campaign_id = int(open_id)
            else:
                campaign_id = int(await self._scalar(
                    "INSERT INTO campaigns (e164, grp, pbx, source_pbx, source_call_id,"
                    " created_at, updated_at) VALUES (?,?,?,?,?,?,?) RETURNING id",
                    (e164, group, campaign_pbx, pbx, call_id, now, now)))
                created = True
                await self._change("INSERT INTO campaign_attempts (campaign_id, seq, due_at)"
                                   " VALUES (?,?,?)", (campaign_id, 1, first_due))
            await self._change("UPDATE campaign_calls SET campaign_id = ? WHERE pbx = ?"
                               " AND call_id = ?", (campaign_id, pbx, call_id))
            return campaign_id, created

        return await self._transaction(work)

    async def due_attempts(self, now: float, limit: int = 100) -> list[Attempt]:
        """Scheduled attempts of open campaigns due by `now`, earliest first."""
        async def work() -> list[Any]:
            return await self._rows(
                f"{_ATTEMPT_SELECT} WHERE a.state = 'scheduled' AND a.due_at <= ?"
                " AND c.state = 'open' ORDER BY a.due_at, a.id LIMIT ?", (now, limit))

        return [_attempt(row) for row in await self._read(work)]

    async def defer_attempt(self, attempt_id: int, due_at: float, detail: str) -> bool:
        async def work() -> int:
            return await self._change(
                "UPDATE campaign_attempts SET due_at = ?, detail = ? WHERE id = ?"
                " AND state = 'scheduled'", (due_at, detail, attempt_id))

        return bool(await self._transaction(work))

    async def claim_attempt(self, attempt_id: int, action_id: str, now: float,
                            max_live: int) -> bool:
        """scheduled -> dialing with its ActionID, if fewer than `max_live` attempts are in
        progress and no other attempt to the same number is (one transaction)."""
        async def work() -> bool:
            live = int(await self._scalar(
                f"SELECT COUNT(*) FROM campaign_attempts WHERE state IN {_LIVE}") or 0)
            if live >= max_live:
                return False
            busy = await self._scalar(
                "SELECT 1 FROM campaign_attempts AS a JOIN campaigns AS c ON c.id = a.campaign_id"
                f" WHERE a.state IN {_LIVE} AND c.e164 = (SELECT c2.e164 FROM campaign_attempts"
                " AS a2 JOIN campaigns AS c2 ON c2.id = a2.campaign_id WHERE a2.id = ?)",
                (attempt_id,))
            if busy:
                return False
            changed = await self._change(
                "UPDATE campaign_attempts SET state = 'dialing', action_id = ?, started_at = ?"
                " WHERE id = ? AND state = 'scheduled' AND EXISTS (SELECT 1 FROM campaigns"
                " WHERE id = campaign_attempts.campaign_id AND state = 'open')",
                (action_id, now, attempt_id))
            return bool(changed)

        return await self._transaction(work)

    async def live_count(self) -> int:
        async def work() -> Any:
            return await self._scalar(
                f"SELECT COUNT(*) FROM campaign_attempts WHERE state IN {_LIVE}")

        return int(await self._read(work) or 0)

    async def attempt_by_action(self, action_id: str) -> Attempt | None:
        async def work() -> list[Any]:
            return await self._rows(f"{_ATTEMPT_SELECT} WHERE a.action_id = ?", (action_id,))

        rows = await self._read(work)
        return _attempt(rows[0]) if rows else None

    async def live_attempts(self) -> list[Attempt]:
        async def work() -> list[Any]:
            return await self._rows(f"{_ATTEMPT_SELECT} WHERE a.state IN {_LIVE} ORDER BY a.id")

        return [_attempt(row) for row in await self._read(work)]

    async def attempts(self, campaign_id: int | None = None) -> list[Attempt]:
        where = "" if campaign_id is None else " WHERE a.campaign_id = ?"

        async def work() -> list[Any]:
            return await self._rows(f"{_ATTEMPT_SELECT}{where} ORDER BY a.id",
                                    () if campaign_id is None else (campaign_id,))

        return [_attempt(row) for row in await self._read(work)]

    async def campaigns(self) -> list[Campaign]:
        async def work() -> list[Any]:
            return await self._rows(f"{_CAMPAIGN_SELECT} ORDER BY id")

        return [_campaign(row) for row in await self._read(work)]

    async def mark_connected(self, attempt_id: int, uniqueid: str | None,
                             detail: str) -> bool:
        async def work() -> int:
            return await self._change(
                "UPDATE campaign_attempts SET state = 'connected', uniqueid = ?, detail = ?"
                " WHERE id = ? AND state = 'dialing'", (uniqueid, detail, attempt_id))

        return bool(await self._transaction(work))

    async def finish_attempt(self, attempt_id: int, result: str, now: float, detail: str,
                             next_due: float | None) -> str | None:
        """End a live attempt with `result`. `answered`: the campaign is done; otherwise the next
        attempt is scheduled at `next_due`, or (None) the campaign is exhausted. Returns what
        became of the campaign ("done", "exhausted", "next", "closed": it had been closed
        meanwhile), or None when the attempt was not live any more."""
        async def work() -> str | None:
            rows = await self._rows(
                "UPDATE campaign_attempts SET state = ?, result = ?, ended_at = ?, detail = ?"
                f" WHERE id = ? AND state IN {_LIVE} RETURNING campaign_id, seq",
                (result, result, now, detail, attempt_id))
            if not rows:
                return None
            campaign_id, seq = int(rows[0][0]), int(rows[0][1])
            if result == "answered":
                closed = await self._close_campaign(campaign_id, "done", "callback_answered", now)
                return "done" if closed else "closed"
            state = await self._scalar("SELECT state FROM campaigns WHERE id = ?", (campaign_id,))
            if state != "open":
                return "closed"
            if next_due is None:
                await self._close_campaign(campaign_id, "exhausted", "no attempt reached the "
                                           "caller", now)
                return "exhausted"
            await self._change("INSERT INTO campaign_attempts (campaign_id, seq, due_at)"
                               " VALUES (?,?,?) ON CONFLICT DO NOTHING",
                               (campaign_id, seq + 1, next_due))
            await self._change("UPDATE campaigns SET updated_at = ? WHERE id = ?",
                               (now, campaign_id))
            return "next"

        return await self._transaction(work)
