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

A PostgreSQL server that goes away is waited for, up to `store.outage_max`: the AMI intake
goes on, ended calls are held (`pipeline/outage` says so), nothing is sent, and the stages
carry on once the store has connected again (`_riding_out`). A store that cannot be written
(disk full, I/O error, read-only or corrupt file; the server away for longer) stops the
daemon at once: the sender stops taking texts, the SMSC is unbound and `run` returns 1, so
systemd's `Restart=on-failure` starts it again once the store can be written. Only the texts
in flight then may be sent twice; the restart marks them `duplicate_risk`.

The stages live in `mcdaemon.pipeline`, one module each: `intake` (AMI → tracker → policy →
store), `sending` (the dispatcher and the submit results), `receiving` (receipts and
replies), `housekeeping` (the once-a-second work), `heartbeat` (this daemon's row among
those sharing the store, and its share of the throughput) and `retention` (history past
store.retention removed in small batches). This module only builds them, connects them
(queues, events, callbacks) and runs and stops them, with signals, sd_notify and reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from mcdaemon.adapters import sdnotify
from mcdaemon.adapters.agi import AgiError, AgiHooks
from mcdaemon.adapters.ami import AmiConnection, AmiFeed
from mcdaemon.adapters.metrics import Metrics, MetricsError
from mcdaemon.adapters.smpp import SmppSender
from mcdaemon.config.load import reload_config
from mcdaemon.config.model import Config
from mcdaemon.config.reader import ConfigError
from mcdaemon.contacts.lookup import ContactNames
from mcdaemon.core.tracker import NEEDED_EVENTS, NEEDED_VARIABLES
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.pipeline.backfill import Backfill
from mcdaemon.pipeline.deciding import Decider, DecisionObserver
from mcdaemon.pipeline.heartbeat import Heartbeat
from mcdaemon.pipeline.housekeeping import Housekeeping
from mcdaemon.pipeline.intake import Clock, Intake
from mcdaemon.pipeline.outage import OutageWatch
from mcdaemon.pipeline.receiving import Receiver, SmppEvent
from mcdaemon.pipeline.retention import Retention
from mcdaemon.pipeline.sending import Dispatcher
from mcdaemon.store import StoreError, StoreInterface, StoreUnreachable, open_store
from mcdaemon.webhooks import delivery as webhooks
from mcdaemon.webhooks.notify import Notifier

log = structlog.get_logger("mcdaemon.service")

#: while the store is being opened (a migration), systemd is asked this often for more time
STARTING_NOTE_EVERY = 10.0


