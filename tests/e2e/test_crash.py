"""Crash safety: `kill -9` the daemon mid-storm, restart it on the same store, repeatedly.

At the end every missed mobile caller has exactly one text at the SMSC, except texts that were
in flight at a kill: those may arrive twice, and then the store marks them `duplicate_risk`.
Nothing is lost. The AMI server replays the whole storm to every connection, so each restart
also proves that seeing the same calls again never creates a second text.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from mcdaemon.core.transcript import read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.store import Store

from e2e.harness import AMI_SECRET, SMPP_PASSWORD, wait_until, write_config
from recordings import recording_path

KILLS = 3


async def start_daemon(config: Path, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcdaemon", "--log-format", "json", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=log.open("ab"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
async def test_kill_9_during_a_storm_loses_nothing_and_marks_every_possible_duplicate(
        tmp_path: Path) -> None:
    storm = read_transcript(recording_path("busy_storm"))
    mobiles = {label["callerid"].lstrip("+") for label in storm.labels}
    rng = random.Random(20261123)
    log = tmp_path / "daemon.log"
    # a slow SMSC and a low rate keep texts in flight when the kills come
    async with TestSmsc(password=SMPP_PASSWORD, response_delay=0.05) as smsc, \
            AmiTestServer([storm], secret=AMI_SECRET, speed=0) as ami:
        ami.replay_each_connection = True
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              smpp={"throughput": 15, "window": 5})
        for _ in range(KILLS):
            daemon = await start_daemon(config, log)
            await asyncio.sleep(rng.uniform(0.8, 2.5))
            try:
                daemon.send_signal(signal.SIGKILL)
            except ProcessLookupError:  # it ended on its own: that is the failure to see
                raise AssertionError(f"the daemon exited by itself ({await daemon.wait()}): "
                                     f"{log.read_text()[-3000:]}") from None
            await daemon.wait()
        daemon = await start_daemon(config, log)
        try:
            await wait_until(lambda: len({s.destination for s in smsc.submits}) >= len(mobiles),
                             40, "a text to every caller of the storm")
            # the texts may all have gone out before the killed daemons: SIGTERM this one
            # once it handles the signal (a busy machine may take over a second to start it)
            await wait_until(lambda: log.read_text().count('"mcdaemon started"') > KILLS, 30,
                             "the last daemon to start")
            await asyncio.sleep(1.0)
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 15) == 0, log.read_text()[-3000:]
    sent = Counter(submit.destination for submit in smsc.submits)
    assert set(sent) == mobiles  # nobody lost, nobody else texted
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        messages = await store.messages()
        assert len(messages) == len(mobiles)  # one message per call, however often replayed
        # every text went out: delivered, or submitted with its receipt still to come
        assert {message.state for message in messages} <= {"submitted", "delivered"}
        at_risk = {message.destination.lstrip("+") for message in messages
                   if message.duplicate_risk}
        doubled = {number for number, count in sent.items() if count > 1}
        assert doubled <= at_risk  # every duplicate was flagged
        assert sum(count - 1 for count in sent.values()) <= KILLS * 5  # at most a window a kill
    finally:
        await store.close()
