"""What runs every second or on every decision reads an index bounded by time or state,
never a scan of the history (calls, texts, receipts, replies, webhooks, outreach).

SQLite only: the plans are SQLite's (`EXPLAIN QUERY PLAN`, its statement trace); the
PostgreSQL backend runs the same statements over the same indexes (migration 10), whose
plans its planner picks by the table's statistics.

Each store call below is run against a real store while every statement it sends to SQLite
is recorded with its parameters; each statement's `EXPLAIN QUERY PLAN`, with the same
placeholders and the same values bound (as the daemon's statement is planned: the same
statement with its values written in may be planned otherwise, `LIMIT ?` and `LIMIT 10`
are not), must not SCAN a table that grows with the history. Plans do not depend on
timing, so these assertions hold on any machine; `bench/history.py` measures the same
calls on a year of history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from mcdaemon.config.model import RetentionConfig
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import NewCall, ReceiptIn, Store, SubmitOutcome, WebhookResult

T0 = 1_736_157_600.0
CALLER = "+447700900123"

#: tables whose rows accumulate with every call: a periodic query may only search them
HISTORY_TABLES = ("calls", "messages", "message_parts", "receipts", "inbound", "webhooks",
                  "contact_events", "campaigns", "campaign_attempts", "campaign_calls",
                  "bookings")


def missed_call(call_id: str, caller: str = CALLER) -> CallRecord:
    return CallRecord(pbx="lab", call_id=call_id, caller=caller.lstrip("+"), caller_name=None,
                      caller_e164=caller, did="442071230000", group="sales",
                      outcome=Outcome.QUEUE_ABANDON, stages=("queue",), started=T0 - 40,
                      ended=T0, wait_seconds=35.0)


def text(caller: str = CALLER) -> Decision:
    return Decision(text=True, reason="sent", group="sales", body="Sorry we missed you.",
                    template="queue_abandon", variant="A", send_after=None,
                    expires_at=T0 + 900, destination=caller)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A SQLite store (this module's plans are SQLite's), with a little of everything."""
    opened = await Store.open(str(tmp_path / "mcdaemon.db"))
    # a little of everything, so that no statement is planned against an empty table alone
    await opened.record_calls([NewCall(missed_call(f"c{n}", f"+4477009001{n:02d}"),
                                       text(f"+4477009001{n:02d}")) for n in range(20)],
                              now=T0, destinations=[None] * 20)
    for message in await opened.claim_due(T0, 10):
        await opened.mark_submitted(message.id, [f"id-{message.id}"], T0 + 1)
    await opened.apply_receipt("id-1", "DELIVRD", None, T0 + 2)
    await opened.add_inbound(CALLER, "lab", "thanks", T0 + 3)
    yield opened
    await opened.close()


class _Recording:
    """The store's aiosqlite connection, recording each statement sent and its parameters."""

    def __init__(self, db: Any, sent: list[tuple[str, Sequence[Any]]]) -> None:
        self._db = db
        self._sent = sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        self._sent.append((sql, parameters))
        return self._db.execute(sql, parameters)

    def execute_fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        self._sent.append((sql, parameters))
        return self._db.execute_fetchall(sql, parameters)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        if rows:  # an empty batch prepares nothing
            self._sent.append((sql, rows[0]))
        return self._db.executemany(sql, rows)


async def plans_of(store: Store, call: Callable[[], Awaitable[object]]) -> dict[str, str]:
    """Each statement `call` runs, and its query plan (one line per step), planned with its
    placeholders and parameters as SQLite planned it for the store."""
    sent: list[tuple[str, Sequence[Any]]] = []
    db = store._db
    store._db = cast(Any, _Recording(db, sent))
    try:
        await call()
    finally:
        store._db = db
    plans: dict[str, str] = {}
    for sql, parameters in sent:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT",
                                                "WITH")):
            continue
        rows = await db.execute_fetchall("EXPLAIN QUERY PLAN " + sql, parameters)
        plans[sql] = "\n".join(str(row[3]) for row in rows)
    return plans


def scans_of_history(plans: dict[str, str]) -> list[str]:
    found = []
    for sql, plan in plans.items():
        for line in plan.splitlines():
            words = line.split()
            if words[:1] == ["SCAN"] and _table_of(sql, words[1]) in HISTORY_TABLES:
                found.append(f"{line}  <-  {sql}")
    return found


