"""Contacts end to end: a recorded missed call over AMI, the name from an imported contact or
from a lookup over HTTP in the text the SMSC receives; a slow lookup never holds it back."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mcdaemon.config.load import load_config
from mcdaemon.core.transcript import read_transcript
from mcdaemon.service import Service
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc

from e2e.harness import AMI_SECRET, SMPP_PASSWORD, write_config
from recordings import recording_path

CALLER = "+447700900123"  # queue_abandon.ami's caller (caller ID name <unknown>)
GROUPS = {"default": {"triggers": ["missed"],
                      "templates": {"default": "Hi {caller_name}, sorry we missed your call."}}}


async def mcdaemon(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcdaemon", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def one_missed_call(config: Path, ami: AmiTestServer,
                          smsc: TestSmsc) -> tuple[str, float]:
    """Run the daemon over queue_abandon.ami: the text, and how long after the replay ended
    it reached the SMSC."""
    service = Service(load_config(config), config_path=config, install_signal_handlers=False)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(ami.finished(), 10)
        finished = time.monotonic()
        await smsc.wait_for_submits(1, 10)
        took = time.monotonic() - finished
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
    [(destination, text)] = smsc.messages()
    assert destination == CALLER.lstrip("+")
    return text, took


class Crm:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.asked: list[str] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(request.query["number"])
        await asyncio.sleep(self.delay)
        return web.json_response({"name": "Crm Person", "tags": []})

    async def __aenter__(self) -> Crm:
        app = web.Application()
        app.router.add_get("/lookup", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {"lookup": {"url": f"http://127.0.0.1:{self.port}/lookup?number={{number}}",
                           "timeout": "300ms", **extra}}


@pytest.fixture
async def peers() -> AsyncIterator[tuple[TestSmsc, AmiTestServer]]:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([read_transcript(recording_path("queue_abandon"))], secret=AMI_SECRET,
                          speed=0) as ami:
        yield smsc, ami


async def test_an_imported_contact_name_is_in_the_text(
        tmp_path: Path, peers: tuple[TestSmsc, AmiTestServer]) -> None:
    smsc, ami = peers
    config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port, groups=GROUPS)
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text("number,name,tags\n07700 900123,Jane Smith,vip\nnot-a-number,X,\n",
                        encoding="utf-8-sig")
    code, out, err = await mcdaemon("contacts", "import", "-c", str(config), str(csv_file))
    assert code == 1, err  # one row refused, the good one imported
    assert f'{csv_file}:3: "not-a-number": not a phone number' in err
    assert "1 contact(s) imported" in out
    text, _ = await one_missed_call(config, ami, smsc)
    assert text == "Hi Jane Smith, sorry we missed your call."


async def test_the_lookup_names_a_caller_the_store_does_not_know(
        tmp_path: Path, peers: tuple[TestSmsc, AmiTestServer]) -> None:
    smsc, ami = peers
    async with Crm() as crm:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port, groups=GROUPS,
                              contacts=crm.settings())
        text, _ = await one_missed_call(config, ami, smsc)
    assert text == "Hi Crm Person, sorry we missed your call."
    assert crm.asked == [CALLER]


async def test_a_slow_lookup_does_not_hold_the_text_back(
        tmp_path: Path, peers: tuple[TestSmsc, AmiTestServer]) -> None:
    smsc, ami = peers
    async with Crm(delay=10.0) as crm:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port, groups=GROUPS,
                              contacts=crm.settings())
        text, took = await one_missed_call(config, ami, smsc)
    assert text == "Hi there, sorry we missed your call."  # caller ID <unknown>: the fallback
    assert crm.asked == [CALLER]
    # the lookup may hold the text 300 ms; the rest is the daemon's usual pace (generous bound)
    assert took < 3.0, f"the text reached the SMSC {took:.2f} s after the call"
