"""`mcdaemon run` end to end: recorded AMI in over TCP, texts out over SMPP, state in SQLite."""

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
    wait_until,
    write_config,
)
from recordings import recording_path

CALLS = ["queue_abandon", "answered", "landline_abandon", "anonymous_caller_abandon",
         "repeat_caller", "dead_end"]
#: the mobiles that were missed: queue_abandon's caller and the repeat caller's first call
TEXTED = {"447700900123", "447700900321"}


def transcripts(names: list[str]) -> list:  # type: ignore[type-arg]
    return [read_transcript(recording_path(name)) for name in names]


async def test_each_missed_mobile_caller_gets_one_text_and_its_receipt_is_recorded(
        tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer(transcripts(CALLS), secret=AMI_SECRET, speed=0) as ami:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port)
        service, task = await run_service(config)
        await asyncio.wait_for(ami.finished(), 10)
        await smsc.wait_for_submits(len(TEXTED), 10)
        await asyncio.sleep(0.5)  # no third text may follow; receipts arrive
        assert {submit.destination for submit in smsc.submits} == TEXTED
        assert len(smsc.submits) == len(TEXTED)
        assert await stop(service, task) == 0
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        assert await store.count_calls() == 8  # every inbound call is recorded, texted or not
        states = [message.state for message in await store.messages()]
        assert states == ["delivered", "delivered"]
        landline = await store.call("lab", "1795370134.49")
        assert landline is not None and landline["reason"] == "not_mobile"
    finally:
        await store.close()


async def test_a_restart_replaying_the_same_calls_sends_no_second_text(tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc:
        for _ in range(2):
            async with AmiTestServer(transcripts(["queue_abandon"]), secret=AMI_SECRET,
                                     speed=0) as ami:
                config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port)
                service, task = await run_service(config)
                await asyncio.wait_for(ami.finished(), 10)
                await smsc.wait_for_submits(1, 10)
                await asyncio.sleep(0.5)
                assert await stop(service, task) == 0
        assert len(smsc.submits) == 1


async def test_an_smsc_outage_queues_the_texts_and_sends_them_when_it_returns(
        tmp_path: Path) -> None:
    smsc_port = free_port()
    async with AmiTestServer(transcripts(["queue_abandon", "repeat_caller"]),
                             secret=AMI_SECRET, speed=0) as ami:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc_port)
        service, task = await run_service(config)
        await asyncio.wait_for(ami.finished(), 10)
        await wait_until(lambda: service.store is not None, 5, "the store")
        await asyncio.sleep(1.0)  # calls decided while the SMSC is down
        stats = await service.store.outbox_stats(0)
        assert stats["by_state"]["queued"] == 2
        async with TestSmsc(password=SMPP_PASSWORD, port=smsc_port) as smsc:
            await smsc.wait_for_submits(2, 10)
            assert {submit.destination for submit in smsc.submits} == TEXTED
        assert await stop(service, task) == 0


async def test_texts_older_than_max_age_expire_instead_of_going_out_late(
        tmp_path: Path) -> None:
    smsc_port = free_port()
    async with AmiTestServer(transcripts(["queue_abandon"]), secret=AMI_SECRET,
                             speed=0) as ami:
        # the recording's call ended in 2026-11 at its receive time: with a 1 s max_age the
        # text is too old by the time the SMSC comes back
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc_port,
                              outbox={"max_age": "1s"})
        service, task = await run_service(config)
        await asyncio.wait_for(ami.finished(), 10)
        await asyncio.sleep(2.5)
        async with TestSmsc(password=SMPP_PASSWORD, port=smsc_port) as smsc:
            await asyncio.sleep(1.5)
            assert smsc.submits == []
        messages = await service.store.messages()
        assert [message.state for message in messages] == ["expired"]
        assert "max_age" in (messages[0].error_detail or "")
        assert await stop(service, task) == 0


async def test_a_stop_reply_opts_the_caller_out_and_the_next_missed_call_gets_no_text(
        tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc:
        async with AmiTestServer(transcripts(["queue_abandon"]), secret=AMI_SECRET,
                                 speed=0) as ami:
            config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                                  policy={"cooldown": "1s", "opt_out_confirmation":
                                          "You will get no more texts from us.",
                                          "caps": {"per_prefix_hour": 1000}})
            service, task = await run_service(config)
            await smsc.wait_for_submits(1, 10)
            # the caller answers STOP (as the SMSC sends it: international, no '+')
            await smsc.send_mo("447700900123", "Stop")
            await smsc.wait_for_submits(2, 10)  # the one-time confirmation
            assert smsc.submits[1].text == "You will get no more texts from us."
            assert await service.store.is_opted_out("+447700900123")
            assert await stop(service, task) == 0
        await asyncio.sleep(1.1)  # past the cooldown: only the opt-out can refuse now
        async with AmiTestServer(transcripts(["queue_abandon"]), secret=AMI_SECRET,
                                 speed=0) as ami:
            # the same caller misses another call (a new Linkedid)
            ami.frames[:] = [type(frame)(frame.offset, frame.raw.replace(
                b"1795369867.", b"1795399999.")) for frame in ami.frames]
            config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port)
            service, task = await run_service(config)
            await asyncio.wait_for(ami.finished(), 10)
            await asyncio.sleep(1.0)
            call = await service.store.call("lab", "1795399999.0")
            assert call is not None and call["reason"] == "opted_out"
            assert await stop(service, task) == 0
        assert len(smsc.submits) == 2
