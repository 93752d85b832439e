"""Store → SMSC: the dispatcher and the submit results.

The dispatcher claims due texts only while the SMSC bind is up and the window has room, so a
text sits in `sending` only while its submit is really in flight. Each submit's result is
committed as soon as it comes: the results that arrive while one batch is being written form
the next (group commit, never a deferral); what the results cause (webhook events, follow-ups)
is written in the same transaction. The decider hands the texts it claims with its decisions
to `start_sending`, and anyone who queues texts calls `texts_queued` to wake the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
from collections.abc import Callable

import structlog

from mcdaemon.adapters.metrics import Metrics
from mcdaemon.adapters.smpp import SmppSender
from mcdaemon.config.model import Config
from mcdaemon.core.outbox import SubmitResult, submit_outcome
from mcdaemon.logs import mask_number
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.store import OutboxMessage, StoreInterface, StoreUnreachable, SubmitOutcome
from mcdaemon.webhooks.notify import Notifier

log = structlog.get_logger("mcdaemon.service")  # the name log lines carried before the move

Clock = Callable[[], float]

#: the longest the dispatcher sleeps when nothing wakes it (deferred texts become due)
DISPATCH_IDLE = 0.5
#: texts claimed beyond the window: what smpp.throughput sends in this many seconds
CLAIM_AHEAD = 0.25


def _retry_jitter() -> float:
    return random.uniform(0.8, 1.2)


class Dispatcher:
    """Claims due texts, hands them to the sender, commits their results. Runs as two tasks:
    `dispatch()` and `record_results()`."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 sender: SmppSender, metrics: Metrics, clock: Clock, stop: asyncio.Event,
                 notify: Notifier, outreach: Outreach) -> None:
        self._config = config
        self._store = store
        self._sender = sender
        self._metrics = metrics
        self._clock = clock
        self._stop = stop
        self._notify = notify
        self._outreach = outreach
        self._wake = asyncio.Event()
        #: whether due texts may be queued unclaimed (a freed window slot then wakes the
        #: dispatcher; otherwise it would claim nothing, a transaction for naught, per text)
        self._backlog = True
        self.in_flight: set[asyncio.Future[SubmitResult]] = set()
        #: submit results not yet stored: the next batch `record_results` commits
        self._results: list[tuple[OutboxMessage, SubmitResult, float]] = []
        self._results_ready = asyncio.Event()
        #: one batch of results written at a time (the results task and the shutdown), so
        #: batches are committed and logged in the order they were taken
        self._storing = asyncio.Lock()

    def texts_queued(self) -> None:
        """Texts are due that nobody claimed: the dispatcher claims them (and, while it
        finds more than the window takes, again at each free slot)."""
        self._backlog = True
        self._wake.set()

    def _claim_limit(self) -> int:
        """How many texts may be claimed and not yet settled: the window plus what this
        daemon's throughput sends in CLAIM_AHEAD seconds, so the sender always has the next
        text at hand when an answer frees a slot of the window (a claim per answer would set
        the pace), while a crash leaves few texts in `sending`."""
        window = self._config().smpp.window
        return window + max(window, math.ceil(self._sender.throughput * CLAIM_AHEAD))

    def claim_room(self) -> int:
        """How many due texts the decider may claim in its own commit: none unless bound and
        running."""
        return (self._claim_limit() - len(self.in_flight)
                if self._sender.state == "bound" and not self._stop.is_set() else 0)

    async def dispatch(self) -> None:
        while not self._stop.is_set():
            free = self.claim_room()
            if free <= 0:
                await self._sleep_until_woken(DISPATCH_IDLE)
                continue
            messages = await self._store().claim_due(self._clock(), free)
            self._backlog = len(messages) >= free
            if not messages:
                await self._sleep_until_woken(DISPATCH_IDLE)
                continue
            self.start_sending(messages)

    def start_sending(self, messages: list[OutboxMessage]) -> None:
        """Hand the texts to the sender; each result joins the next batch `record_results`
        commits. A callback per text, not a task: a storm's texts go out by the hundred."""
        for message in messages:
            submitted = self._sender.submit_soon(message.destination, message.body,
                                                 reference=message.id & 0xFF)
            self.in_flight.add(submitted)
            submitted.add_done_callback(functools.partial(self._send_finished, message))
        if messages:
            self._observe_window()

    async def settle(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the submits in flight to be answered."""
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=timeout)

    def _observe_window(self) -> None:
        window = self._config().smpp.window
        self._metrics.smpp_window(min(window, len(self.in_flight)), window)

    def _send_finished(self, message: OutboxMessage,
                       submitted: asyncio.Future[SubmitResult]) -> None:
        self.in_flight.discard(submitted)
        self._observe_window()
        if submitted.cancelled():
            pass
        elif (error := submitted.exception()) is not None:
            log.error("sending a text failed unexpectedly", error=repr(error))
        else:
            self._results.append((message, submitted.result(), self._clock()))
            self._results_ready.set()
        if self._backlog:  # a slot of the window is free and texts may be waiting for it
            self._wake.set()

    async def _sleep_until_woken(self, timeout: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set, and the dispatcher would never stop
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()

    async def record_results(self) -> None:
        """Commit the submit results as they come: those that arrive while one batch is
        being written form the next (group commit)."""
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            await self.store_results()

    async def store_results(self) -> None:
        """Store every submit result gathered so far in one transaction, then log each (again,
        once reconnected, if a PostgreSQL store's server went away meanwhile: the texts stay
        `sending`, this daemon's, until their results are kept)."""
        async with self._storing:
            batch, self._results = self._results, []
            while batch:
                try:
                    await self._store_batch(batch)
                    return
                except StoreUnreachable:
                    log.debug("the store went away while storing submit results: held",
                              results=len(batch))

    async def _store_batch(self, batch: list[tuple[OutboxMessage, SubmitResult, float]]
                           ) -> None:
        config = self._config()
        store = self._store()
        now = batch[-1][2]
        outcomes = [submit_outcome(message.id, message.attempts, result, now=now,
                                   outbox=config.outbox, jitter=_retry_jitter)
                    for message, result, _ in batch]
        async with store.atomic():
            moved = await store.record_submit_outcomes(outcomes, now)
            await self._notify.texts_moved([
                (message.id, outcome.state, at) for (message, _, at), outcome, ok
                in zip(batch, outcomes, moved, strict=True)
                if ok and outcome.state in ("submitted", "failed")])
            await self._outreach.texts_submitted(store, [
                outcome.message_id for outcome, ok in zip(outcomes, moved, strict=True)
                if ok and outcome.state == "submitted"])
        full = config.log_full_numbers
        for (message, result, at), outcome, ok in zip(batch, outcomes, moved, strict=True):
            fields = dict(message_id=message.id, call_id=message.call_id,
                          to=mask_number(message.destination, full))
            if ok:
                self._count_outcome(message, outcome, at)
            if outcome.state == "submitted":
                log.info("text submitted", smsc_ids=list(result.smsc_ids),
                         after_hangup=round(at - message.call_ended_at, 3)
                         if message.call_ended_at else None, **fields)
            elif outcome.state == "failed":
                log.warning("text failed", status=result.status, detail=outcome.detail,
                            **fields)
            else:
                log.info("text will be retried", outcome=result.outcome, status=result.status,
                         detail=result.detail, duplicate_risk=result.in_doubt,
                         retry_in=round((outcome.not_before or at) - at, 1), **fields)
        if any(outcome.state == "queued" for outcome in outcomes):
            self.texts_queued()

    def _count_outcome(self, message: OutboxMessage, outcome: SubmitOutcome,
                       at: float) -> None:
        if outcome.state == "submitted":
            # timed only when it left as soon as it could: not a text deferred on purpose
            # (opening hours) nor one without a call (an opt-out confirmation)
            prompt = (message.call_ended_at is not None and message.kind == "first"
                      and message.not_before <= message.created_at + 1.0)
            self._metrics.text_submitted(at - message.call_ended_at if prompt
                                         and message.call_ended_at is not None else None)
        elif outcome.state == "failed":
            self._metrics.text_transition("failed")
        elif not outcome.refund_attempt:
            self._metrics.text_transition("retry")
