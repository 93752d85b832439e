"""The store's tests run against both backends: `location` is a SQLite file's path or a
fresh PostgreSQL database's URL (marked `postgres`), `store` the store opened there. Tests of
what only SQLite has (the file, its modes, WAL, PRAGMA) ask for `db_path` and `sqlite_store`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mcdaemon.store import PgStore, Store

from pg_server import open_at


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "state" / "mcdaemon.db")
        return
    server = request.getfixturevalue("pg_server")
    url = server.database(template=request.getfixturevalue("pg_template"))
    yield url
    server.drop(url)


@pytest.fixture
async def store(location: str) -> AsyncIterator[Store | PgStore]:
    opened = await open_at(location)
    yield opened
    await opened.close()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "mcdaemon.db")


@pytest.fixture
async def sqlite_store(db_path: str) -> AsyncIterator[Store]:
    opened = await Store.open(db_path)
    yield opened
    await opened.close()
