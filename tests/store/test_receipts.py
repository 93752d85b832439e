"""Delivery receipts land on the text they belong to, or on none.

The rules (docs/receipts.md): the receipted_message_id TLV is matched exactly, first and only;
the `id:` of the text only when there is no TLV; another base only when neither names a part,
no text is in flight, and exactly one pending text fits. A receipt that names more than one
text is kept unmatched and counted. Store-level tests use a fake clock; the storms run the
sender against the tests' own SMSC (`TestSmsc`) in the decimal-from-"0" mode of SMPPSim.
"""

from __future__ import annotations

import asyncio
import io
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mcdaemon.adapters.smpp import BindState, MobileOriginated, SmppSender
from mcdaemon.commands.control import gather_status, show_status
from mcdaemon.commands.report import read_report
from mcdaemon.config.load import config_from_dict
from mcdaemon.config.model import Config, SmppConfig
from mcdaemon.core.outbox import SubmitResult
from mcdaemon.core.receipts import (
    DeliveryReceipt,
    other_base_readings,
    parse_receipt,
    receipt_text,
)
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.report.kpis import as_table
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.store import AMBIGUOUS, ReceiptIn, Store, SubmitOutcome, open_store_readonly

from pg_server import is_postgresql, open_at, raw_rows

T0 = 1_736_157_600.0  # the fake clock of the store-level tests starts here
WAIT = 10.0  # bound for a storm's receipts on loopback


def _call(call_id: str, number: str, ended: float) -> CallRecord:
    return CallRecord(pbx="lab", call_id=call_id, caller=number.lstrip("+"), caller_name=None,
                      caller_e164=number, did="442071230000", group="sales",
                      outcome=Outcome.QUEUE_ABANDON, stages=("queue",), started=ended - 40,
                      ended=ended, wait_seconds=35.0)


async def queued(store: Store, n: int, now: float, body: str | None = None) -> int:
    number = f"+4477009{n:05d}"
    decision = Decision(text=True, reason="sent", group="sales",
                        body=body or f"text {n:05d}: sorry we missed you",
                        template="queue_abandon", variant="A", send_after=None,
                        expires_at=now + 900, destination=number)
    message_id = await store.record_call(_call(f"call-{n}", number, now), decision, now=now,
                                         destination=number)
    assert message_id is not None
    return message_id


async def sent(store: Store, n: int, smsc_id: str, *, claimed: float) -> int:
    """A text claimed at `claimed` whose submit_sm_resp (`smsc_id`) is recorded 1 s later."""
    message_id = await queued(store, n, claimed - 1)
    [claim] = await store.claim_due(claimed, 1)
    assert claim.id == message_id
    assert await store.mark_submitted(message_id, [smsc_id], claimed + 1)
    return message_id


async def state_of(store: Store, message_id: int) -> str:
    return (await store.message(message_id)).state


async def receipts_table(location: str) -> list[tuple[object, ...]]:
    return await raw_rows(location, "SELECT receipted_id, text_id, message_id, matched_by"
                                    " FROM receipts ORDER BY id")


# ---------------------------------------------------------------------- reading a receipt

def test_a_receipt_keeps_its_tlv_id_and_its_text_id_apart() -> None:
    receipt = parse_receipt("id:16 sub:001 dlvrd:001 stat:DELIVRD err:000", "10", 2, 1.0)

    assert receipt is not None
    assert (receipt.receipted_id, receipt.text_id, receipt.smsc_id) == ("10", "16", "10")
    text_only = parse_receipt("id:16 stat:DELIVRD", None, None, 1.0)
    assert text_only is not None
    assert (text_only.receipted_id, text_only.text_id, text_only.smsc_id) == (None, "16", "16")


