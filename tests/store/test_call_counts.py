"""`call_counts`: the database keeps the report's counts of calls per quarter hour as calls
are recorded, removed (retention) or changed by hand, and `report_counts` reads them for the
quarter hours wholly inside its window and the calls themselves at its two partial ends: what
it says is what counting every call of the window one by one says. On both backends."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from mcdaemon.config.model import RetentionConfig
from mcdaemon.core.records import MISSED_OUTCOMES, CallRecord, Decision, Outcome
from mcdaemon.store import NewCall, PgStore, Store

from pg_server import change_by_hand, raw_rows

T0 = 1_736_157_600.0  # a quarter hour's start
QUARTER = 900.0
_MISSED = {str(outcome) for outcome in MISSED_OUTCOMES}


def call(n: int, ended: float, *, outcome: Outcome = Outcome.QUEUE_ABANDON,
         number: str | None = "+447700900123", group: str | None = "sales",
         did: str | None = None, texted: bool = True) -> NewCall:
    record = CallRecord(pbx="lab", call_id=f"c{n}", caller=(number or "").lstrip("+"),
                        caller_name=None, caller_e164=number, did=did, group=group,
                        outcome=outcome, stages=("queue",), started=ended - 30, ended=ended,
                        wait_seconds=20.0)
    texted = texted and outcome == Outcome.QUEUE_ABANDON and number is not None
    decision = Decision(text=texted, reason="sent" if texted else "not_missed",
                        group=group if texted else None, body="Sorry." if texted else None,
                        template="queue_abandon" if texted else None, destination=number)
    return NewCall(record, decision)


def calls_of(store_calls: list[NewCall]) -> list[tuple[Any, ...]]:
    """(ended, key…, outcome, reason, textable, has a number) of recorded calls."""
    return [(c.record.ended, c.decision.group, c.record.did, c.record.group,
             str(c.record.outcome), c.decision.reason, int(c.decision.text),
             bool(c.record.caller_e164)) for c in store_calls]


def counted_one_by_one(calls: list[tuple[Any, ...]], since: float, until: float
                       ) -> tuple[Counter[tuple[Any, ...]], Counter[tuple[Any, ...]]]:
    """What the report should say: (calls, with a number) per key, missed per quarter hour."""
    totals: Counter[tuple[Any, ...]] = Counter()
    missed: Counter[tuple[Any, ...]] = Counter()
    for ended, *key, numbered in calls:
        if since <= ended <= until:
            totals[(*key, "calls")] += 1
            totals[(*key, "numbered")] += numbered
            if key[3] in _MISSED:
                missed[(int(ended // QUARTER), *key[:3])] += 1
    return totals, missed


async def counted_by_report(store: Store | PgStore, since: float, until: float
                            ) -> tuple[Counter[tuple[Any, ...]], Counter[tuple[Any, ...]]]:
    counts = await store.report_counts(since, until)
    totals: Counter[tuple[Any, ...]] = Counter()
    missed: Counter[tuple[Any, ...]] = Counter()
    for *key, count, numbered in counts["calls"]:
        totals[(*key, "calls")] += count
        totals[(*key, "numbered")] += numbered
    for bucket, *key, count in counts["missed"]:
        missed[(int(bucket), *key)] += count
    return +totals, +missed


async def record(store: Store | PgStore, calls: list[NewCall]) -> None:
    await store.record_calls(calls, now=T0, destinations=[None] * len(calls))


def history(seed: int) -> list[NewCall]:
    """Calls over five hours: edges of quarter hours, no number, no group, answered ones."""
    chance = random.Random(seed)
    calls = []
    for n in range(300):
        ended = T0 + chance.choice([0.0, QUARTER - 0.001, QUARTER, 1.5,
                                    chance.uniform(0, 5 * 3600)]) + 900 * chance.randrange(20)
        calls.append(call(n, ended, outcome=chance.choice(
            [Outcome.QUEUE_ABANDON, Outcome.ANSWERED, Outcome.VOICEMAIL_LEFT]),
            number=chance.choice(["+447700900123", "+447700900456", None]),
            group=chance.choice(["sales", "support", None]),
            did=chance.choice([None, "442071230000"])))
    return calls


WINDOWS = [(T0, T0 + 5 * 3600), (T0 + 1.5, T0 + 3 * 3600 - 0.001),
           (T0 + 100, T0 + 200), (T0 + QUARTER - 0.001, T0 + 2 * QUARTER),
           (T0 - 86400, T0 + 86400), (T0 + 7 * QUARTER + 12.5, T0 + 15 * QUARTER + 899.999)]


async def test_the_reports_counts_of_calls_are_those_of_every_call_of_its_window(
        store: Store | PgStore) -> None:
    calls = history(1)
    await record(store, calls)
    for since, until in WINDOWS:
        expected = counted_one_by_one(calls_of(calls), since, until)
        assert await counted_by_report(store, since, until) == expected, (since, until)


async def test_a_call_recorded_twice_counts_once(store: Store | PgStore) -> None:
    await record(store, [call(1, T0 + 10), call(2, T0 + 20)])
    await record(store, [call(1, T0 + 10), call(3, T0 + 30)])  # another daemon's, say

    totals, _ = await counted_by_report(store, T0 - 86400, T0 + 86400)

    assert totals[("sales", None, "sales", "queue_abandon", "sent", 1, "calls")] == 3


async def test_calls_removed_by_retention_leave_their_counts_and_no_key_at_zero(
        store: Store | PgStore, location: str) -> None:
    day = 86400.0
    old = [call(n, T0 + n * 60, number=None if n % 3 else "+447700900123", texted=False)
           for n in range(40)]  # not texted: nothing keeps them
    recent = [call(100 + n, T0 + 400 * day + n * 60) for n in range(10)]
    await record(store, old + recent)

    removed = 0
    while pruned := await store.prune_step(RetentionConfig(), T0 + 420 * day, limit=7):
        removed += pruned.get("calls", 0)

    assert removed == 40
    assert await counted_by_report(store, T0 - day, T0 + 500 * day) == counted_one_by_one(
        calls_of(recent), T0 - day, T0 + 500 * day)
    left = await raw_rows(location, "SELECT COUNT(*), SUM(calls) FROM call_counts")
    assert [tuple(row) for row in left] == [(1, 10)]  # the old calls' keys went with them


async def test_a_call_changed_by_hand_moves_to_its_new_counts(
        store: Store | PgStore, location: str) -> None:
    await record(store, [call(1, T0 + 10), call(2, T0 + 20)])
    await change_by_hand(location, "UPDATE calls SET outcome = 'answered',"
                         " ended = ended + 3600, caller_e164 = NULL WHERE call_id = 'c1'")

    totals, missed = await counted_by_report(store, T0 - 86400, T0 + 86400)

    assert totals == Counter({
        ("sales", None, "sales", "queue_abandon", "sent", 1, "calls"): 1,
        ("sales", None, "sales", "queue_abandon", "sent", 1, "numbered"): 1,
        ("sales", None, "sales", "answered", "sent", 1, "calls"): 1})
    assert missed == Counter({(int(T0 // QUARTER), "sales", None, "sales"): 1})
