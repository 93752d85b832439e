"""A real PostgreSQL server for the tests: Debian's `postgresql` package (`initdb`, `pg_ctl`
from /usr/lib/postgresql/*/bin), a cluster in a temporary directory on a free loopback port,
started once per test session, and a fresh database per test (copied from a template, which
is quick).

PostgreSQL refuses to run as root: when the tests run as root (CI does), the cluster belongs
to an unprivileged user that exists (`postgres`, else `nobody`) and its programs run through
`runuser`. When the server's programs are missing the PostgreSQL tests skip, saying how to
install them; under CI=true that is a failure (`scripts/setup-postgresql.sh` installs them).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mcdaemon.store import PgStore, Store

USER = "mcdaemon"  # the cluster's superuser; trust authentication on loopback only
EMPTY_TEMPLATE = "template0"


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda path: int(Path(path).parent.parent.name)
                   if Path(path).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def skip_or_fail_when_missing() -> Path:
    binaries = server_binaries()
    if binaries is None:
        reason = ("PostgreSQL's server is not installed (/usr/lib/postgresql/*/bin/initdb): "
                  "apt-get install postgresql, or run scripts/setup-postgresql.sh as root")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binaries


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unprivileged_user() -> str | None:
    """Who runs the cluster when the tests run as root (None: the tests' own user)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("the tests run as root and neither 'postgres' nor 'nobody' exists to "
                       "run PostgreSQL as")


class PgServer:
    """One running cluster; `database()` gives a fresh database's URL."""

    def __init__(self, binaries: Path, *, durable: bool = False) -> None:
        self.binaries = binaries
        self.durable = durable
        self.port = _free_port()
        self.user = _unprivileged_user()
        self.root = Path(tempfile.mkdtemp(prefix="mcdaemon-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._names = itertools.count(1)
        self._options = ""  # the server's settings, kept for `resume`

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.binaries / argv[0]), *argv[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                   " -c max_connections=300")
        if not self.durable:  # speed over fsync (a test that stops the server: `halt`)
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._options = options
        self.resume()

    def halt(self) -> None:
        """Shut the server down as its administrator would (`pg_ctl stop -m fast`: sessions
        ended, transactions rolled back, the commits kept); `resume()` starts it again. Only
        on a server of the test's own, never the session's."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def resume(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options, "-l", str(self.log),
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run("psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d",
                         self.url(database), "-c", sql).stdout

    def database(self, template: str = EMPTY_TEMPLATE) -> str:
        """A new, empty database (or a copy of `template`); its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.url(name)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[-1]
        with contextlib.suppress(subprocess.SubprocessError):
            self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def running_server(*, durable: bool = False) -> Iterator[PgServer]:
    """A cluster for the session; `durable`: with fsync, as a real server (the benchmark)."""
    server = PgServer(skip_or_fail_when_missing(), durable=durable)
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        log = server.log.read_text(errors="replace") if server.log.exists() else ""
        server.stop()
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log[-2000:]}") from exc
    try:
        yield server
    finally:
        server.stop()


def is_postgresql(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


async def open_at(location: str) -> Store | PgStore:
    """The store at a test's location: a SQLite file's path or a PostgreSQL database's URL."""
    return await (PgStore.open(location) if is_postgresql(location) else Store.open(location))


async def raw_rows(location: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows read beside the store, by the database's own driver (what an administrator's
    `sqlite3` or `psql` would see); `?` placeholders."""
    if is_postgresql(location):
        db = await asyncpg.connect(location)
        try:
            numbered = sql
            for number in range(1, sql.count("?") + 1):
                numbered = numbered.replace("?", f"${number}", 1)
            return [tuple(row) for row in await db.fetch(numbered, *params)]
        finally:
            await db.close()
    raw = sqlite3.connect(location)
    try:
        return raw.execute(sql, params).fetchall()
    finally:
        raw.close()


async def migrated_template(server: PgServer) -> str:
    """A database holding the current schema, to copy for each test; its name."""
    url = server.database()
    store = await PgStore.open(url)
    await store.close()
    return url.rsplit("/", 1)[-1]


async def change_by_hand(location: str, sql: str) -> None:
    """A statement an administrator runs beside the store, committed."""
    if is_postgresql(location):
        await raw_rows(location, sql)  # asyncpg commits each statement of its own
        return
    raw = sqlite3.connect(location)
    try:
        with raw:
            raw.execute(sql)
    finally:
        raw.close()
