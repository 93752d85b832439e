"""The one way a call is decided: live, adopted, or recovered from the queue_log.

A batch of ended calls is decided by the policy with the store's view of each caller (and the
contact names of those who may be texted), then written in one transaction (`atomic()`) with
what the decisions cause: webhook events, staff notes, call-back campaigns, and the due texts
the sender's window has room for, which go to the sender only once that is on disk. A call
the store already holds (keyed by (pbx, call id): one seen live and again in the queue_log,
or a backfill run twice) is left alone, so it is decided once and notified once.

A batch the store could not take because its server went away is held and decided again
once the server is back (`decide`). The running daemon's intake and backfill share one
`Decider` (its `lock`: one batch at a time, so the caps count across both); `mcdaemon
backfill` builds one without a sender (the daemon sends what it queued). A call's "call
decided" line is logged before its "text submitted" line.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from mcdaemon.adapters.metrics import Metrics
from mcdaemon.config.model import Config, GroupConfig
from mcdaemon.contacts.lookup import ContactNames
from mcdaemon.core.policy import (
    decide_batch,
    destination_prefix,
    is_fraud_shield_trip,
    match_group,
)
from mcdaemon.core.records import CallRecord, Decision, PolicyView
from mcdaemon.logs import mask_number
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.store import NewCall, OutboxMessage, StoreInterface, StoreUnreachable
from mcdaemon.webhooks.notify import Notifier

log = structlog.get_logger("mcdaemon.service")  # the name log lines carried before the move

Clock = Callable[[], float]
DecisionObserver = Callable[[CallRecord, Decision], None]


class Sending(Protocol):
    """The sender's side the decider hands texts to (the dispatcher)."""

    def claim_room(self) -> int: ...

    def start_sending(self, messages: list[OutboxMessage]) -> None: ...

    def texts_queued(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Decided:
    """A call decided now: its decision, and its first text's id if one was queued."""

    record: CallRecord
    decision: Decision
    message_id: int | None


def _may_text(record: CallRecord, group: GroupConfig | None, view: PolicyView) -> bool:
    """Worth a contact name: a missed, whole call its group texts about, not opted out (the
    lookup is not asked about calls that get no text anyway)."""
    return (record.missed and not (record.partial or record.evicted) and group is not None
            and record.outcome in group.triggers and not view.opted_out)


class Decider:
    """Decides batches of ended calls and commits each with what it causes."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 clock: Clock, metrics: Metrics, contacts: ContactNames, notify: Notifier,
                 outreach: Outreach, sending: Sending | None = None,
                 on_decision: DecisionObserver | None = None) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._contacts = contacts
        self._notify = notify
        self._outreach = outreach
        self._sending = sending
        self._on_decision = on_decision
        #: one batch at a time, whoever hands it over (caps count across batches)
        self.lock = asyncio.Lock()
        self._tripped_reasons: set[str] = set()

    async def decide(self, records: Sequence[CallRecord]) -> list[Decided]:
        """Decide and record the calls the store does not hold yet; what was decided now.

        While a PostgreSQL store's server is away the batch is held and decided again from
        the start (the store's next call waits for the server; nothing of the lost attempt
        was kept, nothing was sent): up to store.outage_max, then `StoreError` stops the
        daemon. The policy decides at that time, so `outbox.max_age` still applies."""
        async with self.lock:
            while True:
                try:
                    return await self._decide_fresh(records)
                except StoreUnreachable:
                    log.debug("the store went away while deciding: holding the batch",
                              calls=len(records))

    async def _decide_fresh(self, records: Sequence[CallRecord]) -> list[Decided]:
        """The calls of `records` the store does not hold yet, decided and recorded."""
        if not records:
            return []
        store = self._store()
        known = await store.recorded_calls([(r.pbx, r.call_id) for r in records])
        fresh: list[CallRecord] = []
        for record in records:
            key = (record.pbx, record.call_id)
            if key in known:
                log.debug("call already recorded: not decided again", pbx=record.pbx,
                          call_id=record.call_id)
            else:
                known.add(key)  # twice in one batch: its first record stands
                fresh.append(record)
        if not fresh:
            return []
        return await self._decide_and_store(store, fresh)

    async def decisions(self, store: StoreInterface,
                        records: Sequence[CallRecord]) -> list[Decision]:
        """What the policy decides for these calls now, with the store's view of each caller
        and the contact names (nothing is written)."""
        config = self._config()
        now = self._clock()
        groups = [match_group(record, config) for record in records]
        prefixes = [destination_prefix(record.caller_e164, config) if record.caller_e164
                    else None for record in records]
        views = await store.policy_views(
            [(record.caller_e164, group.name if group else None, prefix)
             for record, group, prefix in zip(records, groups, prefixes, strict=True)], now)
        names = await self._contacts.names(store, [
            record.caller_e164 for record, group, view in zip(records, groups, views, strict=True)
            if record.caller_e164 and _may_text(record, group, view)])
        views = [dataclasses.replace(view, contact_name=names[record.caller_e164])
                 if record.caller_e164 in names else view
                 for record, view in zip(records, views, strict=True)]
        return decide_batch(records, views, config, now)

    async def _decide_and_store(self, store: StoreInterface,
                                records: list[CallRecord]) -> list[Decided]:
        """Decide every record, then write them all in one transaction (a storm of hangups
        costs one commit). Texts decided earlier in the same batch count for later ones."""
        decisions = await self.decisions(store, records)
        now = self._clock()
        decided = [NewCall(record, decision)
                   for record, decision in zip(records, decisions, strict=True)]
        destinations = [decision.destination for decision in decisions]
        # texts due now are claimed in the same commit while the window has room: the
        # sender has them as soon as the decision is on disk. What the decisions cause
        # (webhook events, staff notes, call-back campaigns) is written with them.
        claim = self._sending.claim_room() if self._sending is not None else 0
        async with store.atomic():
            message_ids, claimed = await store.record_calls_and_claim(
                decided, now=now, destinations=destinations, claim=claim)
            await self._notify.calls_decided(decided, message_ids)
            await self._outreach.calls_decided(store, decided)
        if self._sending is not None:
            self._sending.start_sending(claimed)
        queued = sum(message_id is not None for message_id in message_ids)
        self._metrics.text_transition("queued", queued)
        results = [Decided(call.record, call.decision, message_id)
                   for call, message_id in zip(decided, message_ids, strict=True)]
        for result in results:
            self._log_decision(result)
            self._metrics.call_decided(result.record, result.decision)
            if self._on_decision is not None:
                self._on_decision(result.record, result.decision)
        if queued > len(claimed) and self._sending is not None:
            self._sending.texts_queued()  # texts deferred, or beyond the window: queued
        return results

    def _log_decision(self, result: Decided) -> None:
        record, decision, message_id = result.record, result.decision, result.message_id
        full = self._config().log_full_numbers
        fields: dict[str, object] = dict(pbx=record.pbx, call_id=record.call_id,
                      caller=mask_number(record.caller_e164 or record.caller, full),
                      outcome=str(record.outcome), group=decision.group,
                      decision="text" if decision.text else "no_text", reason=decision.reason)
        if decision.detail:
            fields["detail"] = decision.detail
        if record.extra.get("backfilled"):  # from the queue_log (pipeline/backfill)
            fields["backfilled"] = True
        if record.adopted:  # in progress at an AMI connect: the stages seen from there
            fields["adopted"] = True
            fields["stages"] = list(record.stages)
        if message_id is not None:
            fields["message_id"] = message_id
        if is_fraud_shield_trip(decision.reason) and decision.reason not in self._tripped_reasons:
            self._tripped_reasons.add(decision.reason)
            log.error("fraud shield tripped: texts are being refused", reason=decision.reason,
                      detail=decision.detail)
        log.info("call decided", **fields)


__all__ = ["Decided", "Decider", "DecisionObserver", "Sending"]
