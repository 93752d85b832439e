"""The store, as the service and the CLI rely on it: real SQLite files, a fake clock.

Each test states one promise: a replayed call never makes a second text, claims never
overlap, states only move forward, receipts settle messages part by part, and the file
survives restarts and upgrades.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import (
    FINAL_STATES,
    SCHEMA_VERSION,
    TRANSITIONS,
    NewCall,
    PgStore,
    ReceiptIn,
    Store,
    StoreError,
    SubmitOutcome,
    WebhookIn,
    migration_steps,
)

from pg_server import open_at, raw_rows

T0 = 1_736_157_600.0  # a Monday morning; the fake clock starts here
EXAMPLES = itertools.count()  # hypothesis's examples share one store: one call each
CALLER = "+447700900123"


def missed_call(call_id: str = "1736157600.1", caller: str = CALLER, *, pbx: str = "lab",
                ended: float = T0, group: str | None = "sales") -> CallRecord:
    return CallRecord(pbx=pbx, call_id=call_id, caller=caller.lstrip("+"), caller_name="Zoë",
                      caller_e164=caller, did="442071230000", group=group,
                      outcome=Outcome.QUEUE_ABANDON, stages=("queue",), started=ended - 40,
                      ended=ended, wait_seconds=35.0)


def text(caller: str = CALLER, *, send_after: float | None = None,
         expires_at: float | None = T0 + 900, group: str | None = "sales") -> Decision:
    return Decision(text=True, reason="sent", group=group, body="Sorry we missed you.",
                    template="queue_abandon", variant="A", send_after=send_after,
                    expires_at=expires_at, destination=caller)


NO_TEXT = Decision(text=False, reason="not_mobile", detail="landline")


async def queued_message(store: Store, call_id: str = "c1", caller: str = CALLER,
                         now: float = T0) -> int:
    message_id = await store.record_call(missed_call(call_id, caller, ended=now),
                                         text(caller, expires_at=now + 900),
                                         now=now, destination=caller)
    assert message_id is not None
    return message_id


async def submitted_message(store: Store, smsc_ids: list[str], call_id: str = "c1") -> int:
    message_id = await queued_message(store, call_id)
    [claimed] = await store.claim_due(T0 + 1, 10)
    assert claimed.id == message_id
    assert await store.mark_submitted(message_id, smsc_ids, T0 + 2)
    return message_id


# ---------------------------------------------------------------------- identity and idempotency

async def test_replaying_a_call_records_it_once_and_texts_once(store: Store) -> None:
    first = await store.record_call(missed_call("c1"), text(), now=T0, destination=CALLER)
    again = await store.record_call(missed_call("c1"), text(), now=T0 + 5, destination=CALLER)

    assert first is not None and again is None
    assert await store.count_calls() == 1
    [message] = await store.messages_for_call("lab", "c1")
    assert (message.id, message.kind, message.state) == (first, "first", "queued")
    assert (message.not_before, message.expires_at, message.call_ended_at) == (T0, T0 + 900, T0)


async def test_another_call_from_the_same_caller_gets_its_own_message(store: Store) -> None:
    first = await queued_message(store, "c1")
    second = await queued_message(store, "c2")
    other_pbx = await store.record_call(missed_call("c1", pbx="branch"), text(), now=T0,
                                        destination=CALLER)

    assert len({first, second, other_pbx}) == 3
    assert await store.count_calls() == 3


async def test_a_call_not_to_be_texted_is_recorded_with_its_reason_and_no_message(
        store: Store) -> None:
    assert await store.record_call(missed_call("c1"), NO_TEXT, now=T0, destination=None) is None

    row = await store.call("lab", "c1")
    assert row is not None
    assert (row["textable"], row["reason"], row["detail"]) == (0, "not_mobile", "landline")
    assert json.loads(row["record"])["caller_name"] == "Zoë"
    assert await store.messages() == []


async def test_a_call_first_decided_not_to_text_is_never_texted_on_replay(store: Store) -> None:
    await store.record_call(missed_call("c1"), NO_TEXT, now=T0, destination=None)

    assert await store.record_call(missed_call("c1"), text(), now=T0, destination=CALLER) is None
    assert await store.messages() == []


async def test_a_text_deferred_to_opening_hours_waits_for_its_send_after(store: Store) -> None:
    message_id = await store.record_call(missed_call("c1"),
                                         text(send_after=T0 + 7200, expires_at=T0 + 9000),
                                         now=T0, destination=CALLER)

    assert message_id is not None
    message = await store.message(message_id)
    assert (message.state, message.not_before, message.created_at) == ("queued", T0 + 7200, T0)
    assert await store.claim_due(T0 + 7199, 10) == []
    assert [m.id for m in await store.claim_due(T0 + 7200, 10)] == [message_id]


async def test_a_batch_of_calls_is_one_transaction_and_idempotent(store: Store) -> None:
    batch = [NewCall(missed_call(f"c{n}"), text()) for n in range(5)]

    ids = await store.record_calls(batch, now=T0, destinations=[CALLER] * 5)
    replayed = await store.record_calls(batch, now=T0 + 1, destinations=[CALLER] * 5)

    assert None not in ids and len(set(ids)) == 5
    assert replayed == [None] * 5


async def test_a_call_twice_in_one_batch_is_stored_and_texted_once(store: Store) -> None:
    first = NewCall(missed_call("c1"), text())
    again = NewCall(missed_call("c1"), Decision(text=False, reason="cooldown"))

    ids = await store.record_calls([first, again, NewCall(missed_call("c2"), text())], now=T0,
                                   destinations=[CALLER] * 3)

    assert ids[0] is not None and ids[1] is None and ids[2] not in (None, ids[0])
    assert await store.count_calls() == 2
    assert (await store.message(ids[0])).destination == CALLER


async def test_a_storm_larger_than_one_statement_is_recorded_whole(store: Store) -> None:
    """More calls than SQLite takes parameters for in one statement, some of them stored
    already (replayed after a reconnect): each new call gets its text, the others none."""
    first = [NewCall(missed_call(f"c{n}"), text()) for n in range(2500)]
    replayed = [NewCall(missed_call(f"c{n}"), text()) for n in range(10500)]

    first_ids = await store.record_calls(first, now=T0, destinations=[CALLER] * 2500)
    ids = await store.record_calls(replayed, now=T0, destinations=[CALLER] * 10500)
    views = await store.policy_views([(f"+4477009{n:05d}", "sales", "+4477") for n in
                                      range(12000)], T0)

    assert None not in first_ids and len(set(first_ids)) == 2500
    assert ids[:2500] == [None] * 2500
    assert None not in ids[2500:] and len(set(ids[2500:]) | set(first_ids)) == 10500
    assert await store.count_calls() == 10500
    assert len(views) == 12000 and views[0].texts_last_hour == 10500


async def test_the_store_says_which_calls_it_holds_by_pbx_and_call_id(store: Store) -> None:
    await store.record_calls([NewCall(missed_call("c1"), text())], now=T0,
                             destinations=[CALLER])
    assert await store.recorded_calls([("lab", "c1"), ("lab", "c2"), ("branch", "c1")]) == {
        ("lab", "c1")}


async def test_calls_adopted_or_backfilled_are_counted_over_a_recent_window(
        store: Store) -> None:
    adopted = dataclasses.replace(missed_call("a1"), adopted=True)
    backfilled = dataclasses.replace(missed_call("b1"), extra={"backfilled": "true"})
    old = dataclasses.replace(missed_call("b0", ended=T0 - 90_000),
                              extra={"backfilled": "true"})
    await store.record_calls([NewCall(record, NO_TEXT) for record in (
        adopted, backfilled, old, missed_call("live"))], now=T0, destinations=[None] * 4)
    assert await store.recovered_calls(T0 - 86_400) == {"adopted": 1, "backfilled": 1}


async def test_a_decision_to_text_without_a_body_is_refused_before_anything_is_written(
        store: Store) -> None:
    broken = Decision(text=True, reason="sent", destination=CALLER)

    with pytest.raises(ValueError, match="destination and a body"):
        await store.record_call(missed_call("c1"), broken, now=T0, destination=CALLER)
    assert await store.count_calls() == 0


async def test_the_destination_defaults_to_the_one_the_policy_validated(store: Store) -> None:
    message_id = await store.record_call(missed_call("c1"), text(), now=T0, destination=None)

    assert message_id is not None
    assert (await store.message(message_id)).destination == CALLER


async def test_enqueue_message_is_idempotent_on_its_key(store: Store) -> None:
    kwargs: dict[str, Any] = dict(
        pbx="-", call_id="optout:+447700900123", kind="optout_confirm", seq=0,
        destination=CALLER, body="You will get no more texts.", now=T0, not_before=None,
        expires_at=None)

    first = await store.enqueue_message(**kwargs)
    again = await store.enqueue_message(**kwargs)

    assert first is not None and again is None
    assert (await store.message(first)).not_before == T0


# ---------------------------------------------------------------------- claiming

async def test_claim_takes_only_due_unexpired_messages_oldest_first(store: Store) -> None:
    later = await store.record_call(missed_call("deferred"),
                                    text(send_after=T0 + 3600, expires_at=T0 + 7200),
                                    now=T0, destination=CALLER)
    stale = await store.record_call(missed_call("stale"), text(expires_at=T0 + 5), now=T0,
                                    destination=CALLER)
    due = [await queued_message(store, f"c{n}", now=T0 + n) for n in range(3)]

    claimed = await store.claim_due(T0 + 10, 2)

    assert [message.id for message in claimed] == due[:2]
    assert all(message.state == "sending" and message.attempts == 1 and
               message.sending_at == T0 + 10 for message in claimed)
    assert [message.id for message in await store.claim_due(T0 + 10, 10)] == [due[2]]
    assert await store.claim_due(T0 + 10, 10) == []
    assert later is not None and stale is not None
    assert (await store.message(later)).state == "queued"
    assert [message.id for message in await store.claim_due(T0 + 3600, 10)] == [later]
    assert (await store.message(stale)).state == "queued"  # expire_due settles it


async def test_two_daemons_on_one_store_never_claim_the_same_message(location: str) -> None:
    first, second = await open_at(location), await open_at(location)
    try:
        ids = {await queued_message(first, f"c{n}") for n in range(60)}

        async def claim_concurrently(store: Store | PgStore) -> list[int]:
            # 20 claims of 2 at once: one daemon alone can take at most 40 of the 60 texts,
            # so claiming them all needs both daemons, racing on the same store
            batches = await asyncio.gather(*(store.claim_due(T0 + 1, 2) for _ in range(20)))
            return [message.id for batch in batches for message in batch]

        a, b = await asyncio.gather(claim_concurrently(first), claim_concurrently(second))
        messages = await first.messages()
    finally:
        await first.close()
        await second.close()

    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(ids)
    assert {(m.state, m.attempts) for m in messages} == {("sending", 1)}


async def test_tasks_sharing_one_store_do_not_trip_over_each_others_transactions(
        store: Store) -> None:
    async def record(n: int) -> int | None:
        return await store.record_call(missed_call(f"c{n}"), text(), now=T0, destination=CALLER)

    recorded, claims, views = await asyncio.gather(
        asyncio.gather(*(record(n) for n in range(30))),
        asyncio.gather(*(store.claim_due(T0, 2) for _ in range(10))),
        asyncio.gather(*(store.policy_view(CALLER, "sales", T0) for _ in range(5))))

    assert len(set(recorded)) == 30 and None not in recorded
    claimed = [message.id for batch in claims for message in batch]
    assert len(claimed) == len(set(claimed))
    assert len(views) == 5


@pytest.mark.parametrize("store_busy", [True, False], ids=["store busy", "commit under way"])
async def test_a_cancelled_caller_leaves_its_write_whole_and_the_store_usable(
        store: Store, store_busy: bool) -> None:
    """A write that waits (for the store, busy with another, or for its commit) is shielded:
    its caller can be cancelled meanwhile, and the write is still made whole."""
    async with contextlib.AsyncExitStack() as busy:
        if store_busy:
            await busy.enter_async_context(store._lock)  # busy with another read or write
        task = asyncio.create_task(store.record_call(missed_call("c1"), text(), now=T0,
                                                     destination=CALLER))
        await asyncio.sleep(0)  # the task's step: it waits for the lock, or its commit
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    await queued_message(store, "c2")
    assert await store.count_calls() == 2  # the shielded write finished
    assert len(await store.messages()) == 2


# ---------------------------------------------------------------------- forward-only states

async def test_a_delivered_message_never_goes_back(store: Store) -> None:
    message_id = await submitted_message(store, ["abc"])
    assert await store.apply_receipt("abc", "DELIVRD", None, T0 + 3, {}) == message_id

    assert not await store.mark_retry(message_id, not_before=T0, error_code=88, detail="late",
                                      now=T0 + 4)
    assert not await store.mark_failed(message_id, error_code=8, detail="late", now=T0 + 4)
    assert await store.claim_due(T0 + 99, 10) == []
    assert await store.recover_in_flight("resend", T0 + 5) == []
    assert (await store.message(message_id)).state == "delivered"


async def test_the_database_itself_refuses_a_backward_move(store: Store,
                                                           location: str) -> None:
    message_id = await submitted_message(store, ["abc"])
    await store.apply_receipt("abc", "DELIVRD", None, T0 + 3, {})

    with pytest.raises((sqlite3.IntegrityError, asyncpg.CheckViolationError),
                       match="only move forward"):
        await raw_rows(location, "UPDATE messages SET state = 'queued' WHERE id = ?",
                       message_id)
    assert (await store.message(message_id)).state == "delivered"


async def test_a_receipt_for_a_failed_message_does_not_resurrect_it(store: Store) -> None:
    message_id = await queued_message(store)
    await store.claim_due(T0 + 1, 1)
    assert await store.mark_failed(message_id, error_code=None, detail="gave up", now=T0 + 2)
    # the SMSC's answer arrives after all: recorded as fact, the state stays final
    assert not await store.mark_submitted(message_id, ["late-1"], T0 + 3)

    assert await store.apply_receipt("late-1", "DELIVRD", None, T0 + 4, {}) == message_id
    message = await store.message(message_id)
    assert (message.state, message.error_detail, message.smsc_ids) == ("failed", "gave up", ())


async def test_a_retry_returns_the_message_to_the_queue_until_its_time(store: Store) -> None:
    message_id = await queued_message(store)
    await store.claim_due(T0, 1)

    assert await store.mark_retry(message_id, not_before=T0 + 30, error_code=0x58,
                                  detail="throttled", now=T0 + 1, duplicate_risk=True)
    assert await store.claim_due(T0 + 29, 10) == []
    [again] = await store.claim_due(T0 + 30, 10)
    assert (again.id, again.attempts, again.error_code, again.duplicate_risk) == (
        message_id, 2, 0x58, True)


async def test_a_submit_result_for_a_message_that_was_never_claimed_changes_nothing(
        store: Store) -> None:
    message_id = await queued_message(store)

    assert not await store.mark_submitted(message_id, ["x-1"], T0 + 1)

    message = await store.message(message_id)
    assert (message.state, message.submitted_at, message.parts, message.smsc_ids) == (
        "queued", None, 0, ())
    assert [m.id for m in await store.claim_due(T0 + 2, 10)] == [message_id]


async def test_a_receipt_for_an_expired_message_does_not_resurrect_it(store: Store) -> None:
    message_id = await queued_message(store)
    assert await store.expire_due(T0 + 900) == [message_id]
    assert not await store.mark_submitted(message_id, ["late-2"], T0 + 901)

    assert await store.apply_receipt("late-2", "DELIVRD", None, T0 + 902, {}) == message_id
    message = await store.message(message_id)
    assert (message.state, message.final_at) == ("expired", T0 + 900)


async def test_a_duplicate_risk_once_set_survives_later_clean_retries(store: Store) -> None:
    message_id = await queued_message(store)
    await store.claim_due(T0, 1)
    assert await store.mark_retry(message_id, not_before=T0 + 10, error_code=None,
                                  detail="submit timed out", now=T0 + 1, duplicate_risk=True)
    await store.claim_due(T0 + 10, 1)

    assert await store.mark_retry(message_id, not_before=T0 + 20, error_code=0x58,
                                  detail="throttled", now=T0 + 11, duplicate_risk=False)

    message = await store.message(message_id)
    assert (message.state, message.not_before, message.duplicate_risk, message.attempts) == (
        "queued", T0 + 20, True, 2)
    assert message.error_detail == "throttled"


async def test_a_retry_of_a_message_not_being_sent_is_refused(store: Store) -> None:
    message_id = await queued_message(store)

    assert not await store.mark_retry(message_id, not_before=T0 + 50, error_code=None,
                                      detail="stray", now=T0)
    assert (await store.message(message_id)).not_before == T0


def reachable(state: str) -> set[str]:
    """`state` and every state the transition table lets it reach in one or more moves."""
    seen, todo = {state}, [state]
    while todo:
        for following in TRANSITIONS[todo.pop()] - seen:
            seen.add(following)
            todo.append(following)
    return seen


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(["claim", "submit", "retry", "fail", "expire", "deliver",
                                       "undeliv", "recover_resend", "recover_drop"]),
                      max_size=12))
def test_no_sequence_of_operations_moves_a_message_backwards(location: str,
                                                             steps: list[str]) -> None:
    async def run() -> None:
        store = await open_at(location)
        store.claim_lease = 0.0  # a recovery below stands for a restart: nothing waits for it
        try:
            store.owner = f"before example {next(EXAMPLES)}"
            await store.recover_in_flight("drop", T0)  # an earlier example's text is left
            await store.expire_due(T0 + 10**9)  # out of the claims below
            message_id = await queued_message(store, f"c{next(EXAMPLES)}")
            clock, state = T0, "queued"
            for step in steps:
                clock += 1
                if step == "claim":
                    await store.claim_due(clock, 1)
                elif step == "submit":
                    await store.mark_submitted(message_id, ["id-1"], clock)
                elif step == "retry":
                    await store.mark_retry(message_id, not_before=clock, error_code=None,
                                           detail="t", now=clock)
                elif step == "fail":
                    await store.mark_failed(message_id, error_code=None, detail="f", now=clock)
                elif step == "expire":
                    await store.expire_due(T0 + 900 if clock < T0 + 900 else clock)
                elif step in ("deliver", "undeliv"):
                    await store.apply_receipt("id-1", "DELIVRD" if step == "deliver"
                                              else "UNDELIV", None, clock, {})
                else:  # a restarted daemon recovers what the one before left in flight
                    store.owner = f"restarted at {clock}"
                    await store.recover_in_flight(step.removeprefix("recover_"), clock)
                new = (await store.message(message_id)).state
                assert new in reachable(state), (state, step, new)
                state = new
        finally:
            await store.close()

    asyncio.run(run())


# ---------------------------------------------------------------------- parts and receipts

async def test_a_long_text_is_delivered_when_all_its_parts_are(store: Store) -> None:
    message_id = await submitted_message(store, ["p1", "p2", "p3"])
    message = await store.message(message_id)
    assert (message.state, message.parts, message.smsc_ids) == ("submitted", 3, ("p1", "p2", "p3"))

    await store.apply_receipt("p1", "DELIVRD", None, T0 + 3, {})
    await store.apply_receipt("p3", "DELIVRD", None, T0 + 4, {})
    assert (await store.message(message_id)).state == "submitted"

    await store.apply_receipt("p2", "DELIVRD", None, T0 + 5, {})
    message = await store.message(message_id)
    assert (message.state, message.final_at) == ("delivered", T0 + 5)


async def test_one_undeliverable_part_makes_the_text_undeliverable(store: Store) -> None:
    message_id = await submitted_message(store, ["p1", "p2"])

    await store.apply_receipt("p1", "DELIVRD", None, T0 + 3, {})
    await store.apply_receipt("p2", "UNDELIV", "001", T0 + 4, {})
    await store.apply_receipt("p2", "DELIVRD", None, T0 + 5, {})  # a contradicting repeat

    message = await store.message(message_id)
    assert (message.state, message.final_at) == ("undeliverable", T0 + 4)
    assert message.error_detail is not None and "001" in message.error_detail


async def test_an_intermediate_receipt_settles_nothing(store: Store) -> None:
    message_id = await submitted_message(store, ["p1"])

    assert await store.apply_receipt("p1", "ENROUTE", None, T0 + 3, {}) == message_id
    assert (await store.message(message_id)).state == "submitted"


async def test_a_text_only_receipt_matches_its_one_pending_text_in_another_base_in_any_case(
        store: Store) -> None:
    # the SMSC answered submit_sm with hex and quotes the id in decimal in the receipt text
    message_id = await submitted_message(store, ["1F4A"])

    matched = await store.apply_receipt(None, "DELIVRD", None, T0 + 3,
                                        {"id": "8010", "stat": "DELIVRD"}, text_id="8010")

    assert matched == message_id
    message = await store.message(message_id)
    assert (message.state, message.smsc_ids) == ("delivered", ("1f4a",))


async def test_an_unmatched_receipt_is_kept_raw(store: Store, location: str) -> None:
    assert await store.apply_receipt("nobody", "DELIVRD", None, T0, {"text": "Zoë"}) is None

    rows = await raw_rows(location, "SELECT smsc_id, state, message_id, raw FROM receipts")
    assert rows == [("nobody", "DELIVRD", None, json.dumps({"text": "Zoë"}, ensure_ascii=False))]


async def test_a_receipt_that_overtakes_its_submit_response_is_applied_later(
        store: Store) -> None:
    message_id = await queued_message(store)
    await store.claim_due(T0 + 1, 1)
    assert await store.apply_receipt("fast-1", "DELIVRD", None, T0 + 1.5, {}) is None

    await store.mark_submitted(message_id, ["fast-1"], T0 + 2)

    assert (await store.message(message_id)).state == "delivered"


async def test_a_text_whose_receipt_never_comes_becomes_unknown_and_a_late_one_settles_it(
        store: Store) -> None:
    message_id = await submitted_message(store, ["slow-1"])

    assert await store.give_up_receipts(T0 + 2 + 3599, timeout=3600) == []
    assert await store.give_up_receipts(T0 + 2 + 3600, timeout=3600) == [message_id]
    message = await store.message(message_id)
    assert message.state == "unknown"
    assert "receipt_timeout" in (message.error_detail or "")

    assert await store.apply_receipt("slow-1", "DELIVRD", None, T0 + 7200, {}) == message_id
    assert (await store.message(message_id)).state == "delivered"


async def test_a_batch_of_receipts_settles_each_message_once_in_order(store: Store) -> None:
    first = await submitted_message(store, ["b1"], call_id="c1")
    second = await submitted_message(store, ["b2"], call_id="c2")
    receipts = [ReceiptIn("b1", None, "ENROUTE", None, T0 + 3, {}),
                ReceiptIn("b1", None, "DELIVRD", None, T0 + 4, {}),
                ReceiptIn("b2", None, "UNDELIV", "001", T0 + 4, {}),
                ReceiptIn("b2", None, "DELIVRD", None, T0 + 5, {}),  # too late: final already
                ReceiptIn("nobody", None, "DELIVRD", None, T0 + 5, {})]

    applied = await store.apply_receipts(receipts)

    assert applied.matched == [first, first, second, second, None]
    assert applied.settled == {"delivered": 1, "undeliverable": 1}
    assert (await store.message(first)).state == "delivered"
    assert (await store.message(second)).state == "undeliverable"


async def test_a_batch_of_submit_results_moves_each_message_by_the_table(store: Store) -> None:
    ids = [await queued_message(store, call_id=f"c{n}") for n in range(4)]
    await store.claim_due(T0 + 1, 10)
    outcomes = [SubmitOutcome(ids[0], "submitted", smsc_ids=("s0",)),
                SubmitOutcome(ids[1], "queued", not_before=T0 + 60, detail="throttled"),
                SubmitOutcome(ids[2], "failed", error_code=11, detail="bad destination"),
                SubmitOutcome(ids[3], "queued", detail="unbound", refund_attempt=True),
                SubmitOutcome(ids[0], "failed", detail="a late second answer")]

    moved = await store.record_submit_outcomes(outcomes, T0 + 2)

    assert moved == [True, True, True, True, False]
    states = [(await store.message(message_id)) for message_id in ids]
    assert [message.state for message in states] == ["submitted", "queued", "failed", "queued"]
    assert states[1].not_before == T0 + 60 and states[1].attempts == 1
    assert states[3].attempts == 0  # handed back unsent: not an attempt


# ---------------------------------------------------------------------- expiry and crashes

async def test_texts_not_sent_in_time_expire_and_are_never_claimed(store: Store) -> None:
    retrying = await queued_message(store, "retrying", now=T0)
    await store.claim_due(T0, 10)
    await store.mark_retry(retrying, not_before=T0 + 2000, error_code=None,
                           detail="smsc down", now=T0)
    stale = await queued_message(store, "stale", now=T0)
    fresh = await queued_message(store, "fresh", now=T0 + 600)

    assert await store.expire_due(T0 + 900) == sorted([stale, retrying])
    expired = await store.message(retrying)
    assert expired.state == "expired" and expired.error_detail is not None
    assert expired.error_detail.startswith("smsc down; expired")
    assert await store.expire_due(T0 + 900) == []
    assert (await store.message(fresh)).state == "queued"


async def test_expiry_leaves_texts_already_handed_to_the_smsc_alone(store: Store) -> None:
    submitted = await submitted_message(store, ["s-1"], call_id="submitted")
    sending = await queued_message(store, "sending")
    await store.claim_due(T0 + 1, 10)

    assert await store.expire_due(T0 + 10_000) == []
    assert (await store.message(submitted)).state == "submitted"
    assert (await store.message(sending)).state == "sending"


async def test_after_a_crash_in_flight_texts_are_resent_with_a_duplicate_warning(
        location: str) -> None:
    crashed = await open_at(location)
    crashed.owner = "4242@another-host"  # the daemon before the restart
    message_id = await queued_message(crashed)
    await crashed.claim_due(T0, 1)
    await crashed.close()  # as if killed: the message is left in 'sending'

    store = await open_at(location)
    try:
        assert await store.recover_in_flight("resend", T0 + 60) == [message_id]
        message = await store.message(message_id)
        assert (message.state, message.duplicate_risk, message.not_before) == (
            "queued", True, T0 + 60)
        assert await store.outbox_stats(T0 + 60) == {
            "by_state": {**{state: 0 for state in TRANSITIONS}, "queued": 1},
            "oldest_queued_age": 60.0, "deferred": 0, "duplicate_risk": 1}
    finally:
        await store.close()


async def test_after_a_crash_in_flight_texts_can_be_dropped_instead(store: Store) -> None:
    message_id = await queued_message(store)
    await store.claim_due(T0, 1)
    store.owner = "a restarted daemon"

    assert await store.recover_in_flight("drop", T0 + 60) == [message_id]
    message = await store.message(message_id)
    assert message.state == "failed" and message.state in FINAL_STATES
    assert message.error_detail is not None and message.error_detail.startswith("crash_drop")
    with pytest.raises(ValueError, match="resend"):
        await store.recover_in_flight("maybe", T0)


async def test_a_daemon_takes_over_the_texts_of_one_whose_lease_expired_and_no_others(
        location: str) -> None:
    """Two daemons share the store: B leaves A's texts in flight alone while A renews its
    leases; once A stops renewing (it died), B resends them once, marked duplicate_risk."""
    a, b = await open_at(location), await open_at(location)
    a.owner, b.owner = "101@host-a", "202@host-b"
    try:
        ids = [await queued_message(a, f"c{n}") for n in range(3)]
        claimed = await a.claim_due(T0, 2)
        assert [m.id for m in claimed] == ids[:2]
        assert [m.id for m in await b.claim_due(T0, 5)] == ids[2:]
        assert await b.recover_in_flight("resend", T0 + 20) == []  # A's lease holds
        assert await a.renew_leases(T0 + 25) == 2
        assert await b.recover_in_flight("resend", T0 + 50) == []  # renewed until T0 + 55
        assert await a.recover_in_flight("resend", T0 + 99) == [ids[2]]  # B died meanwhile

        assert await b.recover_in_flight("resend", T0 + 56) == ids[:2]
        assert await b.recover_in_flight("resend", T0 + 57) == []  # once
        retaken = await b.claim_due(T0 + 57, 5)
        assert [(m.id, m.duplicate_risk, m.attempts) for m in retaken] == [
            (ids[0], True, 2), (ids[1], True, 2)]
        assert not await a.mark_retry(ids[2], not_before=T0, error_code=None, detail="late",
                                      now=T0 + 99)  # A's own text was taken back to queued
    finally:
        await a.close()
        await b.close()


async def test_a_restart_on_the_same_host_resends_at_once_without_waiting_for_the_lease(
        location: str) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process of this host that no longer runs: the daemon before kill -9
    crashed = await open_at(location)
    crashed.owner = f"{gone.pid}@{socket.gethostname()}"
    message_id = await queued_message(crashed)
    await crashed.claim_due(T0, 1)
    await crashed.close()

    store = await open_at(location)
    try:
        assert await store.recover_in_flight("resend", T0 + 1) == [message_id]
        assert (await store.message(message_id)).duplicate_risk
    finally:
        await store.close()


async def test_a_stop_or_a_switch_set_through_one_daemon_holds_for_another_at_once(
        location: str) -> None:
    a, b = await open_at(location), await open_at(location)
    a.owner, b.owner = "101@host-a", "202@host-b"
    try:
        deferred = await b.record_call(missed_call("c1"), text(send_after=T0 + 60),
                                       now=T0, destination=CALLER)
        other = await queued_message(b, "c2", caller="+447700900456")
        await a.opt_out(CALLER, "STOP", T0 + 1)  # the reply reached daemon A
        await a.set_switch("global", False, T0 + 2)

        assert await b.claim_due(T0 + 61, 10) == []  # B's texts: one opted out, one held
        assert (await b.message(deferred or 0)).state == "failed"
        view = await b.policy_view(CALLER, "sales", T0 + 3)
        assert view.opted_out and not view.global_enabled
        await a.set_switch("global", True, T0 + 4)
        assert [m.id for m in await b.claim_due(T0 + 61, 10)] == [other]
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------------- opt-outs and the policy

async def test_stop_and_start_replies(store: Store) -> None:
    assert await store.add_inbound(CALLER, "Acme", "STOP", T0) > 0
    assert await store.opt_out(CALLER, "STOP", T0)
    assert not await store.opt_out(CALLER, "STOP", T0 + 1)
    assert await store.is_opted_out(CALLER)

    assert await store.opt_in(CALLER, T0 + 2)
    assert not await store.opt_in(CALLER, T0 + 3)
    assert not await store.is_opted_out(CALLER)


async def test_an_opt_out_cancels_a_deferred_text_but_not_its_confirmation(
        store: Store) -> None:
    deferred = await store.record_call(missed_call("c1"), text(send_after=T0 + 3600,
                                                               expires_at=None),
                                       now=T0, destination=CALLER)
    confirmation = await store.enqueue_message(
        pbx="-", call_id=f"optout:{CALLER}", kind="optout_confirm", seq=0, destination=CALLER,
        body="Done.", now=T0, not_before=None, expires_at=None)

    await store.opt_out(CALLER, "STOP", T0 + 10)

    assert deferred is not None and confirmation is not None
    assert (await store.message(deferred)).state == "failed"
    assert [message.id for message in await store.claim_due(T0 + 3600, 10)] == [confirmation]


async def test_policy_view_counts_texts_on_a_fake_clock(store: Store) -> None:
    neighbour = "+447700900999"  # same first 6 digits as CALLER
    elsewhere = "+33612345678"
    await queued_message(store, "old", CALLER, now=T0 - 7200)  # two hours ago
    await queued_message(store, "recent", neighbour, now=T0 - 600)
    await queued_message(store, "abroad", elsewhere, now=T0 - 60)
    failed = await queued_message(store, "failed", neighbour, now=T0 - 30)
    await store.claim_due(T0, 10)  # claims all four; fail one: failed texts do not count
    await store.mark_failed(failed, error_code=11, detail="invalid destination", now=T0)
    await store.opt_out(elsewhere, "STOP", T0)

    view = await store.policy_view(CALLER, "sales", T0)

    assert view.last_text_at == T0 - 7200
    assert (view.texts_last_hour, view.texts_last_day, view.prefix_texts_last_hour) == (2, 3, 1)
    assert not view.opted_out
    assert (await store.policy_view(elsewhere, None, T0)).opted_out
    assert (await store.policy_view(CALLER, None, T0, prefix="+44")).prefix_texts_last_hour == 1
    assert (await store.policy_view(CALLER, None, T0,
                                    prefix="+4477009")).prefix_texts_last_hour == 1
    assert (await store.policy_view(elsewhere, None, T0)).prefix_texts_last_hour == 1
    tomorrow = await store.policy_view("+447700900555", None, T0 + 86400)
    assert (tomorrow.texts_last_day, tomorrow.last_text_at) == (0, None)


async def test_a_callers_last_text_is_their_newest_that_counts(store: Store) -> None:
    """Texted last: the newest text of a caller kind that did not fail or expire, past any
    newer one that did, and past texts of other kinds (an opt-out confirmation)."""
    await queued_message(store, "counted", CALLER, now=T0 - 7200)
    later = await queued_message(store, "later", CALLER, now=T0 - 3600)
    failed = await queued_message(store, "failed", CALLER, now=T0 - 60)
    await store.claim_due(T0 - 50, 10)
    await store.mark_failed(failed, error_code=11, detail="invalid destination", now=T0 - 50)
    await store.enqueue_message(pbx="-", call_id=f"optout:{CALLER}", kind="optout_confirm",
                                seq=0, destination=CALLER, body="Done.", now=T0 - 30,
                                not_before=None, expires_at=None)
    callers = [(CALLER, "sales", None), ("+447700900555", "sales", None)]

    single = [await store.policy_view(e164, group, T0) for e164, group, _ in callers]

    assert [view.last_text_at for view in single] == [T0 - 3600, None]
    assert await store.policy_views(callers, T0) == single
    await store.mark_failed(later, error_code=11, detail="invalid destination", now=T0)
    assert [view.last_text_at for view in await store.policy_views(callers, T0)] == [
        T0 - 7200, None]


async def test_switches_reach_the_policy_view(store: Store) -> None:
    assert await store.switches() == {}
    view = await store.policy_view(CALLER, "sales", T0)
    assert view.global_enabled and view.group_enabled

    await store.set_switch("group:sales", False, T0)
    view = await store.policy_view(CALLER, "sales", T0)
    assert view.global_enabled and not view.group_enabled
    assert (await store.policy_view(CALLER, "support", T0)).group_enabled

    await store.set_switch("global", False, T0 + 1)
    await store.set_switch("group:sales", True, T0 + 2)
    assert await store.switches() == {"global": False, "group:sales": True}
    view = await store.policy_view(CALLER, "sales", T0)
    assert not view.global_enabled and view.group_enabled


async def test_a_disabled_switch_holds_queued_texts_to_callers(store: Store) -> None:
    sales = await queued_message(store, "c1")
    support = await store.record_call(missed_call("c2", group="support"),
                                      text(group="support"), now=T0, destination=CALLER)
    test_send = await store.enqueue_message(pbx="-", call_id="test:1", kind="test", seq=0,
                                            destination=CALLER, body="test", now=T0,
                                            not_before=None, expires_at=None)

    await store.set_switch("group:sales", False, T0)
    assert {m.id for m in await store.claim_due(T0, 10)} == {support, test_send}
    await store.set_switch("group:sales", True, T0)
    assert [m.id for m in await store.claim_due(T0, 10)] == [sales]


# ---------------------------------------------------------------------- restarts and migrations

async def test_data_survives_a_restart(location: str) -> None:
    first = await open_at(location)
    message_id = await queued_message(first)
    await first.opt_out("+447700900999", "STOP", T0)
    await first.set_switch("global", False, T0)
    await first.close()

    again = await open_at(location)
    try:
        assert (await again.message(message_id)).state == "queued"
        assert await again.is_opted_out("+447700900999")
        assert await again.switches() == {"global": False}
        assert await again.record_call(missed_call("c1"), text(), now=T0,
                                       destination=CALLER) is None
    finally:
        await again.close()


# ---------------------------------------------------------------------- the SQLite file itself

def schema_of(db_path: str) -> tuple[int, list[tuple[Any, ...]]]:
    raw = sqlite3.connect(db_path)
    try:
        version = raw.execute("PRAGMA user_version").fetchone()[0]
        objects = raw.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        raw.close()
    return int(version), objects


async def test_reopening_a_current_sqlite_store_migrates_nothing_and_keeps_its_data(
        db_path: str) -> None:
    first = await Store.open(db_path)
    message_id = await queued_message(first)
    await first.close()
    schema = schema_of(db_path)

    for _ in range(2):
        again = await Store.open(db_path)
        try:
            assert (await again.message(message_id)).state == "queued"
            assert await again.count_calls() == 1
        finally:
            await again.close()

    assert schema[0] == SCHEMA_VERSION
    assert schema_of(db_path) == schema


async def test_a_sqlite_store_of_the_first_schema_is_upgraded_with_its_data(
        db_path: str) -> None:
    Path(db_path).parent.mkdir(parents=True)
    old = sqlite3.connect(db_path)
    for statement in migration_steps(0, "sqlite"):
        old.execute(statement)
    old.execute("INSERT INTO messages (id, pbx, call_id, kind, seq, destination, body, state,"
                " parts, not_before, created_at) VALUES (7, 'lab', 'c1', 'first', 0, ?, 'Hi',"
                " 'submitted', 2, ?, ?)", (CALLER, T0, T0))
    old.executemany("INSERT INTO message_parts (message_id, part_no, smsc_id) VALUES (7, ?, ?)",
                    [(2, "b"), (1, "a")])
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()

    store = await Store.open(db_path)
    try:
        message = await store.message(7)
        assert (message.state, message.smsc_ids) == ("submitted", ("a", "b"))
        await store.apply_receipt("a", "DELIVRD", None, T0, {})
        await store.apply_receipt("b", "DELIVRD", None, T0, {})
        assert (await store.message(7)).state == "delivered"
    finally:
        await store.close()
    check = sqlite3.connect(db_path)
    try:
        assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        check.close()


async def test_a_sqlite_store_from_a_newer_mcdaemon_is_refused_untouched(
        db_path: str) -> None:
    Path(db_path).parent.mkdir(parents=True)
    newer = sqlite3.connect(db_path)
    newer.execute("CREATE TABLE from_the_future (x)")
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.commit()
    newer.close()
    before = Path(db_path).read_bytes()

    with pytest.raises(StoreError, match=rf"newer mcdaemon \(schema {SCHEMA_VERSION + 1}.*"
                                         r"upgrade mcdaemon or use another store.path"):
        await Store.open(db_path)
    assert Path(db_path).read_bytes() == before  # not even switched to WAL
    assert sorted(path.name for path in Path(db_path).parent.iterdir()) == ["mcdaemon.db"]


async def test_a_file_that_is_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("shopping list\n" * 100)

    with pytest.raises(StoreError, match="is it an mcdaemon database"):
        await Store.open(str(path))


async def test_the_cli_can_read_while_the_daemon_holds_a_sqlite_write_transaction(
        sqlite_store: Store, db_path: str) -> None:
    await queued_message(sqlite_store)
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE status SET value = value")
    try:
        reader = await Store.open(db_path)
        try:
            stats = await reader.outbox_stats(T0)
        finally:
            await reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert stats["by_state"]["queued"] == 1


async def test_a_store_path_below_a_plain_file_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("not a directory")

    with pytest.raises(StoreError, match=r"cannot create the directory.*store\.path"):
        await Store.open(str(tmp_path / "etc" / "mcdaemon.db"))


async def test_a_store_path_that_is_a_directory_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot (open|use) the store"):
        await Store.open(str(tmp_path))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="file modes do not bind root")
async def test_a_store_in_a_read_only_directory_is_refused_clearly(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(StoreError, match="not writable by this user"):
            await Store.open(str(locked / "mcdaemon.db"))
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------------- what the CLI shows

async def test_outbox_stats_count_every_state_and_the_oldest_due_text(store: Store) -> None:
    assert (await store.outbox_stats(T0))["oldest_queued_age"] is None
    delivered = await submitted_message(store, ["d-1"], call_id="delivered")
    await store.apply_receipt("d-1", "DELIVRD", None, T0 + 3, {})
    await queued_message(store, "old", now=T0 + 100)
    await queued_message(store, "new", now=T0 + 200)
    await store.record_call(missed_call("tonight"), text(send_after=T0 + 5000, expires_at=None),
                            now=T0 + 300, destination=CALLER)
    failing = await queued_message(store, "failing", now=T0 + 50)
    await store.claim_due(T0 + 50, 1)
    await store.mark_failed(failing, error_code=11, detail="invalid", now=T0 + 51)

    stats = await store.outbox_stats(T0 + 400)

    assert delivered is not None
    assert stats == {
        "by_state": {"queued": 3, "sending": 0, "submitted": 0, "delivered": 1,
                     "undeliverable": 0, "unknown": 0, "failed": 1, "expired": 0},
        "oldest_queued_age": 300.0, "deferred": 1, "duplicate_risk": 0}


async def test_statuses_keep_the_latest_value_of_each_name(store: Store) -> None:
    assert await store.statuses() == {}

    await store.set_status("ami", "connecting", at=T0)
    await store.set_status("smpp", "bound", at=T0 + 1)
    await store.set_status("ami", "connected", at=T0 + 2)

    assert await store.statuses() == {"ami": ("connected", T0 + 2), "smpp": ("bound", T0 + 1)}
    await store.clear_status("ami")  # a daemon's heartbeat row at its clean stop
    await store.clear_status("never-set")
    assert await store.statuses() == {"smpp": ("bound", T0 + 1)}


async def test_policy_views_for_a_batch_equal_one_policy_view_per_caller(store: Store) -> None:
    for number, caller in enumerate(("+447700900001", "+447700900002", "+447400123456")):
        record = CallRecord(pbx="lab", call_id=f"1.{number}", caller=caller,
                            caller_name=None, caller_e164=caller, did="1", group="sales",
                            outcome=Outcome.QUEUE_ABANDON, stages=(), started=0.0,
                            ended=100.0, wait_seconds=1.0)
        await store.record_call(record, Decision(True, "text", group="sales", body="hi",
                                                 destination=caller),
                                now=100.0 + number, destination=caller)
    await store.opt_out("+447700900002", "STOP", 150.0)
    await store.set_switch("group:sales", False, 150.0)
    callers = [("+447700900001", "sales", "+4477009"), ("+447700900002", "support", "+447"),
               (None, None, None), ("+447999999999", "sales", "+4479999")]
    batch = await store.policy_views(callers, 200.0)
    single = [await store.policy_view(e164, group, 200.0, prefix=prefix)
              for e164, group, prefix in callers]
    assert batch == single
    # the opted-out number's queued text was failed by the opt-out: it no longer counts
    assert batch[0].last_text_at == 100.0 and batch[0].prefix_texts_last_hour == 1
    assert not batch[0].group_enabled and batch[1].opted_out


async def test_the_texts_handed_back_are_the_rows_as_stored(store: Store) -> None:
    await queued_message(store, "stored before")  # ids go on from there
    batch = [NewCall(missed_call("now"), text()),
             NewCall(missed_call("later"), text(send_after=T0 + 60)),
             NewCall(missed_call("beyond the claim"), text()),
             NewCall(missed_call("answered"), Decision(text=False, reason="not_missed"))]

    ids, claimed = await store.record_calls_and_claim(batch, now=T0,
                                                      destinations=[CALLER] * 4, claim=1)

    assert ids[3] is None and [message.id for message in claimed] == [ids[0]]
    assert claimed == [await store.message(ids[0])]
    assert [message.state for message in await store.messages()] == [
        "queued", "sending", "queued", "queued"]


async def test_a_decision_waits_for_another_process_writing_sqlite_without_stalling_the_loop(
        sqlite_store: Store, db_path: str) -> None:
    """While another process (the CLI) holds SQLite's write lock, the decision's write waits
    for it in aiosqlite's thread: the event loop goes on meanwhile."""
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, other.execute, "COMMIT")
    try:
        ids, claimed = await sqlite_store.record_calls_and_claim(
            [NewCall(missed_call("c1"), text())], now=T0, destinations=[CALLER], claim=1)
    finally:
        ticker.cancel()
        other.close()

    assert ids[0] is not None and [message.id for message in claimed] == ids
    assert claimed[0].state == "sending" and claimed[0].attempts == 1
    assert ticks >= 1  # the loop went on ticking while the write waited