def test_a_receipt_marked_ucs2_but_written_in_ascii_keeps_its_id_state_and_error() -> None:
    payload = b"id:7 sub:001 dlvrd:000 submit date:2501061000 done date:2501061001" \
              b" stat:UNDELIV err:034 Text:Merci"

    text = receipt_text(payload, data_coding=8)
    receipt = parse_receipt(text, None, None, 1.0)

    assert text == payload.decode("ascii")
    assert receipt is not None
    assert (receipt.text_id, receipt.state, receipt.error) == ("7", "UNDELIV", "034")


def test_a_receipt_really_written_in_ucs2_is_read_as_ucs2() -> None:
    written = "id:7 stat:DELIVRD err:000 Text:Zoë 🙂"

    assert receipt_text(written.encode("utf-16-be"), data_coding=8) == written
    assert receipt_text(written.encode("latin-1", "replace"), data_coding=0).startswith(
        "id:7 stat:DELIVRD")


def test_other_base_readings_never_include_the_exact_id() -> None:
    assert set(other_base_readings("10", None)) == {"a", "16"}
    assert set(other_base_readings(None, "8010")) == {"1f4a", "32784"}
    # with a TLV, the text's id (as written and in the other base) is only a reading
    assert "16" in other_base_readings("10", "16")
    assert "10" not in other_base_readings("10", "16")


# ---------------------------------------------------------------------- exact first

async def test_the_tlv_id_lands_on_its_own_older_text_not_on_a_newer_one_it_reads_as(
        store: Store) -> None:
    # the log: ids "10" and "16" from an SMSC numbering in decimal; "10" read as hex
    # is 16, and the newest text among all readings got both receipts
    older = await sent(store, 17, "10", claimed=T0)
    newer = await sent(store, 23, "16", claimed=T0 + 5)

    assert await store.apply_receipt("10", "DELIVRD", None, T0 + 10, text_id="10") == older
    assert await store.apply_receipt("16", "DELIVRD", None, T0 + 11, text_id="16") == newer

    assert (await state_of(store, older), await state_of(store, newer)) == (
        "delivered", "delivered")


async def test_the_tlv_id_wins_over_a_text_id_that_names_another_text(store: Store) -> None:
    named_by_tlv = await sent(store, 1, "1f4a", claimed=T0)
    named_by_text = await sent(store, 2, "8010", claimed=T0)

    matched = await store.apply_receipt("1F4A", "DELIVRD", None, T0 + 5, text_id="8010")

    assert matched == named_by_tlv
    assert await state_of(store, named_by_text) == "submitted"


async def test_receipts_arriving_out_of_order_each_land_on_their_own_text(
        store: Store) -> None:
    texts = {str(n): await sent(store, n, str(n), claimed=T0 + n) for n in range(20)}
    order = list(texts)
    random.Random(7).shuffle(order)

    applied = await store.apply_receipts(
        [ReceiptIn(smsc_id, smsc_id, "DELIVRD", None, T0 + 60) for smsc_id in order])

    assert applied.matched == [texts[smsc_id] for smsc_id in order]
    assert applied.settled == {"delivered": 20}


async def test_an_undeliverable_receipt_lands_on_its_own_text_only(store: Store) -> None:
    failed = await sent(store, 1, "10", claimed=T0)
    fine = await sent(store, 2, "16", claimed=T0)
    also_fine = await sent(store, 3, "a", claimed=T0)

    assert await store.apply_receipt("10", "UNDELIV", "034", T0 + 5, text_id="10") == failed

    message = await store.message(failed)
    assert (message.state, message.error_detail) == ("undeliverable", "receipt error 034")
    assert (await state_of(store, fine), await state_of(store, also_fine)) == (
        "submitted", "submitted")


async def test_a_repeated_receipt_for_a_settled_text_stays_with_it_and_changes_nothing(
        store: Store) -> None:
    message_id = await sent(store, 1, "10", claimed=T0)
    await store.apply_receipt("10", "UNDELIV", "034", T0 + 5)

    assert await store.apply_receipt("10", "DELIVRD", None, T0 + 6) == message_id
    assert await state_of(store, message_id) == "undeliverable"


