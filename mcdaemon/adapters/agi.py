"""AGI hooks: explicit dialplan marks, for administrators who prefer them to inference.

    AGI(agi://127.0.0.1:4573/tag?group=sales)   MCD_GROUP=sales  (a configured group)
    AGI(agi://127.0.0.1:4573/tag?after_hours=1) MCD_AFTER_HOURS=1 (also ignore=1, did=NUMBER)
    AGI(agi://127.0.0.1:4573/callback-request)  MCD_CALLBACK=1   (alias: /callback)
    AGI(agi://127.0.0.1:4573/optout-check)      MCD_OPTED_OUT=1 if the caller opted out, else 0

A hook only sets channel variables (`SET VARIABLE`). Asterisk reports each one on AMI as a
`VarSet` event, and the call tracker reads it there, exactly as when the dialplan's own `Set()`
made the mark: the call's state has one source (AMI), and a hook that fails (the daemon down,
`AGISTATUS=FAILURE`) loses a mark, never a call.

The same hooks run as a classic AGI script, `AGI(mcdaemon-agi,tag,group=sales)`
(`mcdaemon.adapters.agi_script`): both call `hook_marks`, the decision, and send the same commands.

panoramisk provides the AGI command exchange (`Request.send_command`, result parsing); the
connection handling is ours, because panoramisk's `Application.handler` loops forever on a
client that disconnects before its headers end, and routes on the whole script name, query
string included.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs

import structlog
from panoramisk.fast_agi import Request

from mcdaemon.config.agi import AgiConfig
from mcdaemon.core.listen import server_address
from mcdaemon.core.phone import to_e164
from mcdaemon.logs import mask_number

log = structlog.get_logger("mcdaemon.agi")

#: the longest block of agi_* headers accepted (Asterisk sends about 1 kB)
MAX_HEADERS = 16 * 1024
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.+-]{1,80}")
_TRUE = frozenset({"1", "yes", "true", "on", "y"})

Marks = list[tuple[str, str]]

#: the hooks, by the name a dialplan gives (FastAGI: the URL path; mcdaemon-agi: argument 1)
HOOKS: Final = ("tag", "callback-request", "callback", "optout-check")


@dataclass(frozen=True, slots=True)
class HookContext:
    """What a hook's decision needs from the config and the store."""

    groups: Collection[str]
    region: str
    opted_out: Callable[[str], Awaitable[bool]]
    full_numbers: bool = False


def set_variable(name: str, value: str) -> str:
    """The AGI command that sets one mark (values are checked: no quote or newline)."""
    return f'SET VARIABLE {name} "{value}"'


async def hook_marks(hook: str, headers: Mapping[str, str], params: Mapping[str, list[str]],
                     context: HookContext, *, via: str = "FastAGI") -> Marks | None:
    """The variables `hook` sets on the channel of the call `headers` describe; None for an
    unknown hook. The decision FastAGI and mcdaemon-agi share (`via` names it in the log)."""
    if hook == "tag":
        marks, problem = tag_marks(params, context.groups)
        if problem:
            log.warning(f"{via} tag: part of the request ignored", problem=problem,
                        uniqueid=headers.get("agi_uniqueid"),
                        hint="check the dialplan's tag parameters and the groups: of the "
                             "config")
        return marks
    if hook in ("callback-request", "callback"):
        return [("MCD_CALLBACK", "1")]
    if hook == "optout-check":
        number = to_e164(headers.get("agi_callerid", ""), context.region)
        opted_out = bool(number) and await context.opted_out(number or "")
        log.debug(f"{via} opt-out check", caller=mask_number(number, context.full_numbers),
                  opted_out=opted_out)
        return [("MCD_OPTED_OUT", "1" if opted_out else "0")]
    return None


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
        context = HookContext(self._groups(), self._region(), self._opted_out, self._full())
        marks = await hook_marks(path.strip("/"), headers,
                                 parse_qs(query, keep_blank_values=True), context)
        if marks is None:
            log.warning("FastAGI hook unknown: nothing set", hook=path[:40],
                        known=sorted(HOOKS), hint="check the path of the dialplan's "
                        "AGI(agi://…) URL")
            return
        request = Request(app=None, headers=headers, reader=reader, writer=writer)
        for name, value in marks:
            result = await request.send_command(set_variable(name, value))
            if result.get("status_code") != 200:
                log.warning("FastAGI SET VARIABLE refused", variable=name,
                            result=str(result)[:80],
                            hint="Asterisk's log says why (the channel hung up?)")
                return
        log.info("FastAGI hook", hook=path.strip("/"), uniqueid=headers.get("agi_uniqueid"),
                 set=dict(marks))
