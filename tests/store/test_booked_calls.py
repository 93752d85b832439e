"""A booking carries what the report reads of the call it is attributed to (its end,
outcome and group key) and that call's first text's id (migration 15), so the report reads
a year's bookings from their own rows: what it says is what joining each booking to its
call and text says, as recorded, after the call is changed by hand, on a store migrated
from schema 14, and on a store older than 15 read as it is. On both backends."""

from __future__ import annotations

import sqlite3
from typing import Any

from test_report_stream import undo_migration_15

from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import PgStore, Store

from pg_server import change_by_hand, raw_rows

T0 = 1_736_157_600.0
WINDOW = (T0 - 3600, T0 + 3600)


async def texted_call(store: Store | PgStore, call_id: str, caller: str, group: str | None,
                      did: str | None, ended: float) -> None:
    """A missed call from `caller`, its first text sent a second after the hangup."""
    record = CallRecord(pbx="lab", call_id=call_id, caller=caller.lstrip("+"),
                        caller_name=None, caller_e164=caller, did=did, group=group,
                        outcome=Outcome.QUEUE_ABANDON, stages=("queue",), started=ended - 30,
                        ended=ended, wait_seconds=20.0)
    await store.record_call(record, Decision(text=True, reason="sent", group=group,
                                             body="Sorry.", template="queue_abandon",
                                             destination=caller),
                            now=ended, destination=caller)
    [claimed] = await store.claim_due(ended, 1)
    await store.mark_submitted(claimed.id, [f"id-{call_id}"], ended + 1)


async def booked_history(store: Store | PgStore) -> None:
    """Three texted calls, four bookings: two to the same call, one to a call of no group
    and DID, one from a number never texted (unattributed)."""
    await texted_call(store, "c1", "+447700900101", "sales", "442071230000", T0)
    await texted_call(store, "c2", "+447700900102", None, None, T0 + 60)
    await texted_call(store, "c3", "+447700900103", "support", "442071230001", T0 - 7200)
    for number, value, at in [("+447700900101", 40.0, T0 + 600), ("+447700900101", 5.0,
                              T0 + 900), ("+447700900102", 120.0, T0 + 700),
                              ("+447700900103", 9.0, T0 + 800),
                              ("+447700900999", 70.0, T0 + 800)]:
        await store.add_booking(number, value, at, currency="GBP")


async def read_bookings(store: Store | PgStore, since: float = WINDOW[0],
                        until: float = WINDOW[1]) -> dict[str, Any]:
    counts = await store.report_counts(since, until)
    return {"by_call": sorted(map(tuple, counts["bookings"]), key=repr),
            "unattributed": counts["unattributed"],
            "booked": sorted(await store.report_booked(since)),
            "streamed": sorted({text[0] for batch in [b async for b in store.report_texts(
                since, until)] for text in batch.texts})}


async def text_id(location: str, call_id: str) -> int:
    [(found,)] = await raw_rows(location, "SELECT id FROM messages WHERE call_id = ?", call_id)
    return int(found)


async def test_a_booking_carries_its_calls_key_and_its_first_texts_id(
        store: Store | PgStore, location: str) -> None:
    await booked_history(store)

    rows = await raw_rows(location, "SELECT call_id, call_ended, call_outcome,"
                          " call_decision_group, call_did, call_grp, text_id FROM bookings"
                          " ORDER BY id")

    c1, c2, c3 = [await text_id(location, call) for call in ("c1", "c2", "c3")]
    assert [tuple(row) for row in rows] == [
        ("c1", T0, "queue_abandon", "sales", "442071230000", "sales", c1),
        ("c1", T0, "queue_abandon", "sales", "442071230000", "sales", c1),
        ("c2", T0 + 60, "queue_abandon", None, None, None, c2),
        ("c3", T0 - 7200, "queue_abandon", "support", "442071230001", "support", c3),
        (None, None, None, None, None, None, None)]
    found = await read_bookings(store)
    # the call of c3 ended before the window: its booking is the window's, not its call's
    assert found["by_call"] == sorted([("sales", "442071230000", "sales", 2, 45.0),
                                       (None, None, None, 1, 120.0)], key=repr)
    assert found["unattributed"] == [(1,)]
    assert found["booked"] == sorted([(c1, "+447700900101"), (c2, "+447700900102"),
                                      (c3, "+447700900103")])
    assert found["streamed"] == ["+447700900101", "+447700900102"]


async def test_a_call_changed_by_hand_takes_its_bookings_along(
        store: Store | PgStore, location: str) -> None:
    await booked_history(store)

    await change_by_hand(location, "UPDATE calls SET grp = 'support', did = NULL,"
                         " decision_group = 'support' WHERE call_id = 'c1'")
    await change_by_hand(location, "UPDATE calls SET ended = ended - 86400"
                         " WHERE call_id = 'c2'")

    found = await read_bookings(store)
    assert found["by_call"] == [("support", None, "support", 2, 45.0)]
    rows = await raw_rows(location, "SELECT call_ended FROM bookings WHERE call_id = 'c2'")
    assert rows == [(T0 + 60 - 86400,)]


async def test_migration_15_copies_the_calls_onto_the_bookings_a_store_holds_and_an_older_store_reads_the_same(  # noqa: E501
        db_path: str) -> None:
    store = await Store.open(db_path)
    await booked_history(store)
    expected = await read_bookings(store)
    copied = await raw_rows(db_path, "SELECT * FROM bookings ORDER BY id")
    await store.close()
    older = sqlite3.connect(db_path)  # back to schema 14, as an older mcdaemon left it
    undo_migration_15(older)
    older.execute("PRAGMA user_version = 14")
    older.commit()
    older.close()

    readonly = await Store.open_readonly(db_path)  # read as it is: by joins
    try:
        assert await read_bookings(readonly) == expected
    finally:
        await readonly.close()
    migrated = await Store.open(db_path)
    try:
        assert await read_bookings(migrated) == expected
    finally:
        await migrated.close()
    assert await raw_rows(db_path, "SELECT * FROM bookings ORDER BY id") == copied
