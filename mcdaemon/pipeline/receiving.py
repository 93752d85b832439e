"""SMSC → store: delivery receipts, replies (opt-outs, opt-ins) and the SMSC's bind states.

Each receipt or reply is answered to the SMSC (`acknowledge`) only once it is committed: the
SMSC sends again what a crash left unanswered, never what the store forgot. A reply is stored
with all it causes (an opt-out, its confirmation, its webhook events, stopped follow-ups) in
one transaction (`Store.atomic`); a run of receipts is stored in one transaction too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from mcdaemon.adapters.metrics import Metrics
from mcdaemon.adapters.smpp import BindState, MobileOriginated
from mcdaemon.config.model import Config
from mcdaemon.core import keywords
from mcdaemon.core.phone import to_e164
from mcdaemon.core.receipts import DeliveryReceipt
from mcdaemon.logs import mask_number
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.store import ReceiptIn, StoreInterface
from mcdaemon.webhooks.notify import Notifier

log = structlog.get_logger("mcdaemon.service")  # the name log lines carried before the move

Clock = Callable[[], float]
SmppEvent = DeliveryReceipt | MobileOriginated | BindState


class Receiver:
    """Consumes what the SMPP sender receives, in arrival order. Runs as one task:
    `consume()`."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 events: asyncio.Queue[SmppEvent], metrics: Metrics, clock: Clock,
                 notify: Notifier, outreach: Outreach, texts_queued: Callable[[], None],
                 report_links: Callable[[], None]) -> None:
        self._config = config
        self._store = store
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._notify = notify
        self._outreach = outreach
        self._texts_queued = texts_queued
        self._report_links = report_links

    async def consume(self) -> None:
        """Receipts, replies and bind states in arrival order; a run of receipts is stored
        in one transaction (a carrier often sends them in bursts). Each is answered to the
        SMSC (`acknowledge`) only once it is committed: the SMSC sends again what a crash
        left unanswered, never what the store forgot."""
        while True:
            items = [await self._events.get()]
            while not self._events.empty() and len(items) < 500:
                items.append(self._events.get_nowait())
            receipts: list[DeliveryReceipt] = []
            for item in items:
                if isinstance(item, DeliveryReceipt):
                    receipts.append(item)
                    continue
                await self._apply_receipts(receipts)
                receipts = []
                if isinstance(item, MobileOriginated):
                    await self._handle_reply(item)
                else:
                    self._metrics.smpp_bind_state(item.state)
                    self._report_links()
                    if item.state == "bound":
                        self._texts_queued()
            await self._apply_receipts(receipts)

    async def _apply_receipts(self, receipts: list[DeliveryReceipt]) -> None:
        if not receipts:
            return
        store = self._store()
        async with store.atomic():
            applied = await store.apply_receipts([
                ReceiptIn(item.receipted_id, item.text_id, item.state, item.error,
                          item.at, item.raw) for item in receipts])
            received = {message_id: item.at for item, message_id
                        in zip(receipts, applied.matched, strict=True)
                        if message_id is not None}
            await self._notify.texts_moved([
                (message_id, state, received.get(message_id, 0.0))
                for message_id, state in applied.finals.items()])
        for item, message_id in zip(receipts, applied.matched, strict=True):
            item.acknowledge()
            self._metrics.delivery_receipt(item.state)
            log.info("delivery receipt", smsc_id=item.smsc_id, state=item.state,
                     error=item.error, message_id=message_id)
        for state in ("delivered", "undeliverable"):
            self._metrics.text_transition(state, applied.settled.get(state, 0))

    async def _handle_reply(self, mo: MobileOriginated) -> None:
        """Store a reply and all it causes (an opt-out, its confirmation, its webhook
        events, stopped follow-ups) in one transaction, then answer the SMSC."""
        store = self._store()
        sender = to_e164(mo.source, self._config().region) or mo.source
        kind = keywords.classify_reply(mo.text)
        keyword = mo.text.strip()[:20]
        newly = False
        confirmation_id: int | None = None
        async with store.atomic():
            inbound_id = await store.add_inbound(sender, mo.destination, mo.text, mo.at)
            await self._outreach.reply(store, sender, kind, mo.at)
            if kind == "opt_out":
                newly = await store.opt_out(sender, keyword, mo.at)
                await self._notify.opted_out(sender, keyword, mo.at, newly)
                confirmation = self._config().policy.opt_out_confirmation
                if newly and confirmation:
                    confirmation_id = await store.enqueue_message(
                        pbx="-", call_id=f"optout:{sender}:{int(mo.at)}", kind="optout_confirm",
                        seq=0, destination=sender, body=confirmation, now=self._clock(),
                        not_before=None,
                        expires_at=self._clock() + self._config().outbox.max_age)
            else:
                await self._notify.reply(sender, mo.destination, mo.text, mo.at, inbound_id,
                                         kind)
                if kind == "opt_in":
                    await store.opt_in(sender, mo.at)
        mo.acknowledge()
        full = self._config().log_full_numbers
        if kind == "opt_out":
            log.info("opt-out received", caller=mask_number(sender, full), new=newly)
            if confirmation_id is not None:
                self._metrics.text_transition("queued")
                self._texts_queued()
        elif kind == "opt_in":
            log.info("opt-in received", caller=mask_number(sender, full))
        else:
            log.info("reply received", caller=mask_number(sender, full), length=len(mo.text))
