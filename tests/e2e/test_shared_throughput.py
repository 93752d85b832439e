"""smpp.throughput is the carrier's limit for the whole account: two daemons sharing a store
and the SMSC account, each watching a PBX in a storm, send half of it each, never the sum;
when one stops, the other takes the whole again within seconds. Counted at the SMSC, in
windows of submits, not latencies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mcdaemon.commands.control import gather_status
from mcdaemon.config.load import load_config
from mcdaemon.core.transcript import read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.sim.variants import with_callers
from mcdaemon.store import StoreError

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

THROUGHPUT = 8.0  # submits per second, for the account
WINDOW = 2.0  # seconds
#: a window may hold a token bucket's burst more than the rate allows: one per daemon
BURST = 2


def most_in_a_window(times: list[float], window: float) -> int:
    """The most submits any `window` seconds held (each window starting at a submit)."""
    times = sorted(times)
    return max((sum(1 for other in times[index:] if other < at + window)
                for index, at in enumerate(times)), default=0)


@pytest.mark.slow
async def test_two_daemons_share_the_accounts_throughput_and_one_left_takes_it_all(
        tmp_path: Path) -> None:
    # 50 mobiles hang up within 3 s on each PBX (the same recording, other callers on west)
    storm = read_transcript(recording_path("busy_storm"))
    callers = [label["callerid"].lstrip("+") for label in storm.labels]
    west = with_callers(storm, {caller: f"447700900{500 + number}"
                                for number, caller in enumerate(callers)})
    texts = 2 * len(callers)
    ami_ports = [free_port(), free_port()]
    store = {"path": str(tmp_path / "shared.db")}
    async with TestSmsc(password=SMPP_PASSWORD) as smsc:
        configs = []
        for name, pbx, port in zip(("alpha", "beta"), ("east", "west"), ami_ports,
                                   strict=True):
            folder = tmp_path / name
            folder.mkdir()
            configs.append(write_config(
                folder, ami_port=port, smsc_port=smsc.port, store=store,
                daemon={"name": name}, smpp={"throughput": THROUGHPUT},
                ami=[{"name": pbx, "host": "127.0.0.1", "port": port, "username": "mcd",
                      "secret": AMI_SECRET, "reconnect_min": "0.1s",
                      "reconnect_max": "0.5s"}]))
        alpha, alpha_task = await run_service(configs[0])
        beta, beta_task = await run_service(configs[1])
        try:
            async def alive() -> int:
                try:  # the file exists a moment before the first daemon writes its schema
                    return len((await gather_status(load_config(configs[0]), time.time()))
                               ["daemons"])
                except StoreError:
                    return 0

            deadline = time.monotonic() + 10
            while await alive() < 2:
                assert time.monotonic() < deadline, "the two daemons never saw each other"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # a heartbeat each since: both send their half
            # now the PBX comes up, and the storm with it
            servers = [AmiTestServer([recording], secret=AMI_SECRET, speed=5, port=port)
                       for recording, port in zip((storm, west), ami_ports, strict=True)]
            for server in servers:
                await server.start()
            try:
                await asyncio.wait_for(servers[1].finished(), 20)  # west's calls all ended
                await asyncio.sleep(0.5)  # and are decided
                await stop(beta, beta_task)  # a clean stop: its heartbeat row goes
                beta_gone = time.time()
                await wait_until(lambda: len(smsc.submits) >= texts, 40,
                                 "a text to every caller")
            finally:
                for server in servers:
                    await server.stop()
        finally:
            if not beta_task.done():
                await stop(beta, beta_task)
            assert await stop(alpha, alpha_task) == 0
    times = [submit.at for submit in smsc.submits]
    assert len({submit.destination for submit in smsc.submits}) == texts
    # together, never more than the account's throughput
    assert most_in_a_window(times, WINDOW) <= THROUGHPUT * WINDOW + BURST
    # alone, alpha sends at the whole throughput again (a half would be 4 a second)
    later = sorted(at for at in times if at > beta_gone + 1.5)
    assert len(later) >= 8
    assert (len(later) - 1) / (later[-1] - later[0]) > THROUGHPUT * 0.75