# ---------------------------------------------------------------------- reused ids

async def test_after_the_smsc_restarts_its_counter_a_reused_id_lands_on_the_pending_text(
        store: Store) -> None:
    yesterday = await sent(store, 1, "0", claimed=T0)
    await store.apply_receipt("0", "DELIVRD", None, T0 + 5)
    today = await sent(store, 2, "0", claimed=T0 + 86_400)  # the SMSC numbers from "0" again

    assert await store.apply_receipt("0", "UNDELIV", "001", T0 + 86_410) == today

    assert (await state_of(store, yesterday), await state_of(store, today)) == (
        "delivered", "undeliverable")


async def test_a_reused_id_goes_to_the_text_sent_before_the_receipt_arrived(
        store: Store) -> None:
    before = await sent(store, 1, "5", claimed=T0)
    after = await sent(store, 2, "5", claimed=T0 + 100)  # claimed after the receipt came

    applied = await store.apply_receipts([ReceiptIn("5", None, "DELIVRD", None, T0 + 50)])

    assert applied.matched == [before]
    assert await state_of(store, after) == "submitted"


async def test_a_reused_id_naming_two_pending_texts_is_kept_unmatched_warned_and_counted(
        store: Store, location: str) -> None:
    first = await sent(store, 1, "3", claimed=T0)
    second = await sent(store, 2, "3", claimed=T0 + 10)  # the first never got its receipt

    with capture_logs() as logs:
        assert await store.apply_receipt("3", "DELIVRD", None, T0 + 20) is None

    assert (await state_of(store, first), await state_of(store, second)) == (
        "submitted", "submitted")
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["receipted_id"] == "3"
    assert warning["candidates"] == [f"message {first} part 1 id 3",
                                     f"message {second} part 1 id 3"]
    assert await receipts_table(location) == [("3", None, None, AMBIGUOUS)]
    assert await store.unmatched_receipts(T0) == {"unmatched": 1, "ambiguous": 1}
    # a later submit does not make it less ambiguous: it is not replayed
    await sent(store, 3, "3", claimed=T0 + 30)
    assert await store.unmatched_receipts(T0) == {"unmatched": 1, "ambiguous": 1}


# ---------------------------------------------------------------------- another base

async def test_a_text_only_receipt_in_another_base_lands_on_the_one_pending_text_that_fits(
        store: Store, location: str) -> None:
    message_id = await sent(store, 1, "1f4a", claimed=T0)  # hex in submit_sm_resp

    assert await store.apply_receipt(None, "DELIVRD", None, T0 + 5, text_id="8010") == \
        message_id
    assert await receipts_table(location) == [(None, "8010", message_id,
                                                         "other_base")]


async def test_another_base_is_not_guessed_when_two_pending_texts_fit(store: Store) -> None:
    # "10" read as hex is 16: both "a" (10 in hex) and "16" fit the text-only id "10"
    hex_reading = await sent(store, 1, "a", claimed=T0)
    decimal_reading = await sent(store, 2, "16", claimed=T0)

    assert await store.apply_receipt(None, "DELIVRD", None, T0 + 5, text_id="10") is None

    assert (await state_of(store, hex_reading), await state_of(store, decimal_reading)) == (
        "submitted", "submitted")
    assert await store.unmatched_receipts(T0) == {"unmatched": 1, "ambiguous": 1}


async def test_another_base_is_not_read_onto_a_text_that_already_has_its_receipt(
        store: Store) -> None:
    settled = await sent(store, 1, "a", claimed=T0)
    await store.apply_receipt("a", "DELIVRD", None, T0 + 3)

    assert await store.apply_receipt(None, "UNDELIV", "001", T0 + 5, text_id="10") is None
    assert await state_of(store, settled) == "delivered"


