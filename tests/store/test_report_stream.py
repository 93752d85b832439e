"""`report_texts` streams the sent first texts of the callers who texted us, opted out or
booked, by number, a batch of whole callers at a time, with the replies and opt-outs of the
batch's callers, merged from three queries read a batch at a time; `report_counts` counts
the sent texts and their callers per arm, `report_callers` all their callers per group and
overall. On both backends, with batches of two rows, so every
merge crosses batch boundaries (PostgreSQL: cursors of one transaction)."""

from __future__ import annotations

import sqlite3
from unittest.mock import patch

from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import PgStore, Store, migration_steps

T0 = 1_736_157_600.0


async def texted(store: Store | PgStore, call_id: str, caller: str, at: float) -> None:
    record = CallRecord(pbx="lab", call_id=call_id, caller=caller.lstrip("+"),
                        caller_name=None, caller_e164=caller, did=None, group="sales",
                        outcome=Outcome.QUEUE_ABANDON, stages=("queue",), started=at - 30,
                        ended=at, wait_seconds=20.0)
    await store.record_call(record, Decision(text=True, reason="sent", group="sales",
                                             body="Sorry we missed you.",
                                             template="queue_abandon", destination=caller),
                            now=at, destination=caller)
    [claimed] = await store.claim_due(at, 1)
    await store.mark_submitted(claimed.id, [f"{call_id}-1"], at + 2)


async def test_each_caller_who_answered_comes_once_with_their_replies_across_batches(
        store: Store | PgStore) -> None:
    callers = [f"+4477009001{n:02d}" for n in range(9)]
    for n, caller in enumerate(callers):
        await texted(store, f"a{n}", caller, T0 + n)
        if n % 2 == 0:
            await texted(store, f"b{n}", caller, T0 + 600 + n)  # a second call, texted too
    for n, caller in enumerate(callers[:7]):
        if n != 3:
            await store.add_inbound(caller, "lab", f"hi {n}", T0 + 60 + n)
            await store.add_inbound(caller, "lab", f"again {n}", T0 + 120 + n)
    await store.add_booking(callers[7], 90.0, T0 + 900)  # booked, never wrote: comes too
    # callers[3] and callers[8] neither wrote nor booked: counted, not streamed
    await store.add_inbound("+447700900000", "lab", "never texted", T0 + 60)  # sorts first
    await store.add_inbound("+447700900999", "lab", "never texted", T0 + 60)  # sorts last
    await store.opt_out(callers[4], "STOP", T0 + 300)

    with patch("mcdaemon.store.report._FETCH", 2):
        batches = [batch async for batch in store.report_texts(T0 - 1, T0 + 3600)]

    numbers = [row[0] for batch in batches for row in batch.texts]
    assert numbers == sorted(numbers)
    for batch in batches:  # a caller's texts all come in one batch
        assert not {row[0] for row in batch.texts} & {
            row[0] for other in batches if other is not batch for row in other.texts}
    texts = {caller: [tuple(row) for batch in batches for row in batch.texts
                      if row[0] == caller] for caller in callers}
    assert [len(texts[caller]) for caller in callers] == [2, 1, 2, 0, 2, 1, 2, 1, 0]
    first = texts[callers[0]][0]
    assert first[1:] == (T0 + 2, "sales", "queue_abandon", None, first[5])
    inbound = {number: found for batch in batches for number, found in batch.inbound.items()}
    assert inbound == {caller: [(f"hi {n}", T0 + 60 + n), (f"again {n}", T0 + 120 + n)]
                       for n, caller in enumerate(callers[:7]) if n != 3}
    # numbers never texted are read past, not handed on with a batch of texts
    opt_outs = {number: found for batch in batches for number, found in batch.opt_outs.items()}
    assert opt_outs == {callers[4]: [T0 + 300]}
    for batch in batches:
        assert set(batch.inbound) | set(batch.opt_outs) <= {row[0] for row in batch.texts}


