"""Calls and the outbox: a decided call and its first text in one transaction, claiming
due texts (`UPDATE … RETURNING`), the outcome of each submit, expiry and crash recovery,
and the caller's history the policy reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from mcdaemon.core.daemons import gone_pid
from mcdaemon.core.outbox import SubmitOutcome
from mcdaemon.core.records import CallRecord, Decision, PolicyView
from mcdaemon.store.receipts import Receipts
from mcdaemon.store.schema import (
    CALLER_KINDS,
    COUNTED_TEXTS,
    TRANSITIONS,
    _may_become,
    _quoted,
)

log = structlog.get_logger("mcdaemon.store")




@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One row of the outbox, as read; change it only through the Store's methods."""

    id: int
    pbx: str
    call_id: str
    kind: str
    seq: int
    destination: str
    body: str
    group: str | None
    variant: str | None
    state: str
    attempts: int
    parts: int
    not_before: float
    expires_at: float | None
    call_ended_at: float | None
    created_at: float
    sending_at: float | None
    submitted_at: float | None
    final_at: float | None
    error_code: int | None
    error_detail: str | None
    duplicate_risk: bool
    smsc_ids: tuple[str, ...] = ()


_MESSAGE_COLUMNS = ("id, pbx, call_id, kind, seq, destination, body, grp, variant, state, "
                    "attempts, parts, not_before, expires_at, call_ended_at, created_at, "
                    "sending_at, submitted_at, final_at, error_code, error_detail, "
                    "duplicate_risk, smsc_ids")


def _message(row: Sequence[Any]) -> OutboxMessage:
    values = list(row)
    values[-2] = bool(values[-2])
    values[-1] = tuple(json.loads(values[-1] or "[]"))
    return OutboxMessage(*values)


@dataclass(frozen=True, slots=True)
class NewCall:
    """One call to record: the tracker's record and the policy's decision."""

    record: CallRecord
    decision: Decision


_INSERT_CALL = (
    "INSERT INTO calls (pbx, call_id, caller, caller_e164, caller_name, did, grp,"
    " outcome, started, ended, wait_seconds, partial, record, textable, reason, detail,"
    " decision_group, template, variant, decided_at)")


_INSERT_FIRST_TEXT = (
    "INSERT INTO messages (pbx, call_id, kind, seq, destination, body, grp, variant,"
    " template, not_before, expires_at, call_ended_at, created_at, state, attempts,"
    " sending_at, owner, lease_until)")


def _last_text(number: str, counted: str) -> str:
    """When `number` (a placeholder or a column) was last texted: its newest text that
    `counted` takes, found from the newest back in `messages_destination` (a MAX reads every
    text the caller was ever sent: 17 ms for one of 7,216 on bench/history.py's year)."""
    return (f"SELECT created_at FROM messages WHERE destination = {number} AND {counted}"
            " ORDER BY created_at DESC LIMIT 1")

#: how the `record` column (json.dumps of CallRecord.as_dict) marks an adopted call and one
#: from the queue_log, for `recovered_calls`
_ADOPTED = json.dumps({"adopted": True})[1:-1]
_BACKFILLED = json.dumps({"backfilled": "true"})[1:-1]


def _call_row(call: NewCall, now: float) -> tuple[Any, ...]:
    record, decision = call.record, call.decision
    return (record.pbx, record.call_id, record.caller, record.caller_e164, record.caller_name,
            record.did, record.group, str(record.outcome), record.started, record.ended,
            record.wait_seconds, int(record.partial),
            json.dumps(record.as_dict(), ensure_ascii=False), int(decision.text),
            decision.reason, decision.detail, decision.group, decision.template,
            decision.variant, now)


def _first_text(call: NewCall, destination: str, now: float) -> tuple[tuple[Any, ...], bool]:
    """A call's first text as `_INSERT_FIRST_TEXT`'s first 13 columns, and whether it is
    due now (it may then be born claimed)."""
    record, decision = call.record, call.decision
    due = (decision.send_after is None or decision.send_after <= now) and (
        decision.expires_at is None or decision.expires_at > now)
    return (record.pbx, record.call_id, "first", 0, destination, decision.body,
            decision.group, decision.variant, decision.template,
            decision.send_after if decision.send_after is not None else now,
            decision.expires_at, record.ended, now), due


