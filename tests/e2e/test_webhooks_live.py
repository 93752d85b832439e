"""Webhooks end to end: recorded AMI in, a text out over SMPP, signed webhooks to a CRM
receiver over TCP, in a call's order; and nothing lost while the receiver is down, across a
restart of the daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mcdaemon.core.transcript import read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.store import Store

from e2e.harness import (
    AMI_SECRET,
    SMPP_PASSWORD,
    free_port,
    run_service,
    stop,
    write_config,
)
from e2e.webhook_receiver import Receiver
from recordings import recording_path

SECRET = "live-webhook-secret-42"
CALLER = "+447700900123"


def hooks(url: str) -> list[dict[str, object]]:
    return [{"name": "crm", "url": url, "secret": SECRET, "retry_min": "0.1s",
             "retry_max": "0.3s", "timeout": "2s"}]


async def test_a_missed_call_gives_missed_call_text_sent_and_text_delivered_in_order(
        tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, Receiver(SECRET) as crm, \
            AmiTestServer([read_transcript(recording_path("queue_abandon"))],
                          secret=AMI_SECRET, speed=0) as ami:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              webhooks=hooks(crm.url))
        service, task = await run_service(config)
        got = await crm.wait_for(3, 15)
        await asyncio.sleep(0.3)  # nothing more may follow
        assert await stop(service, task) == 0
    assert [item.event for item in crm.received] == ["missed_call", "text_sent",
                                                     "text_delivered"]
    assert all(item.signed for item in got), "every request carries a valid signature"
    assert len({item.delivery for item in got}) == 3
    missed, sent, delivered = (item.json for item in got)
    call = missed["data"]["call"]
    assert call["caller_e164"] == CALLER and call["outcome"] == "queue_abandon"
    assert missed["data"]["decision"]["text"] is True
    assert missed["data"]["lead"]["tag"] == "missed-call"
    message_id = missed["data"]["message_id"]
    for body in (sent, delivered):
        assert body["data"]["call_id"] == call["call_id"]
        assert body["data"]["message_id"] == message_id and body["data"]["to"] == CALLER
    assert delivered["data"]["state"] == "delivered"


async def test_webhooks_wait_in_the_store_while_the_receiver_is_down_even_over_a_restart(
        tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks/crm"
    async with TestSmsc(password=SMPP_PASSWORD) as smsc:
        async with AmiTestServer([read_transcript(recording_path("queue_abandon"))],
                                 secret=AMI_SECRET, speed=0) as ami:
            config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                                  webhooks=hooks(url))
            service, task = await run_service(config)
            await smsc.wait_for_submits(1, 10)
            await asyncio.sleep(1.0)  # the receipt comes; every webhook fails and waits
            assert await stop(service, task) == 0
        store = await Store.open(str(tmp_path / "mcdaemon.db"))
        try:
            pending = await store.webhooks(state="pending")
        finally:
            await store.close()
        assert [row["event"] for row in pending] == ["missed_call", "text_sent",
                                                     "text_delivered"]
        async with Receiver(SECRET, port=port) as crm, \
                AmiTestServer([read_transcript(recording_path("queue_abandon"))],
                              secret=AMI_SECRET, speed=0) as ami:
            # the daemon starts again on the same store (and the PBX replays the same call:
            # no second text, no second webhook)
            config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                                  webhooks=hooks(url))
            service, task = await run_service(config)
            got = await crm.wait_for(3, 15)
            await asyncio.sleep(0.5)
            assert await stop(service, task) == 0
        assert [item.event for item in got] == ["missed_call", "text_sent", "text_delivered"]
        assert len(crm.received) == 3 and all(item.signed for item in got)
        assert len(smsc.submits) == 1
