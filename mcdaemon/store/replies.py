"""Replies and opt-outs: inbound texts as received, and who asked not to be texted.
"""

from __future__ import annotations

import structlog

from mcdaemon.store.plumbing import Plumbing
from mcdaemon.store.schema import CALLER_KINDS, _may_become, _quoted

log = structlog.get_logger("mcdaemon.store")


class RepliesAndOptOuts(Plumbing):
    """Replies and opt-outs."""

    async def add_inbound(self, source: str, destination: str, text: str, at: float,
                          keyword: str | None = None) -> int:
        """Keep a text from a caller (MO); returns its id."""
        async def work() -> int:
            row_id = await self._scalar(
                "INSERT INTO inbound (source, destination, text, at, keyword)"
                " VALUES (?,?,?,?,?) RETURNING id", (source, destination, text, at, keyword))
            return int(row_id or 0)

        return await self._transaction(work)

    async def opt_out(self, e164: str, keyword: str, at: float) -> bool:
        """True if the number was not opted out before. Its queued texts to callers fail
        (`opted_out`) in the same transaction: a deferred text never follows a STOP."""
        async def work() -> bool:
            inserted = await self._change(
                "INSERT INTO opt_outs (e164, at, keyword) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                (e164, at, keyword))
            await self._change(
                "UPDATE messages SET state = 'failed', final_at = ?,"
                " error_detail = 'opted_out: the caller replied ' || ? || ' before it was sent'"
                f" WHERE destination = ? AND kind IN ({_quoted(CALLER_KINDS)})"
                f" AND state = 'queued' AND {_may_become('failed')}", (at, keyword, e164))
            return inserted == 1

        return await self._transaction(work)

    async def opt_in(self, e164: str, at: float) -> bool:
        """True if the number was opted out (the opt-out is deleted; `inbound` keeps history)."""
        async def work() -> bool:
            return await self._change("DELETE FROM opt_outs WHERE e164 = ?", (e164,)) == 1

        return await self._transaction(work)

    async def is_opted_out(self, e164: str) -> bool:
        return bool(await self._read(lambda: self._scalar(
            "SELECT 1 FROM opt_outs WHERE e164 = ?", (e164,))))
