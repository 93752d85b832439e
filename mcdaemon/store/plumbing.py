"""What the owners' queries run through, whichever the database: the small API every backend's
connection implements (`connection.Connection` for SQLite, `pg_connection.PgConnection` for
PostgreSQL), so the owners' classes are written once, in portable SQL with `?` placeholders.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from mcdaemon.core.daemons import process_id

T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be used; the message says what to fix."""


class StoreUnreachable(StoreError):
    """The connection to a PostgreSQL store was lost or refused, and the store rides the outage
    out (`store.outage_max`): whatever the call was doing was not kept; the store's next call
    waits for the server (reconnecting with back-off) and raises `StoreError` once the outage
    has lasted longer than `outage_max`."""


#: the store whose transaction the current task has open (`atomic()`)
_open_transaction: contextvars.ContextVar[Plumbing | None] = contextvars.ContextVar(
    "mcdaemon_store_transaction", default=None)


#: how long a claimed text stays another daemon's to leave alone (`claim_lease`); the daemon
#: renews its leases every second, so only a daemon that died (or stalled this long) loses
#: them
CLAIM_LEASE = 30.0


#: who claims texts (`owner`): `PID@HOST`, the process its heartbeat names (`core.daemons`)
this_daemon = process_id


class RowCursor(Protocol):
    """A query's rows read a batch at a time (`Plumbing._cursor`), inside `_streaming()`."""

    async def fetch(self, count: int) -> list[Any]:
        """Up to `count` next rows; none: the query has no more."""
        ...

    async def close(self) -> None:
        ...


class Plumbing:
    """The calls an owner's queries may make; each backend's connection implements them.

    Every statement is one of: `_rows` (all rows), `_scalar` (the first column of the first
    row), `_dict_rows` (rows by column name), `_change` (rows changed), `_many` (one
    statement for each of many parameter rows). They run inside `_transaction(work)` (a write:
    one transaction, or part of the task's `atomic()`) or `_read(work)` (a read)."""

    path: str
    #: since when (time.monotonic()) the database cannot be reached; None while it can
    unreachable_since: float | None = None
    #: this daemon, as the texts it claims name it; and how long its claims hold
    owner: str
    claim_lease: float

    #: appended to the subquery that picks the texts a claim takes: PostgreSQL skips the rows
    #: another daemon's claim is taking (`FOR UPDATE SKIP LOCKED`) instead of waiting for it
    _SKIP_LOCKED = ""
    #: the whole part of a non-negative number (`{}`: its SQL): SQLite's CAST truncates,
    #: PostgreSQL's rounds, so both write it their own way (the report's quarter hours)
    _WHOLE = "CAST({} AS INTEGER)"
    #: appended to a text column in an ORDER BY whose rows are merged by Python's comparison
    #: of strings (code points): SQLite's default; PostgreSQL's follows the database's locale
    _BYTE_ORDER = ""

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    async def _dict_rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _change(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the rows it changed (an id inserted: `RETURNING id`, `_scalar`)."""
        raise NotImplementedError

    async def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def _columns(self, table: str) -> set[str]:
        """The names of a table's columns (a store of an older schema lacks the newer ones)."""
        raise NotImplementedError

    async def _read(self, work: Callable[[], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        raise NotImplementedError

    def atomic(self) -> contextlib.AbstractAsyncContextManager[None]:
        raise NotImplementedError

    def _streaming(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the connection for reading several queries a batch at a time (`_cursor`),
        until the block ends; other tasks' calls wait for it."""
        raise NotImplementedError

    async def _cursor(self, sql: str, params: Sequence[Any] = ()) -> RowCursor:
        """A query whose rows are read a batch at a time; only inside `_streaming()`."""
        raise NotImplementedError

    async def release_space(self, most_bytes: int) -> int:
        """Give back up to `most_bytes` that deletions freed; how many were released."""
        raise NotImplementedError

    async def compact(self) -> None:
        """Rewrite the store without the space deletions freed."""
        raise NotImplementedError

    async def space(self) -> dict[str, int | bool]:
        """`bytes` on disk, `free_bytes` freed but not released, `releases_space`."""
        raise NotImplementedError

    async def tables(self) -> set[str]:
        """The names of the store's tables (a store of an older schema lacks the newer ones)."""
        raise NotImplementedError

    async def schema_version(self) -> int | None:
        """The schema the database holds (None: it has none, not an mcdaemon store)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def checkpoint(self) -> None:
        """Housekeeping every second (SQLite: a WAL checkpoint; others: nothing)."""

    async def _ids_of(self, sql: str, params: Sequence[Any]) -> list[int]:
        async def work() -> list[Any]:
            return await self._rows(sql, params)

        return sorted(int(row[0]) for row in await self._transaction(work))

