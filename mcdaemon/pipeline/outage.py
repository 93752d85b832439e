"""While a PostgreSQL store's server is away: say so, loudly and then every OUTAGE_REPEAT
seconds, with how many ended calls are held and how long until the daemon gives up
(`store.outage_max`), and keep systemd's watchdog fed meanwhile.

The riding out itself is the store's (`store/pg_connection`: its calls wait for the server,
reconnecting with back-off, and raise `StoreError` past `outage_max`) and the stages' (the
decider holds its batch, the submit results are kept, replies and receipts stay
unacknowledged): this stage only watches `store.unreachable_since`. The calls the trackers
close meanwhile wait in the intake (at most `intake.HELD_MAX`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from mcdaemon.adapters import sdnotify
from mcdaemon.config.model import Config
from mcdaemon.store import StoreInterface

log = structlog.get_logger("mcdaemon.service")

#: how often the warning is repeated while the server stays away (seconds)
OUTAGE_REPEAT = 30.0
#: how often the store is looked at (seconds)
OUTAGE_CHECK = 1.0


class OutageWatch:
    """Runs as one task: `run()`. `held()`: the ended calls not decided yet; `dropped()`:
    those dropped because more than the intake holds were waiting."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 held: Callable[[], int], dropped: Callable[[], int]) -> None:
        self._config = config
        self._store = store
        self._held = held
        self._dropped = dropped

    async def run(self) -> None:
        outage: float | None = None  # the outage being reported (its unreachable_since)
        warned = 0.0
        held_most = 0  # the most calls it held
        while True:
            await asyncio.sleep(OUTAGE_CHECK)
            store = self._store()
            since = store.unreachable_since
            now = time.monotonic()
            if since is None:
                if outage is not None:
                    log.warning("the store's database is back: the calls held are decided "
                                "now", store=store.path, held_most=held_most,
                                down_for=round(now - outage, 1))
                outage = None
                continue
            # the housekeeping waits for the store meanwhile; the daemon itself is alive
            sdnotify.notify("WATCHDOG=1")
            left = max(0.0, self._config().store.outage_max - (now - since))
            held = self._held()
            fields = dict(store=store.path, held=held, down_for=round(now - since, 1),
                          gives_up_in=round(left, 1))
            if self._dropped():
                fields["dropped"] = self._dropped()
            if outage != since:
                outage, warned, held_most = since, now, held
                log.error("the store's database cannot be reached: ended calls are held in "
                          "memory and nothing is sent until it is back; the daemon exits if "
                          "it stays away longer than store.outage_max", **fields)
                continue
            held_most = max(held_most, held)
            if now - warned >= OUTAGE_REPEAT:
                warned = now
                log.warning("the store's database is still unreachable", **fields)
