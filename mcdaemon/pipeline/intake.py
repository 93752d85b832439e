"""AMI → store: the tracker, the decider, and the decisions committed with what they cause.

The AMI consumer feeds each PBX's tracker and hands the calls that end to the decider. It
never waits for the store: while one batch of decisions is being written, the calls that end
meanwhile gather into the next (group commit). A batch is decided, then written in one
transaction (`Store.atomic`) with its webhook events, staff notes and call-back campaigns, and
with the due texts the window has room for, which go to the sender only once that is on disk.
A call's "call decided" line is logged before its "text submitted" line.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import structlog

from mcdaemon.adapters.ami import AmiEvent, AmiEvents, AmiItem, AmiStatus
from mcdaemon.adapters.metrics import Metrics
from mcdaemon.config.model import Config, GroupConfig
from mcdaemon.contacts.lookup import ContactNames
from mcdaemon.core.policy import (
    decide_batch,
    destination_prefix,
    is_fraud_shield_trip,
    match_group,
    prepare_caller,
)
from mcdaemon.core.records import CallRecord, Decision, PolicyView
from mcdaemon.core.tracker import CallTracker
from mcdaemon.logs import mask_number
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.pipeline.sending import Dispatcher
from mcdaemon.store import NewCall, StoreInterface
from mcdaemon.webhooks.notify import Notifier

log = structlog.get_logger("mcdaemon.service")  # the name log lines carried before the move

Clock = Callable[[], float]
DecisionObserver = Callable[[CallRecord, Decision], None]

#: the AMI consumer lets the other tasks run after this many events in a row
CONSUMER_BATCH = 200


def _may_text(record: CallRecord, group: GroupConfig | None, view: PolicyView) -> bool:
    """Worth a contact name: a missed, whole call its group texts about, not opted out (the
    lookup is not asked about calls that get no text anyway)."""
    return (record.missed and not (record.partial or record.evicted) and group is not None
            and record.outcome in group.triggers and not view.opted_out)


class Intake:
    """The trackers (one per PBX), the calls they closed and not yet decided, and the
    decider. Runs as two tasks: `consume()` and `decide()`."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 queue: asyncio.Queue[AmiItem], metrics: Metrics, clock: Clock,
                 contacts: ContactNames, notify: Notifier, outreach: Outreach,
                 dispatcher: Dispatcher, report_links: Callable[[], None],
                 on_decision: DecisionObserver | None = None,
                 link_moved: Callable[[str, str, float], None] | None = None
                 ) -> None:
        self._config = config
        self._store = store
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._contacts = contacts
        self._notify = notify
        self._outreach = outreach
        self._dispatcher = dispatcher
        self._report_links = report_links
        self._on_decision = on_decision
        self._link_moved = link_moved  # (pbx, state, at): the backfill's watched moments
        initial = config()
        self.trackers = {pbx.name: CallTracker(pbx.name, initial.inbound, initial.region)
                         for pbx in initial.ami}
        #: the PBXs whose AMI connection is up
        self.connected: set[str] = set()
        self._ended: list[CallRecord] = []  # calls the tracker closed, not yet decided
        self._ended_ready = asyncio.Event()
        #: one batch of decisions at a time (caps count across)
        self.deciding = asyncio.Lock()
        self._tripped_reasons: set[str] = set()

    @property
    def undecided(self) -> int:
        """Calls that ended and are not decided yet."""
        return len(self._ended)

    def update_settings(self, config: Config) -> None:
        for tracker in self.trackers.values():
            tracker.update_settings(config.inbound, config.region)

    async def consume(self) -> None:
        """Feed the tracker, handing the calls that end to the decider. It never waits for
        the store: while one batch of decisions is being written, the calls that end meanwhile
        gather into the next (group commit), and a quiet PBX gets each call decided at once."""
        queue = self._queue
        while True:
            item = await queue.get()
            if isinstance(item, AmiEvents):  # a read's events: nearly every item
                for count, event in enumerate(item, start=1):
                    self._hand_to_decider(self._track_event(event))
                    if count % CONSUMER_BATCH == 0:
                        await asyncio.sleep(0)  # a long read: let the decider write meanwhile
            else:
                self._hand_to_decider(self._take(item))

    def expire(self, now: float) -> None:
        """Close the calls the trackers have held too long; the decider decides them."""
        records: list[CallRecord] = []
        for tracker in self.trackers.values():
            records += tracker.expire(now)
        self._hand_to_decider(records)

    def _hand_to_decider(self, records: list[CallRecord]) -> None:
        if records:
            self._ended.extend(records)
            self._ended_ready.set()

    async def decide(self) -> None:
        while True:
            await self._ended_ready.wait()
            self._ended_ready.clear()
            await self._decide_pending()

    async def _decide_pending(self) -> None:
        """Decide every call handed over so far, after the batch being written, if any."""
        async with self.deciding:
            batch, self._ended = self._ended, []
            if batch:
                await self._decide_and_store(batch)

    async def drain(self) -> None:
        """At shutdown: track what the AMI queue still holds and decide every call ended."""
        while not self._queue.empty():
            self._hand_to_decider(self._take(self._queue.get_nowait()))
        await self._decide_pending()

    def _take(self, item: AmiItem) -> list[CallRecord]:
        """One item of the AMI queue, whole. A connection state waits for no disk: the
        heartbeat stores the links' states once a second for all PBXs (`status`)."""
        if isinstance(item, AmiStatus):
            self._metrics.ami_connection_state(item.pbx, item.state)
            if self._link_moved is not None and (item.state == "connected"
                                                 or item.pbx in self.connected):
                self._link_moved(item.pbx, item.state, item.at)
            return self._track_status(item)
        if isinstance(item, AmiEvents):
            return [record for event in item for record in self._track_event(event)]
        return self._track_event(item)

    def _track_event(self, event: AmiEvent) -> list[CallRecord]:
        self._outreach.observe(event)
        tracker = self.trackers[event.pbx]
        records = tracker.feed(event.fields, event.at)
        for caller in tracker.take_new_callers():
            prepare_caller(caller, self._config())
        return records

    def _track_status(self, item: AmiStatus) -> list[CallRecord]:
        log.debug("AMI connection", pbx=item.pbx, state=item.state, detail=item.detail)
        if item.state == "connected":
            self.connected.add(item.pbx)
        else:
            self.connected.discard(item.pbx)
        self._report_links()
        if item.state != "connected" or item.live_uniqueids is None:
            return []
        tracker = self.trackers[item.pbx]
        records = tracker.reconcile(set(item.live_uniqueids), item.at)
        if item.live_channels:  # then the inbound calls in progress are tracked from here
            tracker.adopt(item.live_channels, item.at)
            for caller in tracker.take_new_callers():
                prepare_caller(caller, self._config())
        return records

    async def _decide_and_store(self, records: list[CallRecord]) -> None:
        """Decide every record, then write them all in one transaction (a storm of hangups
        costs one commit). Texts decided earlier in the same batch count for later ones."""
        config = self._config()
        store = self._store()
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
        decisions = decide_batch(records, views, config, now)
        decided = [NewCall(record, decision)
                   for record, decision in zip(records, decisions, strict=True)]
        destinations = [decision.destination for decision in decisions]
        # texts due now are claimed in the same commit while the window has room: the
        # sender has them as soon as the decision is on disk. What the decisions cause
        # (webhook events, staff notes, call-back campaigns) is written with them.
        claim = self._dispatcher.claim_room()
        async with store.atomic():
            message_ids, claimed = await store.record_calls_and_claim(
                decided, now=now, destinations=destinations, claim=claim)
            await self._notify.calls_decided(decided, message_ids)
            await self._outreach.calls_decided(store, decided)
        self._dispatcher.start_sending(claimed)
        self._metrics.text_transition("queued", sum(1 for message_id in message_ids
                                                    if message_id is not None))
        for call, message_id in zip(decided, message_ids, strict=True):
            self.decided(call.record, call.decision, message_id)
        if sum(message_id is not None for message_id in message_ids) > len(claimed):
            self._dispatcher.texts_queued()  # texts deferred, or beyond the window: queued

    def decided(self, record: CallRecord, decision: Decision, message_id: int | None) -> None:
        """A call decided (live, or backfilled from the queue_log): logged, counted, observed."""
        self._log_decision(record, decision, message_id)
        self._metrics.call_decided(record, decision)
        if self._on_decision is not None:
            self._on_decision(record, decision)

    def _log_decision(self, record: CallRecord, decision: Decision,
                      message_id: int | None) -> None:
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
        if decision.text and message_id is None:
            fields["duplicate"] = "call already recorded; no second text"
        if is_fraud_shield_trip(decision.reason) and decision.reason not in self._tripped_reasons:
            self._tripped_reasons.add(decision.reason)
            log.error("fraud shield tripped: texts are being refused", reason=decision.reason,
                      detail=decision.detail)
        log.info("call decided", **fields)

