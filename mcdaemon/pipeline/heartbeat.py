"""This daemon's heartbeat among the daemons sharing the store, and its share of the throughput.

Once a second (from the housekeeping) one commit writes this daemon's row (`core.daemons`:
its process, its SMSC bind, each PBX link's state) with the PBXs' watched moments (the
backfill's), and reads the other daemons' rows: the daemons alive share `smpp.throughput`
equally, so a second daemon halves this one's rate within a second of its first beat, and
a peer that stops (its row deleted) or dies (its row goes stale after ALIVE_WITHIN) gives
its share back as soon. The links' states are written here, not as they change: 200 PBXs
reconnecting cost one commit a second, never one each on the AMI consumer's path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import structlog

from mcdaemon.config.model import Config
from mcdaemon.core.daemons import FORGET_AFTER, DaemonBeat, alive, process_id, read_beats
from mcdaemon.store import StoreInterface

log = structlog.get_logger("mcdaemon.service")


class Heartbeat:
    """`beat(now)` every second; `leave()` at a clean stop."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 links: Callable[[], Mapping[str, str]], smsc: Callable[[], str],
                 watched: Callable[[float], Awaitable[None]],
                 share: Callable[[int], None]) -> None:
        self._config = config
        self._store = store
        self._links = links  # PBX name -> its AMI link's state
        self._smsc = smsc  # the SMSC bind's state
        self._watched = watched  # stores the PBXs' watched moments (in the beat's commit)
        self._share = share  # told how many daemons alive share smpp.throughput
        self._process = process_id()
        self.id = config().daemon.name or self._process
        self.daemons_alive = 1
        self._twins: set[str] = set()  # other processes seen beating under this one's name

    async def beat(self, now: float) -> None:
        store = self._store()
        mine = DaemonBeat(self.id, self._process, self._smsc(), self._links(), now)
        async with store.atomic():
            beats = read_beats(await store.statuses())
            await store.set_status(mine.row, mine.value(), now)
            await self._watched(now)
            for gone in beats:
                if now - gone.seen > FORGET_AFTER:
                    await store.clear_status(gone.row)
        peers = [beat.id for beat in alive(beats, now) if beat.id != self.id]
        twin = next((beat for beat in alive(beats, now) if beat.id == self.id
                     and beat.process != self._process), None)
        if twin is not None and twin.process not in self._twins:  # both send the whole
            self._twins.add(twin.process)
            log.error(f"{self._config().source}: daemon.name: {self.id!r} is also the name of "
                      f"the daemon {twin.process}: give each daemon sharing the store a name "
                      "of its own", daemon=self.id)
        if len(peers) + 1 != self.daemons_alive:
            self.daemons_alive = len(peers) + 1
            throughput = self._config().smpp.throughput
            log.info("daemons sharing the store", alive=self.daemons_alive, peers=peers,
                     throughput=round(throughput / self.daemons_alive, 3),
                     account_throughput=throughput)
        self._share(self.daemons_alive)

    async def leave(self) -> None:
        """A clean stop: this daemon's row goes, so its peers take its share at once."""
        await self._store().clear_status(DaemonBeat(self.id, self._process).row)
