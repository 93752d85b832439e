"""`mcdaemon store info` and `mcdaemon store compact`, and the migration of a store made
before retention: what an administrator sees of the store's size and history. Converting an
old store to give space back is SQLite's (its file); PostgreSQL's info and compact are
tested on a real server."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from mcdaemon.cli import main
from mcdaemon.commands.store import compact, show_info
from mcdaemon.config.load import config_from_dict
from mcdaemon.config.model import Config
from mcdaemon.core.daemons import DaemonBeat, process_id
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import (
    MIGRATION_SECONDS_PER_GB,
    PAGE_SIZE,
    SCHEMA_VERSION,
    PgStore,
    Store,
    StoreInterface,
    migration_steps,
)

from pg_server import raw_rows

DAY = 86400.0


def config_for(path: Path | str, **retention: str) -> Config:
    where = {"url": path} if str(path).startswith("postgresql:") else {"path": str(path)}
    return config_from_dict({
        "region": "GB", "timezone": "UTC", "inbound": {"contexts": ["from-carrier"]},
        "store": {**where, "retention": retention},
        "ami": [{"name": "lab", "username": "mcd", "secret": "s"}]})


async def add_calls(store: StoreInterface, count: int, ended: float) -> None:
    for number in range(count):
        caller = f"+4477009{number:05d}"
        record = CallRecord(pbx="lab", call_id=f"{ended}-{number}", caller=caller,
                            caller_name=None, caller_e164=caller, did=None, group="sales",
                            outcome=Outcome.QUEUE_ABANDON, stages=("queue",),
                            started=ended - 30, ended=ended, wait_seconds=20.0)
        await store.record_call(record, Decision(
            text=True, reason="sent", group="sales", body="Sorry we missed you " * 20,
            template="queue_abandon", destination=caller), now=ended, destination=caller)


async def test_info_shows_each_tables_rows_their_ages_and_what_retention_removes_next(
        tmp_path: Path) -> None:
    path = tmp_path / "mcdaemon.db"
    now = time.time()
    store = await Store.open(str(path))
    try:
        await add_calls(store, 3, now - 20 * DAY)
        await add_calls(store, 2, now - 2 * DAY)
    finally:
        await store.close()
    out = io.StringIO()

    assert await show_info(config_for(path, calls="10d"), out, as_json=True) == 0

    info = json.loads(out.getvalue())
    assert info["tables"]["calls"]["rows"] == 5
    assert info["tables"]["calls"]["past_retention"] == 3
    assert info["tables"]["messages"]["past_retention"] == 0  # queued: not sent, kept
    assert abs(info["tables"]["calls"]["oldest"] - (now - 20 * DAY)) < 1
    assert info["retention_days"]["calls"] == 10 and info["retention_days"]["replies"] == 400
    assert info["releases_space"] is True and info["bytes"] == path.stat().st_size
    assert info["page_bytes"] == PAGE_SIZE == 16384  # a new store's, not SQLite's 4096
    table = io.StringIO()
    assert await show_info(config_for(path, calls="10d"), table, as_json=False) == 0
    assert "calls" in table.getvalue() and "past retention" in table.getvalue()
    assert "pages:     16 KB\n" in table.getvalue()


def old_store(path: Path, calls: int) -> None:
    """A store of schema 9 (before retention), with calls, as an older mcdaemon left it."""
    raw = sqlite3.connect(path)
    for number in range(9):
        for statement in migration_steps(number, "sqlite"):
            raw.execute(statement)
    raw.execute("PRAGMA user_version = 9")
    raw.executemany(
        "INSERT INTO calls (pbx, call_id, outcome, ended, record, textable, reason,"
        " decided_at) VALUES ('lab', ?, 'queue_abandon', ?, '{}', 0, 'not_mobile', ?)",
        [(f"c{number}", 1_700_000_000.0 + number, 1_700_000_000.0 + number)
         for number in range(calls)])
    raw.commit()
    raw.close()


async def test_a_store_made_before_retention_is_migrated_saying_how_long_to_expect(
        tmp_path: Path) -> None:
    path = tmp_path / "mcdaemon.db"
    old_store(path, 2000)

    with capture_logs() as logged:
        store = await Store.open(str(path))
    try:
        assert await store.count_calls() == 2000
        assert (await store.space())["releases_space"] is False  # only compact converts it
        # migration 12 counted them per quarter hour for the report
        counts = await store.report_counts(1_700_000_000.0, 1_700_000_000.0 + 86400)
        assert sum(row[-2] for row in counts["calls"]) == 2000
        assert sum(row[-1] for row in counts["missed"]) == 2000
    finally:
        await store.close()

    events = [entry["event"] for entry in logged]
    assert events[:1] == ["migrating the store: the daemon starts when it is done"]
    assert logged[0]["schema_from"] == 9 and logged[0]["schema_to"] == SCHEMA_VERSION
    # the migrations to run, each at its time per GB of store
    size_gb = logged[0]["size_mb"] / 1000
    assert logged[0]["expected_seconds"] == pytest.approx(
        sum(MIGRATION_SECONDS_PER_GB[9:]) * size_gb, abs=0.1 + 0.01 * size_gb)
    assert events[-1] == f"store migrated from schema 9 to {SCHEMA_VERSION}"
    # and what each took, by the schema it brought the store to
    assert list(logged[-1]["schema_seconds"]) == list(range(10, SCHEMA_VERSION + 1))
    assert len(MIGRATION_SECONDS_PER_GB) == SCHEMA_VERSION
    raw = sqlite3.connect(path)
    try:
        indexes = {name for name, in raw.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        raw.close()
    assert {"receipts_at", "inbound_at", "messages_final"} <= indexes


async def test_compact_converts_an_old_sqlite_store_only_while_the_daemon_is_stopped(
        tmp_path: Path) -> None:
    path = tmp_path / "mcdaemon.db"
    old_store(path, 0)
    daemon = DaemonBeat(process_id(), process_id())  # this process: it runs
    store = await Store.open(str(path))
    try:
        await add_calls(store, 400, time.time() - DAY)
        await store._db.execute("DELETE FROM messages")  # as retention would, long after
        await store.checkpoint()
        await store.set_status(daemon.row, daemon.value(), time.time())
        assert (await store.space())["free_bytes"] > 0
    finally:
        await store.close()
    config = config_for(path)
    before_info = io.StringIO()
    await show_info(config, before_info, as_json=False)
    assert "pages:     4 KB (a new store's are 16 KB" in before_info.getvalue()

    refused = await compact(config, io.StringIO())

    async def stop_daemon() -> None:
        stopped = await Store.open(str(path))
        try:
            await stopped.clear_status(daemon.row)  # as a daemon's clean stop does
        finally:
            await stopped.close()

    await stop_daemon()
    out = io.StringIO()
    done = await compact(config, out)

    assert (refused, done) == (1, 0)
    assert "store compacted" in out.getvalue()
    assert "pages stay" not in out.getvalue()
    again = await Store.open(str(path))
    try:
        space = await again.space()
        assert space["releases_space"] is True and space["free_bytes"] == 0
        assert space["page_bytes"] == PAGE_SIZE  # rewritten with a new store's pages
        assert await again.count_calls() == 400
    finally:
        await again.close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # back in WAL mode
    finally:
        raw.close()


async def test_compact_keeps_an_old_stores_pages_while_another_process_reads_it(
        tmp_path: Path) -> None:
    """SQLite changes a file's page size only outside WAL mode, which needs the file to
    itself: with another process on it (a `record-booking`, a monitoring `status`), compact
    still gives the space back, keeps the pages as they are, and says how to convert them."""
    path = tmp_path / "mcdaemon.db"
    old_store(path, 0)
    store = await Store.open(str(path))
    try:
        await add_calls(store, 200, time.time() - DAY)
        await store._db.execute("DELETE FROM messages")
        await store.checkpoint()
    finally:
        await store.close()
    other = await Store.open(str(path))
    reader = await Store.open_readonly(str(path))
    try:
        out = io.StringIO()
        assert await compact(config_for(path), out) == 0
        assert await reader.count_calls() == 200  # read through, not stopped
        assert await other.count_calls() == 200
    finally:
        await reader.close()
        await other.close()

    assert "its pages stay 4 KB (a new store's are 16 KB): another process had it open" \
        in out.getvalue()
    again = await Store.open(str(path))
    try:
        space = await again.space()
        assert space["page_bytes"] == 4096 and space["free_bytes"] == 0
        assert await again.count_calls() == 200
    finally:
        await again.close()


@pytest.mark.postgres
async def test_compact_gives_space_back_in_steps_beside_the_daemon_and_rewrites_once_stopped(
        tmp_path: Path) -> None:
    """A store that releases space as it goes: beside the running daemon `compact` releases
    what is freed, in steps; with the daemon stopped it rewrites the file, which lays every
    index out in order (a year's report read cold: 12 s against 27 s)."""
    path = tmp_path / "mcdaemon.db"
    daemon = DaemonBeat(process_id(), process_id())  # this process: it runs
    store = await Store.open(str(path))
    try:
        await add_calls(store, 400, time.time() - DAY)
        await store.set_status(daemon.row, daemon.value(), time.time())
    finally:
        await store.close()
    config = config_for(path)

    beside = io.StringIO()
    assert await compact(config, beside) == 0
    stopped = await Store.open(str(path))
    try:
        await stopped.clear_status(daemon.row)
    finally:
        await stopped.close()
    rewritten = io.StringIO()
    assert await compact(config, rewritten) == 0

    assert "rewriting" not in beside.getvalue() and "store compacted" in beside.getvalue()
    assert "rewriting" in rewritten.getvalue()
    again = await Store.open(str(path))
    try:
        assert (await again.space())["releases_space"] is True
        assert await again.count_calls() == 400
    finally:
        await again.close()


async def test_info_and_compact_of_a_postgresql_store(pg_url: str) -> None:
    now = time.time()
    store = await PgStore.open(pg_url)
    try:
        await add_calls(store, 3, now - 20 * DAY)
        await add_calls(store, 2, now - 2 * DAY)
    finally:
        await store.close()
    out = io.StringIO()

    assert await show_info(config_for(pg_url, calls="10d"), out, as_json=True) == 0

    info = json.loads(out.getvalue())
    assert info["tables"]["calls"]["rows"] == 5
    assert info["tables"]["calls"]["past_retention"] == 3
    assert abs(info["tables"]["calls"]["oldest"] - (now - 20 * DAY)) < 1
    assert info["releases_space"] is True and info["bytes"] > 0 and info["free_bytes"] == 0
    table = io.StringIO()
    assert await show_info(config_for(pg_url, calls="10d"), table, as_json=False) == 0
    assert "autovacuum" in table.getvalue()
    compacted = io.StringIO()
    assert await compact(config_for(pg_url), compacted) == 0  # beside a daemon: a VACUUM
    assert "store compacted" in compacted.getvalue()
    assert await raw_rows(pg_url, "SELECT COUNT(*) FROM calls") == [(5,)]


@pytest.fixture
def _fresh_logging() -> Iterator[None]:
    """`main` points the log at the stream of the moment (pytest's capture): undo it."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("_fresh_logging")
def test_the_store_commands_run_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "mcdaemon.db"
    config = tmp_path / "config.yaml"
    config.write_text(f"region: GB\ninbound: {{contexts: [from-carrier]}}\n"
                      f"store: {{path: {path}}}\n"
                      "ami: [{name: lab, username: mcd, secret: s}]\n")
    config.chmod(0o600)
    old_store(path, 3)

    assert main(["store", "compact", "-c", str(config)]) == 0
    assert main(["store", "info", "-c", str(config), "--json"]) == 0
