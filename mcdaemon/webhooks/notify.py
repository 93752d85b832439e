"""The service's side of webhooks and staff texts: turn what the pipeline stores into queued
webhook rows (and staff notes in the outbox), in the same transaction (`StoreInterface.atomic`).

Every method here is called by `Service` inside the transaction of its own write, so a crash
loses neither the change nor what it causes. A notification that cannot be built is logged
and skipped (it never stops a call being decided or a text being sent); a store that cannot
be written is not a notification problem, and stops the daemon (`StoreError` goes through).
Nothing here waits on HTTP; the `WebhookWorker` sends what is queued.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from mcdaemon.config.model import Config
from mcdaemon.store import NewCall, StoreError, StoreInterface
from mcdaemon.webhooks import delivery as webhooks

log = structlog.get_logger("mcdaemon.notify")

_TEXT_EVENTS = ("text_sent", "text_delivered", "text_failed")


class Notifier:
    def __init__(self, store: Callable[[], StoreInterface], config: Callable[[], Config],
                 worker: webhooks.WebhookWorker, clock: Callable[[], float],
                 staff_queued: Callable[[int], None]) -> None:
        self._store = store
        self._config = config
        self._worker = worker
        self._clock = clock
        self._staff_queued = staff_queued

    async def _queue(self, events: Sequence[webhooks.Event | None]) -> None:
        rows = webhooks.route(events, self._config().webhooks)
        if rows:
            await self._store().enqueue_webhooks(rows, self._clock())
            self._worker.wake()

    async def calls_decided(self, calls: Sequence[NewCall],
                            message_ids: Sequence[int | None]) -> None:
        """`missed_call` for each missed call, and the staff notes of its group."""
        config = self._config()
        staffed = any(group.notify_staff for group in config.groups)
        if not (staffed or webhooks.wants_any(config.webhooks, ["missed_call"])):
            return
        try:
            events = [webhooks.missed_call(call.record, call.decision, message_id, config)
                      for call, message_id in zip(calls, message_ids, strict=True)]
            await self._queue(events)
            if staffed:
                await self._queue_staff_notes(calls, events, config)
        except StoreError:
            raise
        except Exception as exc:  # never let a notification stop the pipeline
            log.error("could not queue the notifications of decided calls", error=repr(exc))

    async def _queue_staff_notes(self, calls: Sequence[NewCall],
                                 events: Sequence[webhooks.Event | None],
                                 config: Config) -> None:
        queued = 0
        now = self._clock()
        for call, event in zip(calls, events, strict=True):
            group = config.group(event.group) if event and event.group else None
            if event is None or group is None or not group.notify_staff:
                continue
            # a call deferred to the opening tells the staff at the opening too
            not_before = call.decision.send_after if call.decision.text else None
            for seq, number in enumerate(group.notify_staff):
                message_id = await self._store().enqueue_message(
                    pbx=call.record.pbx, call_id=call.record.call_id,
                    kind=webhooks.STAFF_NOTE_KIND, seq=seq, destination=number,
                    body=webhooks.staff_note(event), now=now, not_before=not_before,
                    expires_at=(not_before or now) + config.outbox.max_age, group=group.name)
                queued += message_id is not None
        if queued:
            self._staff_queued(queued)

    async def texts_moved(self, moves: Sequence[tuple[int, str, float]]) -> None:
        """`text_sent` / `text_delivered` / `text_failed` for (message id, new state, at).

        A text submitted whose receipt overtook the SMSC's answer is already final when its
        submit is recorded: its final event follows its `text_sent`."""
        if not moves or not webhooks.wants_any(self._config().webhooks, _TEXT_EVENTS):
            return
        try:
            messages = {message.id: message for message in
                        await self._store().messages_by_ids([move[0] for move in moves])}
            events: list[webhooks.Event | None] = []
            for message_id, state, at in moves:
                message = messages.get(message_id)
                if message is None:
                    continue
                events.append(webhooks.text_event(message, state, at))
                if state == "submitted" and message.state in ("delivered", "undeliverable"):
                    events.append(webhooks.text_event(message, message.state,
                                                      message.final_at or at))
            await self._queue(events)
        except StoreError:
            raise
        except Exception as exc:
            log.error("could not queue the notifications of texts", error=repr(exc))

    async def reply(self, sender: str, destination: str, text: str, at: float,
                    inbound_id: int, keyword: str | None) -> None:
        if not webhooks.wants_any(self._config().webhooks, ["reply"]):
            return
        try:
            last = await self._store().latest_message_to(sender)
            await self._queue([webhooks.reply(sender, destination, text, at, inbound_id,
                                              keyword, last)])
        except StoreError:
            raise
        except Exception as exc:
            log.error("could not queue the notification of a reply", error=repr(exc))

    async def callback_attempt(self, campaign: int, attempt: int, number: str, group: str,
                               pbx: str, at: float) -> None:
        await self._queue_guarded("callback_attempt", lambda: webhooks.callback_attempt(
            campaign, attempt, number, group, pbx, at))

    async def callback_result(self, campaign: int, attempt: int, number: str, group: str,
                              result: str, campaign_state: str, detail: str,
                              at: float) -> None:
        await self._queue_guarded("callback_result", lambda: webhooks.callback_result(
            campaign, attempt, number, group, result, campaign_state, detail, at))

    async def _queue_guarded(self, name: str, build: Callable[[], webhooks.Event]) -> None:
        if not webhooks.wants_any(self._config().webhooks, [name]):
            return
        try:
            await self._queue([build()])
        except StoreError:
            raise
        except Exception as exc:  # never let a notification stop the call-backs
            log.error("could not queue a notification", event=name, error=repr(exc))

    async def opted_out(self, sender: str, keyword: str, at: float, new: bool) -> None:
        if not webhooks.wants_any(self._config().webhooks, ["opt_out"]):
            return
        try:
            last = await self._store().latest_message_to(sender)
            await self._queue([webhooks.opt_out(sender, keyword, at, new, last)])
        except StoreError:
            raise
        except Exception as exc:
            log.error("could not queue the notification of an opt-out", error=repr(exc))