def _table_of(sql: str, name: str) -> str:
    """The table an alias in a plan line stands for (`messages AS due` -> messages)."""
    words = sql.replace("(", " ").replace(")", " ").replace(",", " ").split()
    for index, word in enumerate(words):
        if word.upper() == "AS" and index + 1 < len(words) and words[index + 1] == name:
            return words[index - 1]
    return name


PERIODIC = {
    "policy_view": lambda s: s.policy_view(CALLER, "sales", T0 + 10, prefix="+447700"),
    "policy_views": lambda s: s.policy_views(
        [(CALLER, "sales", "+447700"), ("+447700900999", "sales", "+447700"),
         (None, "sales", None)], T0 + 10),
    "record_calls_and_claim": lambda s: s.record_calls_and_claim(
        [NewCall(missed_call(f"new{n}", f"+4477009007{n:02d}"), text(f"+4477009007{n:02d}"))
         for n in range(50)], now=T0 + 10, destinations=[None] * 50, claim=5),
    "recorded_calls (a storm's batch)": lambda s: s.recorded_calls(
        [("lab", f"c{n}") for n in range(50)] + [("other", "c1")]),
    "recovered_calls (status)": lambda s: s.recovered_calls(T0 - 86_400),
    "claim_due": lambda s: s.claim_due(T0 + 10, 10),
    "record_submit_outcomes": lambda s: s.record_submit_outcomes(
        [SubmitOutcome(11, "submitted", smsc_ids=("id-11",)),
         SubmitOutcome(12, "queued", not_before=T0 + 60, detail="throttled")], T0 + 11),
    "apply_receipts": lambda s: s.apply_receipts(
        [ReceiptIn("id-2", None, "DELIVRD", None, T0 + 12),
         ReceiptIn("nobody", None, "DELIVRD", None, T0 + 12)]),
    "give_up_receipts": lambda s: s.give_up_receipts(T0 + 90_000, 3600),
    "expire_due": lambda s: s.expire_due(T0 + 1000),
    "outbox_stats": lambda s: s.outbox_stats(T0 + 20),
    "unmatched_receipts (status)": lambda s: s.unmatched_receipts(T0 - 86_400),
    "switches and statuses": lambda s: s.switches(),
    "set_status (heartbeat)": lambda s: s.set_status("heartbeat", "1@host", T0),
    "claim_due_webhooks": lambda s: s.claim_due_webhooks(T0, 10),
    "claim_due_webhooks (some in flight)": lambda s: s.claim_due_webhooks(T0, 10, busy=[3]),
    "next_webhook_at": lambda s: s.next_webhook_at(T0),
    "settle_webhooks": lambda s: s.settle_webhooks([WebhookResult(1, "delivered")], T0),
    "latest_message_to (a reply)": lambda s: s.latest_message_to(CALLER),
    "opt_out": lambda s: s.opt_out("+447700900105", "STOP", T0 + 30),
    "record_stop": lambda s: s.record_stop(CALLER, "reply", T0 + 30),
    "firsts_without_followups": lambda s: s.firsts_without_followups(T0 - 3600),
    "cancel_after_undeliverable": lambda s: s.cancel_after_undeliverable(T0 + 40),
    "due_attempts and live_count": lambda s: s.due_attempts(T0 + 40),
    "prune_step (retention)": lambda s: s.prune_step(RetentionConfig(), T0 + 500 * 86_400.0,
                                                     limit=100),
    "retention_due": lambda s: s.retention_due(RetentionConfig(), T0 + 500 * 86_400.0),
}


@pytest.mark.parametrize("name", sorted(PERIODIC))
async def test_sqlite_plans_periodic_and_per_decision_queries_search_indexes(store: Store,
                                                                name: str) -> None:
    plans = await plans_of(store, lambda: PERIODIC[name](store))

    assert plans, f"{name} ran no statement"
    assert scans_of_history(plans) == []


async def test_sqlite_plan_check_finds_a_scan_of_the_history(store: Store) -> None:
    """The assertion above could fail: a count over every text ever sent is a scan."""
    async def count_everything() -> None:
        await store._db.execute_fetchall("SELECT state, COUNT(*) FROM messages GROUP BY state")
        await store._db.execute_fetchall("SELECT COUNT(*) FROM messages WHERE"
                                         " duplicate_risk = 1")

    found = scans_of_history(await plans_of(store, count_everything))

    assert len(found) == 2 and all(line.startswith("SCAN messages") for line in found)


