"""`mcdaemon run`: one asyncio process wiring the pipeline.

    AMI connections ──► queue ──► tracker ──► policy ──► store (call + outbox, one transaction)
                                                              │
    SMPP sender ◄── dispatcher (claims due messages) ◄────────┘
        │
        └──► receipts / MO ──► store (delivered, replies, opt-outs) ──► deliver_sm_resp

Each stage talks to the next through the store or an asyncio queue, never by reaching back.
The dispatcher claims messages only while the SMSC bind is up, so a message sits in `sending`
only while its submit is really in flight: what a crash leaves there is what may have gone out.

Durable before acknowledged: a decision is committed before its text is handed to the sender,
a submit's result is committed as soon as it comes (the results that arrive while one batch is
being written form the next: group commit, never a deferral), and a receipt or a reply is
answered to the SMSC only once it is stored. What a state change causes (webhook events, staff
notes, follow-ups, call-back campaigns) is written in the same transaction (`Store.atomic`).

A store that cannot be written (disk full, I/O error, read-only or corrupt file) stops the
daemon at once: the sender stops taking texts, the SMSC is unbound and `run` returns 1, so
systemd's `Restart=on-failure` starts it again once the store can be written. Only the texts
in flight then may be sent twice; the restart marks them `duplicate_risk`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import os
import random
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from mcdaemon.adapters import sdnotify
from mcdaemon.adapters.agi import AgiError, AgiHooks
from mcdaemon.adapters.ami import AmiConnection, AmiEvent, AmiEvents, AmiItem, AmiStatus
from mcdaemon.adapters.metrics import OUTBOX_SNAPSHOT_INTERVAL, Metrics, MetricsError
from mcdaemon.adapters.smpp import BindState, MobileOriginated, SmppSender
from mcdaemon.config.load import reload_config
from mcdaemon.config.model import Config, GroupConfig
from mcdaemon.config.reader import ConfigError
from mcdaemon.contacts.lookup import ContactNames
from mcdaemon.core import keywords
from mcdaemon.core.outbox import SubmitResult, submit_outcome
from mcdaemon.core.phone import to_e164
from mcdaemon.core.policy import (
    decide_batch,
    destination_prefix,
    is_fraud_shield_trip,
    match_group,
    prepare_caller,
)
from mcdaemon.core.receipts import DeliveryReceipt
from mcdaemon.core.records import CallRecord, Decision, PolicyView
from mcdaemon.core.tracker import NEEDED_EVENTS, NEEDED_VARIABLES, CallTracker
from mcdaemon.logs import mask_number
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.store import NewCall, OutboxMessage, ReceiptIn, Store, StoreError, SubmitOutcome
from mcdaemon.webhooks import delivery as webhooks
from mcdaemon.webhooks.notify import Notifier

log = structlog.get_logger("mcdaemon.service")


def heartbeat_value() -> str:
    """What the daemon writes in its heartbeat row: `PID@HOST`, so `status` on the same host
    (not from another container or machine sharing the file) can ask whether it still runs."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _retry_jitter() -> float:
    return random.uniform(0.8, 1.2)

Clock = Callable[[], float]
DecisionObserver = Callable[[CallRecord, Decision], None]

#: how often the housekeeping loop runs (expiry, TTL eviction, switch changes are read per call)
HOUSEKEEPING_INTERVAL = 1.0
#: the longest the dispatcher sleeps when nothing wakes it (deferred texts become due)
DISPATCH_IDLE = 0.5
#: texts claimed beyond the window: what smpp.throughput sends in this many seconds
CLAIM_AHEAD = 0.25
#: the AMI consumer lets the other tasks run after this many events in a row
CONSUMER_BATCH = 200


def _may_text(record: CallRecord, group: GroupConfig | None, view: PolicyView) -> bool:
    """Worth a contact name: a missed, whole call its group texts about, not opted out (the
    lookup is not asked about calls that get no text anyway)."""
    return (record.missed and not (record.partial or record.evicted) and group is not None
            and record.outcome in group.triggers and not view.opted_out)


