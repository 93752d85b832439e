"""One SQLite connection and its transactions: open (create, migrate), read-only open,
`atomic()`, and the plumbing every owner's queries run through. A write that fails
(disk full, I/O error, read-only or corrupt file) raises `StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar, cast

import aiosqlite
import structlog

from mcdaemon.store.plumbing import (
    CLAIM_LEASE,
    Plumbing,
    RowCursor,
    StoreError,
    _open_transaction,
    this_daemon,
)
from mcdaemon.store.schema import (
    BUSY_TIMEOUT_MS,
    MIGRATION_SECONDS_PER_GB,
    MIN_SQLITE,
    SCHEMA_VERSION,
    migration_steps,
)

log = structlog.get_logger("mcdaemon.store")

#: while a migration runs, a line this often says it still does (seconds)
MIGRATION_NOTE_EVERY = 10.0

#: bytes per page of a new store, four times SQLite's default: a report of a year read from
#: disk walks indexes whose pages a year of row-at-a-time writes scattered over the file, a
#: read per page, and 16 KB pages make those reads a quarter as many (docs/performance.md)
PAGE_SIZE = 16384


T = TypeVar("T")


def _means_unusable(exc: sqlite3.Error) -> bool:
    """Disk full, I/O error, read-only, locked for too long, corrupt: the file cannot keep
    what the daemon would acknowledge. (A constraint or a programming error is a bug, not
    the store's state: it stays what it is.)"""
    return isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError) or (
        type(exc) is sqlite3.DatabaseError)


class _SqliteCursor:
    """An aiosqlite cursor as the plumbing's `RowCursor`."""

    def __init__(self, cursor: aiosqlite.Cursor) -> None:
        self._cursor = cursor

    async def fetch(self, count: int) -> list[Any]:
        return list(await self._cursor.fetchmany(count))

    async def close(self) -> None:
        await self._cursor.close()


