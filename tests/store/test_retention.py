"""Retention: history past `store.retention` goes, in bounded batches; opt-outs, texts not
sent yet, webhook deliveries still pending and open campaigns never do; no row is left
pointing at one removed; and what decides (cooldowns, caps) and what the report says about
the retained window are the same before and after. On both backends (`location`: a SQLite
file or a PostgreSQL database); giving space back is each backend's own."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import pytest
from structlog.testing import capture_logs

from mcdaemon.commands.report import read_report
from mcdaemon.config.load import config_from_dict
from mcdaemon.config.model import RetentionConfig
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.pipeline.retention import Retention as RetentionStage
from mcdaemon.store import PgStore, Store, WebhookIn, WebhookResult

from pg_server import is_postgresql, raw_rows

DAY = 86400.0
NOW = 1_780_000_000.0
OLD = NOW - 500 * DAY  # past the default retention (400 days)
RECENT = NOW - 30 * DAY
RETENTION = RetentionConfig()


def missed_call(call_id: str, caller: str, ended: float) -> CallRecord:
    return CallRecord(pbx="lab", call_id=call_id, caller=caller.lstrip("+"), caller_name="Zoë",
                      caller_e164=caller, did="442071230000", group="sales",
                      outcome=Outcome.QUEUE_ABANDON, stages=("queue",), started=ended - 40,
                      ended=ended, wait_seconds=35.0)


def text(caller: str, *, send_after: float | None = None) -> Decision:
    return Decision(text=True, reason="sent", group="sales", body="Sorry we missed you.",
                    template="queue_abandon", variant="A", send_after=send_after,
                    expires_at=None, destination=caller)


async def texted_call(store: Store | PgStore, call_id: str, caller: str, at: float, *,
                      receipt: str = "DELIVRD") -> int:
    """A missed call texted at `at`, submitted in two parts, with its receipts."""
    message_id = await store.record_call(missed_call(call_id, caller, at), text(caller),
                                         now=at, destination=caller)
    assert message_id is not None
    [claimed] = await store.claim_due(at, 1)
    await store.mark_submitted(claimed.id, [f"{call_id}-1", f"{call_id}-2"], at + 1)
    for part in (1, 2):
        await store.apply_receipt(f"{call_id}-{part}", receipt, None, at + 5)
    return message_id


async def prune_all(store: Store | PgStore, now: float = NOW,
                    limit: int = 500) -> dict[str, int]:
    total: dict[str, int] = {}
    while removed := await store.prune_step(RETENTION, now, limit=limit):
        for table, count in removed.items():
            total[table] = total.get(table, 0) + count
    return total


def store_section(location: str) -> dict[str, Any]:
    return {"url": location} if is_postgresql(location) else {"path": location}


async def dangling(location: str) -> list[tuple[object, ...]]:
    """Rows that name a row that is not there."""
    return await raw_rows(location, """
        SELECT 'message without call', m.id FROM messages AS m WHERE m.kind = 'first'
          AND NOT EXISTS (SELECT 1 FROM calls AS c WHERE c.pbx = m.pbx AND c.call_id = m.call_id)
        UNION ALL SELECT 'part without message', p.message_id FROM message_parts AS p
          WHERE NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.id = p.message_id)
        UNION ALL SELECT 'receipt without message', r.id FROM receipts AS r
          WHERE r.message_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.id = r.message_id)
        UNION ALL SELECT 'attempt without campaign', a.id FROM campaign_attempts AS a
          WHERE NOT EXISTS (SELECT 1 FROM campaigns AS c WHERE c.id = a.campaign_id)
        UNION ALL SELECT 'campaign link without call', k.campaign_id FROM campaign_calls AS k
          WHERE NOT EXISTS (SELECT 1 FROM calls AS c WHERE c.pbx = k.pbx
          AND c.call_id = k.call_id)
        UNION ALL SELECT 'booking without call', b.id FROM bookings AS b
          WHERE b.call_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM calls AS c
          WHERE c.pbx = b.pbx AND c.call_id = b.call_id)""")


async def test_history_past_retention_goes_and_nothing_is_left_dangling(
        store: Store | PgStore, location: str) -> None:
    await texted_call(store, "old", "+447700900001", OLD)
    await store.add_inbound("+447700900001", "lab", "who is this?", OLD + 60)
    await store.add_booking("+447700900001", 50.0, OLD + 3600, now=OLD + 3600)
    await store.apply_receipt("nobody-knows", "DELIVRD", None, OLD + 10)  # unmatched
    await store.record_stop("+447700900001", "reply", OLD + 60)
    await store.enqueue_webhooks([WebhookIn("d-old", "crm", "missed_call", "old", "call:old",
                                            "{}")], OLD)
    [delivery] = await store.claim_due_webhooks(OLD, 1)
    await store.settle_webhooks([WebhookResult(delivery.id, "delivered")], OLD + 1)
    started = await store.start_or_merge(pbx="lab", call_id="old", e164="+447700900001",
                                         group="sales", campaign_pbx="lab", first_due=OLD + 60,
                                         now=OLD)
    assert started is not None
    await store.close_campaign(started[0], "exhausted", "no attempt reached the caller",
                               OLD + 7200)
    recent = await texted_call(store, "recent", "+447700900002", RECENT)
    await store.add_inbound("+447700900002", "lab", "thanks", RECENT + 60)

    removed = await prune_all(store)

    assert removed == {"messages": 1, "message_parts": 2, "receipts": 3, "inbound": 1,
                       "bookings": 1, "calls": 1, "webhooks": 1, "contact_events": 1,
                       "campaigns": 1, "campaign_attempts": 1, "campaign_calls": 1}
    assert [message.id for message in await store.messages()] == [recent]
    assert await store.call("lab", "recent") is not None
    assert await raw_rows(location, "SELECT source FROM inbound") == [("+447700900002",)]
    assert await raw_rows(location, "SELECT COUNT(*) FROM receipts") == [(2,)]
    assert await dangling(location) == []
    assert await prune_all(store) == {}  # nothing more: a second pass removes nothing


async def test_what_is_pending_or_must_hold_for_ever_is_never_removed(
        store: Store | PgStore, location: str) -> None:
    # an opt-out from long ago: the number stays opted out, with when
    await store.opt_out("+447700900003", "STOP", OLD)
    # a text deferred long ago and never sent (a queued text is not history)
    await store.record_call(missed_call("deferred", "+447700900004", OLD),
                            text("+447700900004", send_after=NOW + 3600), now=OLD,
                            destination="+447700900004")
    # a webhook delivery still being retried, and a call-back campaign still open
    await store.enqueue_webhooks([WebhookIn("d-pending", "crm", "missed_call", "p", "call:p",
                                            "{}")], OLD)
    opened = await store.start_or_merge(pbx="lab", call_id="cb", e164="+447700900005",
                                        group="sales", campaign_pbx="lab", first_due=NOW + 60,
                                        now=OLD)
    assert opened is not None
    await store.record_call(missed_call("cb", "+447700900005", OLD),
                            Decision(text=False, reason="callback_requested"), now=OLD,
                            destination=None)

    await prune_all(store)

    assert await store.is_opted_out("+447700900003")
    assert await raw_rows(location, "SELECT at FROM opt_outs") == [(OLD,)]
    assert [(m.call_id, m.state) for m in await store.messages()] == [("deferred", "queued")]
    assert await store.call("lab", "deferred") is not None  # its text still needs it
    assert [row["state"] for row in await store.webhooks()] == ["pending"]
    assert [(c.id, c.state) for c in await store.campaigns()] == [(opened[0], "open")]
    assert await store.call("lab", "cb") is not None  # its campaign still names it
    assert await dangling(location) == []


async def test_each_step_removes_a_bounded_batch_oldest_first(
        store: Store | PgStore, location: str) -> None:
    for number in range(30):
        await texted_call(store, f"c{number:02d}", f"+4477009001{number:02d}",
                          OLD + number * 60)

    first = await store.prune_step(RETENTION, NOW, limit=10)

    assert first["messages"] == 10 and first["message_parts"] == 20
    assert first["calls"] == 10
    assert sorted(call_id for _, call_id in await raw_rows(
        location, "SELECT pbx, call_id FROM calls"))[0] == "c10"
    assert (await prune_all(store, limit=10))["messages"] == 20
    assert await raw_rows(location, "SELECT COUNT(*) FROM calls") == [(0,)]


async def test_decisions_read_the_same_history_after_pruning(store: Store | PgStore) -> None:
    await texted_call(store, "old", "+447700900006", OLD)
    await texted_call(store, "month", "+447700900007", RECENT)
    await texted_call(store, "hour", "+447700900008", NOW - 600)
    callers = [("+447700900006", "sales", "+447700"), ("+447700900007", "sales", "+447700"),
               ("+447700900008", "sales", "+447700")]
    before = await store.policy_views(callers, NOW)

    await prune_all(store)

    after = await store.policy_views(callers, NOW)
    # the cooldown's memory of a text 500 days ago is gone: no cooldown reaches that far
    # (store.retention.calls must be at least policy.cooldown); the rest is unchanged
    assert before[0].last_text_at == OLD and after[0].last_text_at is None
    assert after[1:] == before[1:]
    assert after[2].texts_last_hour == before[2].texts_last_hour == 1


async def test_sqlite_gives_the_space_freed_by_retention_back(sqlite_store: Store) -> None:
    store = sqlite_store
    for number in range(300):
        await texted_call(store, f"c{number:03d}", f"+447700901{number:03d}", OLD)
    await store.checkpoint()
    space = await store.space()
    assert space["releases_space"] is True  # a new store gives freed space back

    await prune_all(store)
    await store.checkpoint()
    freed = (await store.space())["free_bytes"]
    released = 0
    steps = 0
    while step := await store.release_space(2 * int(space["page_bytes"])):
        assert step <= 2 * int(space["page_bytes"])  # a short step at a time
        released += step
        steps += 1

    assert int(freed) > 0 and released >= int(freed) and steps > 1
    assert (await store.space())["free_bytes"] == 0


@pytest.mark.postgres
async def test_postgresql_reuses_freed_space_and_compact_vacuums_beside_the_daemons(
        pg_url: str) -> None:
    store = await PgStore.open(pg_url)
    try:
        for number in range(30):
            await texted_call(store, f"c{number:03d}", f"+447700901{number:03d}", OLD)
        before = await store.space()
        assert before["releases_space"] is True and int(before["bytes"]) > 0

        await prune_all(store)

        assert await store.release_space(1 << 20) == 0  # autovacuum's work, not the daemon's
        await store.compact()  # VACUUM: outside a transaction, beside the daemons
        after = await store.space()
        assert after["free_bytes"] == 0 and int(after["bytes"]) > 0
        assert await raw_rows(pg_url, "SELECT COUNT(*) FROM messages") == [(0,)]
    finally:
        await store.close()


async def test_the_report_of_the_retained_window_is_the_same_after_pruning(
        store: Store | PgStore, location: str) -> None:
    config = config_from_dict({"region": "GB", "inbound": {"contexts": ["from-carrier"]},
                               "store": store_section(location), "groups": {"sales": {}}})
    for number in range(5):
        caller = f"+4477009002{number:02d}"
        await texted_call(store, f"old{number}", caller, OLD + number)
        await store.add_inbound(caller, "lab", "yes", OLD + 3600)
        await texted_call(store, f"new{number}", caller, RECENT + number,
                          receipt="UNDELIV" if number == 0 else "DELIVRD")
        await store.add_inbound(caller, "lab", "yes please", RECENT + 600 + 3600 * number)
    await store.add_booking("+447700900201", 80.0, RECENT + 7200, now=RECENT + 7200)
    await store.opt_out("+447700900202", "STOP", RECENT + 60)
    window = {"since": NOW - 365 * DAY, "until": NOW}
    before = (await read_report(store, config, **window)).as_dict()

    await prune_all(store)

    after = (await read_report(store, config, **window)).as_dict()
    assert after == before
    assert before["overall"]["inbound_calls"] == 5
    assert before["overall"]["reply_rate"]["numerator"] == 5
    assert before["overall"]["bookings"] == 1


async def test_the_daemons_retention_stage_works_off_a_backlog_and_says_what_it_removed(
        store: Store | PgStore, location: str) -> None:
    for number in range(12):
        await texted_call(store, f"c{number:02d}", f"+4477009003{number:02d}", OLD)
    config = config_from_dict({"region": "GB", "inbound": {"contexts": ["from-carrier"]},
                               "store": store_section(location)})
    stage = RetentionStage(lambda: config, lambda: store, clock=lambda: NOW)

    with patch("mcdaemon.pipeline.retention.PRUNE_BATCH", 5), capture_logs() as logged:
        busy = [await stage.step() for _ in range(4)]

    assert busy == [True, True, False, False]  # 5, 5, then the last 2: the backlog is done
    assert [message.call_id for message in await store.messages()] == []
    [summary] = [entry for entry in logged if entry["event"].startswith("retention removed")]
    assert summary["messages"] == 12 and summary["calls"] == 12
