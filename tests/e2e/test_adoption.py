"""A daemon that connects while a caller already waits in a queue adopts the call and texts
the caller once when they abandon (`CoreShowChannels` at connect, `CallTracker.adopt`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mcdaemon.core.transcript import read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.store import Store

from e2e.harness import AMI_SECRET, SMPP_PASSWORD, run_service, stop, write_config
from recordings import recording_path

CALLER = "1795369867.0"


def waiting_in_queue(frames: list) -> int:  # type: ignore[type-arg]
    """How many frames happen before the daemon connects: up to the caller's queue join."""
    return next(index for index, frame in enumerate(frames)
                if frame.raw.startswith(b"Event: QueueCallerJoin\r\n")) + 1


@pytest.mark.parametrize("trunks", [["PJSIP/carrier"], []], ids=["trunk", "no-trunk"])
async def test_a_caller_waiting_in_a_queue_at_connect_is_texted_once(
        tmp_path: Path, trunks: list[str]) -> None:
    transcript = read_transcript(recording_path("queue_abandon"))
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([transcript], secret=AMI_SECRET, speed=4) as ami:
        ami.skip(waiting_in_queue(transcript.frames))
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              inbound={"trunks": trunks})
        with capture_logs() as logged:
            service, task = await run_service(config)
            await asyncio.wait_for(ami.finished(), 15)
            if trunks:
                await smsc.wait_for_submits(1, 10)
            await asyncio.sleep(0.5)  # no second text may follow
            assert await stop(service, task) == 0
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        row = await store.call("lab", CALLER)
    finally:
        await store.close()
    if not trunks:  # in queue-support, not in from-carrier: not known to be inbound
        assert smsc.submits == [] and row is None
        return
    assert [submit.destination for submit in smsc.submits] == ["447700900123"]
    assert row is not None and row["outcome"] == "queue_abandon"
    record = json.loads(row["record"])
    assert record["adopted"] is True and record["partial"] is False
    [decided] = [entry for entry in logged if entry["event"] == "call decided"]
    assert decided["adopted"] is True and decided["decision"] == "text"
    assert decided["stages"] == ["queue:support:abandon"]
