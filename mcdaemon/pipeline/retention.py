"""Retention: removes history past `store.retention`, a small batch at a time, and gives the
space back to the file system, off the decision path.

Each step is a few short transactions (`Store.prune_step`: at most `PRUNE_BATCH` rows of each
kind) followed by a short `release_space` (SQLite; PostgreSQL's autovacuum reuses the space
itself, and every daemon sharing it prunes: a row another removed first is simply not
there); between steps the stage sleeps, so a decision
waits at most one of them. A backlog (the first run on an old store, a shorter retention)
is worked off at a few thousand rows a second; once there is nothing to remove, the stage
looks again every `IDLE` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from mcdaemon.config.model import Config
from mcdaemon.store import StoreInterface

log = structlog.get_logger("mcdaemon.retention")

Clock = Callable[[], float]

#: rows of each kind one step removes at most
PRUNE_BATCH = 500
#: bytes one step gives back to the file system at most (2,048 pages of an older store's 4
#: KB, 512 of a new one's 16 KB): what one short write moves
RELEASE_BYTES = 8 * 1024 * 1024
#: pause between steps while there is a backlog (seconds)
BUSY_PAUSE = 0.2
#: how often to look for history past its retention once there is none (seconds)
IDLE = 60.0


class Retention:
    """Runs as one task: `run()`; `step()` is one batch."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 clock: Clock) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._removed: dict[str, int] = {}  # of the pass under way, for its log line

    async def run(self) -> None:
        while True:
            busy = await self.step()
            await asyncio.sleep(BUSY_PAUSE if busy else IDLE)

    async def step(self) -> bool:
        """One batch of each kind, then some space given back; whether more is left to do."""
        store = self._store()
        removed = await store.prune_step(self._config().store.retention, self._clock(),
                                         limit=PRUNE_BATCH)
        for table, count in removed.items():
            self._removed[table] = self._removed.get(table, 0) + count
        released = await store.release_space(RELEASE_BYTES)
        busy = any(count >= PRUNE_BATCH for count in removed.values()) or (
            released >= RELEASE_BYTES)
        if not busy and self._removed:
            log.info("retention removed history past store.retention", **self._removed)
            self._removed = {}
        return busy
