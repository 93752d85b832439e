"""Fixtures every layer may use: the logging left as each test found it, and the real
PostgreSQL server (`tests/pg_server.py`), started once per session when a test asks for it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import structlog

from pg_server import PgServer, migrated_template, running_server


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """`cli.main` points the log at the stream of the moment (pytest's capture, closed after
    the test): whatever a test configured, the next one starts from structlog's defaults."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> str:
    """The name of a database holding the current schema: a test's store is a copy of it."""
    return asyncio.run(migrated_template(pg_server))


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (dropped after it)."""
    url = pg_server.database()
    yield url
    pg_server.drop(url)


@pytest.fixture(scope="module")
def own_pg_server() -> Iterator[PgServer]:
    """A server of the module's own, which its tests may shut down and start again
    (`halt`, `resume`) without touching the session's."""
    with running_server() as server:
        yield server