async def test_sqlite_plan_report_texts_read_the_texts_of_the_callers_who_answered_by_number(
        store: Store) -> None:
    """The texts of the callers who wrote, opted out or booked are searched by their
    numbers in one covering index: no scan of every text, no row read."""
    await store.add_booking(CALLER, 40.0, T0 + 60)

    async def stream() -> None:
        async for _ in store.report_texts(T0 - 1, T0 + 3600):
            pass

    plans = await plans_of(store, stream)

    [texts] = [plan.splitlines() for sql, plan in plans.items()
               if "submitted_at IS NOT NULL" in sql]
    assert texts[0] == "SEARCH messages USING COVERING INDEX messages_callers (destination=?)"
    assert "SEARCH bookings USING INDEX bookings_at (at>?)" in texts
    assert not [step for step in texts if step.startswith("SCAN messages")], texts


async def test_sqlite_plan_report_counts_sent_texts_from_their_counts_not_from_every_text(
        store: Store) -> None:
    """A year's report reads the days' counts of texts by quarter hour and by wait the
    database keeps, and the texts themselves only by their call's end, at the window's two
    partial days."""
    plans = await plans_of(store, lambda: store.report_counts(T0 - 365 * 86400 + 7, T0 + 60))

    [quarters] = [plan for sql, plan in plans.items() if "FROM text_counts" in sql]
    [waits] = [plan for sql, plan in plans.items() if "FROM text_waits" in sql]
    assert quarters.startswith("SEARCH text_counts USING PRIMARY KEY (day>? AND day<?)")
    assert waits == "SCAN text_waits"  # in its key's order: summed over the days unsorted
    edges = {sql: plan for sql, plan in plans.items()
             if "state NOT IN" in sql and " call_ended_at >= ? AND call_ended_at <" in sql}
    reads = [line for plan in edges.values() for line in plan.splitlines()
             if line.startswith(("SEARCH", "SCAN"))]
    assert len(edges) == 4 and len(reads) == 4 and all(
        "INDEX messages_first_ended (call_ended_at>? AND call_ended_at<" in line
        for line in reads), edges


async def test_sqlite_plan_report_counts_texts_never_sent_from_their_own_index(
        store: Store) -> None:
    """The first texts that failed or expired (a few in a hundred of a year's) are read
    from an index that holds only them, and the few queued or sending now by their state:
    no row of the history is read."""
    plans = await plans_of(store, lambda: store.report_counts(T0 - 365 * 86400, T0 + 60))

    unsent = {sql: plan for sql, plan in plans.items() if "NULL, NULL, state" in sql}
    assert sorted(plan.splitlines()[0] for plan in unsent.values()) == [
        "SEARCH messages USING COVERING INDEX messages_unsent"
        " (state=? AND call_ended_at>? AND call_ended_at<?)",
        "SEARCH messages USING INDEX messages_due (state=?)"]


@pytest.mark.parametrize("groups", [None, ["sales"], ["sales", None]])
async def test_sqlite_plan_report_counts_texted_callers_from_the_index_in_number_order(
        store: Store, groups: list[str | None] | None) -> None:
    """The texts and their callers per A/B arm are runs of `messages_sent_arms`; the
    texted callers per group and overall distinct runs of `messages_callers`: each read in
    its index's order, no sort of every text (the callers per group sort only the distinct
    callers), a --group's too."""
    async def report() -> None:
        await store.report_counts(T0 - 365 * 86400, T0 + 60)
        await store.report_callers(T0 - 365 * 86400, T0 + 60, groups)

    plans = await plans_of(store, report)

    [arms] = [plan.splitlines() for sql, plan in plans.items() if "GROUP BY 1, 2, 3" in sql]
    assert arms[0] == "SCAN messages USING COVERING INDEX messages_sent_arms", arms
    assert not [step for step in arms if "GROUP BY" in step], arms
    callers = [plan for sql, plan in plans.items() if "(SELECT DISTINCT destination" in sql]
    assert len(callers) == 2
    for plan in callers:
        assert "SCAN messages USING COVERING INDEX messages_callers" in plan, plan
        assert "USE TEMP B-TREE FOR DISTINCT" not in plan, plan
    [campaigns] = [plan for sql, plan in plans.items() if "FROM campaigns" in sql]
    assert campaigns.startswith("SEARCH campaigns USING INDEX campaigns_created"), campaigns