class Service:
    """The daemon. `run()` returns the process exit code."""

    def __init__(self, config: Config, *, config_path: str | Path | None = None,
                 clock: Clock = time.time, on_decision: DecisionObserver | None = None,
                 install_signal_handlers: bool = True) -> None:
        self.config = config
        self._config_path = Path(config_path) if config_path else None
        self._clock = clock
        self._on_decision = on_decision
        self._install_signals = install_signal_handlers
        self._ami_queue: asyncio.Queue[AmiItem] = asyncio.Queue()
        self._smpp_events: asyncio.Queue[DeliveryReceipt | MobileOriginated | BindState] = (
            asyncio.Queue())
        self._trackers = {pbx.name: CallTracker(pbx.name, config.inbound, config.region)
                          for pbx in config.ami}
        self._connections = [
            AmiConnection(pbx, self._ami_queue, event_names=NEEDED_EVENTS,
                          variables=NEEDED_VARIABLES) for pbx in config.ami]
        self._sender = SmppSender(config.smpp, self._smpp_events)
        self.metrics = Metrics.from_config(config)
        self._agi = AgiHooks(config.agi, groups=lambda: [g.name for g in self.config.groups],
                             region=lambda: self.config.region,
                             opted_out=lambda number: self.store.is_opted_out(number),
                             log_full_numbers=lambda: self.config.log_full_numbers)
        self._store: Store | None = None
        self._wake_dispatcher = asyncio.Event()
        #: whether due texts may be queued unclaimed (a freed window slot then wakes the
        #: dispatcher; otherwise it would claim nothing, a transaction for naught, per text)
        self._backlog = True
        self._stop = asyncio.Event()
        self._in_flight: set[asyncio.Future[SubmitResult]] = set()
        self._ended: list[CallRecord] = []  # calls the tracker closed, not yet decided
        self._ended_ready = asyncio.Event()
        self._deciding = asyncio.Lock()  # one batch of decisions at a time (caps count across)
        #: submit results not yet stored: the next batch `_record_results` commits
        self._results: list[tuple[OutboxMessage, SubmitResult, float]] = []
        self._results_ready = asyncio.Event()
        self._store_failed = False
        self._link_status = ""  # what systemd was last told (STATUS=)
        self._connected: set[str] = set()
        self._tripped_reasons: set[str] = set()
        self._contacts = ContactNames(config.contacts)  # {caller_name}: store, then lookup
        self._webhooks = webhooks.WebhookWorker(lambda: self.config.webhooks, clock=clock)
        self._notify = Notifier(lambda: self.store, lambda: self.config, self._webhooks, clock,
                                self._staff_notes_queued)
        # follow-up texts and call-back campaigns (mcdaemon.outreach.callbacks)
        self._outreach = Outreach(lambda: self.config,
                                  {conn.pbx: conn for conn in self._connections}, clock,
                                  notify=self._notify)

    # ------------------------------------------------------------------ lifecycle

    @property
    def store(self) -> Store:
        assert self._store is not None, "the store is opened by run()"
        return self._store

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        self._store = await Store.open(self.config.store.path)
        try:
            await self.metrics.start()
            await self._agi.start()
        except (MetricsError, AgiError) as exc:
            log.error(str(exc))
            await self.metrics.stop()
            await self.store.close()
            return 1
        now = self._clock()
        recovered = await self.store.recover_in_flight(self.config.outbox.after_crash, now)
        if recovered:
            log.warning("texts found in flight after an unclean stop",
                        count=len(recovered), action=self.config.outbox.after_crash,
                        message_ids=recovered)
        await self.store.set_status("daemon", "running", now)
        await self.store.set_status("smpp", "binding", now)
        if self._install_signals:
            self._add_signal_handlers()
        await self._sender.start()
        workers = [asyncio.create_task(conn.run(), name=f"ami:{conn_cfg.name}")
                   for conn, conn_cfg in zip(self._connections, self.config.ami, strict=True)]
        workers += [
            asyncio.create_task(self._consume_ami(), name="tracker"),
            asyncio.create_task(self._decide_ended_calls(), name="decider"),
            asyncio.create_task(self._dispatch(), name="dispatcher"),
            asyncio.create_task(self._record_results(), name="submit results"),
            asyncio.create_task(self._consume_smpp(), name="receipts"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
            asyncio.create_task(self._webhooks.run(self.store), name="webhooks"),
            asyncio.create_task(self._outreach.run(self.store), name="outreach"),
        ]
        log.info("mcdaemon started", pbxs=[p.name for p in self.config.ami],
                 store=self.config.store.path, smsc=f"{self.config.smpp.host}:"
                 f"{self.config.smpp.port}")
        # ready: the config is valid, the store open and the workers started; links that are
        # down are reported (STATUS=, `mcdaemon status`, the log) and retried, not waited for
        self._notify_ready()
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stopper, *workers], return_when=asyncio.FIRST_COMPLETED)
        crashed = [task for task in done if task is not stopper and task.exception()]
        for task in crashed:
            error = task.exception()
            if isinstance(error, StoreError | sqlite3.Error):
                self._store_failed = True
                log.error(f"stopping: {error}" if isinstance(error, StoreError) else
                          f"stopping: the store {self.config.store.path} cannot be used: "
                          f"{error}", worker=task.get_name())
            else:
                log.error("a worker stopped unexpectedly", worker=task.get_name(),
                          error=repr(error))
        if self._store_failed:
            await self._stop_after_store_failure([*workers, stopper])
        else:
            try:
                await self._shutdown([*workers, stopper])
            except (StoreError, sqlite3.Error) as exc:
                log.error(f"stopping: {exc}")
                await self._stop_after_store_failure([*workers, stopper])
                return 1
        return 1 if crashed else 0

    async def _shutdown(self, workers: list[asyncio.Task[object]]) -> None:
        """Stop taking calls, let in-flight submits finish (or persist), unbind, close."""
        sdnotify.notify("STOPPING=1")
        log.info("stopping")
        await self._agi.stop()
        await self._close_ami()
        # the calls already decided are in the store; decide what the tracker has queued
        await self._drain_ami_queue()
        # the dispatcher claims nothing more once _stop is set; what it claimed is sent
        # within a few seconds, or handed back unsent when the sender stops (a submit out
        # and unanswered then is recorded as a duplicate risk)
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=4.0)
        with contextlib.suppress(Exception):
            await self._sender.stop(timeout=2.0)
        log.debug("shutdown: SMSC unbound")
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=1.0)
        async with self._deciding:  # the results task may be writing a batch
            await self._store_results()
        log.debug("shutdown: in-flight submits settled", left=len(self._in_flight))
        # webhook requests in flight get a moment; the rest stay queued for the next start
        await self._webhooks.stop(timeout=2.0)
        await self._cancel(workers)
        await self.store.set_status("daemon", "stopped", self._clock())
        await self.store.set_status("smpp", "down", self._clock())
        await self._contacts.close()
        await self.metrics.stop()
        await self.store.close()
        log.info("stopped")

    async def _stop_after_store_failure(self, workers: list[asyncio.Task[object]]) -> None:
        """The store cannot keep anything: stop submitting at once (only the texts already
        out are at risk, and they stay `sending`, resent once and marked `duplicate_risk` at
        the restart), unbind, close. Nothing here writes to the store; all within seconds."""
        sdnotify.notify("STOPPING=1\nSTATUS=the store cannot be written")
        undecided = len(self._ended)
        with contextlib.suppress(Exception):
            await self._sender.stop(timeout=0.5)
        await self._agi.stop()
        await self._close_ami()
        await self._webhooks.stop(timeout=0.5)
        await self._cancel(workers)
        if undecided:
            log.error("calls that ended were not decided: the store could not record them",
                      count=undecided)
        with contextlib.suppress(Exception):
            await self._contacts.close()
        with contextlib.suppress(Exception):
            await self.metrics.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.close(), 2.0)
        log.error("stopped: the store could not be written", path=self.config.store.path)

    async def _close_ami(self) -> None:
        async def close(conn: AmiConnection) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.stop(), 2.0)

        await asyncio.gather(*(close(conn) for conn in self._connections))
        log.debug("shutdown: AMI closed")

    @staticmethod
    async def _cancel(workers: list[asyncio.Task[object]]) -> None:
        for task in workers:
            task.cancel()
        _, stuck = await asyncio.wait(workers, timeout=3.0)
        if stuck:
            log.error("workers did not stop", workers=[task.get_name() for task in stuck])
        log.debug("shutdown: workers stopped")

    def _add_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """SIGHUP: read the config again; a bad one is refused and the old one stays."""
        if self._config_path is None:
            return
        try:
            new = reload_config(self.config, self._config_path)
        except ConfigError as exc:
            log.error("config reload refused; the running config stays",
                      problems=exc.problems)
            return
        changed = [name for name in ("ami", "smpp", "metrics", "agi") if
                   getattr(new, name) != getattr(self.config, name)]
        if changed:
            log.warning("config reload: these sections need a restart to take effect",
                        sections=changed)
        for tracker in self._trackers.values():
            tracker.update_settings(new.inbound, new.region)
        self._contacts.update(new.contacts)
        self.config = new
        self.metrics.update_names(new)
        log.info("config reloaded", source=new.source)

    def _notify_ready(self) -> None:
        sdnotify.notify("READY=1")
        self._report_links()

    # ------------------------------------------------------------------ AMI → store

    async def _consume_ami(self) -> None:
        """Feed the tracker, handing the calls that end to the decider. It never waits for
        the store: while one batch of decisions is being written, the calls that end meanwhile
        gather into the next (group commit), and a quiet PBX gets each call decided at once."""
        queue = self._ami_queue
        while True:
            item = await queue.get()
            if isinstance(item, AmiEvents):  # a read's events: nearly every item
                for count, event in enumerate(item, start=1):
                    self._hand_to_decider(self._track_event(event))
                    if count % CONSUMER_BATCH == 0:
                        await asyncio.sleep(0)  # a long read: let the decider write meanwhile
            else:
                self._hand_to_decider(await self._take(item))

    def _hand_to_decider(self, records: list[CallRecord]) -> None:
        if records:
            self._ended.extend(records)
            self._ended_ready.set()

    async def _decide_ended_calls(self) -> None:
        while True:
            await self._ended_ready.wait()
            self._ended_ready.clear()
            await self._decide_pending()

    async def _decide_pending(self) -> None:
        """Decide every call handed over so far, after the batch being written, if any."""
        async with self._deciding:
            batch, self._ended = self._ended, []
            if batch:
                await self._decide_and_store(batch)

    async def _drain_ami_queue(self) -> None:
        while not self._ami_queue.empty():
            self._hand_to_decider(await self._take(self._ami_queue.get_nowait()))
        await self._decide_pending()

    async def _take(self, item: AmiItem) -> list[CallRecord]:
        """One item of the AMI queue, whole: a connection state is also recorded for
        `status`."""
        if isinstance(item, AmiStatus):
            self.metrics.ami_connection_state(item.pbx, item.state)
            await self.store.set_status(f"ami:{item.pbx}", item.state, item.at)
            return self._track_status(item)
        if isinstance(item, AmiEvents):
            return [record for event in item for record in self._track_event(event)]
        return self._track_event(item)

    def _track_event(self, event: AmiEvent) -> list[CallRecord]:
        self._outreach.observe(event)
        tracker = self._trackers[event.pbx]
        records = tracker.feed(event.fields, event.at)
        for caller in tracker.take_new_callers():
            prepare_caller(caller, self.config)
        return records

    def _track_status(self, item: AmiStatus) -> list[CallRecord]:
        log.debug("AMI connection", pbx=item.pbx, state=item.state, detail=item.detail)
        if item.state == "connected":
            self._connected.add(item.pbx)
        else:
            self._connected.discard(item.pbx)
        self._report_links()
        if item.state == "connected" and item.live_uniqueids is not None:
            return self._trackers[item.pbx].reconcile(set(item.live_uniqueids), item.at)
        return []

    def _report_links(self) -> None:
        """What systemd shows (`systemctl status`): which links are up."""
        watched = len(self._trackers)
        down = sorted(set(self._trackers) - self._connected)
        status = f"watching {watched - len(down)} of {watched} PBX(s)"
        if down:
            status += f"; not connected: {', '.join(down[:5])}"
        if self._sender.state != "bound":
            status += f"; SMSC {self._sender.state}"
        if status != self._link_status:
            self._link_status = status
            sdnotify.notify(f"STATUS={status}")

    async def _decide_and_store(self, records: list[CallRecord]) -> None:
        """Decide every record, then write them all in one transaction (a storm of hangups
        costs one commit). Texts decided earlier in the same batch count for later ones."""
        config = self.config
        now = self._clock()
        groups = [match_group(record, config) for record in records]
        prefixes = [destination_prefix(record.caller_e164, config) if record.caller_e164
                    else None for record in records]
        views = await self.store.policy_views(
            [(record.caller_e164, group.name if group else None, prefix)
             for record, group, prefix in zip(records, groups, prefixes, strict=True)], now)
        names = await self._contacts.names(self.store, [
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
        claim = (self._claim_limit() - len(self._in_flight)
                 if self._sender.state == "bound" and not self._stop.is_set() else 0)
        async with self.store.atomic():
            message_ids, claimed = await self.store.record_calls_and_claim(
                decided, now=now, destinations=destinations, claim=claim)
            await self._notify.calls_decided(decided, message_ids)
            await self._outreach.calls_decided(self.store, decided)
        self._start_sending(claimed)
        self.metrics.text_transition("queued", sum(1 for message_id in message_ids
                                                   if message_id is not None))
        for call, message_id in zip(decided, message_ids, strict=True):
            self._log_decision(call.record, call.decision, message_id)
            self.metrics.call_decided(call.record, call.decision)
            if self._on_decision is not None:
                self._on_decision(call.record, call.decision)
        if sum(message_id is not None for message_id in message_ids) > len(claimed):
            self._texts_queued()  # texts deferred, or beyond the window: queued

    def _texts_queued(self) -> None:
        """Texts are due that nobody claimed: the dispatcher claims them (and, while it
        finds more than the window takes, again at each free slot)."""
        self._backlog = True
        self._wake_dispatcher.set()

    def _staff_notes_queued(self, count: int) -> None:
        self.metrics.text_transition("queued", count)
        self._texts_queued()

    def _log_decision(self, record: CallRecord, decision: Decision,
                      message_id: int | None) -> None:
        full = self.config.log_full_numbers
        fields: dict[str, object] = dict(pbx=record.pbx, call_id=record.call_id,
                      caller=mask_number(record.caller_e164 or record.caller, full),
                      outcome=str(record.outcome), group=decision.group,
                      decision="text" if decision.text else "no_text", reason=decision.reason)
        if decision.detail:
            fields["detail"] = decision.detail
        if message_id is not None:
            fields["message_id"] = message_id
        if decision.text and message_id is None:
            fields["duplicate"] = "call already recorded; no second text"
        if is_fraud_shield_trip(decision.reason) and decision.reason not in self._tripped_reasons:
            self._tripped_reasons.add(decision.reason)
            log.error("fraud shield tripped: texts are being refused", reason=decision.reason,
                      detail=decision.detail)
        log.info("call decided", **fields)

    # ------------------------------------------------------------------ store → SMSC

    def _claim_limit(self) -> int:
        """How many texts may be claimed and not yet settled: the window plus what the
        throughput sends in CLAIM_AHEAD seconds, so the sender's thread always has the next
        text at hand when an answer frees a slot of the window (a claim per answer would set
        the pace), while a crash leaves few texts in `sending`."""
        smpp = self.config.smpp
        return smpp.window + max(smpp.window, math.ceil(smpp.throughput * CLAIM_AHEAD))

    async def _dispatch(self) -> None:
        while not self._stop.is_set():
            free = self._claim_limit() - len(self._in_flight)
            if self._sender.state != "bound" or free <= 0:
                await self._sleep_until_woken(DISPATCH_IDLE)
                continue
            messages = await self.store.claim_due(self._clock(), free)
            self._backlog = len(messages) >= free
            if not messages:
                await self._sleep_until_woken(DISPATCH_IDLE)
                continue
            self._start_sending(messages)

    def _start_sending(self, messages: list[OutboxMessage]) -> None:
        """Hand the texts to the sender; each result joins the next batch `_record_results`
        commits. A callback per text, not a task: a storm's texts go out by the hundred."""
        for message in messages:
            submitted = self._sender.submit_soon(message.destination, message.body,
                                                 reference=message.id & 0xFF)
            self._in_flight.add(submitted)
            submitted.add_done_callback(functools.partial(self._send_finished, message))
        if messages:
            self._observe_window()

    def _observe_window(self) -> None:
        window = self.config.smpp.window
        self.metrics.smpp_window(min(window, len(self._in_flight)), window)

    def _send_finished(self, message: OutboxMessage,
                       submitted: asyncio.Future[SubmitResult]) -> None:
        self._in_flight.discard(submitted)
        self._observe_window()
        if submitted.cancelled():
            pass
        elif (error := submitted.exception()) is not None:
            log.error("sending a text failed unexpectedly", error=repr(error))
        else:
            self._results.append((message, submitted.result(), self._clock()))
            self._results_ready.set()
        if self._backlog:  # a slot of the window is free and texts may be waiting for it
            self._wake_dispatcher.set()

    async def _sleep_until_woken(self, timeout: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set, and the dispatcher would never stop
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake_dispatcher.wait()
        self._wake_dispatcher.clear()

    async def _record_results(self) -> None:
        """Commit the submit results as they come: those that arrive while one batch is
        being written form the next (group commit)."""
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            await self._store_results()

    async def _store_results(self) -> None:
        """Store every submit result gathered so far in one transaction, then log each."""
        batch, self._results = self._results, []
        if not batch:
            return
        now = batch[-1][2]
        outcomes = [submit_outcome(message.id, message.attempts, result, now=now,
                                   outbox=self.config.outbox, jitter=_retry_jitter)
                    for message, result, _ in batch]
        async with self.store.atomic():
            moved = await self.store.record_submit_outcomes(outcomes, batch[-1][2])
            await self._notify.texts_moved([
                (message.id, outcome.state, at) for (message, _, at), outcome, ok
                in zip(batch, outcomes, moved, strict=True)
                if ok and outcome.state in ("submitted", "failed")])
            await self._outreach.texts_submitted(self.store, [
                outcome.message_id for outcome, ok in zip(outcomes, moved, strict=True)
                if ok and outcome.state == "submitted"])
        full = self.config.log_full_numbers
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
            self._texts_queued()

    def _count_outcome(self, message: OutboxMessage, outcome: SubmitOutcome,
                       at: float) -> None:
        if outcome.state == "submitted":
            # timed only when it left as soon as it could: not a text deferred on purpose
            # (opening hours) nor one without a call (an opt-out confirmation)
            prompt = (message.call_ended_at is not None and message.kind == "first"
                      and message.not_before <= message.created_at + 1.0)
            self.metrics.text_submitted(at - message.call_ended_at if prompt
                                        and message.call_ended_at is not None else None)
        elif outcome.state == "failed":
            self.metrics.text_transition("failed")
        elif not outcome.refund_attempt:
            self.metrics.text_transition("retry")

    # ------------------------------------------------------------------ SMSC → store

    async def _consume_smpp(self) -> None:
        """Receipts, replies and bind states in arrival order; a run of receipts is stored
        in one transaction (a carrier often sends them in bursts). Each is answered to the
        SMSC (`acknowledge`) only once it is committed: the SMSC sends again what a crash
        left unanswered, never what the store forgot."""
        while True:
            items = [await self._smpp_events.get()]
            while not self._smpp_events.empty() and len(items) < 500:
                items.append(self._smpp_events.get_nowait())
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
                    self.metrics.smpp_bind_state(item.state)
                    await self.store.set_status("smpp", item.state, item.at)
                    self._report_links()
                    if item.state == "bound":
                        self._texts_queued()
            await self._apply_receipts(receipts)

    async def _apply_receipts(self, receipts: list[DeliveryReceipt]) -> None:
        if not receipts:
            return
        async with self.store.atomic():
            applied = await self.store.apply_receipts([
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
            self.metrics.delivery_receipt(item.state)
            log.info("delivery receipt", smsc_id=item.smsc_id, state=item.state,
                     error=item.error, message_id=message_id)
        for state in ("delivered", "undeliverable"):
            self.metrics.text_transition(state, applied.settled.get(state, 0))

    async def _handle_reply(self, mo: MobileOriginated) -> None:
        """Store a reply and all it causes (an opt-out, its confirmation, its webhook
        events, stopped follow-ups) in one transaction, then answer the SMSC."""
        sender = to_e164(mo.source, self.config.region) or mo.source
        kind = keywords.classify_reply(mo.text)
        keyword = mo.text.strip()[:20]
        newly = False
        confirmation_id: int | None = None
        async with self.store.atomic():
            inbound_id = await self.store.add_inbound(sender, mo.destination, mo.text, mo.at)
            await self._outreach.reply(self.store, sender, kind, mo.at)
            if kind == "opt_out":
                newly = await self.store.opt_out(sender, keyword, mo.at)
                await self._notify.opted_out(sender, keyword, mo.at, newly)
                confirmation = self.config.policy.opt_out_confirmation
                if newly and confirmation:
                    confirmation_id = await self.store.enqueue_message(
                        pbx="-", call_id=f"optout:{sender}:{int(mo.at)}", kind="optout_confirm",
                        seq=0, destination=sender, body=confirmation, now=self._clock(),
                        not_before=None, expires_at=self._clock() + self.config.outbox.max_age)
            else:
                await self._notify.reply(sender, mo.destination, mo.text, mo.at, inbound_id,
                                         kind)
                if kind == "opt_in":
                    await self.store.opt_in(sender, mo.at)
        mo.acknowledge()
        full = self.config.log_full_numbers
        if kind == "opt_out":
            log.info("opt-out received", caller=mask_number(sender, full), new=newly)
            if confirmation_id is not None:
                self.metrics.text_transition("queued")
                self._texts_queued()
        elif kind == "opt_in":
            log.info("opt-in received", caller=mask_number(sender, full))
        else:
            log.info("reply received", caller=mask_number(sender, full), length=len(mo.text))

    # ------------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        snapshot_due = 0.0
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            now = self._clock()
            if now >= snapshot_due:
                snapshot_due = now + OUTBOX_SNAPSHOT_INTERVAL
                if self.config.smpp.registered_delivery:
                    overdue = await self.store.give_up_receipts(
                        now, self.config.smpp.receipt_timeout)
                    self.metrics.text_transition("unknown", len(overdue))
                    if overdue:
                        log.warning("no delivery receipt came for these texts: marked unknown",
                                    count=len(overdue), message_ids=overdue[:20],
                                    receipt_timeout=self.config.smpp.receipt_timeout)
                self.metrics.observe_outbox(await self.store.outbox_stats(now))
            sdnotify.notify("WATCHDOG=1")
            await self.store.set_status("heartbeat", heartbeat_value(), now)
            records: list[CallRecord] = []
            for tracker in self._trackers.values():
                records += tracker.expire(now)
            self._hand_to_decider(records)
            async with self.store.atomic():
                expired = await self.store.expire_due(now)
                await self._notify.texts_moved([(message_id, "expired", now)
                                                for message_id in expired])
            self.metrics.text_transition("expired", len(expired))
            if expired:
                log.warning("texts expired before they could be sent",
                            count=len(expired), max_age=self.config.outbox.max_age)
            await self.store.checkpoint()
