"""Two hundred PBXs on one daemon, two of them dead: every other PBX's call is decided and
texted, and `status` shows the daemon watching all of them, the dead ones down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from mcdaemon.commands.control import gather_status
from mcdaemon.config.load import load_config
from mcdaemon.core.transcript import read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.sim.variants import with_callers
from mcdaemon.store import Store

from e2e.harness import (
    AMI_SECRET,
    SMPP_PASSWORD,
    free_port,
    run_service,
    stop,
    write_config,
)
from recordings import recording_path

PBXS = 200
#: the recording's caller (a 3-second call that hangs up in the IVR menu)
CALLER = "447700900456"


def pbx(number: int, port: int) -> dict[str, object]:
    return {"name": f"pbx{number:03d}", "host": "127.0.0.1", "port": port, "username": "mcd",
            "secret": AMI_SECRET, "ping_interval": "1s", "ping_timeout": "1s",
            "connect_timeout": "2s", "reconnect_min": "0.2s", "reconnect_max": "1s"}


@pytest.mark.slow
async def test_two_hundred_pbxs_one_refusing_one_silent_every_other_call_is_texted(
        tmp_path: Path) -> None:
    recording = read_transcript(recording_path("ivr_abandon"))
    # each live PBX has its own caller (the cooldown texts a number once), the same call ids
    # (the store keys calls by PBX and Linkedid)
    callers = {number: f"447700{900000 + number}" for number in range(PBXS - 2)}
    silent_peers: list[asyncio.StreamWriter] = []

    def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_peers.append(writer)

    async with contextlib.AsyncExitStack() as stack:
        smsc = await stack.enter_async_context(TestSmsc(password=SMPP_PASSWORD))
        servers = [await stack.enter_async_context(AmiTestServer(
            [with_callers(recording, {CALLER: caller})], secret=AMI_SECRET, speed=1))
            for caller in callers.values()]
        silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
        stack.push_async_callback(silent.wait_closed)
        stack.callback(silent.close)
        ports = [server.port for server in servers]
        ports += [free_port(), silent.sockets[0].getsockname()[1]]  # refusing, silent
        config = write_config(tmp_path, ami_port=0, smsc_port=smsc.port,
                              ami=[pbx(number, port) for number, port in enumerate(ports)])
        service, task = await run_service(config)
        try:
            await smsc.wait_for_submits(len(callers), timeout=40)
            assert {submit.destination for submit in smsc.submits} == set(callers.values())

            # `status`: the daemon's heartbeat lists every PBX, the live ones connected
            deadline = time.monotonic() + 10
            while True:
                shown = await gather_status(load_config(config), time.time())
                links = shown["daemons"][0]["pbxs"] if shown["daemons"] else {}
                if sum(state == "connected" for state in links.values()) == len(callers):
                    break
                assert time.monotonic() < deadline, f"status shows {links}"
                await asyncio.sleep(0.2)
            assert shown["daemon"] == "running"
            [daemon] = shown["daemons"]
            assert len(daemon["pbxs"]) == PBXS
            assert daemon["pbxs"][f"pbx{PBXS - 2:03d}"] != "connected"  # refusing
            assert daemon["pbxs"][f"pbx{PBXS - 1:03d}"] != "connected"  # silent
        finally:
            assert await stop(service, task) == 0
        for writer in silent_peers:
            writer.close()
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        assert await store.count_calls() == len(callers)
        linkedid = recording.labels[0]["linkedid"]
        for number in callers:
            call = await store.call(f"pbx{number:03d}", linkedid)
            assert call is not None and call["reason"] == "text"
    finally:
        await store.close()