async def test_sqlite_plan_report_counts_calls_from_their_counts_not_from_every_call(
        store: Store) -> None:
    """A year's report reads the quarter hours' counts the database keeps, and the calls
    themselves only by time, at the window's two partial quarter hours."""
    plans = await plans_of(store, lambda: store.report_counts(T0 - 365 * 86400 + 7, T0 + 60))

    calls = {sql: plan for sql, plan in plans.items() if "FROM calls WHERE" in sql}
    counted = {sql: plan for sql, plan in plans.items() if "FROM call_counts" in sql}
    assert len(counted) == 2 and all(
        "call_counts USING PRIMARY KEY (bucket>? AND bucket<?)" in plan
        for plan in counted.values())
    reads = [line for plan in calls.values() for line in plan.splitlines()
             if line.startswith(("SEARCH", "SCAN"))]
    assert len(calls) == 2 and len(reads) == 4 and all(
        "INDEX calls_ended (ended>? AND ended<" in line for line in reads), calls


async def test_sqlite_plan_the_reports_bookings_are_read_from_their_own_rows(
        store: Store) -> None:
    """A year's bookings (thousands) are read by time from their own table, which carries
    what the report counts of their calls and their first texts' ids: not a lookup of each
    booking's call and text, scattered over the history's rows."""
    await store.add_booking(CALLER, 40.0, T0 + 60)

    async def report() -> None:
        await store.report_counts(T0 - 365 * 86400, T0 + 60)
        await store.report_booked(T0 - 365 * 86400)

    plans = await plans_of(store, report)

    booked = {sql: plan.splitlines() for sql, plan in plans.items() if "FROM bookings" in sql}
    assert len(booked) == 4  # by call, currencies, unattributed, texts
    for steps in booked.values():
        reads = [step for step in steps if step.startswith(("SEARCH", "SCAN"))]
        assert reads == [reads[0]] and reads[0].startswith(
            "SEARCH bookings USING INDEX bookings_at (at>?"), steps


async def vm_steps(store: Store, call: Callable[[], Awaitable[object]]) -> int:
    """The work `call`'s statements make SQLite do, in hundreds of its virtual machine's
    instructions (the same on any machine: not a time)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    await store._db.set_progress_handler(count, 100)
    try:
        await call()
    finally:
        await store._db.set_progress_handler(cast(Any, None), 0)
    return steps


async def test_sqlite_a_callers_last_text_is_found_without_reading_every_text_of_theirs(
        store: Store) -> None:
    """The policy's view of a caller texted 500 times costs what one of a caller texted once
    does: their newest text is read, not all of them (texts of two days ago: outside the
    caps' windows, which count the same texts for both)."""
    often, once = "+447700900777", "+447700900778"
    await store.record_calls(
        [NewCall(missed_call(f"often{n}", often), text(often)) for n in range(500)]
        + [NewCall(missed_call("once", once), text(once))],
        now=T0 - 2 * 86_400, destinations=[None] * 501)

    for view in ("policy_view", "policy_views"):
        def of(caller: str, view: str = view) -> Callable[[], Awaitable[object]]:
            if view == "policy_view":
                return lambda: store.policy_view(caller, "sales", T0)
            return lambda: store.policy_views([(caller, "sales", None)], T0)

        light, heavy = await vm_steps(store, of(once)), await vm_steps(store, of(often))

        assert heavy <= light + 2, (view, light, heavy)


async def test_sqlite_plan_the_caps_count_ranges_of_an_index_of_only_the_counted_texts(
        store: Store) -> None:
    """What every decision counts (the last hour's and day's texts, the hour's by prefix)
    reads no text's row and tests no text's kind or state: a busy day is thousands."""
    plans = await plans_of(store, lambda: PERIODIC["policy_views"](store))

    lines = [line for plan in plans.values() for line in plan.splitlines()
             if "created_at" in line]
    assert len(lines) == 3, lines  # the hour, the day, the hour by prefix
    assert all("COVERING INDEX messages_counted (created_at>?)" in line for line in lines), lines


async def test_sqlite_plan_the_gauges_count_the_settled_day_from_its_index_alone(
        store: Store) -> None:
    plans = await plans_of(store, lambda: PERIODIC["outbox_stats"](store))

    lines = [line for plan in plans.values() for line in plan.splitlines()
             if "messages_final" in line]
    assert lines and all("COVERING INDEX messages_final" in line for line in lines), lines
