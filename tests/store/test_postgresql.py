"""What only the PostgreSQL backend has to show: daemons on several hosts starting together
migrate once, racing for the same calls record each once, a database that goes away stops
the daemon loudly (`StoreError`), and the URL never shows its password. Everything else the
store does is tested on both backends (`location`, `store` in conftest.py)."""

from __future__ import annotations

import asyncio

import pytest

from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import SCHEMA_VERSION, NewCall, PgStore, StoreError
from mcdaemon.store.pg_connection import shown_url

from pg_server import raw_rows

pytestmark = pytest.mark.postgres

T0 = 1_736_157_600.0


def storm(count: int) -> list[NewCall]:
    calls = []
    for n in range(count):
        caller = f"+4477009{n:05d}"
        record = CallRecord(pbx="lab", call_id=f"1736157600.{n}", caller=caller,
                            caller_name=None, caller_e164=caller, did="100", group="sales",
                            outcome=Outcome.QUEUE_ABANDON, stages=(), started=T0 - 30,
                            ended=T0, wait_seconds=30.0)
        calls.append(NewCall(record, Decision(True, "sent", group="sales", body="Sorry",
                                              destination=caller)))
    return calls


async def test_daemons_starting_together_on_an_empty_database_migrate_it_once(
        pg_url: str) -> None:
    stores = await asyncio.gather(*(PgStore.open(pg_url) for _ in range(4)))
    try:
        assert {await store.schema_version() for store in stores} == {SCHEMA_VERSION}
        assert await raw_rows(pg_url, "SELECT version FROM mcdaemon_schema") == [
            (SCHEMA_VERSION,)]
        assert "messages" in await stores[0].tables()
    finally:
        for store in stores:
            await store.close()


async def test_a_database_from_a_newer_mcdaemon_is_refused_untouched(pg_url: str) -> None:
    await raw_rows(pg_url, "CREATE TABLE mcdaemon_schema (version INTEGER NOT NULL)")
    await raw_rows(pg_url, f"INSERT INTO mcdaemon_schema VALUES ({SCHEMA_VERSION + 1})")

    with pytest.raises(StoreError, match=rf"newer mcdaemon \(schema {SCHEMA_VERSION + 1}.*"
                                         r"use another store\.url"):
        await PgStore.open(pg_url)
    assert await raw_rows(pg_url, "SELECT to_regclass('messages')") == [(None,)]


async def test_a_database_without_the_schema_is_not_read_as_a_store(pg_url: str) -> None:
    with pytest.raises(StoreError, match="is not an mcdaemon store"):
        await PgStore.open_readonly(pg_url)


async def test_the_read_only_store_reads_and_cannot_write(pg_url: str) -> None:
    writer = await PgStore.open(pg_url)
    await writer.set_switch("global", False, T0)
    await writer.close()

    reader = await PgStore.open_readonly(pg_url)
    try:
        assert await reader.switches() == {"global": False}
        with pytest.raises(StoreError, match="cannot be used"):
            await reader.set_switch("global", True, T0)
    finally:
        await reader.close()


async def test_daemons_racing_for_the_same_calls_record_and_text_each_once(
        pg_url: str) -> None:
    """Two daemons watching one PBX see the same hangups and write the same batch at once."""
    stores = await asyncio.gather(*(PgStore.open(pg_url) for _ in range(3)))
    try:
        calls = storm(150)
        results = await asyncio.gather(*(store.record_calls_and_claim(
            calls[::-1] if index % 2 else calls, now=T0, destinations=[None] * len(calls),
            claim=50) for index, store in enumerate(stores)))
        messages = await stores[0].messages()
    finally:
        for store in stores:
            await store.close()

    assert len(messages) == 150 and len({m.destination for m in messages}) == 150
    claimed = [m.id for _, batch in results for m in batch]
    assert len(claimed) == len(set(claimed))
    created = [message_id for ids, _ in results for message_id in ids if message_id]
    assert sorted(created) == sorted(m.id for m in messages)  # each text made by one daemon


async def test_a_database_that_goes_away_stops_the_daemon_loudly(pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    try:
        pid = await store._scalar("SELECT pg_backend_pid()")
        await raw_rows(pg_url, "SELECT pg_terminate_backend(?)", pid)  # an admin's shutdown

        with pytest.raises(StoreError, match=r"cannot be used: .*PostgreSQL server"):
            await store.set_switch("global", False, T0)
    finally:
        await store.close()


def test_a_url_is_shown_without_its_password() -> None:
    assert shown_url("postgresql://mcdaemon:hunter2@db.example:5433/calls?sslmode=require") \
        == "postgresql://mcdaemon@db.example:5433/calls?sslmode=require"
    assert shown_url("postgresql://db.example/calls") == "postgresql://db.example/calls"


async def test_a_server_that_refuses_the_connection_names_the_settings_to_check(
        pg_url: str) -> None:
    wrong = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(StoreError, match=r"cannot connect to the store .*no_such_database.*"
                                         r"store\.url"):
        await PgStore.open(wrong)
