"""FastAGI hooks: explicit dialplan marks, for administrators who prefer them to inference.

    AGI(agi://127.0.0.1:4573/tag?group=sales)   MCD_GROUP=sales  (a configured group)
    AGI(agi://127.0.0.1:4573/tag?after_hours=1) MCD_AFTER_HOURS=1 (also ignore=1, did=NUMBER)
    AGI(agi://127.0.0.1:4573/callback-request)  MCD_CALLBACK=1   (alias: /callback)
    AGI(agi://127.0.0.1:4573/optout-check)      MCD_OPTED_OUT=1 if the caller opted out, else 0

A hook only sets channel variables (`SET VARIABLE`). Asterisk reports each one on AMI as a
`VarSet` event, and the call tracker reads it there, exactly as when the dialplan's own `Set()`
made the mark: the call's state has one source (AMI), and a hook that fails (the daemon down,
`AGISTATUS=FAILURE`) loses a mark, never a call.

panoramisk provides the AGI command exchange (`Request.send_command`, result parsing); the
connection handling is ours, because panoramisk's `Application.handler` loops forever on a
client that disconnects before its headers end, and routes on the whole script name, query
string included.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any
from urllib.parse import parse_qs

import structlog
from panoramisk.fast_agi import Request

from .agi_config import AgiConfig
from .listen import server_address
from .logs import mask_number
from .phone import to_e164

log = structlog.get_logger("mcdaemon.agi")

#: the longest block of agi_* headers accepted (Asterisk sends about 1 kB)
MAX_HEADERS = 16 * 1024
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.+-]{1,80}")
_TRUE = frozenset({"1", "yes", "true", "on", "y"})

Marks = list[tuple[str, str]]


class AgiError(Exception):
    """The hooks server cannot listen; the message says what to fix."""


def tag_marks(params: Mapping[str, list[str]], groups: Collection[str]) -> tuple[Marks, str]:
    """The variables `/tag?…` sets, and a problem to log ("" if none). Sans-IO."""
    marks: Marks = []
    problems: list[str] = []
    for key, values in params.items():
        value = values[-1].strip() if values else ""
        if key == "group":
            if value in groups:
                marks.append(("MCD_GROUP", value))
            else:
                problems.append(f"group {value[:40]!r} is not a configured group")
        elif key == "did":
            if _SAFE_VALUE.fullmatch(value) and any(ch.isdigit() for ch in value):
                marks.append(("MCD_DID", value))
            else:
                problems.append("did must be a number")
        elif key in ("after_hours", "ignore"):
            if value.lower() in _TRUE:
                marks.append((f"MCD_{key.upper()}", "1"))
        else:
            problems.append(f"unknown parameter {key[:40]!r} (group, did, after_hours, "
                            "ignore)")
    return marks, "; ".join(problems)


class AgiHooks:
    """The FastAGI server on `agi.listen`, answering the hooks above."""

    def __init__(self, config: AgiConfig, *, groups: Callable[[], Collection[str]],
                 region: Callable[[], str], opted_out: Callable[[str], Awaitable[bool]],
                 log_full_numbers: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self._groups = groups
        self._region = region
        self._opted_out = opted_out
        self._full = log_full_numbers
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._routes: dict[str, Callable[[Mapping[str, str], dict[str, list[str]]],
                                         Awaitable[Marks]]] = {
            "tag": self._tag,
            "callback-request": self._callback,
            "callback": self._callback,
            "optout-check": self._optout_check,
        }

    @property
    def address(self) -> tuple[str, int] | None:
        return server_address(self._server)

    async def start(self) -> None:
        """Listen if `agi.enabled`; AgiError if the address cannot be used."""
        if not self.config.enabled or self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._serve, self.config.host, self.config.port, limit=MAX_HEADERS)
        except OSError as exc:
            raise AgiError(f"agi.listen {self.config.listen}: cannot listen "
                           f"({exc.strerror or exc}); change agi.listen or set agi.enabled: "
                           "false") from exc
        log.info("FastAGI hooks listening", listen=self.config.listen)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            async with asyncio.timeout(self.config.timeout):
                await self._answer(reader, writer)
        except TimeoutError:
            log.warning("FastAGI request not finished in time: closed",
                        timeout=self.config.timeout)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                UnicodeDecodeError, ValueError) as exc:
            log.warning("FastAGI request not understood: closed", error=type(exc).__name__)
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = await reader.readuntil(b"\n\n")
        headers: dict[str, str] = {}
        for line in block.decode("utf-8", errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.startswith("agi_"):
                headers.setdefault(key.strip(), value.strip())
        script = headers.get("agi_network_script", "")
        path, _, query = script.partition("?")
        route = self._routes.get(path.strip("/"))
        if route is None:
            log.warning("FastAGI hook unknown: nothing set", hook=path[:40],
                        known=sorted(self._routes))
            return
        marks = await route(headers, parse_qs(query, keep_blank_values=True))
        request = Request(app=None, headers=headers, reader=reader, writer=writer)
        for name, value in marks:
            result = await request.send_command(f'SET VARIABLE {name} "{value}"')
            if result.get("status_code") != 200:
                log.warning("FastAGI SET VARIABLE refused", variable=name,
                            result=str(result)[:80])
                return
        log.info("FastAGI hook", hook=path.strip("/"), uniqueid=headers.get("agi_uniqueid"),
                 set=dict(marks))

    async def _tag(self, headers: Mapping[str, str], params: dict[str, list[str]]) -> Marks:
        marks, problem = tag_marks(params, self._groups())
        if problem:
            log.warning("FastAGI tag: part of the request ignored", problem=problem,
                        uniqueid=headers.get("agi_uniqueid"))
        return marks

    async def _callback(self, headers: Mapping[str, str],
                        params: dict[str, list[str]]) -> Marks:
        return [("MCD_CALLBACK", "1")]

    async def _optout_check(self, headers: Mapping[str, str],
                            params: dict[str, list[str]]) -> Marks:
        number = to_e164(headers.get("agi_callerid", ""), self._region())
        opted_out = bool(number) and await self._opted_out(number or "")
        log.debug("FastAGI opt-out check", caller=mask_number(number, self._full()),
                  opted_out=opted_out)
        return [("MCD_OPTED_OUT", "1" if opted_out else "0")]
