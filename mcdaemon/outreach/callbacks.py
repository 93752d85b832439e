"""Follow-ups and call-backs at run time: the I/O around `followups`, `campaigns`, `outbound`.

The Service owns one `Outreach` and calls it from four places:

* `observe(event)` for every AMI event (sync, from the tracker's consumer): `OriginateResponse`,
  `DialBegin`, `DialEnd` and `Hangup` are queued for this worker, nothing else is kept;
* `calls_decided(calls)` after a batch of calls is stored: an answered call stops the caller's
  follow-ups and campaign; a missed call whose group has `callback` (and whose outcome is one
  of its `triggers`, `callback_requested` by default) opens a campaign or joins the open one;
* `texts_submitted(ids)` after submit results are stored: first texts that reached the SMSC
  get their follow-ups planned;
* `reply(number, kind, at)` for every text from a caller: any reply stops the follow-ups.

`run(store)` is the worker: it resumes what a restart left (attempts in flight become
`unknown` and the campaign goes on with its next attempt at its time: the PBX may or may not
have placed that call, and a second call is better than a forgotten customer), places due
call-backs with AMI `Originate` (Async, our own ActionID) within `callbacks.max_concurrent`
and business hours, reads their `OriginateResponse`, and every 10 s plans the follow-ups a
crash may have left unplanned and ends attempts that got no result within
`callbacks.attempt_timeout`. Everything it knows is in the store; its memory is a cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import structlog

from mcdaemon.adapters.ami import AmiEvent
from mcdaemon.config.model import Config, GroupConfig
from mcdaemon.config.outreach import CallbackConfig
from mcdaemon.core import followups
from mcdaemon.core.outbound import OutboundWatch, Reached
from mcdaemon.core.policy import match_group
from mcdaemon.core.records import CallRecord, Outcome
from mcdaemon.logs import mask_number
from mcdaemon.outreach import campaigns
from mcdaemon.store import Attempt, FirstText, NewCall, StoreInterface

log = structlog.get_logger("mcdaemon.callbacks")

#: the events this worker reads (all in the tracker's event filter already)
EVENTS = frozenset({"OriginateResponse", "DialBegin", "DialEnd", "Hangup"})
TICK = 0.5  # seconds between looks at due attempts
SWEEP_INTERVAL = 10.0  # seconds between sweeps (unplanned follow-ups, stuck attempts)


class Originator(Protocol):
    """What the worker needs of an AMI connection (`ami.AmiConnection`)."""

    @property
    def connected(self) -> bool: ...

    def action_id(self, reference: str) -> str: ...

    async def originate(self, fields: Mapping[str, str | Sequence[str]] | None = None, *,
                        action_id: str | None = None, **more: str) -> dict[str, str]: ...


class CallbackNotifier(Protocol):
    """Where call-back attempts and results are reported (the webhooks' Notifier)."""

    async def callback_attempt(self, campaign: int, attempt: int, number: str, group: str,
                               pbx: str, at: float) -> None: ...

    async def callback_result(self, campaign: int, attempt: int, number: str, group: str,
                              result: str, campaign_state: str, detail: str,
                              at: float) -> None: ...


class Outreach:
    """Follow-up texts and call-back campaigns for one daemon (see the module docstring)."""

    def __init__(self, config: Callable[[], Config], connections: Mapping[str, Originator],
                 clock: Callable[[], float], notify: CallbackNotifier | None = None) -> None:
        self._config = config
        self._notify = notify
        self._connections = connections
        self._clock = clock
        self._events: asyncio.Queue[AmiEvent] = asyncio.Queue()
        self._watches: dict[str, OutboundWatch] = {}
        self._wake = asyncio.Event()
        self._sweep_due = 0.0
        #: Uniqueids of the channels of connected attempts (answered_when: customer_dial):
        #: their Hangup ends the attempt. A restart marks such attempts unknown, so memory is
        #: enough here.
        self._connected_uids: set[str] = set()
        #: whether the config seen last has follow-ups or call-backs (asked per AMI event)
        self._activity: tuple[Config, bool] | None = None

    # ------------------------------------------------------------------ feature switches

    def _active(self, config: Config) -> bool:
        if self._activity is None or self._activity[0] is not config:  # a reload: look again
            self._activity = (config, any(group.followups or group.callback
                                          for group in config.groups))
        return self._activity[1]

    def _mask(self, number: str) -> str:
        return mask_number(number, self._config().log_full_numbers)

    # ------------------------------------------------------------------ hooks for Service

    def observe(self, event: AmiEvent) -> None:
        if event.fields.get("Event") in EVENTS and self._active(self._config()):
            self._events.put_nowait(event)

    async def calls_decided(self, store: StoreInterface, calls: Sequence[NewCall]) -> None:
        config = self._config()
        if not self._active(config):
            return
        for call in calls:
            record = call.record
            if record.outcome == Outcome.ANSWERED and record.caller_e164:
                await self._stop(store, record.caller_e164, "answered_call", record.ended,
                                 f"{record.pbx}/{record.call_id}")
            elif record.missed and not record.partial and not record.evicted:
                group = match_group(record, config)
                if group is not None and group.callback is not None \
                        and record.outcome in group.callback.triggers and group.enabled:
                    await self._open_campaign(store, config, group, record)

    async def texts_submitted(self, store: StoreInterface, message_ids: Sequence[int]) -> None:
        config = self._config()
        if not any(group.followups for group in config.groups) or not message_ids:
            return
        for first in await store.firsts_by_ids(message_ids):
            await self._plan(store, config, first)

    async def reply(self, store: StoreInterface, number: str, kind: str | None, at: float) -> None:
        """A text from `number`: any reply (an opt-out too) stops its follow-ups."""
        if not self._active(self._config()) or kind == "opt_in":
            return
        await self._stop(store, number, "opt_out" if kind == "opt_out" else "reply", at)

    # ------------------------------------------------------------------ the worker

    async def handle(self, store: StoreInterface, event: AmiEvent) -> None:
        """Handle one observed AMI event now (what the worker's consumer does; for tests)."""
        await self._on_event(store, event)

    async def tick(self, store: StoreInterface) -> None:
        """One look at due call-backs (and a sweep when one is due); the worker's loop body."""
        await self._tick(store)

    async def recover(self, store: StoreInterface) -> None:
        """What `run` does first: attempts left in progress become unknown."""
        await self._recover(store)

    async def run(self, store: StoreInterface) -> None:
        await self._recover(store)
        consumer = asyncio.create_task(self._consume(store), name="outreach-events")
        try:
            while True:
                await self._tick(store)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consumer

    async def _consume(self, store: StoreInterface) -> None:
        while True:
            event = await self._events.get()
            try:
                await self._on_event(store, event)
            except Exception:  # one odd event must not stop the worker
                log.exception("a call-back event could not be handled",
                              ami_event=event.fields.get("Event"))

    async def _recover(self, store: StoreInterface) -> None:
        now = self._clock()
        for attempt in await store.live_attempts():
            await self._end_attempt(
                store, attempt, "unknown", now,
                "in progress when the daemon stopped: the call may or may not have been made")
            log.warning("a call-back was in progress at an unclean stop: marked unknown, the "
                        "campaign goes on", campaign=attempt.campaign_id, attempt=attempt.seq,
                        to=self._mask(attempt.e164))

    async def _tick(self, store: StoreInterface) -> None:
        config = self._config()
        now = self._clock()
        if now >= self._sweep_due:
            self._sweep_due = now + SWEEP_INTERVAL
            await self._sweep(store, config, now)
        if any(group.callback for group in config.groups):
            await self._place_due(store, config, now)

    async def _sweep(self, store: StoreInterface, config: Config, now: float) -> None:
        horizon = max((step.after for group in config.groups for step in group.followups),
                      default=0.0)
        if horizon:
            since = now - horizon - config.outbox.max_age - 86400.0
            for first in await store.firsts_without_followups(since):
                await self._plan(store, config, first)
            cancelled = await store.cancel_after_undeliverable(now)
            if cancelled:
                log.info("follow-ups cancelled", count=len(cancelled), message_ids=cancelled,
                         reason="the first text was undeliverable")
        for attempt in await store.live_attempts():
            if attempt.started_at is not None and \
                    now - attempt.started_at > config.callbacks.attempt_timeout:
                await self._end_attempt(store, attempt, "unknown", now,
                                        "no result within callbacks.attempt_timeout")

    # ------------------------------------------------------------------ follow-ups

    async def _plan(self, store: StoreInterface, config: Config, first: FirstText) -> None:
        group = config.group(first.group) if first.group else None
        if group is None or not group.followups:
            return
        row = await store.call(first.pbx, first.call_id)
        if row is None:
            return
        record = CallRecord.from_dict(json.loads(row["record"]))
        contact = None
        with contextlib.suppress(Exception):  # a store without contacts: the caller ID name
            found = await store.contact(first.destination)
            contact = found.name if found else None
        planned = followups.plan(group, config, record, first.submitted_at, contact)
        ids, stopped = await store.plan_followups(first, planned, self._clock())
        if not ids:
            return
        fields = dict(call_id=first.call_id, to=self._mask(first.destination),
                      message_ids=ids, due=[round(step.not_before) for step in planned])
        if stopped:
            log.info("follow-ups cancelled", reason=followups.STOP_KINDS.get(stopped, stopped),
                     **fields)
        else:
            log.info("follow-ups scheduled", **fields)
        self._wake.set()

    async def _stop(self, store: StoreInterface, number: str, kind: str, at: float,
                    detail: str = "", campaign_done: int | None = None) -> None:
        stopped = await store.record_stop(number, kind, at, detail,
                                          campaign_done=campaign_done)
        reason = followups.STOP_KINDS[kind]
        if stopped.followups:
            log.info("follow-ups cancelled", to=self._mask(number), reason=reason,
                     message_ids=stopped.followups)
        for campaign_id, state in stopped.campaigns:
            log.info("call-back campaign closed", campaign=campaign_id, state=state,
                     to=self._mask(number), reason=reason)

    # ------------------------------------------------------------------ campaigns

    async def _open_campaign(self, store: StoreInterface, config: Config, group: GroupConfig,
                             record: CallRecord) -> None:
        callback = group.callback
        assert callback is not None
        number, why = campaigns.callback_number(record.caller_e164 or record.caller, config)
        if number is None or why:
            log.info("no call-back for this call", call_id=record.call_id, reason=why,
                     caller=mask_number(record.caller_e164 or record.caller,
                                        config.log_full_numbers))
            return
        first_due = campaigns.attempt_due(callback, group, 1, record.ended)
        if first_due is None:
            return
        pbx = config.callbacks.pbx or record.pbx
        opened = await store.start_or_merge(
            pbx=record.pbx, call_id=record.call_id, e164=number, group=group.name,
            campaign_pbx=pbx, first_due=first_due, now=self._clock())
        if opened is None:
            return
        campaign_id, created = opened
        if created:
            log.info("call-back campaign opened", campaign=campaign_id, call_id=record.call_id,
                     to=self._mask(number), group=group.name, first_attempt=round(first_due),
                     attempts=len(callback.attempts))
        else:
            log.info("call merged into the open call-back campaign", campaign=campaign_id,
                     call_id=record.call_id, to=self._mask(number))
        self._wake.set()

    async def _place_due(self, store: StoreInterface, config: Config, now: float) -> None:
        limit = config.callbacks.max_concurrent
        if await store.live_count() >= limit:
            return
        for attempt in await store.due_attempts(now):
            group = config.group(attempt.group)
            callback = group.callback if group else None
            if group is None or callback is None:
                await self._end_attempt(store, attempt, "cancelled", now,
                                        "the group has no callback any more", scheduled=True)
                continue
            opening = campaigns.defer_to_hours(callback, group, now)
            if opening > now:
                await store.defer_attempt(attempt.id, opening,
                                          "deferred to the group's opening hours")
                log.info("call-back deferred to opening hours", campaign=attempt.campaign_id,
                         attempt=attempt.seq, due=round(opening))
                continue
            connection = self._connections.get(attempt.pbx)
            if connection is None or not connection.connected:
                continue  # tried again at the next tick
            action_id = connection.action_id(f"cb{attempt.id}")
            if not await store.claim_attempt(attempt.id, action_id, now, limit):
                if await store.live_count() >= limit:
                    return
                continue  # this number has a call-back in progress
            await self._originate(store, connection, attempt, callback, action_id)

    async def _originate(self, store: StoreInterface, connection: Originator, attempt: Attempt,
                         callback: CallbackConfig, action_id: str) -> None:
        fields = campaigns.originate_fields(callback, number=attempt.e164,
                                            group=attempt.group, campaign=attempt.campaign_id,
                                            attempt=attempt.seq)
        try:
            answer = await connection.originate(fields, action_id=action_id)
        except Exception as exc:  # the PBX may or may not have taken it
            await self._end_attempt(store, attempt, "unknown", self._clock(),
                                    f"no answer to the Originate: {type(exc).__name__}")
            return
        if answer.get("Response", "").lower() != "success":
            message = answer.get("Message", "")[:200]
            log.error("the PBX refused the call-back Originate", pbx=attempt.pbx,
                      message=message, hint="the AMI user needs write=originate")
            await self._end_attempt(store, attempt, "refused", self._clock(),
                                    f"Originate refused: {message}")
            return
        log.info("call-back placed", campaign=attempt.campaign_id, attempt=attempt.seq,
                 to=self._mask(attempt.e164), pbx=attempt.pbx)
        if self._notify is not None:
            await self._notify.callback_attempt(attempt.campaign_id, attempt.seq,
                                                attempt.e164, attempt.group, attempt.pbx,
                                                self._clock())

    async def _end_attempt(self, store: StoreInterface, attempt: Attempt, result: str,
                           now: float, detail: str, *, scheduled: bool = False) -> None:
        """End an attempt and plan the campaign's next (or close it)."""
        if scheduled:
            await store.close_campaign(attempt.campaign_id, "cancelled", detail, now)
            return
        config = self._config()
        group = config.group(attempt.group)
        next_due = None
        if result != "answered" and group is not None and group.callback is not None:
            next_due = campaigns.attempt_due(group.callback, group, attempt.seq + 1, now)
        outcome = await store.finish_attempt(attempt.id, result, now, detail, next_due)
        if outcome is None:
            return
        fields = dict(campaign=attempt.campaign_id, attempt=attempt.seq, result=result,
                      detail=detail, to=self._mask(attempt.e164))
        if outcome == "next" and next_due is not None:
            log.info("call-back attempt ended; next attempt scheduled", next_due=round(next_due),
                     **fields)
        elif outcome == "done":
            log.info("call-back reached the caller: campaign done", **fields)
        elif outcome == "exhausted":
            log.warning("call-back campaign exhausted: no attempt reached the caller", **fields)
        else:
            log.info("call-back attempt ended", campaign_state=outcome, **fields)
        if self._notify is not None:
            await self._notify.callback_result(attempt.campaign_id, attempt.seq, attempt.e164,
                                               attempt.group, result, outcome, detail, now)
        self._wake.set()

    # ------------------------------------------------------------------ AMI events

    async def _on_event(self, store: StoreInterface, event: AmiEvent) -> None:
        fields = event.fields
        name = fields.get("Event", "")
        if name == "OriginateResponse":
            await self._on_originate_response(store, fields, event.at)
            return
        watch = self._watches.get(event.pbx)
        if watch is None or watch.region != self._config().region:
            watch = self._watches[event.pbx] = OutboundWatch(self._config().region)
        for reached in watch.feed(fields, event.at):
            await self._on_reached(store, reached)
        if name == "Hangup":
            await self._on_hangup(store, fields.get("Uniqueid", ""), event.at)

    async def _on_originate_response(self, store: StoreInterface, fields: Mapping[str, str],
                                     at: float) -> None:
        action_id = fields.get("ActionID", "")
        attempt = await store.attempt_by_action(action_id) if action_id else None
        if attempt is None or attempt.state != "dialing":
            return  # not ours, or settled already (the dial was seen answered first)
        group = self._config().group(attempt.group)
        callback = group.callback if group else None
        if callback is None:
            return
        result = campaigns.originate_result(fields, callback)
        detail = f"OriginateResponse {fields.get('Response', '')} reason {result.reason_code}"
        if result.result == "connected":
            await store.mark_connected(attempt.id, result.uniqueid, detail)
            if result.uniqueid:
                self._connected_uids.add(result.uniqueid)
            log.info("call-back connected; waiting for the customer to answer",
                     campaign=attempt.campaign_id, attempt=attempt.seq)
            return
        if result.result == "answered":
            await self._end_attempt(store, attempt, "answered", at, detail)
            await self._stop(store, attempt.e164, "callback_answered", at,
                             f"campaign {attempt.campaign_id}")
            return
        await self._end_attempt(store, attempt, result.result, at, detail)

    async def _on_reached(self, store: StoreInterface, reached: Reached) -> None:
        live = [attempt for attempt in await store.live_attempts()
                if attempt.e164 == reached.number]
        if live:
            for attempt in live:
                await self._end_attempt(store, attempt, "answered", reached.at,
                                        "the customer answered the call-back's dial")
            await self._stop(store, reached.number, "callback_answered", reached.at,
                             f"campaign {live[0].campaign_id}")
        else:
            await self._stop(store, reached.number, "agent_call", reached.at,
                             reached.linkedid)

    async def _on_hangup(self, store: StoreInterface, uniqueid: str, at: float) -> None:
        if uniqueid not in self._connected_uids:
            return
        self._connected_uids.discard(uniqueid)
        for attempt in await store.live_attempts():
            if attempt.state == "connected" and attempt.uniqueid == uniqueid:
                await self._end_attempt(store, attempt, "not_reached", at,
                                        "the call-back ended before the customer answered")