class Connection(Plumbing):
    """One SQLite file; every write is one short transaction."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self.path = path
        self.owner = this_daemon()
        self.claim_lease = CLAIM_LEASE

    @classmethod
    async def open(cls, path: str) -> Self:
        """Open (creating the file and its directory) and migrate the store at `path`."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old for the store (it "
                             "needs 3.35 or newer for UPDATE … RETURNING); use a newer Python "
                             "or operating system")
        file = Path(path)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of the store {path}: {exc} (check "
                             "store.path and the daemon user's rights)") from exc
        if file.exists() and not os.access(file, os.R_OK | os.W_OK):
            raise StoreError(f"the store {path} is not readable and writable by this user "
                             "(check its owner and mode)")
        if not os.access(file.parent, os.W_OK | os.X_OK):
            raise StoreError(f"the directory {file.parent} of the store is not writable by "
                             "this user; SQLite needs to create its -wal and -shm files there")
        try:
            # Calls, numbers and texts are personal data: a new store is created for its owner
            # only (0600; SQLite gives the -wal and -shm files the mode of the database).
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {path}: {exc} (check store.path and that "
                             "the daemon's user may write its directory)") from exc
        store = cls(db, path)
        try:
            await store._prepare()
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise StoreError(f"cannot use the store {path}: {exc} (is it an mcdaemon "
                             "database? is the disk full or read-only?)") from exc
        except BaseException:
            await db.close()
            raise
        return store

    async def _prepare(self) -> None:
        db = self._db
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # a newer mcdaemon's file is refused before anything (even the journal mode) changes
        version = int(await self._scalar("PRAGMA user_version"))
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer mcdaemon (schema {version}, "
                             f"this version knows {SCHEMA_VERSION}): upgrade mcdaemon or use "
                             "another store.path")
        if version == 0:  # before the first table: only an empty file can take them
            await db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            await db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = await self._journal_in_wal()
        if str(mode).lower() != "wal":
            log.warning("the store is not in WAL mode; readers may block the daemon",
                        path=self.path, journal_mode=mode)
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        started = time.monotonic()
        if 0 < version < SCHEMA_VERSION:
            taken = await self._migrate_loudly(version)
        else:
            await self._migrate(version)
        if version == 0:
            log.info("store created", path=self.path)
        elif version < SCHEMA_VERSION:  # one line at the end, not one per step
            log.info(f"store migrated from schema {version} to {SCHEMA_VERSION}",
                     path=self.path, seconds=round(time.monotonic() - started, 1),
                     schema_seconds=taken)

    async def _journal_in_wal(self) -> str:
        """Put the file in WAL mode; the journal mode it is in. Changing it needs the file
        to itself and SQLite answers "locked" at once rather than waiting, so while another
        daemon opening the same new store holds it, it is asked again until `busy_timeout`."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return str(await self._scalar("PRAGMA journal_mode = WAL"))
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _migrate(self, version: int) -> dict[int, float]:
        """Migrate from `version`, one transaction per schema: the seconds each took, by
        the schema it brought the store to."""
        db = self._db
        taken: dict[int, float] = {}
        for number in range(version, SCHEMA_VERSION):
            started = time.monotonic()
            await db.execute("BEGIN IMMEDIATE")
            try:
                # another process may have migrated while this one waited for the lock
                if int(await self._scalar("PRAGMA user_version")) == number:
                    for statement in migration_steps(number, "sqlite"):
                        await db.execute(statement)
                    await db.execute(f"PRAGMA user_version = {number + 1}")
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
            taken[number + 1] = round(time.monotonic() - started, 1)
        return taken

    async def _migrate_loudly(self, version: int) -> dict[int, float]:
        """Migrate an existing store, saying how long to expect (each migration's time per
        GB of store, summed) and, while it runs, that it still does: an index added to a
        year of history reads every row of its table."""
        size = Path(self.path).stat().st_size
        per_gb = sum(MIGRATION_SECONDS_PER_GB[version:SCHEMA_VERSION])
        log.info("migrating the store: the daemon starts when it is done", path=self.path,
                 schema_from=version, schema_to=SCHEMA_VERSION, size_mb=round(size / 1e6),
                 expected_seconds=round(per_gb * size / 1e9, 1))
        started = time.monotonic()
        next_note = [started + MIGRATION_NOTE_EVERY]

        def progress() -> int:  # in aiosqlite's thread, between SQLite's VM steps
            now = time.monotonic()
            if now >= next_note[0]:
                next_note[0] = now + MIGRATION_NOTE_EVERY
                log.info("store migration still running", path=self.path,
                         elapsed_seconds=round(now - started))
            return 0

        await self._db.set_progress_handler(progress, 1_000_000)
        try:
            return await self._migrate(version)
        finally:
            await self._db.set_progress_handler(cast(Any, None), 0)  # removes it

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._db.execute_fetchall(sql, params)
        return next(iter(rows))[0] if rows else None

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, params))

    async def _dict_rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self._db.execute(sql, params) as cursor:
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]

    async def _change(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the rows it changed (not those its triggers changed: a call
        removed also updates `call_counts`)."""
        cursor = await self._db.execute(sql, params)
        try:
            return max(cursor.rowcount, 0)
        finally:
            await cursor.close()

    async def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._db.executemany(sql, rows)

    async def _columns(self, table: str) -> set[str]:
        return {str(row[1]) for row in await self._rows(f"PRAGMA table_info({table})")}

    async def _read(self, work: Callable[[], Awaitable[T]]) -> T:
        if _open_transaction.get() is self:  # inside this task's atomic(): the lock is ours
            return await work()

        async def locked() -> T:
            async with self._lock:
                return await work()

        # shielded like a transaction: a cancelled reader must not leave a statement running
        # on the connection after the lock is released
        return await asyncio.shield(self._failing_loudly(locked()))

    async def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: readers are not waited for): the daemon
        calls it every second, so the WAL stays small and a commit seldom checkpoints."""
        await self._read(lambda: self._scalar("PRAGMA wal_checkpoint(PASSIVE)"))

    @contextlib.asynccontextmanager
    async def _streaming(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    async def _cursor(self, sql: str, params: Sequence[Any] = ()) -> RowCursor:
        return _SqliteCursor(await self._db.execute(sql, params))

    async def release_space(self, most_bytes: int) -> int:
        """Give back to the file system up to `most_bytes` that deletions freed (SQLite's
        `incremental_vacuum` of that many pages of the store's size, one short write); how
        many bytes were released. A store created before retention (auto_vacuum off)
        releases nothing: `mcdaemon store compact`."""
        async def work() -> int:
            before = int(await self._scalar("PRAGMA freelist_count"))
            if before == 0 or int(await self._scalar("PRAGMA auto_vacuum")) != 2:
                return 0
            page = int(await self._scalar("PRAGMA page_size"))
            await self._rows(f"PRAGMA incremental_vacuum({max(1, most_bytes // page)})")
            return (before - int(await self._scalar("PRAGMA freelist_count"))) * page

        return await self._read(work)

    async def compact(self) -> None:
        """Rewrite the whole file without its free pages, and from then on release space
        as it is freed (auto_vacuum INCREMENTAL). Needs the store to itself: it waits for
        no writer and makes every other connection wait until it is done. An older store's
        pages become `PAGE_SIZE` too, which SQLite allows only outside WAL mode, so only
        when no other connection has the file open; otherwise they stay as they are."""
        async def work() -> None:
            convert = int(await self._scalar("PRAGMA page_size")) != PAGE_SIZE
            if convert:
                try:
                    convert = str(await self._scalar("PRAGMA journal_mode = DELETE")) == "delete"
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                        raise
                    convert = False  # another process has it open: the page size stays
            if convert:
                await self._db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            await self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            await self._db.execute("VACUUM")
            if convert:
                await self._journal_in_wal()
            else:
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await self._read(work)

    async def space(self) -> dict[str, int | bool]:
        """The store's size on disk: `bytes` (the file and its WAL), `free_bytes` (freed by
        deletions, not yet released), whether freed space is released as it goes, and
        `page_bytes` (an older store's may be smaller than a new one's: `PAGE_SIZE`)."""
        async def work() -> dict[str, int | bool]:
            page = int(await self._scalar("PRAGMA page_size"))
            free = int(await self._scalar("PRAGMA freelist_count"))
            incremental = int(await self._scalar("PRAGMA auto_vacuum")) == 2
            return {"free_bytes": free * page, "releases_space": incremental,
                    "page_bytes": page}

        found = await self._read(work)
        wal = Path(self.path + "-wal")
        size = Path(self.path).stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return {"bytes": size, **found}

    async def _transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` in one IMMEDIATE transaction, whole or not at all; inside `atomic()`,
        as part of its transaction."""
        if _open_transaction.get() is self:
            return await work()
        return await asyncio.shield(self._failing_loudly(self._locked_transaction(work)))

    async def _locked_transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            token = _open_transaction.set(self)
            try:
                result = await work()
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await self._db.execute("ROLLBACK")
                raise
            finally:
                _open_transaction.reset(token)
            return result

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        """One transaction for every store call the task makes inside the block: committed
        when the block ends, rolled back if it raises. Not re-entrant across tasks: another
        task's store calls wait for the commit."""
        if _open_transaction.get() is self:
            yield
            return
        async with self._lock:
            token = None
            try:
                # a cancellation may come while BEGIN runs in aiosqlite's thread: the ROLLBACK
                # below is queued after it, so the connection is never left in a transaction
                await self._failing_loudly(self._db.execute("BEGIN IMMEDIATE"))
                token = _open_transaction.set(self)
                yield
                await asyncio.shield(self._commit())
            except BaseException:
                with contextlib.suppress(sqlite3.Error, asyncio.CancelledError):
                    await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            finally:
                if token is not None:
                    _open_transaction.reset(token)

    async def _commit(self) -> None:
        await self._failing_loudly(self._db.execute("COMMIT"))

    async def _failing_loudly(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except sqlite3.Error as exc:
            if _means_unusable(exc):
                raise self._failure(exc) from exc
            raise

    def _failure(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"the store {self.path} cannot be used: {exc} (check the disk's free "
                          "space, the file's owner and mode, and the system log for I/O "
                          "errors)")

    @classmethod
    async def open_readonly(cls, path: str) -> Self:
        """Open an existing store for reading only (`mcdaemon report` and `status`).

        Nothing is created, migrated or changed, so no write access is needed: it reads beside
        the running daemon (WAL) and from a read-only file in a read-only directory. A store of
        an older schema is read as it is (what it lacks reads as empty); one written by a newer
        mcdaemon is refused. Writing through it fails.
        """
        file = Path(path)
        if not file.is_file():
            raise StoreError(f"there is no store at {path} (check store.path; the daemon "
                             "creates it when it first runs)")
        if not os.access(file, os.R_OK):
            raise StoreError(f"the store {path} is not readable by this user (check its owner "
                             "and mode, or run as the daemon's user)")
        uri = file.resolve().as_uri()
        # While the daemon has the store open there is a -wal file, and reading goes through
        # its -shm index. Without one nobody has the file open: it is read as it is
        # (immutable), creating nothing beside it; a -wal/-shm made by another user here
        # could keep the daemon from opening its store at the next start.
        live = Path(path + "-wal").exists()
        try:
            return await cls._connect_readonly(f"{uri}?{'mode=ro' if live else 'immutable=1'}",
                                               path)
        except sqlite3.Error as exc:
            hint = (" (its -wal and -shm files must be readable by this user while the daemon "
                    "runs)" if live else "")
            raise StoreError(f"cannot read the store {path}: {exc}{hint}") from exc

    @classmethod
    async def _connect_readonly(cls, uri: str, path: str) -> Self:
        try:
            db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        store = cls(db, path)
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            version = int(await store._scalar("PRAGMA user_version"))
            tables = {name for name, in await store._rows(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.OperationalError:
            await db.close()
            raise
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise StoreError(f"cannot use the store {path}: {exc} (is it an mcdaemon "
                             "database?)") from exc
        except BaseException:
            await db.close()
            raise
        if version > SCHEMA_VERSION or version < 1 or "calls" not in tables:
            await db.close()
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer mcdaemon (schema {version}, "
                                 f"this version knows {SCHEMA_VERSION}): upgrade mcdaemon")
            raise StoreError(f"{path} is not an mcdaemon store (no schema; check store.path; "
                             "a daemon starting on a new store writes it within seconds)")
        return store

    async def schema_version(self) -> int | None:
        version = int(await self._read(lambda: self._scalar("PRAGMA user_version")))
        return version or None

    async def tables(self) -> set[str]:
        """The names of the store's tables (a store of an older schema lacks the newer ones)."""
        return {name for name, in await self._read(lambda: self._rows(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))}
