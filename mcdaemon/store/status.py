"""The daemon's switches (`mcdaemon enable|disable`) and status rows, and the outbox's
counts that `mcdaemon status` and the metrics show.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from mcdaemon.store.plumbing import Plumbing
from mcdaemon.store.schema import TRANSITIONS

log = structlog.get_logger("mcdaemon.store")


class Status(Plumbing):
    """The daemon's switches (`mcdaemon enable|disable`) and status rows, and the outbox's."""

    async def set_switch(self, name: str, enabled: bool, at: float) -> None:
        """`global` or `group:<name>`; a disabled switch also holds texts already queued."""
        async def work() -> None:
            await self._change("INSERT INTO switches (name, enabled, at) VALUES (?,?,?)"
                               " ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled,"
                               " at = excluded.at", (name, int(enabled), at))

        await self._transaction(work)

    async def switches(self) -> dict[str, bool]:
        rows = await self._read(lambda: self._rows("SELECT name, enabled FROM switches"))
        return {name: bool(enabled) for name, enabled in rows}

    async def set_status(self, name: str, value: str, at: float | None = None) -> None:
        stamp = time.time() if at is None else at

        async def work() -> None:
            await self._change("INSERT INTO status (name, value, at) VALUES (?,?,?)"
                               " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                               " at = excluded.at", (name, value, stamp))

        await self._transaction(work)

    async def clear_status(self, name: str) -> None:
        """Delete one status line (a daemon's heartbeat at its clean stop); none: a no-op."""
        async def work() -> None:
            await self._change("DELETE FROM status WHERE name = ?", (name,))

        await self._transaction(work)

    async def statuses(self) -> dict[str, tuple[str, float]]:
        rows = await self._read(lambda: self._rows("SELECT name, value, at FROM status"))
        return {name: (value, at) for name, value, at in rows}

    async def outbox_stats(self, now: float) -> dict[str, Any]:
        """Counts by state, the age of the oldest due queued text, deferred and at-risk counts."""
        async def work() -> dict[str, Any]:
            rows = await self._rows("SELECT state, COUNT(*) FROM messages GROUP BY state")
            by_state = {state: 0 for state in TRANSITIONS}
            by_state.update({state: count for state, count in rows})
            oldest = await self._scalar("SELECT MIN(created_at) FROM messages WHERE state ="
                                        " 'queued' AND not_before <= ?", (now,))
            deferred = await self._scalar("SELECT COUNT(*) FROM messages WHERE state ="
                                          " 'queued' AND not_before > ?", (now,))
            at_risk = await self._scalar("SELECT COUNT(*) FROM messages WHERE"
                                         " duplicate_risk = 1")
            return {"by_state": by_state,
                    "oldest_queued_age": None if oldest is None else max(0.0, now - oldest),
                    "deferred": int(deferred or 0),
                    "duplicate_risk": int(at_risk or 0)}

        return await self._read(work)
