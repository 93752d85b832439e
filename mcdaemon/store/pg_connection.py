"""One PostgreSQL connection (asyncpg) behind the same plumbing as the SQLite file, so several
daemons on several hosts share one store: open (migrate under an advisory lock), read-only
open, `atomic()`, and the statements of the owners' queries, their `?` placeholders numbered
(`$1, $2…`) once per statement text.

Like SQLite's, one connection serves the daemon's tasks, one transaction at a time under an
asyncio lock; the daemons' transactions meet in the database (READ COMMITTED): a claim is one
statement that picks its texts `FOR UPDATE SKIP LOCKED` and moves them only from the states
it names, so two daemons never claim one text, and uniqueness (calls' (pbx, call_id),
messages' key) lets exactly one daemon record a call and its text. A transaction of its own
that lost a deadlock or a serialization conflict to another daemon is run again (it changed
nothing); one inside `atomic()` is not (its caller's work cannot be replayed here): it fails.

Space: PostgreSQL's autovacuum makes what retention deletes reusable, so `release_space` does
nothing; `compact` runs `VACUUM (ANALYZE)` of mcdaemon's tables (not FULL, which would lock
each table against the other daemons); `space` is their size. The report's texted callers
are read a batch at a time through cursors of one read-only transaction (`_streaming`).

Errors that mean the database cannot keep what the daemon would acknowledge (connection lost,
disk full, read-only, shut down by its administrator) raise `StoreError`; a constraint or
syntax error is a bug and stays what it is.

Riding out an outage (`outage_max`, the daemon's store): when the server goes away (the
connection lost or refused, the server shutting down), the call that met it raises
`StoreUnreachable` (nothing it did was kept) and the next calls wait, under the lock, while the
connection is made again with back-off; a read or a transaction of its own is simply run again
on the new connection. Only what an `atomic()` block did reaches its caller as
`StoreUnreachable`, to be done again. Past `outage_max` they raise `StoreError`: the daemon
stops. A connection lost during a COMMIT is `StoreError` at once: whether it was kept is
unknown, and the restart settles it (texts left in `sending` are resent once, marked
`duplicate_risk`). Disk full, read-only or a corrupt database still stop the daemon at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import structlog

from mcdaemon.store.plumbing import (
    CLAIM_LEASE,
    Plumbing,
    RowCursor,
    StoreError,
    StoreUnreachable,
    _open_transaction,
    this_daemon,
)
from mcdaemon.store.schema import SCHEMA_VERSION, migration_steps

if TYPE_CHECKING:
    import asyncpg

log = structlog.get_logger("mcdaemon.store")

T = TypeVar("T")

#: libpq's sslmode values, as asyncpg's `ssl` takes them (`store.sslmode`)
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

#: pg_advisory_xact_lock's key for migrating: two daemons starting together migrate once
MIGRATION_LOCK = 0x6D6364_0001

#: GENERATED … AS IDENTITY (10), EXECUTE FUNCTION in triggers (11)
MIN_POSTGRESQL = 110000

#: SQLSTATE classes meaning "the database cannot be used now": connection exception (08),
#: insufficient resources (53: disk full, out of memory), operator intervention (57: admin
#: shutdown, crash), system error (58: I/O), internal error (XX); and a read-only transaction
#: (25006: a standby, or default_transaction_read_only)
_UNUSABLE_CLASSES = ("08", "53", "57", "58", "XX")
_READ_ONLY = "25006"
#: of those, the server gone: connection exception (08), admin or crash shutdown, not yet
#: accepting connections (57P01-57P03); what an outage of the server looks like
_GONE_CLASS = "08"
_GONE_STATES = ("57P01", "57P02", "57P03")

#: the back-off between attempts to connect again while the server is away (seconds)
RECONNECT_FIRST = 0.5
RECONNECT_MAX = 5.0

#: SQLSTATEs after which the whole transaction is simply run again: it lost to another daemon
_RETRIED = ("40001", "40P01")  # serialization failure, deadlock detected
_ATTEMPTS = 5


def _driver_errors() -> tuple[type[BaseException], ...]:
    """What the driver raises: the server's errors, its own, the socket's. (asyncpg is
    imported when a PostgreSQL store is opened: a SQLite daemon starts without it.)"""
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError, OSError)


def _means_unusable(exc: BaseException) -> bool:
    import asyncpg

    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True  # the connection's protocol is in a state it cannot leave (a server
        # that went away mid-conversation)
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state.startswith(_UNUSABLE_CLASSES) or state == _READ_ONLY
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc)  # the connection was closed under the daemon
    return isinstance(exc, OSError)


def _means_gone(exc: BaseException) -> bool:
    """The server went away (or refuses connections): an outage, not a broken database."""
    import asyncpg

    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state.startswith(_GONE_CLASS) or state in _GONE_STATES
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc)  # the connection was closed under the daemon
    return isinstance(exc, asyncpg.exceptions.InternalClientError | OSError)


def _retried(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", "") in _RETRIED


@functools.lru_cache(maxsize=4096)
def _numbered(sql: str) -> str:
    """`?` placeholders as asyncpg's `$1, $2…` (a `?` inside a quoted literal is left)."""
    out: list[str] = []
    number = 0
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted
        elif char == "?" and not quoted:
            number += 1
            out.append(f"${number}")
            continue
        out.append(char)
    return "".join(out)


