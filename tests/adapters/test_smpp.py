"""The SMPP sender over real TCP against the tests' own SMSC (`mcdaemon.sim.smsc.TestSmsc`).

The SMSC writes its PDUs by hand with `struct`; the sender uses smpplib: every test here is a
conversation between two independent SMPP implementations.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from mcdaemon.adapters.smpp import (
    REBIND_MAX_WAIT,
    BindState,
    MobileOriginated,
    SmppSender,
    status_name,
)
from mcdaemon.config.model import SmppConfig
from mcdaemon.core.outbox import SubmitResult
from mcdaemon.core.receipts import DeliveryReceipt, parse_receipt, receipt_id_candidates
from mcdaemon.core.sender_id import source_numbering
from mcdaemon.sim.smsc import DELIVER_SM, ESME_RTHROTTLED, GENERIC_NACK, TestSmsc, pdu

Event = DeliveryReceipt | MobileOriginated | BindState
E = TypeVar("E", DeliveryReceipt, MobileOriginated, BindState)
WAIT = 5.0  # bound for anything that should happen at once on loopback

ESME_RINVDSTADR = 0x0B
ESME_RSYSERR = 0x08
ESME_RMSGQFUL = 0x14


def config(smsc: TestSmsc, **overrides: Any) -> SmppConfig:
    settings: dict[str, Any] = dict(
        host="127.0.0.1", port=smsc.port, system_id=smsc.system_id, password=smsc.password,
        system_type="mcd", source_addr="Acme", throughput=1000.0, reconnect_min=0.05,
        reconnect_max=0.2, response_timeout=2.0, enquire_link=30.0)
    settings.update(overrides)
    return SmppConfig(**settings)


@dataclass
class Session:
    sender: SmppSender
    events: asyncio.Queue[Event]

    async def next(self, kind: type[E], where: Callable[[E], bool] = lambda _: True,
                   timeout: float = WAIT) -> E:
        """The next event of this kind that matches, skipping the others."""
        async def scan() -> E:
            while True:
                event = await self.events.get()
                if isinstance(event, kind) and where(event):
                    return event
        return await asyncio.wait_for(scan(), timeout)

    async def bound(self, timeout: float = WAIT) -> None:
        await self.next(BindState, lambda state: state.state == "bound", timeout)


@asynccontextmanager
async def sending(smpp_config: SmppConfig, *, wait_bound: bool = True,
                  ) -> AsyncIterator[Session]:
    events: asyncio.Queue[Event] = asyncio.Queue()
    sender = SmppSender(smpp_config, events)
    session = Session(sender, events)
    await sender.start()
    try:
        if wait_bound:
            await session.bound()
        yield session
    finally:
        await sender.stop(timeout=1.0)


# ---------------------------------------------------------------- binding and submitting


async def test_gsm7_text_is_submitted_with_the_smsc_message_id() -> None:
    async with TestSmsc(id_format="hex") as smsc, sending(config(smsc)) as session:
        result = await session.sender.submit("+447700900123", "Sorry we missed you @ 9!",
                                             reference=1)

        assert result.outcome == "submitted", result
        [submit] = await smsc.wait_for_submits(1)
        assert result.smsc_ids == (submit.message_id,)
        assert submit.destination == "447700900123"  # E.164 without '+', TON 1 NPI 1
        assert submit.text == "Sorry we missed you @ 9!"
        assert submit.data_coding == 0
        assert submit.registered_delivery & 1
        assert smsc.binds[0][1] == "mcdaemon"


async def test_emoji_text_goes_as_ucs2_and_arrives_intact() -> None:
    text = "We missed you 📞 call back? 🙂"
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        result = await session.sender.submit("+447700900123", text, reference=2)

        assert result.outcome == "submitted", result
        [submit] = await smsc.wait_for_submits(1)
        assert submit.data_coding == 8
        assert submit.text == text


async def test_three_part_text_has_one_udh_reference_three_ids_and_reassembles() -> None:
    text = " ".join(f"Part of a long apology number {n}." for n in range(12))
    assert 306 < len(text) <= 459
    async with TestSmsc(id_format="decimal") as smsc, sending(config(smsc)) as session:
        result = await session.sender.submit("+447700900123", text, reference=77)

        assert result.outcome == "submitted", result
        parts = await smsc.wait_for_submits(3)
        assert {part.udh_reference for part in parts} == {77}
        assert sorted(part.udh_part for part in parts) == [1, 2, 3]
        assert all(part.esm_class & 0x40 for part in parts)
        assert result.smsc_ids == tuple(part.message_id for part in parts)
        assert len(set(result.smsc_ids)) == 3
        assert smsc.messages() == [("447700900123", text)]


async def test_transmitter_receiver_mode_binds_twice_and_gets_receipts_on_the_receiver(
) -> None:
    async with TestSmsc() as smsc, \
            sending(config(smsc, bind_mode="transmitter_receiver")) as session:
        result = await session.sender.submit("+447700900123", "Hello", reference=3)
        receipt = await session.next(DeliveryReceipt)

        assert sorted(command for command, _ in smsc.binds) == [0x01, 0x02]
        assert result.outcome == "submitted"
        assert receipt.smsc_id == result.smsc_ids[0]


async def a_submit_the_smsc_ignores(smsc: TestSmsc, events: asyncio.Queue[Event]
                                    ) -> tuple[SmppSender, asyncio.Task[SubmitResult]]:
    """A bound sender with one submit out that the SMSC will never answer."""
    sender = SmppSender(config(smsc, response_timeout=30.0), events)
    await sender.start()
    await Session(sender, events).bound()
    smsc.ignore_next(1)
    pending = asyncio.create_task(sender.submit("+447700900123", "Hi", reference=1))
    await smsc.wait_until(lambda: smsc.submit_pdus == 1)
    return sender, pending


@pytest.mark.parametrize(("source", "expected"), [
    ("Acme Dental", ("Acme Dental", 5, 0)),  # alphanumeric sender id
    ("+447700900000", ("447700900000", 1, 1)),  # international, '+' stripped
    ("447700900000", ("447700900000", 1, 1)),  # long digits: international
    ("60777", ("60777", 3, 0)),  # short code: network specific
])
def test_source_address_numbering_follows_the_kind_of_sender(
        source: str, expected: tuple[str, int, int]) -> None:
    assert source_numbering(SmppConfig(source_addr=source)) == expected


def test_configured_source_ton_and_npi_win_over_the_guess() -> None:
    smpp_config = SmppConfig(source_addr="60777", source_ton=6, source_npi=9)
    assert source_numbering(smpp_config) == ("60777", 6, 9)


async def test_alphanumeric_sender_id_reaches_the_smsc_as_ton_5() -> None:
    async with TestSmsc() as smsc, sending(config(smsc, source_addr="Dental")) as session:
        await session.sender.submit("+447700900123", "Hi", reference=4)
        [submit] = await smsc.wait_for_submits(1)

        assert (submit.source, submit.source_ton, submit.source_npi) == ("Dental", 5, 0)


async def test_start_returns_at_once_when_the_smsc_is_down() -> None:
    async with TestSmsc() as smsc:
        port = smsc.port
    events: asyncio.Queue[Event] = asyncio.Queue()
    sender = SmppSender(SmppConfig(port=port, system_id="x", password="y",
                                   reconnect_min=0.05, reconnect_max=0.1), events)
    await asyncio.wait_for(sender.start(), 1.0)
    try:
        assert sender.state in ("down", "binding")
        result = await sender.submit("+447700900123", "Hi", reference=5)
        assert result.outcome == "unbound"
    finally:
        await sender.stop(timeout=1.0)


# ---------------------------------------------------------------- receipts and MO


async def test_receipt_is_matched_on_the_receipted_message_id_tlv() -> None:
    async with TestSmsc(id_format="hex", vendor_tlvs=True) as smsc, \
            sending(config(smsc)) as session:
        smsc.receipt_state = "UNDELIV"
        result = await session.sender.submit("+447700900123", "Hi", reference=6)
        receipt = await session.next(DeliveryReceipt)

        assert receipt.smsc_id == result.smsc_ids[0]
        assert receipt.state == "UNDELIV"  # from the message_state TLV
        assert receipt.error == "099"


async def test_a_receipt_marked_ucs2_but_written_in_ascii_keeps_its_id_state_and_error() -> None:
    """Some SMSCs mark the receipt of a UCS-2 text with data_coding 8 and write it in ASCII."""
    async with TestSmsc(id_format="decimal", receipt_data_coding=8) as smsc, \
            sending(config(smsc)) as session:
        smsc.receipt_state = "UNDELIV"
        result = await session.sender.submit("+447700900123", "Zoë, sorry", reference=9)
        receipt = await session.next(DeliveryReceipt)

        assert receipt.text_id == result.smsc_ids[0]  # the id: of the text survived
        assert receipt.state == "UNDELIV" and receipt.error == "099"
        assert receipt.raw["stat"] == "UNDELIV"


async def test_text_only_receipt_with_a_decimal_id_matches_the_hex_submit_id() -> None:
    async with TestSmsc(id_format="hex", receipts=False,
                        receipt_id_in_text_base="decimal") as smsc, \
            sending(config(smsc)) as session:
        result = await session.sender.submit("+447700900123", "Hi", reference=7)
        [hex_id] = result.smsc_ids
        await smsc.send_receipt(hex_id, "DELIVRD", text_only=True)
        receipt = await session.next(DeliveryReceipt)

        assert receipt.smsc_id == str(int(hex_id, 16))  # as the SMSC wrote it
        assert hex_id in receipt_id_candidates(receipt.smsc_id)
        assert receipt.state == "DELIVRD"


async def test_each_part_of_a_concatenated_text_gets_its_own_receipt() -> None:
    text = "x" * 300
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        result = await session.sender.submit("+447700900123", text, reference=8)
        receipts = [await session.next(DeliveryReceipt) for _ in result.smsc_ids]

        assert len(result.smsc_ids) == 2
        assert sorted(receipt.smsc_id for receipt in receipts) == sorted(result.smsc_ids)


async def test_stop_from_a_phone_arrives_as_a_mobile_originated_text() -> None:
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        await smsc.send_mo("+447700900123", "STOP", destination="Acme")
        mo = await session.next(MobileOriginated)

        assert (mo.source, mo.destination, mo.text) == ("+447700900123", "Acme", "STOP")
        mo.acknowledge()
        await smsc.wait_until(lambda: smsc.deliver_sm_answered == 1)


async def test_mo_from_a_national_number_keeps_it_as_sent_without_a_plus() -> None:
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        await smsc.send_mo("0612345678", "STOP")
        national = await session.next(MobileOriginated)
        await smsc.send_mo("00447700900123", "STOP")
        with_prefix = await session.next(MobileOriginated)

        assert national.source == "0612345678"
        assert with_prefix.source == "+447700900123"


async def test_a_long_reply_sent_in_parts_arrives_as_one_text() -> None:
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        await smsc.send_mo("+447700900123", "Please call me back after five. " * 6)
        await smsc.send_mo("+447700900123", "Thanks")
        reply = await session.next(MobileOriginated)
        after = await session.next(MobileOriginated)

        assert reply.text == "Please call me back after five. " * 6
        assert (reply.source, reply.destination) == ("+447700900123", "Acme")
        assert after.text == "Thanks"


async def test_uuid_message_ids_are_matched_by_their_receipts() -> None:
    async with TestSmsc(id_format="uuid") as smsc, sending(config(smsc)) as session:
        result = await session.sender.submit("+447700900123", "Hi", reference=1)
        receipt = await session.next(DeliveryReceipt)

        assert result.outcome == "submitted"
        assert len(result.smsc_ids[0]) == 36
        assert receipt.smsc_id.lower() in receipt_id_candidates(result.smsc_ids[0])
        assert receipt.state == "DELIVRD"


async def test_ucs2_reply_is_decoded() -> None:
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        await smsc.send_mo("+447700900123", "Merci 🙂")
        mo = await session.next(MobileOriginated)

        assert mo.text == "Merci 🙂"


def test_receipt_texts_are_parsed_tolerantly() -> None:
    receipt = parse_receipt("id:4F2A sub:001 dlvrd:000 submit date:2311230832 "
                            "done date:2311230833 stat:UNDELIV err:99 Text:Hello there",
                            None, None, 1.0)
    assert receipt is not None
    assert (receipt.smsc_id, receipt.state, receipt.error) == ("4F2A", "UNDELIV", "99")
    assert receipt.raw["done date"] == "2311230833"

    bare = parse_receipt("id:0 stat:DELIVRD", None, None, 1.0)
    assert bare is not None and (bare.smsc_id, bare.state, bare.error) == ("0", "DELIVRD", None)

    odd = parse_receipt("id:abc stat:WHATEVER", None, None, 1.0)
    assert odd is not None and odd.state == "UNKNOWN"


def test_message_state_tlv_wins_over_the_text_and_tlv_id_over_the_text_id() -> None:
    receipt = parse_receipt("id:123 stat:DELIVRD err:000", "7b", 3, 1.0)
    assert receipt is not None
    assert (receipt.smsc_id, receipt.state) == ("7b", "EXPIRED")


def test_a_text_that_mentions_id_does_not_override_the_receipt_id() -> None:
    receipt = parse_receipt("id:55 stat:DELIVRD text:id:99 stop", None, None, 1.0)
    assert receipt is not None and receipt.smsc_id == "55"


@pytest.mark.parametrize(("given", "expected"), [
    ("255", ("255", "ff", "597")),  # decimal, or hex given in decimal elsewhere
    ("FF", ("ff", "255")),
    ("0", ("0",)),
    ("00ff", ("00ff", "ff", "255")),  # leading zeros dropped in the other base
    ("1a2b", ("1a2b", "6699")),
    ("8c1d7a4e-5b8f-4d6a-9e0e-3f4d2a1b0c9d", ("8c1d7a4e-5b8f-4d6a-9e0e-3f4d2a1b0c9d",)),
])
def test_receipt_id_candidates_cover_both_bases(given: str, expected: tuple[str, ...]) -> None:
    candidates = receipt_id_candidates(given)
    assert candidates[0] == expected[0]
    assert set(candidates) == set(expected)


# ---------------------------------------------------------------- answered once stored


async def test_a_reply_is_answered_only_once_acknowledged_and_only_once() -> None:
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        await smsc.send_mo("+447700900123", "STOP")
        mo = await session.next(MobileOriginated)
        await smsc.enquire_link_all()  # a PDU after the deliver_sm: it too has been read
        await smsc.wait_until(lambda: smsc.enquire_link_responses == 1)

        assert smsc.deliver_sm_responses == []  # not stored yet: not answered
        mo.acknowledge()
        mo.acknowledge()  # a second call changes nothing
        await smsc.wait_until(lambda: smsc.deliver_sm_responses != [])
        await smsc.enquire_link_all()
        await smsc.wait_until(lambda: smsc.enquire_link_responses == 2)

        assert smsc.deliver_sm_responses == [(smsc.deliver_sm_sent[0], 0)]


async def test_a_receipt_is_answered_only_once_acknowledged() -> None:
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        result = await session.sender.submit("+447700900123", "Hi", reference=1)
        receipt = await session.next(DeliveryReceipt)
        await smsc.enquire_link_all()
        await smsc.wait_until(lambda: smsc.enquire_link_responses == 1)

        assert receipt.smsc_id == result.smsc_ids[0]
        assert smsc.deliver_sm_answered == 0
        receipt.acknowledge()
        await smsc.wait_until(lambda: smsc.deliver_sm_answered == 1)
        assert smsc.deliver_sm_responses == [(smsc.deliver_sm_sent[0], 0)]


async def test_receipts_are_answered_in_the_order_acknowledged_with_their_own_sequence(
) -> None:
    async with TestSmsc(receipts=False) as smsc, sending(config(smsc)) as session:
        for smsc_id in ("a1", "a2", "a3"):
            await smsc.send_receipt(smsc_id)
        receipts = [await session.next(DeliveryReceipt) for _ in range(3)]
        first, second, third = smsc.deliver_sm_sent

        receipts[2].acknowledge()
        receipts[0].acknowledge()
        await smsc.wait_until(lambda: smsc.deliver_sm_answered == 2)
        assert smsc.deliver_sm_responses == [(third, 0), (first, 0)]
        receipts[1].acknowledge()
        await smsc.wait_until(lambda: smsc.deliver_sm_answered == 3)
        assert smsc.deliver_sm_responses[2] == (second, 0)


async def test_a_long_reply_is_answered_part_by_part_once_acknowledged() -> None:
    text = "Please call me back after five. " * 6  # two parts
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        await smsc.send_mo("+447700900123", text)
        reply = await session.next(MobileOriginated)
        await smsc.enquire_link_all()
        await smsc.wait_until(lambda: smsc.enquire_link_responses == 1)

        assert reply.text == text
        assert len(smsc.deliver_sm_sent) == 2
        assert smsc.deliver_sm_responses == []
        reply.acknowledge()
        await smsc.wait_until(lambda: smsc.deliver_sm_answered == 2)
        assert sorted(smsc.deliver_sm_responses) == [
            (sequence, 0) for sequence in sorted(smsc.deliver_sm_sent)]


async def test_a_receipt_whose_link_dropped_is_not_answered_and_comes_again_after_the_rebind(
) -> None:
    async with TestSmsc(receipts=False, redeliver=True) as smsc, \
            sending(config(smsc)) as session:
        await smsc.send_receipt("abc")
        before = await session.next(DeliveryReceipt)
        await smsc.unbind_all()  # the link goes before the receipt is stored
        await session.next(BindState, lambda state: state.state == "down")

        before.acknowledge()  # too late: nothing is written
        await session.bound()
        again = await session.next(DeliveryReceipt)
        await smsc.enquire_link_all()
        await smsc.wait_until(lambda: smsc.enquire_link_responses == 1)

        assert again.smsc_id == before.smsc_id == "abc"
        assert smsc.deliver_sm_responses == []  # the first link answered nothing
        again.acknowledge()
        await smsc.wait_until(lambda: smsc.deliver_sm_answered == 1)
        assert smsc.deliver_sm_responses == [(smsc.deliver_sm_sent[1], 0)]


async def test_parts_of_a_reply_held_when_the_link_drops_are_delivered_again_and_joined(
) -> None:
    text = "Please call me back after five. " * 6  # two parts
    async with TestSmsc(redeliver=True) as smsc, sending(config(smsc)) as session:
        await smsc.send_mo("+447700900123", text)
        reply = await session.next(MobileOriginated)
        encoded_parts = len(smsc.deliver_sm_sent)
        await smsc.unbind_all()
        await session.next(BindState, lambda state: state.state == "down")
        reply.acknowledge()  # the link is gone: the SMSC will send the parts again

        await session.bound()
        again = await session.next(MobileOriginated)
        assert again.text == text
        again.acknowledge()
        await smsc.wait_until(lambda: smsc.deliver_sm_answered == encoded_parts)
        assert {sequence for sequence, _ in smsc.deliver_sm_responses} == set(
            smsc.deliver_sm_sent[encoded_parts:])


# ---------------------------------------------------------------- window and rate


async def test_window_of_ten_keeps_the_eleventh_submit_waiting() -> None:
    async with TestSmsc(response_delay=0.5, receipts=False) as smsc, \
            sending(config(smsc, window=10)) as session:
        submits = [asyncio.create_task(session.sender.submit(
            f"+4477009001{n:02d}", f"Text {n}", reference=n)) for n in range(11)]
        await smsc.wait_for_submits(10)
        await asyncio.sleep(0.2)  # the SMSC has answered nothing yet: the 11th must wait

        assert len(smsc.submits) == 10
        results = await asyncio.gather(*submits)
        assert [result.outcome for result in results] == ["submitted"] * 11
        assert smsc.max_outstanding_seen == 10


async def test_throughput_limit_spaces_the_submits() -> None:
    async with TestSmsc(receipts=False) as smsc, \
            sending(config(smsc, throughput=50.0)) as session:
        started = time.monotonic()
        results = await asyncio.gather(*(session.sender.submit(
            f"+4477009001{n:02d}", f"Text {n}", reference=n) for n in range(20)))
        took = time.monotonic() - started

        assert all(result.outcome == "submitted" for result in results)
        assert took >= 0.3  # 20 at 50/s cannot go faster than about 0.4 s


async def test_throttled_submit_reports_throttled_and_a_later_one_succeeds() -> None:
    async with TestSmsc(receipts=False) as smsc, sending(config(smsc)) as session:
        smsc.fail_next(ESME_RTHROTTLED)
        throttled = await session.sender.submit("+447700900123", "Hi", reference=1)
        smsc.fail_next(ESME_RMSGQFUL)
        queue_full = await session.sender.submit("+447700900123", "Hi", reference=1)
        after = await session.sender.submit("+447700900123", "Hi", reference=1)

        assert (throttled.outcome, throttled.status) == ("throttled", ESME_RTHROTTLED)
        assert queue_full.outcome == "throttled"
        assert "ESME_RTHROTTLED" in throttled.detail
        assert after.outcome == "submitted"


async def test_smsc_throttling_above_a_rate_slows_the_sender_down() -> None:
    async with TestSmsc(receipts=False) as smsc, \
            sending(config(smsc, throughput=40.0)) as session:
        smsc.throttle_above = 20.0  # submits in the last second
        results = await asyncio.gather(*(session.sender.submit(
            f"+4477009001{n:02d}", "Hi", reference=n) for n in range(30)))
        outcomes = [result.outcome for result in results]

        assert "throttled" in outcomes
        assert set(outcomes) <= {"submitted", "throttled"}
        assert session.sender.rate < 40.0  # backed off for a while


async def test_a_window_full_of_throttled_answers_halves_the_rate_once() -> None:
    # The SMSC answers late, so all ten submits are out before the first "throttled" comes
    # back: the other nine were sent before the halving and tell nothing new.
    async with TestSmsc(receipts=False, response_delay=0.3) as smsc, \
            sending(config(smsc, throughput=1000.0, window=10)) as session:
        smsc.fail_next(ESME_RTHROTTLED, count=10)
        results = await asyncio.gather(*(session.sender.submit(
            f"+4477009001{n:02d}", "Hi", reference=n) for n in range(10)))

        assert {result.outcome for result in results} == {"throttled"}
        assert session.sender.rate == 500.0


async def test_permanent_error_is_reported_once_and_not_retried() -> None:
    async with TestSmsc(receipts=False) as smsc, sending(config(smsc)) as session:
        smsc.fail_next(ESME_RINVDSTADR)
        result = await session.sender.submit("+447700900123", "Hi", reference=1)
        await asyncio.sleep(0.2)

        assert (result.outcome, result.status) == ("permanent", ESME_RINVDSTADR)
        assert "ESME_RINVDSTADR" in result.detail
        assert smsc.submit_pdus == 1


async def test_other_error_statuses_are_temporary() -> None:
    async with TestSmsc(receipts=False) as smsc, sending(config(smsc)) as session:
        smsc.fail_next(ESME_RSYSERR)
        result = await session.sender.submit("+447700900123", "Hi", reference=1)

        assert (result.outcome, result.status) == ("temporary", ESME_RSYSERR)
        assert status_name(ESME_RSYSERR) in result.detail


class NackingSmsc(TestSmsc):
    """Answers every submit_sm with a generic_nack, as an SMSC does with a PDU it cannot read."""

    nack_status = 0x03  # ESME_RINVCMDID

    async def _submit(self, client: Any, sequence: int, body: bytes) -> None:
        self.submit_pdus += 1
        client.writer.write(pdu(GENERIC_NACK, sequence, status=self.nack_status))


@pytest.mark.parametrize(("status", "outcome"), [
    (0x03, "temporary"),  # ESME_RINVCMDID
    (0x01, "permanent"),  # ESME_RINVMSGLEN
    (ESME_RTHROTTLED, "throttled"),
    (0x00, "temporary"),  # no status at all: still not an acceptance
])
async def test_a_generic_nack_settles_the_submit_by_its_status(status: int, outcome: str
                                                               ) -> None:
    async with NackingSmsc() as smsc, sending(config(smsc)) as session:
        smsc.nack_status = status
        result = await asyncio.wait_for(
            session.sender.submit("+447700900123", "Hi", reference=1), WAIT)

        assert (result.outcome, result.status, result.smsc_ids) == (outcome, status, ())
        assert session.sender.state == "bound" and len(smsc.binds) == 1

async def test_a_text_longer_than_max_parts_is_refused_without_reaching_the_smsc() -> None:
    async with TestSmsc() as smsc, sending(config(smsc, max_parts=2)) as session:
        too_long = await session.sender.submit("+447700900123", "w" * 400, reference=1)
        absurd = await session.sender.submit("+447700900123", "w" * 40000, reference=2)

        assert too_long.outcome == absurd.outcome == "permanent"
        assert "smpp.max_parts" in too_long.detail
        assert smsc.submit_pdus == 0


async def test_a_destination_smpp_cannot_carry_is_permanent_and_never_sent() -> None:
    async with TestSmsc(receipts=False) as smsc, sending(config(smsc)) as session:
        too_long = await session.sender.submit("+" + "4" * 21, "Hi", reference=1)
        after = await session.sender.submit("+447700900123", "Hi", reference=2)

        assert too_long.outcome == "permanent"
        assert "destination_addr has 21 characters" in too_long.detail
        assert after.outcome == "submitted"
        assert smsc.submit_pdus == 1
        assert len(smsc.binds) == 1


async def test_a_failed_part_fails_the_whole_text_with_its_status() -> None:
    async with TestSmsc(receipts=False) as smsc, sending(config(smsc)) as session:
        smsc.fail_next(ESME_RSYSERR)
        result = await session.sender.submit("+447700900123", "y" * 200, reference=1)

        assert (result.outcome, result.status, result.smsc_ids) == (
            "temporary", ESME_RSYSERR, ())


async def test_unanswered_submit_times_out_and_frees_its_window_slot() -> None:
    async with TestSmsc(receipts=False) as smsc, \
            sending(config(smsc, window=1, response_timeout=0.3)) as session:
        smsc.ignore_next(1)
        timed_out = await session.sender.submit("+447700900123", "Hi", reference=1)
        after = await session.sender.submit("+447700900123", "Hi", reference=2)

        assert timed_out.outcome == "timeout"
        assert after.outcome == "submitted"


async def test_a_part_that_times_out_stops_the_rest_of_its_text() -> None:
    async with TestSmsc(receipts=False) as smsc, \
            sending(config(smsc, window=1, response_timeout=0.3)) as session:
        smsc.ignore_next(1)
        result = await session.sender.submit("+447700900123", "z" * 300, reference=1)
        await asyncio.sleep(0.1)

        assert result.outcome == "timeout"
        assert smsc.submit_pdus == 1


async def by_timing_out_submit(sender: SmppSender) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sender.submit("+447700900124", "B", reference=2), 0.1)


async def by_cancelling_submit_soon(sender: SmppSender) -> None:
    sender.submit_soon("+447700900124", "B", reference=2).cancel()


@pytest.mark.parametrize("give_up", [by_timing_out_submit, by_cancelling_submit_soon])
async def test_a_submit_the_caller_gave_up_on_before_it_went_out_is_never_sent(
        give_up: Callable[[SmppSender], Awaitable[None]]) -> None:
    async with TestSmsc(response_delay=0.4, receipts=False) as smsc, \
            sending(config(smsc, window=1)) as session:
        first = asyncio.create_task(session.sender.submit("+447700900123", "A", reference=1))
        await smsc.wait_until(lambda: smsc.submit_pdus == 1)
        await give_up(session.sender)

        assert (await first).outcome == "submitted"
        after = await session.sender.submit("+447700900125", "C", reference=3)
        assert after.outcome == "submitted"
        assert [submit.text for submit in smsc.submits] == ["A", "C"]
        assert session.sender.in_flight == 0


async def test_submit_soon_gives_the_future_of_the_result_settled_at_once_if_it_cannot_go(
) -> None:
    async with TestSmsc(receipts=False) as smsc, \
            sending(config(smsc, max_parts=1)) as session:
        too_long = session.sender.submit_soon("+447700900123", "z" * 200, reference=1)
        assert too_long.done() and too_long.result().outcome == "permanent"

        sent = await session.sender.submit_soon("+447700900123", "Hi", reference=2)
        assert sent.outcome == "submitted"
        assert [submit.text for submit in smsc.submits] == ["Hi"]
        assert session.sender.in_flight == 0


# ---------------------------------------------------------------- the link


async def test_link_dropped_mid_window_fails_in_flight_submits_as_unbound_then_rebinds(
) -> None:
    async with TestSmsc(response_delay=0.3, receipts=False) as smsc, \
            sending(config(smsc)) as session:
        smsc.drop_after(3)
        results = await asyncio.gather(*(session.sender.submit(
            f"+4477009001{n:02d}", "Hi", reference=n) for n in range(5)))

        assert {result.outcome for result in results} == {"unbound"}
        await session.next(BindState, lambda state: state.state == "down")
        await session.bound()
        again = await session.sender.submit("+447700900123", "Hi", reference=9)
        assert again.outcome == "submitted"
        assert len(smsc.binds) == 2


async def test_smsc_initiated_unbind_is_answered_and_the_sender_rebinds() -> None:
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        await smsc.unbind_all()
        await session.next(BindState, lambda state: state.state == "down")
        await session.bound()

        assert smsc.unbind_responses == 1
        assert len(smsc.binds) == 2


async def test_smsc_enquire_link_is_answered() -> None:
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        await smsc.enquire_link_all()
        await smsc.wait_until(lambda: smsc.enquire_link_responses == 1)

        assert session.sender.state == "bound"


class NackCountingSmsc(TestSmsc):
    """Counts the generic_nack it gets."""

    nacks: list[tuple[int, int]]  # (sequence, status)

    async def _handle(self, client: Any, command: int, sequence: int, body: bytes,
                      status: int = 0) -> None:
        if command == GENERIC_NACK:
            self.nacks = [*getattr(self, "nacks", []), (sequence, status)]
        await super()._handle(client, command, sequence, body, status)


async def test_a_pdu_smpplib_does_not_know_is_nacked_and_the_link_stays_up() -> None:
    async with NackCountingSmsc() as smsc, sending(config(smsc)) as session:
        await smsc.send_to_all(0x00000111, b"\0")  # broadcast_sm (SMPP 5.0)
        await smsc.send_mo("+447700900123", "STOP")
        mo = await session.next(MobileOriginated)
        await smsc.wait_until(lambda: bool(getattr(smsc, "nacks", [])))

        assert mo.text == "STOP"
        assert [status for _, status in smsc.nacks] == [0x03]  # ESME_RINVCMDID
        assert session.sender.state == "bound"
        assert len(smsc.binds) == 1


def deliver_sm_body(text: bytes, tlvs: bytes = b"") -> bytes:
    """A reply from 447700900123 to Acme, written by hand."""
    return (b"\0" + bytes((1, 1)) + b"447700900123\0" + bytes((5, 0)) + b"Acme\0"
            + bytes((0, 0, 0)) + b"\0\0" + bytes((0, 0, 0, 0, len(text))) + text + tlvs)


@pytest.mark.parametrize("tlvs", [
    b"\x05",  # a TLV torn after one octet
    struct.pack(">HHB", 0x0501, 1, 0),  # ussd_service_op: smpplib knows it, not in a deliver_sm
], ids=["torn TLV", "TLV of another command"])
async def test_a_deliver_sm_smpplib_cannot_parse_is_refused_skipped_and_the_link_stays_up(
        tlvs: bytes) -> None:
    async with TestSmsc() as smsc, sending(config(smsc)) as session:
        with capture_logs() as logs:
            await smsc.send_to_all(DELIVER_SM, deliver_sm_body(b"my private reply", tlvs))
            await smsc.wait_until(lambda: smsc.deliver_sm_answered == 1)
            await smsc.send_mo("+447700900123", "STOP")
            mo = await session.next(MobileOriginated)
            mo.acknowledge()
            await smsc.wait_until(lambda: smsc.deliver_sm_answered == 2)

        assert mo.text == "STOP"
        # refused at once as ESME_RX_P_APPN (nothing to store), the reply answered once stored
        assert [status for _, status in smsc.deliver_sm_responses] == [0x64, 0]
        assert session.sender.state == "bound" and len(smsc.binds) == 1
        [skipped] = [entry for entry in logs if "cannot parse" in entry["event"]]
        assert skipped["log_level"] == "warning"
        assert "private" not in str(logs) and "447700900123" not in str(logs)

async def test_keepalive_enquire_links_are_sent() -> None:
    async with TestSmsc() as smsc, sending(config(smsc, enquire_link=0.1)):
        await smsc.wait_until(lambda: smsc.enquire_links_received >= 2)


async def test_dead_link_without_enquire_link_answers_is_detected_and_rebound() -> None:
    async with TestSmsc() as smsc, \
            sending(config(smsc, enquire_link=0.1, response_timeout=0.3)) as session:
        smsc.answer_enquire_link = False
        down = await session.next(BindState, lambda state: state.state == "down")
        smsc.answer_enquire_link = True
        await session.bound()

        assert "enquire_link" in down.detail
        assert len(smsc.binds) >= 2


def test_the_wait_between_attempts_to_reach_the_smsc_stops_growing_at_rebind_max_wait(
) -> None:
    sender = SmppSender(SmppConfig(reconnect_min=1.0, reconnect_max=60.0), asyncio.Queue())
    waits = [1.0]
    for _ in range(10):
        waits.append(sender._longer(waits[-1]))

    assert waits[:5] == [1.0, 2.0, 4.0, 8.0, REBIND_MAX_WAIT]
    assert max(waits) == REBIND_MAX_WAIT == 10.0  # not smpp.reconnect_max (60 s)


async def test_after_a_long_smsc_outage_the_sender_keeps_trying_often_and_binds_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mcdaemon.adapters.smpp.REBIND_MAX_WAIT", 0.2)  # 10 s in production
    attempts: list[float] = []

    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(time.monotonic())  # the port answers, but no SMSC behind it
        writer.close()

    async with TestSmsc() as smsc:
        port = smsc.port
        async with sending(config(smsc, reconnect_min=0.05, reconnect_max=60.0)) as session:
            await smsc.stop()
            await session.next(BindState, lambda state: state.state == "down")
            outage = await asyncio.start_server(hang_up, "127.0.0.1", port)
            try:
                # waits doubling up to smpp.reconnect_max would take 25 s to make 10 attempts
                await smsc.wait_until(lambda: len(attempts) >= 10, timeout=10.0)
            finally:
                outage.close()
                await outage.wait_closed()
            async with TestSmsc(port=port) as back:
                await session.bound()
                result = await session.sender.submit("+447700900123", "Hi", reference=1)

                assert result.outcome == "submitted"
                assert session.sender.state == "bound" and len(back.binds) == 1

    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert max(gaps) < 1.0  # 0.2 s ± 20 % each, with room for a busy machine


async def test_wrong_password_is_auth_failed_with_a_clear_log_and_retried_until_fixed(
) -> None:
    async with TestSmsc(password="right") as smsc:
        with capture_logs() as logs:
            async with sending(config(smsc, password="wrong"), wait_bound=False) as session:
                failed = await session.next(BindState, lambda state: state.state == "auth_failed")
                await smsc.wait_until(lambda: smsc.refused_binds >= 2)

                assert session.sender.state == "auth_failed"
                assert "smpp.system_id" in failed.detail and "smpp.password" in failed.detail
                smsc.password = "wrong"  # the carrier fixes the account
                await session.bound()
                result = await session.sender.submit("+447700900123", "Hi", reference=1)
                assert result.outcome == "submitted"

        refused = [entry for entry in logs if entry["log_level"] == "error"]
        assert refused and "smpp.password" in str(refused[0])
        assert not any("wrong" in str(entry) for entry in logs)  # the password never logged


async def test_refused_binds_are_retried_with_growing_delays() -> None:
    async with TestSmsc() as smsc:
        smsc.accept_binds = False
        async with sending(config(smsc, reconnect_min=0.05, reconnect_max=0.4),
                           wait_bound=False) as session:
            await smsc.wait_until(lambda: smsc.refused_binds >= 4, timeout=WAIT)
            smsc.accept_binds = True
            await session.bound()

        gaps = [later - earlier for earlier, later in
                zip(smsc.bind_attempts, smsc.bind_attempts[1:], strict=False)]
        # 0.1 s, 0.2 s, 0.4 s, each +-20 % of jitter: the third is at least 2.6 times the first
        assert gaps[2] > gaps[0] * 2


async def test_stop_waits_for_in_flight_responses_then_unbinds() -> None:
    async with TestSmsc(response_delay=0.3, receipts=False) as smsc:
        events: asyncio.Queue[Event] = asyncio.Queue()
        sender = SmppSender(config(smsc), events)
        await sender.start()
        await Session(sender, events).bound()
        pending = asyncio.create_task(sender.submit("+447700900123", "Hi", reference=1))
        await smsc.wait_for_submits(1)

        await asyncio.wait_for(sender.stop(timeout=2.0), 3.0)

        assert (await pending).outcome == "submitted"
        assert smsc.unbinds_received == 1
        late = await sender.submit("+447700900123", "Hi", reference=2)
        assert late.outcome == "unbound"


async def test_stop_gives_up_on_a_submit_the_smsc_never_answers_within_the_timeout() -> None:
    async with TestSmsc(receipts=False) as smsc:
        events: asyncio.Queue[Event] = asyncio.Queue()
        sender, pending = await a_submit_the_smsc_ignores(smsc, events)

        await asyncio.wait_for(sender.stop(timeout=0.3), 3.0)

        assert (await pending).outcome == "unbound"
        assert sender.in_flight == 0
