"""Delivery receipts: matching a receipt to the part of a text it names (docs/receipts.md)
and settling the text once every part has its final receipt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from mcdaemon.core.receipts import exact_receipt_id, normalised_id, other_base_readings
from mcdaemon.store.plumbing import Plumbing
from mcdaemon.store.schema import _may_become

log = structlog.get_logger("mcdaemon.store")


#: receipt states (short `stat:` words, long names and `message_state` TLV numbers) per outcome
_DELIVERED_RECEIPTS = frozenset({"DELIVRD", "DELIVERED", "2"})


_BAD_RECEIPTS = frozenset({"UNDELIV", "UNDELIVERABLE", "EXPIRED", "REJECTD", "REJECTED",
                           "DELETED", "UNKNOWN", "3", "4", "5", "7", "8"})


#: an unmatched receipt this much older than a message's claim is not replayed onto it
_RECEIPT_REPLAY_SLACK = 60.0


@dataclass(frozen=True, slots=True)
class AppliedReceipts:
    matched: list[int | None]  # per receipt, the message it matched
    settled: dict[str, int]  # final state -> messages the batch moved there
    #: message id -> the final state this batch moved it to (for the webhooks)
    finals: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReceiptIn:
    """A delivery receipt as received: its two ids apart (the `receipted_message_id` TLV,
    the `id:` of its text; either may be None), its state and error, when it arrived."""

    receipted_id: str | None
    text_id: str | None
    state: str
    error: str | None
    at: float
    raw: dict[str, str] = field(default_factory=dict)


#: how a receipt was matched (`receipts.matched_by`); NULL: no part (yet)
MATCHED_BY_TLV, MATCHED_BY_TEXT, MATCHED_BY_OTHER_BASE = "receipted_id", "text_id", "other_base"


#: the receipt named more than one text: kept unmatched, counted, never replayed
AMBIGUOUS = "ambiguous"


@dataclass(slots=True)
class _Part:
    """A part a receipt may name: `pending` while no final receipt has come for it."""

    message_id: int
    part_no: int
    smsc_id: str
    pending: bool
    claimed_at: float  # when its text was claimed for sending: before its submit_sm left


@dataclass(frozen=True, slots=True)
class _ReceiptMatch:
    part: _Part | None
    matched_by: str | None  # MATCHED_BY_* or AMBIGUOUS; None: unmatched
    candidates: tuple[_Part, ...] = ()  # the parts an ambiguous receipt named


def _match_receipt(receipt: ReceiptIn, parts: dict[str, list[_Part]],
                   in_flight: Sequence[float]) -> _ReceiptMatch:
    """The part a receipt belongs to, by the rules of docs/receipts.md.

    Only a part claimed before the receipt arrived can be meant. The exact id (the TLV's,
    else the text's) decides alone when it names a part; a pending part is preferred over a
    settled one (an SMSC that restarted its counter reuses ids). Another base is read only
    when the exact id names nothing and no text is in flight whose id is not known yet (the
    receipt may be its); and then only one pending part may fit. Otherwise: unmatched.
    """
    exact = exact_receipt_id(receipt.receipted_id, receipt.text_id)
    exact_by = MATCHED_BY_TLV if normalised_id(receipt.receipted_id) else MATCHED_BY_TEXT
    waiting_for_ids = any(claimed <= receipt.at for claimed in in_flight)
    hits = [part for part in parts.get(exact, ()) if part.claimed_at <= receipt.at] \
        if exact is not None else []
    pending = [part for part in hits if part.pending]
    if len(pending) == 1:
        return _ReceiptMatch(pending[0], exact_by)
    if len(pending) > 1:
        return _ReceiptMatch(None, AMBIGUOUS, tuple(pending))
    if hits:  # only settled parts: a repeated receipt, unless a text in flight reuses the id
        if waiting_for_ids:
            return _ReceiptMatch(None, None)
        if len(hits) == 1:
            return _ReceiptMatch(hits[0], exact_by)
        return _ReceiptMatch(None, AMBIGUOUS, tuple(hits))
    if waiting_for_ids:  # the exact id may be that of a text whose submit is not recorded
        return _ReceiptMatch(None, None)
    fits = [part for reading in other_base_readings(receipt.receipted_id, receipt.text_id)
            for part in parts.get(reading, ())
            if part.pending and part.claimed_at <= receipt.at]
    if len(fits) == 1:
        return _ReceiptMatch(fits[0], MATCHED_BY_OTHER_BASE)
    if len(fits) > 1:
        return _ReceiptMatch(None, AMBIGUOUS, tuple(fits))
    return _ReceiptMatch(None, None)


def _part_state(receipt_state: str) -> str:
    state = receipt_state.strip().upper()
    if state in _DELIVERED_RECEIPTS:
        return "delivered"
    if state in _BAD_RECEIPTS:
        return "undeliverable"
    return "submitted"  # ACCEPTD, ENROUTE…: not final yet


class Receipts(Plumbing):
    """Delivery receipts."""

    async def apply_receipt(self, receipted_id: str | None, state: str, error: str | None,
                            at: float, raw: dict[str, str] | None = None, *,
                            text_id: str | None = None) -> int | None:
        """Match a delivery receipt to its part (docs/receipts.md); settle the message.

        A message is delivered when every part is, undeliverable when any part fails; a
        final message stays as it is. Every receipt is kept (raw), matched or not; an
        unmatched one is matched again, by the same rules, when a submit is recorded.
        """
        return (await self.apply_receipts([ReceiptIn(receipted_id, text_id, state, error, at,
                                                     raw or {})])).matched[0]

    async def apply_receipts(self, receipts: Sequence[ReceiptIn]) -> AppliedReceipts:
        """`apply_receipt` for many receipts, in order, in one transaction: the message id
        each matched (None: kept unmatched) and how many messages each settled as."""
        settled: dict[str, int] = {}
        finals: dict[int, str] = {}

        async def work() -> list[int | None]:
            return await self._apply_receipts(receipts, settled, finals)

        matched = await self._transaction(work) if receipts else []
        return AppliedReceipts(matched, settled, finals)

    async def _apply_receipts(self, receipts: Sequence[ReceiptIn], settled: dict[str, int],
                              finals: dict[int, str] | None = None) -> list[int | None]:
        """A few statements whatever the batch size (a carrier sends receipts in bursts)."""
        matches = await self._apply_to_parts(receipts, settled, finals)
        rows = []
        for receipt, match in zip(receipts, matches, strict=True):
            exact = exact_receipt_id(receipt.receipted_id, receipt.text_id)
            readings = [exact] if exact else []
            readings += other_base_readings(receipt.receipted_id, receipt.text_id)
            rows.append((exact or "", json.dumps(readings), receipt.receipted_id,
                         receipt.text_id, receipt.state, receipt.error, receipt.at,
                         match.part.message_id if match.part else None, match.matched_by,
                         json.dumps(receipt.raw, ensure_ascii=False)))
        await self._many(
            "INSERT INTO receipts (smsc_id, candidates, receipted_id, text_id, state, error,"
            " at, message_id, matched_by, raw) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        return [match.part.message_id if match.part else None for match in matches]

    async def _apply_to_parts(self, receipts: Sequence[ReceiptIn],
                              settled: dict[str, int] | None = None,
                              finals: dict[int, str] | None = None) -> list[_ReceiptMatch]:
        """Match receipts, in order, to the parts they name (`_match_receipt`), apply them
        and settle their messages; what each matched. An ambiguous one is logged."""
        every_id = sorted({reading for receipt in receipts for reading in (
            exact_receipt_id(receipt.receipted_id, receipt.text_id),
            *other_base_readings(receipt.receipted_id, receipt.text_id)) if reading})
        parts: dict[str, list[_Part]] = {}
        for start in range(0, len(every_id), 500):
            chunk = every_id[start:start + 500]
            for smsc_id, message_id, part_no, state, claimed in await self._rows(
                    "SELECT p.smsc_id, p.message_id, p.part_no, p.state,"
                    " COALESCE(m.sending_at, m.submitted_at, m.created_at)"
                    " FROM message_parts AS p JOIN messages AS m ON m.id = p.message_id"
                    f" WHERE p.smsc_id IN ({','.join('?' * len(chunk))})"
                    " ORDER BY p.message_id, p.part_no", chunk):
                parts.setdefault(str(smsc_id), []).append(_Part(
                    int(message_id), int(part_no), str(smsc_id), state == "submitted",
                    float(claimed)))
        # texts claimed whose submit_sm_resp is not recorded: their ids are not known yet
        in_flight = [float(claimed) for claimed, in await self._rows(
            "SELECT COALESCE(sending_at, created_at) FROM messages WHERE state = 'sending'")]
        matches: list[_ReceiptMatch] = []
        part_updates: list[tuple[Any, ...]] = []
        settle_at: dict[int, float] = {}
        for receipt in receipts:
            match = _match_receipt(receipt, parts, in_flight)
            matches.append(match)
            if match.matched_by == AMBIGUOUS:
                log.warning(
                    "delivery receipt names more than one text: kept unmatched, applied to "
                    "none (check that the SMSC's message ids are unique, and which base it "
                    "writes them in)", receipted_id=receipt.receipted_id,
                    text_id=receipt.text_id, state=receipt.state,
                    candidates=[f"message {part.message_id} part {part.part_no} id "
                                f"{part.smsc_id}" for part in match.candidates])
            part = match.part
            if part is None:
                continue
            part_state = _part_state(receipt.state)
            if part_state != "submitted":  # ACCEPTD, ENROUTE…: nothing final yet
                if part.pending:
                    part_updates.append((part_state, receipt.error, receipt.at,
                                         part.message_id, part.part_no))
                part.pending = False
                settle_at[part.message_id] = receipt.at
        await self._many(
            "UPDATE message_parts SET state = ?, error = ?, receipt_at = ?"
            " WHERE message_id = ? AND part_no = ? AND state = 'submitted'", part_updates)
        for message_id, at in settle_at.items():
            final = await self._settle(message_id, at)
            if final is not None:
                if settled is not None:
                    settled[final] = settled.get(final, 0) + 1
                if finals is not None:
                    finals[message_id] = final
        return matches

    async def _settle(self, message_id: int, at: float) -> str | None:
        """Move the message to its final state once its parts say so; that state, if moved."""
        rows = await self._rows(
            "SELECT m.parts, COUNT(p.part_no),"
            " SUM(CASE WHEN p.state = 'delivered' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN p.state = 'undeliverable' THEN 1 ELSE 0 END),"
            " MAX(CASE WHEN p.state = 'undeliverable' THEN p.error END)"
            " FROM messages AS m LEFT JOIN message_parts AS p ON p.message_id = m.id"
            " WHERE m.id = ? GROUP BY m.id", (message_id,))
        parts, recorded, delivered, bad, error = rows[0]
        if bad:
            final, detail = "undeliverable", f"receipt error {error}" if error else "undeliverable"
        elif delivered and delivered == recorded and recorded >= parts:
            final, detail = "delivered", None
        else:
            return None
        moved = await self._change(
            "UPDATE messages SET state = ?, final_at = ?,"
            " error_detail = COALESCE(?, error_detail)"
            f" WHERE id = ? AND {_may_become(final)}", (final, at, detail, message_id))
        return final if moved else None

    async def _replay_early_receipts(self, sent: dict[int, tuple[set[str], float]]) -> None:
        """Match again, by the same rules, the receipts kept unmatched that may be for texts
        just recorded: one that overtook its submit_sm_resp, or one that waited for texts in
        flight. `sent` maps each message just submitted to its SMSC ids and its claim time.
        An ambiguous receipt stays as it is: more texts cannot make it less ambiguous."""
        since = min(at for _, at in sent.values()) - _RECEIPT_REPLAY_SLACK
        # sorted here, not by ORDER BY id: that would walk every receipt ever kept by id
        # instead of searching the recent unmatched ones (`receipts_unmatched`)
        rows = sorted(await self._rows(
            "SELECT id, receipted_id, text_id, smsc_id, state, error, at FROM receipts"
            " WHERE message_id IS NULL AND at >= ?"
            f" AND COALESCE(matched_by, '') <> '{AMBIGUOUS}'", (since,)),
            key=lambda row: int(row[0]))
        if not rows:
            return
        # a receipt stored before its ids were kept apart: its first id as the exact one
        receipts = [ReceiptIn(receipted_id if receipted_id or text_id else smsc_id or None,
                              text_id, state, error, at)
                    for _, receipted_id, text_id, smsc_id, state, error, at in rows]
        matches = await self._apply_to_parts(receipts)
        await self._many(
            "UPDATE receipts SET message_id = ?, matched_by = ? WHERE id = ?",
            [(match.part.message_id if match.part else None, match.matched_by, row[0])
             for row, match in zip(rows, matches, strict=True) if match.matched_by])

    async def give_up_receipts(self, now: float, timeout: float) -> list[int]:
        """Submitted texts with no receipt after `timeout` s become `unknown`: the KPIs stop
        counting them as pending. A receipt that still comes settles them."""
        return await self._ids_of(
            "UPDATE messages SET state = 'unknown', final_at = ?,"
            " error_detail = COALESCE(error_detail || '; ', '') ||"
            " 'no delivery receipt within smpp.receipt_timeout'"
            f" WHERE {_may_become('unknown')} AND submitted_at <= ? RETURNING id",
            (now, now - timeout))

    async def unmatched_receipts(self, since: float, until: float | None = None,
                                 ) -> dict[str, int]:
        """Receipts that arrived in [since, until] and are still unmatched: `unmatched`, and
        of those `ambiguous` (they named more than one text). Read through the partial index
        `receipts_unmatched`: bounded by the unmatched receipts of the period, not history."""
        async def work() -> dict[str, int]:
            columns = await self._columns("receipts")
            ambiguous = (f"SUM(CASE WHEN matched_by = '{AMBIGUOUS}' THEN 1 ELSE 0 END)"
                         if "matched_by" in columns
                         else "0")
            row = (await self._rows(
                f"SELECT COUNT(*), {ambiguous} FROM receipts"
                " WHERE message_id IS NULL AND at >= ? AND at <= ?",
                (since, float("inf") if until is None else until)))[0]
            return {"unmatched": int(row[0] or 0), "ambiguous": int(row[1] or 0)}

        return await self._read(work)