def shown_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class _PgCursor:
    """An asyncpg cursor (a portal of the streaming transaction) as the plumbing's
    `RowCursor`; it closes with its transaction."""

    def __init__(self, cursor: asyncpg.cursor.Cursor[Any]) -> None:
        self._cursor = cursor

    async def fetch(self, count: int) -> list[Any]:
        return list(await self._cursor.fetch(count))

    async def close(self) -> None:
        pass


class PgConnection(Plumbing):
    """One PostgreSQL connection; every write is one short transaction."""

    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    _WHOLE = "CAST(trunc({}) AS BIGINT)"
    _BYTE_ORDER = ' COLLATE "C"'

    def __init__(self, db: asyncpg.Connection, url: str, password: str | None = None,
                 ssl: SslMode | None = None) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self._reconnect = (url, password, ssl)
        #: how long the server may stay away before the store gives up (None: not at all,
        #: every loss is `StoreError` at once: the CLI's stores)
        self._outage_max: float | None = None
        self.unreachable_since: float | None = None
        self.path = shown_url(url)
        self.owner = this_daemon()
        self.claim_lease = CLAIM_LEASE

    @classmethod
    async def _connect(cls, url: str, password: str | None, ssl: SslMode | None) -> Self:
        import asyncpg

        try:
            db = await asyncpg.connect(dsn=url, password=password, ssl=ssl)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"cannot connect to the store {shown_url(url)}: {exc} (check "
                             "store.url, the password (store.password_env or "
                             "store.password_file) and that the server accepts this "
                             "host)") from exc
        store = cls(db, url, password, ssl)
        if db.get_server_version().major * 10000 < MIN_POSTGRESQL:
            await db.close()
            raise StoreError(f"the PostgreSQL server of {store.path} is too old "
                             f"({db.get_server_version()}); the store needs 11 or newer")
        return store

    @classmethod
    async def open(cls, url: str, *, password: str | None = None,
                   ssl: SslMode | None = None, outage_max: float | None = None) -> Self:
        """Connect and migrate the store at `url` (the tables are created in the
        connection's schema, `public` unless the URL or the role says otherwise). With
        `outage_max`, a server that goes away later is waited for that long (seconds)."""
        store = await cls._connect(url, password, ssl)
        try:
            await store._failing_loudly(store._migrate())
        except BaseException:
            await store._db.close()
            raise
        store._outage_max = outage_max
        return store

    async def _migrate(self) -> None:
        db = self._db
        async with db.transaction():
            # one daemon at a time: the others wait here and then find the schema current
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await db.execute("CREATE TABLE IF NOT EXISTS mcdaemon_schema"
                             " (version INTEGER NOT NULL)")
            version = await db.fetchval("SELECT version FROM mcdaemon_schema")
            if version is None:
                await db.execute("INSERT INTO mcdaemon_schema (version) VALUES (0)")
                version = 0
            if version > SCHEMA_VERSION:  # raising rolls back: nothing changes
                raise StoreError(f"{self.path} was written by a newer mcdaemon (schema "
                                 f"{version}, this version knows {SCHEMA_VERSION}): upgrade "
                                 "mcdaemon or use another store.url")
            for number in range(version, SCHEMA_VERSION):
                for statement in migration_steps(number, "postgresql"):
                    await db.execute(statement)
            await db.execute("UPDATE mcdaemon_schema SET version = $1", SCHEMA_VERSION)
        if version < SCHEMA_VERSION:
            log.info("store created" if version == 0 else f"store migrated from schema "
                     f"{version} to {SCHEMA_VERSION}", path=self.path)

    @classmethod
    async def open_readonly(cls, url: str, *, password: str | None = None,
                            ssl: SslMode | None = None) -> Self:
        """Connect for reading only (`mcdaemon report`, `status`): every transaction is
        read-only; nothing is created or migrated. A database without mcdaemon's schema, or
        with a newer one, is refused."""
        store = await cls._connect(url, password, ssl)
        try:
            await store._db.execute("SET default_transaction_read_only = on")
            version = await store.schema_version()
        except BaseException:
            await store._db.close()
            raise
        if version is None or version > SCHEMA_VERSION:
            await store._db.close()
            if version is None:
                raise StoreError(f"{store.path} is not an mcdaemon store (no schema; check "
                                 "store.url; the daemon creates it when it first runs)")
            raise StoreError(f"{store.path} was written by a newer mcdaemon (schema "
                             f"{version}, this version knows {SCHEMA_VERSION}): upgrade "
                             "mcdaemon")
        return store

    async def schema_version(self) -> int | None:
        async def work() -> Any:
            if await self._db.fetchval("SELECT to_regclass('mcdaemon_schema')") is None:
                return None
            return await self._db.fetchval("SELECT version FROM mcdaemon_schema")

        version = await self._read(work)
        return None if version is None else int(version)

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._db.fetch(_numbered(sql), *params))

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self._db.fetchrow(_numbered(sql), *params)
        return None if row is None else row[0]

    async def _dict_rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._db.fetch(_numbered(sql), *params)]

    async def _change(self, sql: str, params: Sequence[Any] = ()) -> int:
        status = await self._db.execute(_numbered(sql), *params)  # "UPDATE 3", "INSERT 0 1"
        last = str(status).rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def _copy_rows(self, table: str, columns: Sequence[str],
                         rows: Sequence[Sequence[Any]]) -> None:
        """Rows into a table by COPY (`store migrate`: fast, ids as given)."""
        if rows:
            await self._db.copy_records_to_table(table, records=rows, columns=list(columns))

    async def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._db.executemany(_numbered(sql), rows)

    async def _columns(self, table: str) -> set[str]:
        return {str(row[0]) for row in await self._db.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = $1", table)}

    async def tables(self) -> set[str]:
        """The names of the store's tables (its schema version's own table left out)."""
        async def work() -> list[Any]:
            return list(await self._db.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"))

        return {str(row[0]) for row in await self._read(work)} - {"mcdaemon_schema"}

    async def _read(self, work: Callable[[], Awaitable[T]]) -> T:
        if _open_transaction.get() is self:
            return await work()

        async def locked() -> T:
            async with self._lock:
                while True:
                    await self._reachable()
                    with contextlib.suppress(StoreUnreachable):  # read again, reconnected
                        return await self._failing_loudly(work())

        return await asyncio.shield(locked())

    async def _transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` in one transaction, whole or not at all (again, if it lost a deadlock
        or a serialization conflict to another daemon); inside `atomic()`, as part of it."""
        if _open_transaction.get() is self:
            return await work()
        attempt = 0
        while True:
            try:
                return await asyncio.shield(
                    self._failing_loudly(self._locked_transaction(work)))
            except StoreUnreachable:
                continue  # rolled back with the connection: run again once reconnected
            except _driver_errors() as exc:
                attempt += 1
                if not _retried(exc) or attempt == _ATTEMPTS:
                    raise
                log.info("a store transaction met another daemon's; running it again",
                         sqlstate=getattr(exc, "sqlstate", None), attempt=attempt)

    async def _locked_transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            await self._reachable()
            transaction = self._db.transaction()
            await transaction.start()
            token = _open_transaction.set(self)
            try:
                result = await work()
                await self._committed(transaction)
            except BaseException:
                with contextlib.suppress(*_driver_errors()):
                    await transaction.rollback()
                raise
            finally:
                _open_transaction.reset(token)
            return result

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        """One transaction for every store call the task makes inside the block: committed
        when the block ends, rolled back if it raises. Other tasks' calls wait for it."""
        if _open_transaction.get() is self:
            yield
            return
        async with self._lock:
            token = None
            try:
                await self._reachable()  # not shielded: the lock must hold while it runs
                transaction = self._db.transaction()
                await self._failing_loudly(asyncio.shield(transaction.start()))
                token = _open_transaction.set(self)
                try:
                    yield
                except _driver_errors() as exc:  # the block's statements run unwrapped
                    if (translated := self._translated(exc)) is not exc:
                        raise translated from exc
                    raise
                await asyncio.shield(self._committed(transaction))
            except BaseException:
                if token is not None:
                    with contextlib.suppress(*_driver_errors(), asyncio.CancelledError):
                        await asyncio.shield(transaction.rollback())
                raise
            finally:
                if token is not None:
                    _open_transaction.reset(token)

    @contextlib.asynccontextmanager
    async def _streaming(self) -> AsyncIterator[None]:
        """One read-only transaction (one snapshot for every cursor; asyncpg's cursors live
        only inside a transaction), the connection held until the block ends."""
        async with self._lock:
            await self._reachable()
            transaction = self._db.transaction(readonly=True, isolation="repeatable_read")
            await self._failing_loudly(transaction.start())
            try:
                yield
            except BaseException as exc:
                with contextlib.suppress(*_driver_errors()):
                    await transaction.rollback()
                if isinstance(exc, _driver_errors()) and (
                        translated := self._translated(exc)) is not exc:
                    raise translated from exc
                raise
            await self._failing_loudly(transaction.commit())

    async def _cursor(self, sql: str, params: Sequence[Any] = ()) -> RowCursor:
        return _PgCursor(await self._db.cursor(_numbered(sql), *params))

    async def release_space(self, most_bytes: int) -> int:
        """Nothing to do: PostgreSQL's autovacuum makes the space deletions freed reusable
        (its files do not shrink; `compact` runs a VACUUM now)."""
        return 0

    async def compact(self) -> None:
        """VACUUM (and ANALYZE) mcdaemon's tables now, beside the running daemons: the space
        deletions freed becomes reusable at once. (Not VACUUM FULL: it would lock each table
        against every daemon while rewriting it.) Runs outside a transaction, as VACUUM must."""
        tables = sorted(await self.tables())

        async def work() -> None:
            await self._db.execute("VACUUM (ANALYZE) " + ", ".join(tables))

        await self._read(work)

    async def space(self) -> dict[str, int | bool]:
        """`bytes`: mcdaemon's tables with their indexes and TOAST; `free_bytes` 0 (what
        deletions freed is reused by PostgreSQL, not released); `releases_space`: True."""
        async def work() -> Any:
            return await self._db.fetchval(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class AS c"
                " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind = 'r'")

        return {"bytes": int(await self._read(work)), "free_bytes": 0, "releases_space": True}

    async def _committed(self, transaction: Any) -> None:
        """COMMIT; the server lost meanwhile is `StoreError`: whether it was kept is unknown."""
        try:
            await self._failing_loudly(transaction.commit())
        except StoreUnreachable as exc:
            raise StoreError(f"the connection to the store {self.path} was lost during a "
                             f"commit, which may or may not have been kept: {exc.__cause__} "
                             "(stopping; the restart settles it)") from exc.__cause__

    async def _reachable(self) -> None:
        """Under the lock, before a call: while the server is away, connect again with
        back-off; past `outage_max`, StoreError."""
        if self._outage_max is None or (self.unreachable_since is None
                                        and not self._db.is_closed()):
            return
        import asyncpg

        since = self.unreachable_since = self.unreachable_since or time.monotonic()
        delay = RECONNECT_FIRST
        while True:
            down = time.monotonic() - since
            if down > self._outage_max:
                raise StoreError(
                    f"the store {self.path} has been unreachable for {down:.0f} s, longer "
                    f"than store.outage_max ({self._outage_max:.0f} s): giving up (check "
                    "that the PostgreSQL server is running and reachable from this host)")
            url, password, ssl = self._reconnect
            try:
                db = await asyncpg.connect(dsn=url, password=password, ssl=ssl,
                                           timeout=min(RECONNECT_MAX,
                                                       max(0.1, self._outage_max - down)))
            except _driver_errors():  # refused, reset, timed out (an OSError), shutting down
                left = self._outage_max - (time.monotonic() - since)
                await asyncio.sleep(max(0.0, min(delay, left)) + 0.01)  # give up on time
                delay = min(2 * delay, RECONNECT_MAX)
                continue
            self._db.terminate()
            self._db = db
            self.unreachable_since = None  # the daemon's OutageWatch says it is back
            return

    def _translated(self, exc: BaseException) -> BaseException:
        """A driver's error as the store's: the server gone (while riding outages out),
        `StoreUnreachable`; the database unusable, `StoreError`; else itself (a bug)."""
        if self._outage_max is not None and (_means_gone(exc) or self._db.is_closed()):
            self.unreachable_since = self.unreachable_since or time.monotonic()
            return StoreUnreachable(f"the store {self.path} cannot be reached: {exc}")
        if _means_unusable(exc) or self._db.is_closed():
            return StoreError(
                f"the store {self.path} cannot be used: {exc} (check that the PostgreSQL "
                "server is running and reachable, its free disk space, and that the "
                "database is not read-only)")
        return exc

    async def _failing_loudly(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except _driver_errors() as exc:
            translated = self._translated(exc)
            if translated is exc:
                raise
            raise translated from exc