async def test_a_receipt_that_overtakes_its_submit_response_waits_for_it_instead_of_a_guess(
        store: Store) -> None:
    # "10" is pending; "16" is in flight (claimed, its submit_sm_resp not recorded) when
    # the receipt for "16" comes: "16" read as hex is 22, and 16 in hex is "10"
    pending = await sent(store, 1, "10", claimed=T0)
    in_flight = await queued(store, 2, T0 + 1)
    await store.claim_due(T0 + 2, 1)

    assert await store.apply_receipt("16", "DELIVRD", None, T0 + 3, text_id="16") is None
    assert await store.unmatched_receipts(T0) == {"unmatched": 1, "ambiguous": 0}

    await store.mark_submitted(in_flight, ["16"], T0 + 4)  # replayed: exact id, its text

    assert (await state_of(store, pending), await state_of(store, in_flight)) == (
        "submitted", "delivered")
    assert await store.unmatched_receipts(T0) == {"unmatched": 0, "ambiguous": 0}


async def test_a_text_only_receipt_in_another_base_waits_for_the_texts_in_flight(
        store: Store) -> None:
    hex_text = await sent(store, 1, "1f4a", claimed=T0)
    other = await queued(store, 2, T0 + 1)
    await store.claim_due(T0 + 2, 1)  # its id is not known yet: it could be "8010"

    assert await store.apply_receipt(None, "DELIVRD", None, T0 + 3, text_id="8010") is None
    await store.mark_submitted(other, ["1f4b"], T0 + 4)  # nothing in flight any more

    assert (await state_of(store, hex_text), await state_of(store, other)) == (
        "delivered", "submitted")


# ---------------------------------------------------------------------- counting

async def test_unmatched_receipts_are_counted_per_period(store: Store) -> None:
    await store.apply_receipt("nobody-1", "DELIVRD", None, T0)
    await store.apply_receipt("nobody-2", "DELIVRD", None, T0 + 100)

    assert await store.unmatched_receipts(T0 + 50) == {"unmatched": 1, "ambiguous": 0}
    assert await store.unmatched_receipts(T0, T0 + 50) == {"unmatched": 1, "ambiguous": 0}


async def test_unmatched_receipts_are_counted_through_sqlites_partial_index(
        sqlite_store: Store, db_path: str) -> None:
    await sqlite_store.apply_receipt("nobody-1", "DELIVRD", None, T0)
    raw = sqlite3.connect(db_path)
    try:
        plan = " ".join(str(row) for row in raw.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*), SUM(CASE WHEN matched_by = 'ambiguous' THEN 1"
            " ELSE 0 END) FROM receipts"
            " WHERE message_id IS NULL AND at >= ? AND at <= ?", (T0, T0 + 50)))
    finally:
        raw.close()
    assert "receipts_unmatched" in plan


# ---------------------------------------------------------------------- storms

async def test_a_storm_of_texts_and_receipts_in_any_order_lands_each_on_its_own_text(
        store: Store) -> None:
    """Decimal ids from "0", receipts shuffled, some before their submit is recorded, then
    the counter restarts and every id comes again."""
    rng = random.Random(11)
    expected: dict[tuple[int, str], int] = {}  # (round, SMSC id) -> message
    clock = T0
    for round_no in range(2):
        batch = []
        for n in range(60):
            clock += 0.5
            batch.append(await queued(store, round_no * 100 + n, clock))
        clock += 1
        claimed = await store.claim_due(clock, 100)
        assert sorted(m.id for m in claimed) == sorted(batch)
        for n, message_id in enumerate(batch):
            expected[(round_no, str(n))] = message_id
        order = list(range(60))
        rng.shuffle(order)
        early, late = order[:20], order[20:]
        clock += 1  # receipts for a third of them overtake their submit_sm_resp
        early_applied = await store.apply_receipts(
            [ReceiptIn(str(n), str(n), "UNDELIV" if n % 7 == 0 else "DELIVRD",
                       "034" if n % 7 == 0 else None, clock) for n in early])
        assert early_applied.matched == [None] * 20  # waiting: never a guess
        clock += 1
        await store.record_submit_outcomes(
            [SubmitOutcome(batch[n], "submitted", smsc_ids=(str(n),)) for n in range(60)],
            clock)
        clock += 1
        applied = await store.apply_receipts(
            [ReceiptIn(str(n), str(n), "UNDELIV" if n % 7 == 0 else "DELIVRD",
                       "034" if n % 7 == 0 else None, clock) for n in late])
        assert applied.matched == [expected[(round_no, str(n))] for n in late]
        for n in range(60):
            message = await store.message(batch[n])
            assert message.state == ("undeliverable" if n % 7 == 0 else "delivered"), n
    assert await store.unmatched_receipts(T0) == {"unmatched": 0, "ambiguous": 0}


