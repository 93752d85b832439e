"""A PostgreSQL store that rides a server outage out (`outage_max`, the daemon's store): the
call that meets the server gone raises `StoreUnreachable` only inside an `atomic()` block
(whose caller does it again); every other call waits for the server, reconnecting, and goes
on; past `outage_max` the store gives up with `StoreError`. A database that is there but
cannot keep anything (read-only) still fails at once. Against a server of the module's own,
shut down as an administrator would (`pg_ctl stop -m fast`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from mcdaemon.store import PgStore, StoreError, StoreUnreachable

from pg_server import PgServer, raw_rows

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

T0 = 1_736_157_600.0


@pytest.fixture
def own_url(own_pg_server: PgServer) -> Iterator[str]:
    url = own_pg_server.database()
    yield url
    own_pg_server.drop(url)


@pytest.fixture
async def riding_store(own_url: str) -> AsyncIterator[PgStore]:
    store = await PgStore.open(own_url, outage_max=120.0)
    yield store
    await store.close()


async def test_a_write_while_the_server_is_down_waits_for_it_and_is_kept(
        own_pg_server: PgServer, riding_store: PgStore) -> None:
    await riding_store.set_switch("global", True, T0)
    own_pg_server.halt()
    try:
        write = asyncio.create_task(riding_store.set_switch("global", False, T0 + 1))
        while riding_store.unreachable_since is None:
            await asyncio.sleep(0.05)  # the write met the server gone, and waits
        assert not write.done()
    finally:
        own_pg_server.resume()
    await write
    assert riding_store.unreachable_since is None
    assert await riding_store.switches() == {"global": False}


async def test_an_atomic_block_cut_by_the_outage_is_not_kept_and_is_said_so(
        own_pg_server: PgServer, riding_store: PgStore, own_url: str) -> None:
    with pytest.raises(StoreUnreachable, match="cannot be reached"):
        async with riding_store.atomic():
            await riding_store.set_switch("global", False, T0)
            own_pg_server.halt()
            await riding_store.set_switch("sales", False, T0)
    own_pg_server.resume()
    assert await riding_store.switches() == {}  # nothing of the block; the store goes on
    async with riding_store.atomic():
        await riding_store.set_switch("sales", False, T0)
    assert await raw_rows(own_url, "SELECT name FROM switches") == [("sales",)]


async def test_a_server_down_longer_than_outage_max_is_given_up_on(
        own_pg_server: PgServer, own_url: str) -> None:
    store = await PgStore.open(own_url, outage_max=1.0)
    own_pg_server.halt()
    try:
        with pytest.raises(StoreError, match=r"unreachable for \d+ s, longer than "
                                             r"store\.outage_max \(1 s\)") as caught:
            await store.set_switch("global", False, T0)
        assert not isinstance(caught.value, StoreUnreachable)
    finally:
        own_pg_server.resume()
        await store.close()


async def test_a_database_that_turned_read_only_still_stops_at_once(
        riding_store: PgStore, own_url: str) -> None:
    database = own_url.rsplit("/", 1)[-1]
    await raw_rows(own_url, f"ALTER DATABASE {database} SET default_transaction_read_only = on")
    pid = await riding_store._scalar("SELECT pg_backend_pid()")
    await raw_rows(own_url, "SELECT pg_terminate_backend(?)", pid)  # reconnects: read-only now
    with pytest.raises(StoreError, match=r"cannot be used: .*read-only") as caught:
        await riding_store.set_switch("global", False, T0)
    assert not isinstance(caught.value, StoreUnreachable)