class CallsAndOutbox(Receipts):
    """Calls and the outbox."""

    async def record_call(self, record: CallRecord, decision: Decision, *, now: float,
                          destination: str | None) -> int | None:
        """Store the call and, if it is new and to be texted, its first message (one transaction).

        Returns the new message's id, or None (no text, or the call was already recorded:
        replaying a call never creates a second message).
        """
        return (await self.record_calls([NewCall(record, decision)], now=now,
                                        destinations=[destination]))[0]

    async def record_calls(self, calls: Sequence[NewCall], *, now: float,
                           destinations: Sequence[str | None]) -> list[int | None]:
        """`record_call` for many calls in one transaction (a storm of hangups, one commit)."""
        ids, _ = await self.record_calls_and_claim(calls, now=now, destinations=destinations,
                                                   claim=0)
        return ids

    async def record_calls_and_claim(
            self, calls: Sequence[NewCall], *, now: float, destinations: Sequence[str | None],
            claim: int) -> tuple[list[int | None], list[OutboxMessage]]:
        """`record_calls`, and up to `claim` of the new texts that are due now are born
        claimed (`sending`, as `claim_due` would leave them) in the same transaction: the
        sender gets them without another commit. Returns the message ids and those claimed.

        One transaction whatever the batch's size: a storm of hangups costs one commit."""
        if len(calls) != len(destinations):
            raise ValueError("record_calls needs one destination per call")
        resolved = [destination or call.decision.destination
                    for call, destination in zip(calls, destinations, strict=True)]
        for call, destination in zip(calls, resolved, strict=True):
            if call.decision.text and not (destination and call.decision.body):
                raise ValueError(f"call {call.record.pbx}/{call.record.call_id}: a decision to "
                                 "text needs a destination and a body")
        if not calls:
            return [], []
        keys = [(call.record.pbx, call.record.call_id) for call in calls]
        call_rows = [_call_row(call, now) for call in calls]
        texts = [(index, _first_text(call, destination, now))
                 for index, (call, destination) in enumerate(zip(calls, resolved, strict=True))
                 if call.decision.text and destination and call.decision.body]

        # in the order of their keys: daemons sharing a store insert the same calls in the
        # same order, so they wait for each other's rows rather than deadlock
        in_order = sorted(call_rows, key=lambda row: (row[0], row[1]))
        marks = f"({','.join('?' * len(call_rows[0]))})"

        async def work() -> tuple[list[int | None], list[OutboxMessage]]:
            # the calls this transaction inserted; a call already stored (a replay, or another
            # daemon watching the same PBX) keeps its first decision and gets no text here
            fresh: set[tuple[str, str]] = set()
            for start in range(0, len(in_order), 400):
                chunk = in_order[start:start + 400]
                fresh.update((str(pbx), str(call_id)) for pbx, call_id in await self._rows(
                    f"{_INSERT_CALL} VALUES {','.join(marks for _ in chunk)}"
                    " ON CONFLICT DO NOTHING RETURNING pbx, call_id",
                    [value for row in chunk for value in row]))
            result: list[int | None] = [None] * len(calls)
            claimed: list[OutboxMessage] = []
            left = max(0, claim)
            for index, (row, due) in texts:
                if keys[index] not in fresh:
                    continue
                fresh.discard(keys[index])  # a call twice in the batch: its first decision
                born_claimed = due and left > 0  # stands
                left -= born_claimed
                inserted = await self._rows(
                    f"{_INSERT_FIRST_TEXT} VALUES ({','.join('?' * (len(row) + 5))})"
                    f" ON CONFLICT DO NOTHING RETURNING {_MESSAGE_COLUMNS}",
                    (*row, *(("sending", 1, now, self.owner, now + self.claim_lease)
                             if born_claimed else ("queued", 0, None, None, None))))
                if inserted:
                    message = _message(inserted[0])
                    result[index] = message.id
                    if born_claimed:
                        claimed.append(message)
            return result, claimed

        return await self._transaction(work)

    async def recorded_calls(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (pbx, call id) the store holds a decided call of."""
        return await self._read(lambda: self._stored_keys(keys))

    async def _stored_keys(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Per PBX, `call_id IN (…)`: a search of the primary key per id. (A row-value
        `(pbx, call_id) IN (VALUES …)` of several rows is planned as a scan of every call:
        0.7 s a batch on a year of history.)"""
        by_pbx: dict[str, list[str]] = {}
        for pbx, call_id in keys:
            by_pbx.setdefault(pbx, []).append(call_id)
        stored: set[tuple[str, str]] = set()
        for pbx, call_ids in by_pbx.items():
            for start in range(0, len(call_ids), 500):
                chunk = call_ids[start:start + 500]
                stored.update((str(found_pbx), str(call_id)) for found_pbx, call_id in
                              await self._rows(
                                  "SELECT pbx, call_id FROM calls WHERE pbx = ? AND call_id"
                                  f" IN ({','.join('?' * len(chunk))})", [pbx, *chunk]))
        return stored

    async def _insert_message(self, *, pbx: str, call_id: str, kind: str, seq: int,
                              destination: str, body: str, group: str | None,
                              variant: str | None, now: float, not_before: float,
                              expires_at: float | None,
                              call_ended_at: float | None) -> int | None:
        row_id = await self._scalar(
            "INSERT INTO messages (pbx, call_id, kind, seq, destination, body, grp,"
            " variant, not_before, expires_at, call_ended_at, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING id",
            (pbx, call_id, kind, seq, destination, body, group, variant, not_before,
             expires_at, call_ended_at, now))
        return None if row_id is None else int(row_id)

    async def enqueue_message(self, *, pbx: str, call_id: str, kind: str, seq: int,
                              destination: str, body: str, now: float,
                              not_before: float | None, expires_at: float | None,
                              group: str | None = None, variant: str | None = None
                              ) -> int | None:
        """Queue a text that is not a call's first one (opt-out confirmation, test, follow-up).

        Idempotent on (pbx, call_id, kind, seq): returns the new id, or None if it exists.
        """
        async def work() -> int | None:
            return await self._insert_message(
                pbx=pbx, call_id=call_id, kind=kind, seq=seq, destination=destination,
                body=body, group=group, variant=variant, now=now,
                not_before=now if not_before is None else not_before, expires_at=expires_at,
                call_ended_at=None)

        return await self._transaction(work)

    async def claim_due(self, now: float, limit: int) -> list[OutboxMessage]:
        """Move up to `limit` due messages from queued to sending, atomically, and return them,
        leased to this daemon (`owner`) until `now + claim_lease` (`renew_leases` extends it).

        One statement: two claimers (tasks, processes, hosts) never get the same message.
        Texts to callers are held while `disable` is in force for all or their group.
        """
        if limit <= 0:
            return []
        # the texts to take are picked once (MATERIALIZED: PostgreSQL could otherwise run a
        # LIMITed subquery again for each row it updates, and take more than `limit`)
        sql = (
            "WITH picked AS MATERIALIZED (SELECT id FROM messages AS due"
            f"  WHERE due.{_may_become('sending')} AND due.not_before <= ?"
            "  AND (due.expires_at IS NULL OR due.expires_at > ?)"
            f"  AND (due.kind NOT IN ({_quoted(CALLER_KINDS)}) OR NOT EXISTS (SELECT 1 FROM"
            "   switches WHERE enabled = 0 AND (name = 'global' OR name = 'group:' || due.grp)))"
            f"  ORDER BY due.not_before, due.id LIMIT ?{self._SKIP_LOCKED})"
            " UPDATE messages SET state = 'sending', attempts = attempts + 1, sending_at = ?,"
            " owner = ?, lease_until = ?"
            f" WHERE {_may_become('sending')} AND id IN (SELECT id FROM picked)"
            f" RETURNING {_MESSAGE_COLUMNS}")

        async def work() -> list[Any]:
            return await self._rows(sql, (now, now, limit, now, self.owner,
                                          now + self.claim_lease))

        rows = await self._transaction(work)
        return sorted((_message(row) for row in rows), key=lambda m: (m.not_before, m.id))

    async def mark_submitted(self, message_id: int, smsc_ids: Sequence[str],
                             now: float) -> bool:
        """The SMSC took the text: record one id per part. False if the message had left
        `sending` meanwhile (its parts are still recorded: the text did go out)."""
        return (await self.record_submit_outcomes(
            [SubmitOutcome(message_id, "submitted", smsc_ids=tuple(smsc_ids))], now))[0]

    async def mark_retry(self, message_id: int, *, not_before: float, error_code: int | None,
                         detail: str, now: float, duplicate_risk: bool = False) -> bool:
        """A temporary failure: back to `queued` until `not_before`. `duplicate_risk` when the
        SMSC may have taken it anyway (a submit that timed out)."""
        return (await self.record_submit_outcomes([SubmitOutcome(
            message_id, "queued", not_before=not_before, error_code=error_code, detail=detail,
            duplicate_risk=duplicate_risk)], now))[0]

    async def mark_failed(self, message_id: int, *, error_code: int | None, detail: str,
                          now: float) -> bool:
        """A permanent failure (or giving up): final. False if the message was past that."""
        return (await self.record_submit_outcomes([SubmitOutcome(
            message_id, "failed", error_code=error_code, detail=detail)], now))[0]

    async def record_submit_outcomes(self, outcomes: Sequence[SubmitOutcome],
                                     now: float) -> list[bool]:
        """Record the results of many submits in one transaction (one commit, not one per
        text: under a storm the commits, not the SMSC, would set the pace). For each, whether
        the message moved; a message already past that state stays as it is."""
        async def work() -> list[bool]:
            return await self._record_outcomes(outcomes, now)

        moved = await self._transaction(work) if outcomes else []
        for outcome, ok in zip(outcomes, moved, strict=True):
            if not ok:
                log.warning("a submit result came for a text that had left 'sending'",
                            message_id=outcome.message_id, result=outcome.state)
        return moved

    async def _record_outcomes(self, outcomes: Sequence[SubmitOutcome],
                               now: float) -> list[bool]:
        """A few statements whatever the batch size: read the states, decide each move by
        TRANSITIONS (in order: a message twice in the batch sees its first move), write."""
        for outcome in outcomes:
            if outcome.state not in ("submitted", "queued", "failed"):
                raise ValueError(f"a submit outcome is submitted, queued or failed, not "
                                 f"{outcome.state!r}")
        wanted = sorted({outcome.message_id for outcome in outcomes})
        states: dict[int, str] = {}
        claimed_at: dict[int, float] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            for message_id, state, since in await self._rows(
                    "SELECT id, state, COALESCE(sending_at, created_at) FROM messages"
                    f" WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                states[int(message_id)] = str(state)
                claimed_at[int(message_id)] = float(since)
        moved: list[bool] = []
        submitted: list[tuple[Any, ...]] = []
        parts: list[tuple[Any, ...]] = []
        queued: list[tuple[Any, ...]] = []
        failed: list[tuple[Any, ...]] = []
        sent_ids: dict[int, set[str]] = {}
        for outcome in outcomes:
            message_id = outcome.message_id
            state = states.get(message_id)
            ok = state is not None and outcome.state in TRANSITIONS[state]
            if ok:
                states[message_id] = outcome.state
            moved.append(ok)
            if outcome.state == "submitted":
                ids = [smsc_id.strip().lower() for smsc_id in outcome.smsc_ids]
                if state is not None:  # even when not moved: the text did go out
                    parts += [(message_id, number, smsc_id)
                              for number, smsc_id in enumerate(ids, start=1)]
                    sent_ids.setdefault(message_id, set()).update(ids)
                if ok:
                    submitted.append((now, len(ids), json.dumps(ids), message_id))
            elif ok and outcome.state == "queued":
                queued.append((outcome.not_before if outcome.not_before is not None else now,
                               outcome.error_code, outcome.detail,
                               int(outcome.duplicate_risk), int(outcome.refund_attempt),
                               message_id))
            elif ok:
                failed.append((now, outcome.error_code, outcome.detail, message_id))
        # the guards repeat what was decided above; the trigger would refuse anything else
        await self._many(
            "UPDATE messages SET state = 'submitted', submitted_at = ?, parts = ?,"
            f" smsc_ids = ?, error_code = NULL WHERE id = ? AND {_may_become('submitted')}",
            submitted)
        await self._many(
            "INSERT INTO message_parts (message_id, part_no, smsc_id)"
            " VALUES (?, ?, ?) ON CONFLICT DO NOTHING", parts)
        await self._many(
            "UPDATE messages SET state = 'queued', not_before = ?, error_code = ?,"
            " error_detail = ?, duplicate_risk = CASE WHEN ? = 1 THEN 1 ELSE duplicate_risk END,"
            " attempts = attempts - CASE WHEN attempts > 0 THEN ? ELSE 0 END"
            f" WHERE id = ? AND {_may_become('queued')}", queued)
        await self._many(
            "UPDATE messages SET state = 'failed', final_at = ?, error_code = ?,"
            f" error_detail = ? WHERE id = ? AND {_may_become('failed')}", failed)
        if sent_ids:
            await self._replay_early_receipts(
                {message_id: (ids, claimed_at[message_id]) for message_id, ids in
                 sent_ids.items()})
        return moved

    async def expire_due(self, now: float) -> list[int]:
        """Queued texts past their `expires_at` become `expired`: late is worse than never."""
        return await self._ids_of(
            "UPDATE messages SET state = 'expired', final_at = ?,"
            " error_detail = COALESCE(error_detail || '; ', '') ||"
            " 'expired: not sent before expires_at (outbox.max_age after the call)'"
            f" WHERE {_may_become('expired')} AND expires_at IS NOT NULL AND expires_at <= ?"
            " RETURNING id", (now, now))

    async def renew_leases(self, now: float) -> int:
        """Extend the leases of this daemon's texts in flight to `now + claim_lease` (the
        daemon does it every second: while it runs, no other daemon takes them over)."""
        async def work() -> int:
            return await self._change(
                "UPDATE messages SET lease_until = ? WHERE state = 'sending' AND owner = ?",
                (now + self.claim_lease, self.owner))

        return await self._transaction(work)

    async def recover_in_flight(self, mode: str, now: float) -> list[int]:
        """Texts left in `sending` by a daemon that stopped uncleanly may or may not have
        reached the SMSC: those whose lease expired by `now`, those of a daemon of this host
        that is gone (a restart after `kill -9` need not wait for the lease), and those
        claimed without a lease (by an older mcdaemon). Never this daemon's own.

        `resend`: queue them again, marked `duplicate_risk`; `drop`: fail them (`crash_drop`).
        At start-up, and then every second: another daemon sharing the store takes over the
        texts of one that died.
        """
        if mode == "drop":
            change = ("state = 'failed', final_at = ?, error_detail ="
                      " 'crash_drop: interrupted mid-submit; not resent (outbox.after_crash)'")
        elif mode == "resend":
            change = ("state = 'queued', duplicate_risk = 1, not_before = ?,"
                      " error_detail = 'resent after an unclean stop: may arrive twice'")
        else:
            raise ValueError(
                f"recover_in_flight: mode must be 'resend' or 'drop', not {mode!r}")

        async def work() -> list[Any]:
            owners = [str(owner) for owner, in await self._rows(
                "SELECT DISTINCT owner FROM messages WHERE state = 'sending'"
                " AND owner IS NOT NULL AND owner <> ?", (self.owner,))]
            gone = [owner for owner in owners if gone_pid(owner) not in (None, os.getpid())]
            return await self._rows(
                f"UPDATE messages SET {change} WHERE state = 'sending'"
                " AND (owner IS NULL OR lease_until IS NULL OR (owner <> ? AND"
                f" (lease_until <= ?{''.join(' OR owner = ?' for _ in gone)})))"
                " RETURNING id", (now, self.owner, now, *gone))

        return sorted(int(row[0]) for row in await self._transaction(work))

    async def message(self, message_id: int) -> OutboxMessage:
        rows = await self._read(lambda: self._rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)))
        if not rows:
            raise KeyError(message_id)
        return _message(rows[0])

    async def messages(self, *, state: str | None = None) -> list[OutboxMessage]:
        params: tuple[str, ...] = ()
        if state is None:
            sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages ORDER BY id"
        else:
            sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE state = ? ORDER BY id"
            params = (state,)
        return [_message(row) for row in await self._read(lambda: self._rows(sql, params))]

    async def messages_for_call(self, pbx: str, call_id: str) -> list[OutboxMessage]:
        rows = await self._read(lambda: self._rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE pbx = ? AND call_id = ?"
            " ORDER BY id", (pbx, call_id)))
        return [_message(row) for row in rows]

    async def call(self, pbx: str, call_id: str) -> dict[str, Any] | None:
        """The stored row of one call (columns by name), or None."""
        rows = await self._read(lambda: self._dict_rows(
            "SELECT * FROM calls WHERE pbx = ? AND call_id = ?", (pbx, call_id)))
        return rows[0] if rows else None

    async def count_calls(self) -> int:
        return int(await self._read(lambda: self._scalar("SELECT COUNT(*) FROM calls")))

    async def recovered_calls(self, since: float) -> dict[str, int]:
        """Calls that ended since `since` and were not seen whole live: `adopted` (in progress
        at an AMI connect) and `backfilled` (from the queue_log). Bounded by `calls_ended`."""
        async def work() -> dict[str, int]:
            row = (await self._rows(
                "SELECT COUNT(CASE WHEN record LIKE ? THEN 1 END),"
                " COUNT(CASE WHEN record LIKE ? THEN 1 END) FROM calls WHERE ended >= ?",
                (f"%{_ADOPTED}%", f"%{_BACKFILLED}%", since)))[0]
            return {"adopted": int(row[0] or 0), "backfilled": int(row[1] or 0)}

        return await self._read(work)

    async def policy_view(self, e164: str | None, group: str | None, now: float,
                          prefix: str | None = None, prefix_len: int = 6) -> PolicyView:
        """What the policy needs to know about this caller and the recent traffic.

        Counts are texts to callers (`CALLER_KINDS`) created in the window that did not fail
        or expire. The prefix range is `prefix` if given, else '+' and the first `prefix_len`
        digits of `e164`.
        """
        if prefix is None and e164:
            prefix = "+" + e164.lstrip("+")[:prefix_len]
        counted = COUNTED_TEXTS
        hour, day = now - 3600, now - 86400

        async def work() -> PolicyView:
            row = (await self._rows(
                f"SELECT (SELECT COUNT(*) FROM messages WHERE {counted} AND created_at > ?),"
                f" (SELECT COUNT(*) FROM messages WHERE {counted} AND created_at > ?)",
                (hour, day)))[0]
            opted_out, last_text, prefix_hour = False, None, 0
            if e164:
                opted_out = bool(await self._scalar("SELECT 1 FROM opt_outs WHERE e164 = ?",
                                                    (e164,)))
                last_text = await self._scalar(_last_text("?", counted), (e164,))
            if prefix:
                prefix_hour = int(await self._scalar(
                    f"SELECT COUNT(*) FROM messages WHERE {counted} AND created_at > ?"
                    " AND substr(destination, 1, ?) = ?", (hour, len(prefix), prefix)) or 0)
            off = {name for name, in await self._rows(
                "SELECT name FROM switches WHERE enabled = 0")}
            return PolicyView(
                opted_out=opted_out, last_text_at=last_text, texts_last_hour=int(row[0] or 0),
                texts_last_day=int(row[1] or 0), prefix_texts_last_hour=prefix_hour,
                global_enabled="global" not in off,
                group_enabled=f"group:{group}" not in off if group else True)

        return await self._read(work)

    async def policy_views(self, callers: Sequence[tuple[str | None, str | None, str | None]],
                           now: float) -> list[PolicyView]:
        """`policy_view` for many (e164, group, prefix) at once: a storm of hangups costs a
        handful of queries, not a handful per call. The counts are ranges of the index
        `messages_counted`, which holds only the texts they count."""
        counted = COUNTED_TEXTS
        hour, day = now - 3600, now - 86400
        numbers = sorted({e164 for e164, _, _ in callers if e164})
        prefixes = {prefix for _, _, prefix in callers if prefix}

        async def work() -> list[PolicyView]:
            # one statement for the whole batch
            # the second column is text in every branch (PostgreSQL's UNION wants one type)
            parts = [f"SELECT 'hour', NULL, COUNT(*) FROM messages WHERE {counted}"
                     " AND created_at > ?",
                     f"SELECT 'day', NULL, COUNT(*) FROM messages WHERE {counted}"
                     " AND created_at > ?",
                     "SELECT 'off', name, NULL FROM switches WHERE enabled = 0"]
            params: list[Any] = [hour, day]
            for length in sorted({len(prefix) for prefix in prefixes}):
                parts.append(f"SELECT 'prefix', substr(destination, 1, ?), COUNT(*) FROM"
                             f" messages WHERE {counted} AND created_at > ? GROUP BY 2")
                params += [length, hour]
            statements = []
            for start in range(0, len(numbers), 10000):  # SQLite allows 32766 parameters
                chunk = numbers[start:start + 10000]
                marks = ",".join("?" * len(chunk))
                parts.append(f"SELECT 'opted', e164, NULL FROM opt_outs WHERE e164 IN ({marks})")
                parts.append(f"SELECT 'last', v.column1, ({_last_text('v.column1', counted)})"
                             f" FROM (VALUES {','.join(['(?)'] * len(chunk))}) AS v")
                statements.append((" UNION ALL ".join(parts), [*params, *chunk, *chunk]))
                parts, params = [], []
            if parts:
                statements.append((" UNION ALL ".join(parts), params))
            rows = [row for sql, values in statements for row in await self._rows(sql, values)]
            texts_hour = texts_day = 0
            opted: set[str] = set()
            last: dict[str, float] = {}
            by_prefix: dict[str, int] = {}
            off: set[str] = set()
            for kind, key, value in rows:
                if kind == "hour":
                    texts_hour = int(value or 0)
                elif kind == "day":
                    texts_day = int(value or 0)
                elif kind == "off":
                    off.add(key)
                elif kind == "prefix":
                    by_prefix[key] = int(value)
                elif kind == "opted":
                    opted.add(key)
                else:
                    last[key] = value
            return [PolicyView(
                opted_out=bool(e164 and e164 in opted),
                last_text_at=last.get(e164) if e164 else None,
                texts_last_hour=texts_hour, texts_last_day=texts_day,
                prefix_texts_last_hour=by_prefix.get(prefix, 0) if prefix else 0,
                global_enabled="global" not in off,
                group_enabled=f"group:{group}" not in off if group else True)
                for e164, group, prefix in callers]

        return await self._read(work)

    async def messages_by_ids(self, ids: Sequence[int]) -> list[OutboxMessage]:
        """The outbox rows with these ids (unknown ids are left out), by id."""
        wanted = sorted(set(ids))

        async def work() -> list[OutboxMessage]:
            found: list[OutboxMessage] = []
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                found += [_message(row) for row in await self._rows(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id IN"
                    f" ({','.join('?' * len(chunk))}) ORDER BY id", chunk)]
            return found

        return await self._read(work) if wanted else []

    async def latest_message_to(self, destination: str,
                                kinds: Sequence[str] = CALLER_KINDS) -> OutboxMessage | None:
        """The newest text of these kinds to `destination` (what a reply most likely answers)."""
        rows = await self._read(lambda: self._rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE destination = ?"
            f" AND kind IN ({_quoted(kinds)}) ORDER BY id DESC LIMIT 1", (destination,)))
        return _message(rows[0]) if rows else None