class Service:
    """The daemon. `run()` returns the process exit code."""

    def __init__(self, config: Config, *, config_path: str | Path | None = None,
                 clock: Clock = time.time, on_decision: DecisionObserver | None = None,
                 install_signal_handlers: bool = True) -> None:
        self.config = config
        self._config_path = Path(config_path) if config_path else None
        self._clock = clock
        self._install_signals = install_signal_handlers
        self._ami_queue = AmiFeed()  # bounded: a connection ahead of the consumer waits
        self._smpp_events: asyncio.Queue[SmppEvent] = asyncio.Queue()
        self._connections = [
            AmiConnection(pbx, self._ami_queue, event_names=NEEDED_EVENTS,
                          variables=NEEDED_VARIABLES) for pbx in config.ami]
        self._sender = SmppSender(config.smpp, self._smpp_events)
        self.metrics = Metrics.from_config(config)
        self._agi = AgiHooks(config.agi, groups=lambda: [g.name for g in self.config.groups],
                             region=lambda: self.config.region,
                             opted_out=lambda number: self.store.is_opted_out(number),
                             log_full_numbers=lambda: self.config.log_full_numbers)
        self._store: StoreInterface | None = None
        self._stop = asyncio.Event()
        self._store_failed = False
        self._link_status = ""  # what systemd was last told (STATUS=)
        self._contacts = ContactNames(config.contacts)  # {caller_name}: store, then lookup
        self._webhooks = webhooks.WebhookWorker(lambda: self.config.webhooks, clock=clock)
        self._notify = Notifier(lambda: self.store, lambda: self.config, self._webhooks, clock,
                                self._staff_notes_queued)
        # follow-up texts and call-back campaigns (mcdaemon.outreach.callbacks)
        self._outreach = Outreach(lambda: self.config,
                                  {conn.pbx: conn for conn in self._connections}, clock,
                                  notify=self._notify)
        # the stages (mcdaemon.pipeline): each reads the config and the store as they are now
        def current_config() -> Config:
            return self.config

        def current_store() -> StoreInterface:
            return self.store

        self._dispatcher = Dispatcher(current_config, current_store, sender=self._sender,
                                      metrics=self.metrics, clock=clock, stop=self._stop,
                                      notify=self._notify, outreach=self._outreach)
        # one decider for the calls seen live, adopted, and recovered from the queue_log
        self._decider = Decider(current_config, current_store, clock=clock,
                                metrics=self.metrics, contacts=self._contacts,
                                notify=self._notify, outreach=self._outreach,
                                sending=self._dispatcher, on_decision=on_decision)
        # the queue calls finished while no AMI link watched: from the queue_log, at a connect
        self._backfill = Backfill(current_config, current_store, clock=clock,
                                  decide=self._decider.decide)
        self._intake = Intake(current_config, current_store, queue=self._ami_queue,
                              metrics=self.metrics, outreach=self._outreach,
                              decider=self._decider, report_links=self._report_links,
                              link_moved=self._backfill.link_moved)
        self._receiver = Receiver(current_config, current_store, events=self._smpp_events,
                                  metrics=self.metrics, clock=clock, notify=self._notify,
                                  outreach=self._outreach,
                                  texts_queued=self._dispatcher.texts_queued,
                                  report_links=self._report_links)
        # this daemon's row among those sharing the store: its links, its throughput share
        self._heartbeat = Heartbeat(current_config, current_store,
                                    links=lambda: {conn.pbx: conn.state
                                                   for conn in self._connections},
                                    smsc=lambda: self._sender.state,
                                    watched=self._watch_connected,
                                    share=self._sender.share_throughput)
        self._housekeeping = Housekeeping(current_config, current_store, metrics=self.metrics,
                                          clock=clock, notify=self._notify,
                                          expire_calls=self._intake.expire,
                                          beat=self._heartbeat.beat)
        self._outage = OutageWatch(current_config, current_store,
                                   held=lambda: self._intake.undecided,
                                   dropped=lambda: self._intake.dropped)
        self._retention = Retention(current_config, current_store, clock=clock)

    # ------------------------------------------------------------------ lifecycle

    async def _open_store(self) -> StoreInterface:
        """Open (and migrate) the store; while a migration of a big store runs, systemd is
        asked every few seconds for more time to start (EXTEND_TIMEOUT_USEC), so its start
        timeout does not kill a daemon that is only indexing its history."""
        async def ask_for_time() -> None:
            while True:
                await asyncio.sleep(STARTING_NOTE_EVERY)
                sdnotify.notify(f"EXTEND_TIMEOUT_USEC={int(3 * STARTING_NOTE_EVERY * 1e6)}\n"
                                "STATUS=migrating the store (see the log)")

        asking = asyncio.create_task(ask_for_time())
        try:
            return await open_store(self.config.store)
        finally:
            asking.cancel()

    @property
    def store(self) -> StoreInterface:
        assert self._store is not None, "the store is opened by run()"
        return self._store

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        self._store = await self._open_store()
        try:
            await self.metrics.start()
            await self._agi.start()
        except (MetricsError, AgiError) as exc:
            log.error(str(exc))
            await self.metrics.stop()
            await self.store.close()
            return 1
        now = self._clock()
        try:
            recovered = await self.store.recover_in_flight(self.config.outbox.after_crash, now)
            if recovered:
                log.warning("texts found in flight after an unclean stop",
                            count=len(recovered), action=self.config.outbox.after_crash,
                            message_ids=recovered)
            await self._backfill.load()  # the last moments watched, before this start
            await self._heartbeat.beat(now)  # `status` lists it; the peers share the throughput
        except BaseException:  # a store that cannot write at start-up: stop, do not hang
            await self._agi.stop()
            await self.metrics.stop()
            await self.store.close()
            raise
        if self._install_signals:
            self._add_signal_handlers()
        await self._sender.start()
        workers = [asyncio.create_task(conn.run(), name=f"ami:{conn_cfg.name}")
                   for conn, conn_cfg in zip(self._connections, self.config.ami, strict=True)]
        workers += [
            asyncio.create_task(self._intake.consume(), name="tracker"),
            asyncio.create_task(self._intake.decide(), name="decider"),
            asyncio.create_task(self._dispatcher.dispatch(), name="dispatcher"),
            asyncio.create_task(self._dispatcher.record_results(), name="submit results"),
            asyncio.create_task(self._riding_out(self._receiver.consume), name="receipts"),
            asyncio.create_task(self._riding_out(self._housekeeping.run),
                                name="housekeeping"),
            asyncio.create_task(self._riding_out(self._retention.run), name="retention"),
            asyncio.create_task(self._outage.run(), name="outage watch"),
            asyncio.create_task(self._webhooks.run(self.store), name="webhooks"),
            asyncio.create_task(self._outreach.run(self.store), name="outreach"),
        ]
        log.info("mcdaemon started", pbxs=[p.name for p in self.config.ami],
                 store=self.config.store.address, smsc=f"{self.config.smpp.host}:"
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
                          f"stopping: the store {self.config.store.address} cannot be used: "
                          f"{error}", worker=task.get_name())
            else:
                log.error("a worker stopped unexpectedly", worker=task.get_name(),
                          error=repr(error))
        if not crashed and self.store.unreachable_since is not None:
            # asked to stop while the database is away: the shutdown's writes would wait
            # for it up to store.outage_max; what is held is said, as when giving up
            log.error("stopping while the store cannot be reached",
                      store=self.config.store.address)
            await self._stop_after_store_failure([*workers, stopper])
            return 1
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

    @staticmethod
    async def _riding_out(stage: Callable[[], Awaitable[None]]) -> None:
        """Run a stage again when the store's server went away under one of its `atomic()`
        blocks (nothing of it was kept; a reply or receipt stays unacknowledged, so the SMSC
        sends it again): its next store call waits for the server, or gives up."""
        while True:
            try:
                return await stage()
            except StoreUnreachable:
                continue

    async def _shutdown(self, workers: list[asyncio.Task[object]]) -> None:
        """Stop taking calls, let in-flight submits finish (or persist), unbind, close."""
        sdnotify.notify("STOPPING=1")
        log.info("stopping")
        await self._agi.stop()
        async with self.store.atomic():
            await self._watch_connected(self._clock())
        await self._close_ami()
        # the calls already decided are in the store; decide what the tracker has queued
        await self._intake.drain()
        # the dispatcher claims nothing more once _stop is set; what it claimed is sent
        # within a few seconds, or handed back unsent when the sender stops (a submit out
        # and unanswered then is recorded as a duplicate risk)
        await self._dispatcher.settle(timeout=4.0)
        with contextlib.suppress(Exception):
            await self._sender.stop(timeout=2.0)
        log.debug("shutdown: SMSC unbound")
        await self._dispatcher.settle(timeout=1.0)
        await self._dispatcher.store_results()
        log.debug("shutdown: in-flight submits settled", left=len(self._dispatcher.in_flight))
        # webhook requests in flight get a moment; the rest stay queued for the next start
        await self._webhooks.stop(timeout=2.0)
        await self._backfill.stop()
        await self._cancel(workers)
        await self._heartbeat.leave()
        await self._contacts.close()
        await self.metrics.stop()
        await self.store.close()
        log.info("stopped")

    async def _stop_after_store_failure(self, workers: list[asyncio.Task[object]]) -> None:
        """The store cannot keep anything: stop submitting at once (only the texts already
        out are at risk, and they stay `sending`, resent once and marked `duplicate_risk` at
        the restart), unbind, close. Nothing here writes to the store; all within seconds."""
        sdnotify.notify("STOPPING=1\nSTATUS=the store cannot be written")
        undecided = self._intake.undecided
        with contextlib.suppress(Exception):
            await self._sender.stop(timeout=0.5)
        await self._agi.stop()
        await self._close_ami()
        await self._webhooks.stop(timeout=0.5)
        with contextlib.suppress(Exception):
            await self._backfill.stop()
        await self._cancel(workers)
        if undecided or self._intake.dropped:
            log.error("calls that ended were not decided: the store could not record them",
                      count=undecided, dropped=self._intake.dropped)
        with contextlib.suppress(Exception):
            await self._contacts.close()
        with contextlib.suppress(Exception):
            await self.metrics.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.close(), 2.0)
        log.error("stopped: the store could not be written", path=self.config.store.address)

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
        changed = [name for name in ("ami", "smpp", "metrics", "agi", "daemon") if
                   getattr(new, name) != getattr(self.config, name)]
        if changed:
            log.warning("config reload: these sections need a restart to take effect",
                        sections=changed)
        self._intake.update_settings(new)
        self._contacts.update(new.contacts)
        self.config = new
        self.metrics.update_names(new)
        log.info("config reloaded", source=new.source)

    def _notify_ready(self) -> None:
        sdnotify.notify("READY=1")
        self._report_links()

    async def _watch_connected(self, now: float) -> None:
        """The PBXs connected are watched at `now` (the backfill's window starts there)."""
        await self._backfill.save(sorted(self._intake.connected), now)

    def _staff_notes_queued(self, count: int) -> None:
        self.metrics.text_transition("queued", count)
        self._dispatcher.texts_queued()

    def _report_links(self) -> None:
        """What systemd shows (`systemctl status`): which links are up."""
        trackers = self._intake.trackers
        watched = len(trackers)
        down = sorted(set(trackers) - self._intake.connected)
        status = f"watching {watched - len(down)} of {watched} PBX(s)"
        if down:
            status += f"; not connected: {', '.join(down[:5])}"
        if self._sender.state != "bound":
            status += f"; SMSC {self._sender.state}"
        if status != self._link_status:
            self._link_status = status
            sdnotify.notify(f"STATUS={status}")