@dataclass
class StormFigures:
    receipts: int
    right: int
    wrong: int
    unmatched: int


def smpp_config(smsc: TestSmsc) -> SmppConfig:
    return SmppConfig(host="127.0.0.1", port=smsc.port, system_id=smsc.system_id,
                      password=smsc.password, system_type="mcd", source_addr="Acme",
                      throughput=5000.0, reconnect_min=0.05, reconnect_max=0.2,
                      response_timeout=5.0, enquire_link=30.0)


async def storm(smsc: TestSmsc, store: Store, sender: SmppSender,
                events: asyncio.Queue[DeliveryReceipt | MobileOriginated | BindState],
                texts: int, first: int, *, late: bool) -> int:
    """The service's loop in small: claim a window, submit it, record its answers in one
    batch (receipts meanwhile overtake them) while receipts are stored as they come. How
    many receipts were first kept unmatched (to be matched when their submit is recorded)."""
    for n in range(first, first + texts):
        await queued(store, n, time.time(), body=f"storm {n:05d} sorry we missed you")
    stored = waited = 0

    async def consume() -> None:
        nonlocal stored, waited
        while stored < texts:
            items = [await events.get()]
            while not events.empty():
                items.append(events.get_nowait())
            receipts = [item for item in items if isinstance(item, DeliveryReceipt)]
            applied = await store.apply_receipts([
                ReceiptIn(item.receipted_id, item.text_id, item.state, item.error, item.at,
                          item.raw) for item in receipts])
            for item in receipts:
                item.acknowledge()  # stored: as the daemon does
            stored += len(receipts)
            waited += applied.matched.count(None)

    consumer = asyncio.create_task(consume())
    while claimed := await store.claim_due(time.time(), 25):
        results: list[SubmitResult] = await asyncio.gather(*(
            sender.submit(message.destination, message.body, reference=message.id & 0xFF)
            for message in claimed))
        if late:  # the answers are recorded late (a busy store): receipts come first
            await asyncio.sleep(0.15)
        assert all(result.outcome == "submitted" for result in results), results
        await store.record_submit_outcomes(
            [SubmitOutcome(message.id, "submitted", smsc_ids=result.smsc_ids)
             for message, result in zip(claimed, results, strict=True)], time.time())
    await asyncio.wait_for(consumer, WAIT)
    return waited


def figures(store_path: Path) -> StormFigures:
    """Each receipt against the text it quotes (`Text:`, the start of the original)."""
    raw = sqlite3.connect(store_path)
    try:
        rows = raw.execute(
            "SELECT r.message_id, json_extract(r.raw, '$.text'),"
            " (SELECT id FROM messages WHERE substr(body, 1, 20) ="
            "  json_extract(r.raw, '$.text')) FROM receipts AS r").fetchall()
    finally:
        raw.close()
    return StormFigures(receipts=len(rows),
                        right=sum(1 for got, _, meant in rows if got is not None and got == meant),
                        wrong=sum(1 for got, _, meant in rows if got is not None and got != meant),
                        unmatched=sum(1 for got, _, _ in rows if got is None))


