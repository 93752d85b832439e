"""A webhook receiver over real TCP (aiohttp's server) for the tests: it checks each
request's signature and timestamp as a CRM would and answers with scripted statuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mcdaemon.webhooks.delivery import verify


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signed: bool  # the signature matched and the timestamp was fresh
    status: int  # what the receiver answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event(self) -> str:
        return self.headers.get("X-Mcdaemon-Event", "")

    @property
    def delivery(self) -> str:
        return self.headers.get("X-Mcdaemon-Delivery", "")


class Receiver:
    """`answers`: the statuses of the first requests, in order; then 200."""

    def __init__(self, secret: str = "", *, port: int = 0, answers: list[int] | None = None,
                 delay: float = 0.0) -> None:
        self.secret = secret
        self.port = port
        self.answers = list(answers or [])
        self.delay = delay
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/crm"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        signed = bool(self.secret) and verify(
            self.secret, headers.get("X-Mcdaemon-Timestamp", ""), body,
            headers.get("X-Mcdaemon-Signature", ""), now=time.time())
        status = self.answers.pop(0) if self.answers else 200
        if self.delay:
            await asyncio.sleep(self.delay)
        self.received.append(Received(headers, body, signed, status))
        self._arrived.set()
        return web.Response(status=status, text="ok" if status < 300 else "no")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/crm", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if not self.port:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def accepted(self) -> list[Received]:
        return [item for item in self.received if 200 <= item.status < 300]

    async def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Until `count` requests were answered 2xx."""
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(self.accepted())} webhooks accepted, waited for "
                                     f"{count}: {[item.event for item in self.received]}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.2))
        return self.accepted()
