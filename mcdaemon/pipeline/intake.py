"""AMI → the decider: the trackers, and the calls they close handed over in batches.

The AMI consumer feeds each PBX's tracker and hands the calls that end to the decider
(`pipeline/deciding`). It never waits for the store: while one batch of decisions is being
written, the calls that end meanwhile gather into the next (group commit). At a connect the
calls in progress are adopted from Asterisk's channel list, and the calls that ended while
the link was down are given to the backfill when it covers the PBX (the queue_log knows how
they ended), else decided as they are (partial).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from mcdaemon.adapters.ami import AmiEvent, AmiEvents, AmiItem, AmiStatus
from mcdaemon.adapters.metrics import Metrics
from mcdaemon.config.model import Config
from mcdaemon.core.policy import prepare_caller
from mcdaemon.core.records import CallRecord
from mcdaemon.core.tracker import CallTracker
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.pipeline.deciding import Decider
from mcdaemon.store import StoreInterface

log = structlog.get_logger("mcdaemon.service")  # the name log lines carried before the move

Clock = Callable[[], float]
#: (pbx, state, at, the calls that ended unseen while it was down) -> those left to decide
LinkMoved = Callable[[str, str, float, list[CallRecord]], list[CallRecord]]

#: the AMI consumer lets the other tasks run after this many events in a row
CONSUMER_BATCH = 200
#: the most ended calls held undecided (while a PostgreSQL store's server is away): the
#: oldest are kept, the newer ones dropped and counted (a restart's queue_log backfill
#: recovers the queue calls among them)
HELD_MAX = 20_000


class Intake:
    """The trackers (one per PBX) and the calls they closed and not yet decided. Runs as two
    tasks: `consume()` and `decide()`."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 queue: asyncio.Queue[AmiItem], metrics: Metrics, outreach: Outreach,
                 decider: Decider, report_links: Callable[[], None],
                 link_moved: LinkMoved | None = None) -> None:
        self._config = config
        self._store = store
        self._queue = queue
        self._metrics = metrics
        self._outreach = outreach
        self._decider = decider
        self._report_links = report_links
        self._link_moved = link_moved  # the backfill's watched moments and blind windows
        initial = config()
        self.trackers = {pbx.name: CallTracker(pbx.name, initial.inbound, initial.region)
                         for pbx in initial.ami}
        #: the PBXs whose AMI connection is up
        self.connected: set[str] = set()
        self._ended: list[CallRecord] = []  # calls the tracker closed, not yet decided
        self._ended_ready = asyncio.Event()
        self._deciding = 0  # of those, the batch the decider has (held, if the store is away)
        #: ended calls dropped undecided: more than HELD_MAX were waiting for the store
        self.dropped = 0

    @property
    def undecided(self) -> int:
        """Calls that ended and are not decided yet (those being decided included)."""
        return len(self._ended) + self._deciding

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
        if not records:
            return
        room = HELD_MAX - self.undecided
        if len(records) > room:
            if self.dropped == 0:
                log.error("too many ended calls wait for the store: the newer ones are "
                          "dropped undecided", held=self.undecided, held_max=HELD_MAX)
            self.dropped += len(records) - max(room, 0)
            records = records[:max(room, 0)]
        self._ended.extend(records)
        self._ended_ready.set()

    async def decide(self) -> None:
        while True:
            await self._ended_ready.wait()
            self._ended_ready.clear()
            await self._decide_pending()

    async def _decide_pending(self) -> None:
        """Decide every call handed over so far (after the batch being written, if any)."""
        batch, self._ended = self._ended, []
        if batch:
            self._deciding = len(batch)
            try:
                await self._decider.decide(batch)
            finally:
                self._deciding = 0

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
            was_up = item.pbx in self.connected
            records = self._track_status(item)
            if self._link_moved is not None and (item.state == "connected" or was_up):
                records = self._link_moved(item.pbx, item.state, item.at, records)
            return records
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