@pytest.mark.parametrize("overtaking", [False, True], ids=["in-order", "receipts-overtake"])
async def test_a_storm_against_a_decimal_id_smsc_lands_every_receipt_on_its_own_text(
        tmp_path: Path, overtaking: bool) -> None:
    """SMPPSim-like: decimal ids from "0", a vendor TLV on every receipt, receipts out of
    order; then the SMSC restarts its counter and every id is used again."""
    path = tmp_path / "storm.db"
    store = await Store.open(str(path))
    events: asyncio.Queue[DeliveryReceipt | MobileOriginated | BindState] = asyncio.Queue()
    try:
        async with TestSmsc(id_format="decimal", vendor_tlvs=True, receipt_delay=0.005,
                            receipt_jitter=0.05, receipt_before_answer=overtaking,
                            response_delay=0.03 if overtaking else 0.0, seed=3) as smsc:
            sender = SmppSender(smpp_config(smsc), events)
            await sender.start()
            try:
                waited = await storm(smsc, store, sender, events, texts=150, first=0,
                                     late=overtaking)
                smsc.restart_ids()
                waited += await storm(smsc, store, sender, events, texts=150, first=1000,
                                      late=overtaking)
            finally:
                await sender.stop(timeout=1.0)
        assert len({submit.message_id for submit in smsc.submits}) == 150  # each id twice
    finally:
        await store.close()

    result = figures(path)
    print(f"storm figures ({'receipts overtake' if overtaking else 'in order'}): {result};"
          f" {waited} first kept unmatched, matched when their submit was recorded")
    if overtaking:
        assert waited > 0  # the storm did test receipts that come before their submit
    assert result == StormFigures(receipts=300, right=300, wrong=0, unmatched=0)


# ---------------------------------------------------------------------- status and report

def minimal_config(location: str) -> Config:
    store = {"url": location} if is_postgresql(location) else {"path": location}
    return config_from_dict({
        "region": "GB", "timezone": "Europe/London", "company": "Acme Ltd",
        "inbound": {"contexts": ["from-carrier"]}, "store": store,
        "groups": {"sales": {"triggers": ["missed"],
                             "templates": {"default": "Sorry we missed your call."}}}})


async def ambiguous_and_stray_receipts(location: str, now: float) -> None:
    store = await open_at(location)
    try:
        await sent(store, 1, "3", claimed=now - 100)
        await sent(store, 2, "3", claimed=now - 90)
        await store.apply_receipt("3", "DELIVRD", None, now - 80)  # ambiguous
        await store.apply_receipt("nobody", "DELIVRD", None, now - 70)
        await store.apply_receipt("long-ago", "DELIVRD", None, now - 3 * 86_400)
    finally:
        await store.close()


async def test_status_counts_the_receipts_left_unmatched_in_the_last_day(
        location: str) -> None:
    now = time.time()
    await ambiguous_and_stray_receipts(location, now)
    config = minimal_config(location)

    status = await gather_status(config, now)
    out = io.StringIO()
    await show_status(config, out, as_json=False, health=False)

    assert status["receipts_last_24h"] == {"unmatched": 2, "ambiguous": 1}
    assert "receipts: 2 unmatched in the last 24 h (1 named more than one text" in \
        out.getvalue()


async def test_the_report_counts_the_receipts_of_its_period_left_unmatched(
        location: str) -> None:
    now = time.time()
    await ambiguous_and_stray_receipts(location, now)
    config = minimal_config(location)
    reader = await open_store_readonly(config.store)
    try:
        report = await read_report(reader, config, since=now - 86_400, until=now)
    finally:
        await reader.close()

    out = io.StringIO()
    as_table(report, out)

    assert report.as_dict()["unmatched_receipts"] == {"unmatched": 2, "ambiguous": 1}
    assert "2 delivery receipt(s) in this period matched no text (1 named more than one)" \
        in out.getvalue()
