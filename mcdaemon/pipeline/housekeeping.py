"""The once-a-second work: the watchdog and the heartbeat (with the PBXs' links and watched
moments: `pipeline.heartbeat`), the leases of the texts in flight (renewed; another daemon's,
expired, taken over), the calls the trackers held too long, the texts too old to send, and
(every OUTBOX_SNAPSHOT_INTERVAL) receipts given up on and the outbox's gauges.

Expired texts are marked with their webhook events in one transaction (`Store.atomic`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from mcdaemon.adapters import sdnotify
from mcdaemon.adapters.metrics import OUTBOX_SNAPSHOT_INTERVAL, Metrics
from mcdaemon.config.model import Config
from mcdaemon.store import StoreInterface
from mcdaemon.webhooks.notify import Notifier

log = structlog.get_logger("mcdaemon.service")  # the name log lines carried before the move

Clock = Callable[[], float]

#: how often the housekeeping loop runs (expiry, TTL eviction, switch changes are read per call)
HOUSEKEEPING_INTERVAL = 1.0


class Housekeeping:
    """Runs as one task: `run()`. `expire_calls(now)` closes the calls the trackers held too
    long and hands them to the decider."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 metrics: Metrics, clock: Clock, notify: Notifier,
                 expire_calls: Callable[[float], None],
                 beat: Callable[[float], Awaitable[None]] | None = None) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._notify = notify
        self._expire_calls = expire_calls
        self._beat = beat  # the daemon's heartbeat (pipeline.heartbeat)

    async def _leases(self, store: StoreInterface, now: float) -> None:
        """Keep this daemon's texts in flight its own, and take over those of a daemon sharing
        the store that died (its leases expired): resent once, marked duplicate_risk (or
        dropped: outbox.after_crash), as after a restart."""
        await store.renew_leases(now)
        mode = self._config().outbox.after_crash
        taken = await store.recover_in_flight(mode, now)
        if taken:
            log.warning("took over the texts another daemon left in flight (it stopped "
                        "renewing their leases)", count=len(taken), action=mode,
                        message_ids=taken[:20])

    async def run(self) -> None:
        snapshot_due = 0.0
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            store = self._store()
            now = self._clock()
            if now >= snapshot_due:
                snapshot_due = now + OUTBOX_SNAPSHOT_INTERVAL
                if self._config().smpp.registered_delivery:
                    overdue = await store.give_up_receipts(
                        now, self._config().smpp.receipt_timeout)
                    self._metrics.text_transition("unknown", len(overdue))
                    if overdue:
                        log.warning("no delivery receipt came for these texts: marked unknown",
                                    count=len(overdue), message_ids=overdue[:20],
                                    receipt_timeout=self._config().smpp.receipt_timeout)
                self._metrics.observe_outbox(await store.outbox_stats(now))
            sdnotify.notify("WATCHDOG=1")
            if self._beat is not None:
                await self._beat(now)
            await self._leases(store, now)
            self._expire_calls(now)
            async with store.atomic():
                expired = await store.expire_due(now)
                await self._notify.texts_moved([(message_id, "expired", now)
                                                for message_id in expired])
            self._metrics.text_transition("expired", len(expired))
            if expired:
                log.warning("texts expired before they could be sent",
                            count=len(expired), max_age=self._config().outbox.max_age)
            await store.checkpoint()