async def test_webhooks_are_claimed_due_oldest_first_behind_their_keys_older_ones(
        store: Store) -> None:
    """A claim takes pending deliveries due by `now`, in the order they were queued, up to
    its limit; never one in flight (`busy`), one due later, one settled, or one behind an
    older pending delivery of its endpoint and order key."""
    def row(name: str, order: str, endpoint: str = "crm") -> WebhookIn:
        return WebhookIn(f"d-{name}", endpoint, "missed_call", name, order, "{}")

    await store.enqueue_webhooks([row("a1", "call:a"), row("b1", "call:b"),
                                  row("a2", "call:a"), row("c1", "call:c"),
                                  row("a1-chat", "call:a", "chat")], T0)
    ids = {item["delivery_id"]: item["id"] for item in await store.webhooks()}
    await store.mark_webhook_retry(ids["d-b1"], next_at=T0 + 60, error="HTTP 500", now=T0)
    await store.mark_webhook_delivered(ids["d-c1"], T0)

    due = await store.claim_due_webhooks(T0 + 1, 10)
    assert [item.delivery_id for item in due] == ["d-a1", "d-a1-chat"]
    assert [item.delivery_id for item in await store.claim_due_webhooks(T0 + 1, 1)] == [
        "d-a1"]
    assert [item.delivery_id for item in await store.claim_due_webhooks(
        T0 + 1, 10, busy=[ids["d-a1"]])] == ["d-a1-chat"]
    assert [item.delivery_id for item in await store.claim_due_webhooks(T0 + 60, 10)] == [
        "d-a1", "d-b1", "d-a1-chat"]
    await store.mark_webhook_delivered(ids["d-a1"], T0 + 2)
    assert [item.delivery_id for item in await store.claim_due_webhooks(T0 + 2, 10)] == [
        "d-a2", "d-a1-chat"]
