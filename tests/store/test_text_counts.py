"""`text_counts` and `text_waits`: the database keeps the report's counts of sent first
texts per day of their call's end (by quarter hour sent, by wait) as texts are sent, are
removed (retention) or changed by hand, and `report_counts` reads them for the days wholly
inside its window and the texts themselves on its two partial days: what it says is what
counting every sent text of the window one by one says. On both backends."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from typing import Any, NamedTuple

from test_report_stream import undo_migration_14, undo_migration_15

from mcdaemon.config.model import RetentionConfig
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import PgStore, Store, migration_steps

from pg_server import change_by_hand, raw_rows

DAY = 86400.0
DAY0 = 20_094 * DAY  # a day's start (UTC)
QUARTER = 900


class Text(NamedTuple):
    """A first text as the test sends it: `fate` is its final state, or 'queued' (never
    claimed) or 'failed' (refused), neither of which counts as sent."""

    n: int
    ended: float
    group: str | None
    template: str | None
    variant: str | None
    wait: float  # seconds from the call's end to the submit
    fate: str


async def send(store: Store | PgStore, texts: list[Text]) -> None:
    """Record each text's call and take it as far as its fate; the queued ones last, so
    that no claim takes them."""
    for text in sorted(texts, key=lambda text: text.fate == "queued"):
        caller = f"+4477009{text.n % 7:05d}"
        record = CallRecord(pbx="lab", call_id=f"t{text.n}", caller=caller.lstrip("+"),
                            caller_name=None, caller_e164=caller, did=None,
                            group=text.group, outcome=Outcome.QUEUE_ABANDON,
                            stages=("queue",), started=text.ended - 30, ended=text.ended,
                            wait_seconds=20.0)
        await store.record_call(record, Decision(
            text=True, reason="sent", group=text.group, body="Sorry.",
            template=text.template, variant=text.variant, destination=caller),
            now=text.ended, destination=caller)
        if text.fate == "queued":
            continue
        [claimed] = await store.claim_due(text.ended, 1)
        if text.fate == "failed":
            await store.mark_failed(claimed.id, error_code=11, detail="refused",
                                    now=text.ended + 1)
            continue
        submitted = text.ended + text.wait
        await store.mark_submitted(claimed.id, [f"id-{text.n}"], submitted)
        if text.fate in ("delivered", "undeliverable"):
            await store.apply_receipt(f"id-{text.n}", "DELIVRD" if text.fate == "delivered"
                                      else "UNDELIV", None, submitted + 5)


def history(seed: int) -> list[Text]:
    """Texts over five days: calls at the days' edges, no group, no template or variant,
    waits from milliseconds to hours, every fate."""
    chance = random.Random(seed)
    texts = []
    for n in range(160):
        ended = DAY0 + chance.randrange(5) * DAY + chance.choice(
            [0.0, DAY - 0.001, 1.5, chance.uniform(0, DAY)])
        texts.append(Text(
            n, ended, chance.choice(["sales", "support", None]),
            chance.choice(["queue_abandon", "voicemail", None]),
            chance.choice(["a", "b", None]),
            chance.choice([0.004, 0.25, 0.2505, 1.0, 59.9, 7200.0, chance.uniform(0, 3)]),
            chance.choice(["submitted", "delivered", "delivered", "undeliverable",
                           "queued", "failed"])))
    return texts


class Counted(NamedTuple):
    arms: Counter[tuple[Any, ...]]  # (group, template, variant, 'sent' | 'delivered')
    waits: Counter[tuple[Any, ...]]  # (group, whole ms)
    quarters: Counter[tuple[Any, ...]]  # (quarter hour sent, group)


def counted_one_by_one(texts: list[Text], since: float, until: float) -> Counted:
    """What the report should say of the texts of the calls that ended in [since, until]."""
    found = Counted(Counter(), Counter(), Counter())
    for text in texts:
        if not since <= text.ended <= until or text.fate in ("queued", "failed"):
            continue
        submitted = text.ended + text.wait
        arm = (text.group, text.template, text.variant)
        found.arms[(*arm, "sent")] += 1
        found.arms[(*arm, "delivered")] += text.fate == "delivered"
        found.waits[(text.group, int((submitted - text.ended) * 1000))] += 1
        found.quarters[(int(submitted / QUARTER), text.group)] += 1
    return Counted(+found.arms, +found.waits, +found.quarters)


async def counted_by_report(store: Store | PgStore, since: float, until: float) -> Counted:
    counts = await store.report_counts(since, until)
    found = Counted(Counter(), Counter(), Counter())
    for *arm, sent, delivered, _callers in counts["texts"]:
        found.arms[(*arm, "sent")] += sent
        found.arms[(*arm, "delivered")] += delivered
    for group, wait_ms, count in counts["waits"]:
        found.waits[(group, int(wait_ms))] += count
    for quarter, group, count in counts["text_buckets"]:
        found.quarters[(int(quarter), group)] += count
    return Counted(+found.arms, +found.waits, +found.quarters)


WINDOWS = [(DAY0, DAY0 + 5 * DAY), (DAY0 + 1.5, DAY0 + 3 * DAY - 0.001),
           (DAY0 + 2 * DAY + 100, DAY0 + 2 * DAY + 200), (DAY0 + DAY - 0.001, DAY0 + 2 * DAY),
           (DAY0 - 400 * DAY, DAY0 + 400 * DAY), (DAY0 + 1.5 * DAY, DAY0 + 4.25 * DAY)]


async def test_the_reports_counts_of_texts_are_those_of_every_sent_text_of_its_window(
        store: Store | PgStore) -> None:
    texts = history(1)
    await send(store, texts)
    counted = 0
    for since, until in WINDOWS:
        expected = counted_one_by_one(texts, since, until)
        counted += bool(expected.arms)
        assert await counted_by_report(store, since, until) == expected, (since, until)
    assert counted >= 5  # windows with texts to count


async def test_a_text_counts_once_from_its_submit_whatever_its_receipts_say(
        store: Store | PgStore, location: str) -> None:
    await send(store, [Text(1, DAY0 + 10, "sales", "voicemail", "a", 0.5, "submitted")])
    await store.apply_receipt("id-1", "DELIVRD", None, DAY0 + 20)
    await store.apply_receipt("id-1", "DELIVRD", None, DAY0 + 30)  # the SMSC said it twice

    counted = await counted_by_report(store, DAY0 - DAY, DAY0 + 2 * DAY)

    assert counted.arms == Counter({("sales", "voicemail", "a", "sent"): 1,
                                    ("sales", "voicemail", "a", "delivered"): 1})
    rows = await raw_rows(location, "SELECT day, quarter, grp, texts FROM text_counts")
    assert [tuple(row) for row in rows] == [
        (int(DAY0 // DAY), int((DAY0 + 10.5) // QUARTER), "sales", 1)]


async def test_texts_removed_by_retention_leave_their_counts_and_no_key_at_zero(
        store: Store | PgStore, location: str) -> None:
    old = [Text(n, DAY0 + n * 60, "sales", "voicemail", None, 0.3 + n, "delivered")
           for n in range(12)]
    recent = [Text(100 + n, DAY0 + 400 * DAY + n * 60, "support", None, "b", 0.7,
                   "submitted") for n in range(5)]
    await send(store, old + recent)

    while await store.prune_step(RetentionConfig(), DAY0 + 420 * DAY, limit=5):
        pass

    window = (DAY0 - DAY, DAY0 + 500 * DAY)
    assert await counted_by_report(store, *window) == counted_one_by_one(recent, *window)
    counts = await raw_rows(location, "SELECT day, grp, texts FROM text_counts")
    waits = await raw_rows(location, "SELECT day, grp, wait_ms, texts FROM text_waits")
    day = int((DAY0 + 400 * DAY) // DAY)
    assert [tuple(row) for row in counts] == [(day, "support", 5)]
    assert [tuple(row) for row in waits] == [(day, "support", 700, 5)]


async def test_a_text_changed_by_hand_moves_to_its_new_counts(
        store: Store | PgStore, location: str) -> None:
    texts = [Text(1, DAY0 + 10, "sales", "voicemail", "a", 0.5, "delivered"),
             Text(2, DAY0 + 20, "sales", "voicemail", "a", 0.5, "delivered")]
    await send(store, texts)
    await change_by_hand(location, "UPDATE messages SET grp = 'support', variant = NULL,"
                         " call_ended_at = call_ended_at - 86400 WHERE call_id = 't1'")

    counted = await counted_by_report(store, DAY0 - 2 * DAY, DAY0 + 2 * DAY)

    moved = [texts[0]._replace(group="support", variant=None, ended=DAY0 + 10 - DAY,
                               wait=0.5 + DAY), texts[1]]
    assert counted == counted_one_by_one(moved, DAY0 - 2 * DAY, DAY0 + 2 * DAY)


async def test_migration_14_counts_the_texts_a_store_already_holds(db_path: str) -> None:
    texts = history(2)
    store = await Store.open(db_path)
    await send(store, texts)
    await store.close()
    older = sqlite3.connect(db_path)  # back to schema 13, its texts not counted
    undo_migration_15(older)
    undo_migration_14(older)
    for statement in migration_steps(12, "sqlite"):  # the indexes migration 14 dropped
        if statement.startswith(("CREATE INDEX messages_sent_waits",
                                 "CREATE INDEX messages_sent_quarters")):
            older.execute(statement)
    older.execute("PRAGMA user_version = 13")
    older.commit()
    older.close()

    migrated = await Store.open(db_path)
    try:
        for since, until in WINDOWS:
            assert await counted_by_report(migrated, since, until) == counted_one_by_one(
                texts, since, until), (since, until)
        tables = await migrated.tables()
        assert {"text_counts", "text_waits"} <= tables
    finally:
        await migrated.close()
