"""The SMPP sender against a real third-party SMSC: Jasmin SMS Gateway 0.11.0.

Path of a text: our SmppSender ─bind/submit_sm─► Jasmin ─its own SMPP client─► the tests' SMSC
(the "upstream", standing for the operator). Receipts and replies travel back the same way, so
what the sender sees is what a real aggregator sends: Jasmin's UUID message ids, its receipt
texts, its ESME_RTHROTTLED, its bind refusals.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import pytest

from mcdaemon.adapters.smpp import BindState, MobileOriginated, SmppSender
from mcdaemon.config.model import SmppConfig
from mcdaemon.core.receipts import DeliveryReceipt, receipt_id_candidates

from jasmin_peer import JasminAccount, JasminPeer, UpstreamView, running_jasmin_with_upstream

pytestmark = pytest.mark.jasmin

Event = DeliveryReceipt | MobileOriginated | BindState
E = TypeVar("E", DeliveryReceipt, MobileOriginated, BindState)
WAIT = 15.0  # generous bound for anything crossing Jasmin and RabbitMQ


@pytest.fixture(scope="module")
def jasmin_and_upstream() -> Iterator[tuple[JasminPeer, UpstreamView]]:
    with running_jasmin_with_upstream() as pair:
        yield pair


@pytest.fixture
def jasmin(jasmin_and_upstream: tuple[JasminPeer, UpstreamView]) -> JasminPeer:
    return jasmin_and_upstream[0]


@pytest.fixture
def upstream(jasmin_and_upstream: tuple[JasminPeer, UpstreamView]) -> UpstreamView:
    return jasmin_and_upstream[1]


def config_for(jasmin: JasminPeer, account: JasminAccount, **overrides: Any) -> SmppConfig:
    settings: dict[str, Any] = dict(
        host=jasmin.host,
        port=jasmin.smpp_port,
        system_id=account.system_id,
        password=account.password,
        source_addr="Dental",
        throughput=100.0,
        reconnect_min=0.2,
        reconnect_max=1.0,
        response_timeout=WAIT,
    )
    settings.update(overrides)
    return SmppConfig(**settings)


async def next_event(
    events: asyncio.Queue[Event], kind: type[E], matches: Callable[[E], bool] = lambda _: True
) -> E:
    """The next event of `kind` that `matches`, skipping others (bind states, stray receipts).
    Receipts and replies taken are acknowledged, as the service does once they are stored."""

    async def wait() -> E:
        while True:
            event = await events.get()
            if not isinstance(event, BindState):
                event.acknowledge()
            if isinstance(event, kind) and matches(event):
                return event

    return await asyncio.wait_for(wait(), WAIT)


class Bound:
    """A started sender that has reached `bound`, with its event queue."""

    def __init__(self, config: SmppConfig) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.sender = SmppSender(config, self.events)

    async def __aenter__(self) -> Bound:
        await self.sender.start()
        await next_event(self.events, BindState, lambda state: state.state == "bound")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sender.stop()


@pytest.fixture
async def bound(jasmin: JasminPeer) -> AsyncIterator[Bound]:
    async with Bound(config_for(jasmin, jasmin.user)) as session:
        yield session


async def test_sender_binds_to_jasmin_as_an_esme(bound: Bound) -> None:
    assert bound.sender.state == "bound"


async def test_gsm7_text_reaches_the_upstream_smsc_unchanged(
    bound: Bound, upstream: UpstreamView
) -> None:
    text = "Sorry we missed your call! Ring back on 020 7946 0000 @ 9-5 (Mon-Fri)."
    result = await bound.sender.submit("+447700900101", text, reference=1)

    assert result.outcome == "submitted", result
    [submit] = await upstream.submits_to("447700900101", count=1)
    assert submit.text == text
    assert submit.data_coding in (0, 1)  # SMSC default alphabet / IA5 as Jasmin passes it


async def test_emoji_text_is_sent_as_ucs2_and_arrives_intact(
    bound: Bound, upstream: UpstreamView
) -> None:
    text = "We missed you 📞 we'll call back soon 🙂"
    result = await bound.sender.submit("+447700900102", text, reference=2)

    assert result.outcome == "submitted", result
    [submit] = await upstream.submits_to("447700900102", count=1)
    assert submit.data_coding == 8
    assert submit.text == text


async def test_three_part_text_arrives_as_three_parts_that_reassemble(
    bound: Bound, upstream: UpstreamView
) -> None:
    text = " ".join(f"Part of a long apology number {n}." for n in range(12))
    assert 306 < len(text) <= 459  # three GSM-7 parts of 153 characters
    result = await bound.sender.submit("+447700900103", text, reference=3)

    assert result.outcome == "submitted", result
    assert len(result.smsc_ids) == 3
    assert len(set(result.smsc_ids)) == 3  # each part has its own id at Jasmin
    parts = await upstream.submits_to("447700900103", count=3)
    assert sorted(part.part_number for part in parts) == [1, 2, 3]
    assert {part.total_parts for part in parts} == {3}
    assert "".join(part.text for part in sorted(parts, key=lambda p: p.part_number)) == text


async def test_delivery_receipt_comes_back_through_jasmin_matched_to_the_submit(
    bound: Bound, upstream: UpstreamView
) -> None:
    result = await bound.sender.submit("+447700900104", "Receipt please", reference=4)
    assert result.outcome == "submitted", result
    [jasmin_id] = result.smsc_ids
    [submit] = await upstream.submits_to("447700900104", count=1)
    assert submit.registered_delivery & 1  # Jasmin asked the operator for a receipt

    await upstream.send_receipt(submit, state="DELIVRD")

    wanted = set(receipt_id_candidates(jasmin_id))
    receipt = await next_event(
        bound.events,
        DeliveryReceipt,
        lambda receipt: bool(wanted & set(receipt_id_candidates(receipt.smsc_id))),
    )
    assert receipt.state == "DELIVRD"
    assert receipt.smsc_id != submit.smsc_id  # Jasmin's UUID, not the operator's id


async def test_stop_sent_by_the_handset_reaches_the_sender_as_a_reply(
    bound: Bound, upstream: UpstreamView
) -> None:
    await upstream.send_mo(source="447700900105", destination="Dental", text="STOP")

    reply = await next_event(
        bound.events, MobileOriginated, lambda mo: mo.source.endswith("447700900105")
    )
    assert reply.text == "STOP"


async def test_submits_beyond_the_accounts_throughput_are_throttled(jasmin: JasminPeer) -> None:
    async with Bound(config_for(jasmin, jasmin.throttled_user)) as session:
        results = await asyncio.gather(
            *(
                session.sender.submit(f"+44770090020{n}", f"Burst {n}", reference=10 + n)
                for n in range(4)
            )
        )

    outcomes = [result.outcome for result in results]
    assert "submitted" in outcomes
    assert "throttled" in outcomes  # Jasmin allows this account 1 submit per second
    throttled = next(result for result in results if result.outcome == "throttled")
    assert throttled.status == 0x58  # ESME_RTHROTTLED, as Jasmin sent it


async def test_wrong_password_is_refused_as_auth_failed(jasmin: JasminPeer) -> None:
    wrong = JasminAccount(jasmin.user.uid, jasmin.user.system_id, "wrongpw1")
    events: asyncio.Queue[Event] = asyncio.Queue()
    sender = SmppSender(config_for(jasmin, wrong), events)
    await sender.start()
    try:
        refusal = await next_event(events, BindState,
                                   lambda state: state.state not in ("connecting", "binding"))
    finally:
        await sender.stop()

    assert refusal.state == "auth_failed"
    assert sender.state != "bound"