async def test_texts_not_sent_and_calls_outside_the_window_are_left_out(
        store: Store | PgStore) -> None:
    await texted(store, "in", "+447700900101", T0)
    await texted(store, "late", "+447700900102", T0 + 7200)
    await store.record_call(
        CallRecord(pbx="lab", call_id="queued", caller="447700900103", caller_name=None,
                   caller_e164="+447700900103", did=None, group="sales",
                   outcome=Outcome.QUEUE_ABANDON, stages=("queue",), started=T0 - 30,
                   ended=T0, wait_seconds=20.0),
        Decision(text=True, reason="sent", group="sales", body="Sorry.",
                 template="queue_abandon", destination="+447700900103"),
        now=T0, destination="+447700900103")

    batches = [batch async for batch in store.report_texts(T0 - 1, T0 + 3600)]
    counts = await store.report_counts(T0 - 1, T0 + 3600)
    callers = await store.report_callers(T0 - 1, T0 + 3600)

    assert [row[0] for batch in batches for row in batch.texts] == []  # none answered
    # the same texts counted: by arm (none delivered, one caller), by wait to the
    # millisecond, by quarter hour sent
    assert [tuple(row) for row in counts["texts"]] == [("sales", "queue_abandon", None, 1, 0, 1)]
    assert [tuple(row) for row in counts["waits"]] == [("sales", 2000, 1)]
    assert [tuple(row) for row in counts["text_buckets"]] == [(int((T0 + 2) // 900), "sales", 1)]
    assert callers == {"callers": [("sales", 1)], "all_callers": [(1,)]}


async def test_texted_callers_are_counted_once_per_group_arm_and_overall(
        store: Store | PgStore) -> None:
    """A caller texted often counts once in each group and arm it was texted in; a caller
    texted by two groups counts once overall; `groups` counts only their texts' callers."""
    plan = [("+447700900301", "sales", "a"), ("+447700900301", "sales", "a"),
            ("+447700900301", "sales", "b"), ("+447700900301", "support", None),
            ("+447700900302", "sales", "a"), ("+447700900303", "support", None),
            ("+447700900303", "support", None), ("+447700900304", None, None)]
    for n, (caller, group, variant) in enumerate(plan):
        at = T0 + 60 * n
        record = CallRecord(pbx="lab", call_id=f"c{n}", caller=caller.lstrip("+"),
                            caller_name=None, caller_e164=caller, did=None, group=group,
                            outcome=Outcome.QUEUE_ABANDON, stages=("queue",),
                            started=at - 30, ended=at, wait_seconds=20.0)
        await store.record_call(record, Decision(
            text=True, reason="sent", group=group, body="Sorry.", template="queue_abandon",
            variant=variant, destination=caller), now=at, destination=caller)
        [claimed] = await store.claim_due(at, 1)
        await store.mark_submitted(claimed.id, [f"c{n}-1"], at + 1)
    await store.apply_receipt("c0-1", "DELIVRD", None, T0 + 5)

    counts = await store.report_counts(T0 - 1, T0 + 3600)
    callers = await store.report_callers(T0 - 1, T0 + 3600)
    scoped = await store.report_callers(T0 - 1, T0 + 3600, ["support", None])
    nothing = await store.report_callers(T0 - 1, T0 + 3600, [])

    def rows(found: dict[str, list[tuple[object, ...]]], name: str) -> set[tuple[object, ...]]:
        return {tuple(row) for row in found[name]}

    # (group, template, variant, texts, of them delivered, callers)
    assert rows(counts, "texts") == {("sales", "queue_abandon", "a", 3, 1, 2),
                                     ("sales", "queue_abandon", "b", 1, 0, 1),
                                     ("support", "queue_abandon", None, 3, 0, 2),
                                     (None, "queue_abandon", None, 1, 0, 1)}
    assert rows(callers, "callers") == {("sales", 2), ("support", 2), (None, 1)}
    assert rows(callers, "all_callers") == {(4,)}
    assert rows(scoped, "all_callers") == {(3,)}
    assert rows(nothing, "all_callers") == {(0,)}
    # the callers per group are counted whatever `groups` says
    for found in (scoped, nothing):
        assert rows(found, "callers") == rows(callers, "callers")


def undo_migration_15(db: sqlite3.Connection) -> None:
    """Schema 15 back to 14: the bookings' copies of their calls and texts, the trigger
    that keeps them and the index of the texts never sent go."""
    db.execute("DROP TRIGGER calls_booked")
    db.execute("DROP INDEX messages_unsent")
    for column in ("call_ended", "call_outcome", "call_decision_group", "call_did",
                   "call_grp", "text_id"):
        db.execute(f"ALTER TABLE bookings DROP COLUMN {column}")


def undo_migration_14(db: sqlite3.Connection) -> None:
    """Schema 14 back to 13 as far as a report reads it: the texts' counts, their triggers
    and the index of the partial days go (the indexes it dropped are not put back)."""
    for trigger in ("texts_counted", "texts_uncounted", "texts_recounted"):
        db.execute(f"DROP TRIGGER {trigger}")
    for table in ("text_counts", "text_waits"):
        db.execute(f"DROP TABLE {table}")
    db.execute("DROP INDEX messages_first_ended")


def undo_migration_13(db: sqlite3.Connection) -> None:
    """Schema 13 back to 12: its new indexes go (`messages_callers`, which it rebuilt, is
    put back by the caller)."""
    for index in ("messages_sent_arms", "messages_sent_waits", "messages_sent_quarters",
                  "campaigns_created"):
        db.execute(f"DROP INDEX IF EXISTS {index}")


def undo_migration_12(db: sqlite3.Connection) -> None:
    """Schema 12 back to 11: the calls' counts and their triggers go (the calls' index it
    dropped is schema 10's, put back by the caller)."""
    for trigger in ("calls_counted", "calls_uncounted", "calls_recounted"):
        db.execute(f"DROP TRIGGER {trigger}")
    db.execute("DROP TABLE call_counts")


async def test_sqlite_store_of_schema_10_is_read_as_it_is_then_its_texts_get_their_templates(
        db_path: str) -> None:
    """Before migration 11 a text's template is its call's (read through a subquery by a
    report of an unmigrated store); the migration copies it onto the text."""
    store = await Store.open(db_path)
    for n, (template, variant) in enumerate([("queue_abandon", "short"),
                                             ("voicemail", "control"), ("voicemail", None)]):
        caller = f"+4477009002{n:02d}"
        record = CallRecord(pbx="lab", call_id=f"v{n}", caller=caller.lstrip("+"),
                            caller_name=None, caller_e164=caller, did=None, group="sales",
                            outcome=Outcome.QUEUE_ABANDON, stages=("queue",),
                            started=T0 - 30, ended=T0, wait_seconds=20.0)
        await store.record_call(record, Decision(
            text=True, reason="sent", group="sales", body="Sorry.", template=template,
            variant=variant, destination=caller), now=T0, destination=caller)
    for claimed in await store.claim_due(T0, 10):
        await store.mark_submitted(claimed.id, [f"id-{claimed.id}"], T0 + 1)
        await store.add_inbound(claimed.destination, "lab", "thanks", T0 + 30)
    expected = [("+447700900200", "queue_abandon", "short"),
                ("+447700900201", "voicemail", "control"),
                ("+447700900202", "voicemail", None)]
    assert await texts_of(store) == expected
    await store.close()
    old = sqlite3.connect(db_path)  # back to schema 10, as an older mcdaemon left it
    undo_migration_15(old)
    undo_migration_14(old)
    undo_migration_13(old)
    undo_migration_12(old)
    replaced = {"calls_groups"}
    for statement in migration_steps(10, "sqlite"):  # migration 11's indexes undone
        if statement.startswith(("CREATE INDEX", "DROP INDEX")):
            name = statement.split()[2]
            old.execute(f"DROP INDEX IF EXISTS {name}")
            replaced.add(name)
    for statement in migration_steps(9, "sqlite"):  # schema 10's put back
        if statement.startswith("CREATE INDEX") and statement.split()[2] in replaced:
            old.execute(statement)
    old.execute("ALTER TABLE messages DROP COLUMN template")
    old.execute("PRAGMA user_version = 10")
    old.commit()
    old.close()

    readonly = await Store.open_readonly(db_path)
    try:
        assert await texts_of(readonly) == expected
        counted = (await readonly.report_counts(T0 - 1, T0 + 60))["texts"]
        assert {tuple(row) for row in counted} == {
            ("sales", "queue_abandon", "short", 1, 0, 1), ("sales", "voicemail", None, 1, 0, 1),
            ("sales", "voicemail", "control", 1, 0, 1)}
    finally:
        await readonly.close()
    migrated = await Store.open(db_path)
    try:
        assert await texts_of(migrated) == expected
    finally:
        await migrated.close()
    check = sqlite3.connect(db_path)
    try:
        assert check.execute("SELECT destination, template FROM messages ORDER BY id"
                             ).fetchall() == [(number, template) for number, template, _
                                              in expected]
    finally:
        check.close()


async def texts_of(store: Store) -> list[tuple[str, str | None, str | None]]:
    """(number, template, variant) of each streamed text."""
    return [(row[0], row[3], row[4]) async for batch in store.report_texts(T0 - 1, T0 + 60)
            for row in batch.texts]
