"""The AMI adapter: one connection per PBX on panoramisk 1.4, events out through a queue.

panoramisk supplies the protocol object (`AMIProtocol`), the action frames with their
ActionIDs (`Action`) and the matching of answers to actions, lists included
(CoreShowChannels: a Response, one event per channel, a ...Complete event). Its `Manager` is
not used, and `data_received` is replaced, because of what design.md lists:

- it decodes every TCP chunk on its own with errors='ignore', so a caller name "Zoë" split
  across two chunks loses its "ë": here the bytes are cut into frames at b"\\r\\n\\r\\n" first
  and each whole frame is decoded (with errors="replace": damage stays visible);
- its Manager runs coroutine callbacks with ensure_future (order lost): here every event is put
  on the queue synchronously, in arrival order, and the read path never awaits;
- one malformed answer has killed its connection (issues #90, #97, `KeyError: 'async'`): each
  frame is handled under a guard, and our actions say whether they expect a list;
- it sends Pings but never checks them: here each Ping must be answered within `ping_timeout`
  or the link counts as dead (a half-open TCP connection) and is reconnected.

Events are parsed with `transcript.parse_frame`, the parser `mcdaemon replay` uses, so the
tracker sees the same dicts live and in a replay.

Connection life: connect, read the banner, Login, Filter (Asterisk sends only the events the
tracker reads), CoreShowChannels (the channels alive now: an AmiStatus "connected" carries
them, their uniqueids and their fields, at its place in the event stream, so the tracker can
close the calls that ended while we were away and adopt the calls in progress), then read
while Pings go out. Any failure closes the socket and retries with exponential backoff and
jitter until `stop()`; a refused login waits longer between tries.

The log has one line per state change (`AMI connected`, `AMI connection failed`, `AMI
connection lost`, `AMI login refused`), each failure naming the setting to check; warnings a
broken peer can repeat at will (garbage frames) are rate-limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from mcdaemon.config.model import AmiConfig
from mcdaemon.core.transcript import FrameFields, parse_frame
from mcdaemon.logs import RepeatLimiter

log = structlog.get_logger("mcdaemon.ami")  # the name log lines carried before the move

#: ActionIDs of our own actions start with this (capture leaves those frames out).
ACTION_ID_PREFIX: Final = "mcdaemon-"
#: Events always let through: answers to our own actions and the boot notice.
ALWAYS_WANTED: Final = frozenset({
    "OriginateResponse", "FullyBooted", "CoreShowChannel", "CoreShowChannelsComplete"})
#: Bytes without a frame end after which the buffer is thrown away (a broken peer).
MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
BANNER_PREFIX: Final = b"Asterisk Call Manager/"
_SEPARATOR: Final = b"\r\n\r\n"
_CHANNELS_TIMEOUT: Final = 10.0
#: The pause between login attempts the PBX refused is at least this share of reconnect_max:
#: a wrong secret is not fixed by hammering the PBX (and filling its security log).
_AUTH_FAILED_BACKOFF_SHARE: Final = 0.5


class AmiLoginRefused(Exception):
    """The PBX refused our username/secret."""


class AmiEvent:
    """One event as received. Its fields are a `FrameFields`, read from the bytes when first
    asked for, by the consumer, and only those asked for: the protocol only cuts frames, so
    the event loop is never busy parsing a burst of events while a decision already made
    waits for its turn."""

    __slots__ = ("at", "fields", "pbx")

    def __init__(self, pbx: str, at: float, fields: Mapping[str, str]) -> None:
        self.pbx = pbx
        self.at = at  # time.time() when the frame arrived
        self.fields = fields

    def __repr__(self) -> str:
        return f"AmiEvent({self.pbx!r}, {self.at!r}, {dict(self.fields)!r})"


class AmiEvents:
    """The events of one read from the PBX, in arrival order, as their bytes. Iterating gives
    an AmiEvent for each event the daemon reads (by its name, and a VarSet's variable), made
    when the consumer reaches it: the read itself only cuts frames (a C-level split), so a
    burst of events costs the loop one queue item per read, and the work per event is done
    in the consumer's time slices, between which decisions already made go on."""

    __slots__ = ("_variables", "_wanted", "at", "frames", "pbx", "size")

    def __init__(self, pbx: str, at: float, frames: list[bytes],
                 wanted: frozenset[str] | None = None,
                 variables: frozenset[str] | None = None) -> None:
        self.pbx = pbx
        self.at = at  # time.time() when the read arrived
        self.frames = frames  # each starting b"Event: ", without its closing empty line
        self.size = sum(map(len, frames))  # bytes (what an AmiFeed counts)
        self._wanted = wanted  # event names read (None: all)
        self._variables = variables  # VarSet variables read (None: all)

    def __iter__(self) -> Iterator[AmiEvent]:
        pbx, at, wanted, variables = self.pbx, self.at, self._wanted, self._variables
        for raw in self.frames:
            end = raw.find(b"\n")
            event = (raw[7:] if end < 0 else raw[7:end]).rstrip(b"\r").decode(
                "utf-8", errors="replace")  # as FrameFields would read it
            if wanted is None or _is_read(event, _variable(raw) if event == "VarSet" else "",
                                          wanted, variables):
                yield AmiEvent(pbx, at, FrameFields(raw, event))

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return f"AmiEvents({self.pbx!r}, {self.at!r}, {len(self.frames)} frames)"


def _is_read(event: str, variable: str, wanted: frozenset[str] | None,
             variables: frozenset[str] | None) -> bool:
    """Whether the daemon reads this event (for a VarSet: this variable); None: all."""
    if wanted is None:
        return True
    if event not in wanted:
        return False
    if event == "VarSet" and variables is not None:
        return variable in variables
    return True


def _variable(raw: bytes) -> str:
    """A VarSet's variable name, read from its bytes."""
    start = raw.find(b"\nVariable:")
    if start < 0:
        return ""
    start += len(b"\nVariable:")
    stop = raw.find(b"\n", start)
    return (raw[start:] if stop < 0 else raw[start:stop]).strip().decode(
        "utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class AmiStatus:
    pbx: str
    at: float
    state: str  # "connecting" | "connected" | "disconnected" | "auth_failed"
    detail: str
    live_uniqueids: frozenset[str] | None = None  # on "connected": channels alive on the PBX
    #: on "connected": the listed channels' CoreShowChannel fields (Channel, Context,
    #: Application, ApplicationData, Uniqueid, Linkedid, CallerIDNum, Duration, BridgeId...)
    live_channels: tuple[Mapping[str, str], ...] | None = None


#: what an AmiConnection puts on its queue, in arrival order
AmiItem = AmiEvent | AmiEvents | AmiStatus

#: bytes of events an AmiFeed holds before the connections that add to it stop reading
FEED_LIMIT: Final = 8 * 1024 * 1024


class AmiFeed(asyncio.Queue[AmiItem]):
    """The queue from the AMI connections to the consumer, bounded by the bytes of the events
    it holds: memory stays bounded however many PBXs send at once. A connection that adds
    events while it holds more than `limit` stops reading its socket (`hold`: the kernel's
    buffers, then TCP, hold the PBX back), until the consumer has taken it below half; the
    events are read late, never lost. A storm of one PBX never gets near it; 200 PBXs in a
    storm at once do, for the fraction of a second the consumer needs to catch up. (Were a
    socket held until the kernel's buffers filled and Asterisk's manager `writetimeout`
    passed, Asterisk would end the session: the reconnect reconciles, as after any drop.)"""

    def __init__(self, limit: int = FEED_LIMIT) -> None:
        super().__init__()
        self.limit = limit
        self.size = 0  # bytes of the frames of the AmiEvents queued
        self._held: list[Callable[[], None]] = []  # how to resume the connections held

    @property
    def over_limit(self) -> bool:
        return self.size > self.limit

    def hold(self, resume: Callable[[], None]) -> None:
        """A connection stopped reading: `resume()` once the consumer has caught up."""
        self._held.append(resume)

    def put_nowait(self, item: AmiItem) -> None:
        super().put_nowait(item)
        if isinstance(item, AmiEvents):
            self.size += item.size

    def get_nowait(self) -> AmiItem:
        item = super().get_nowait()
        if isinstance(item, AmiEvents):
            self.size -= item.size
            if self._held and self.size <= self.limit // 2:
                held, self._held = self._held, []
                for resume in held:
                    resume()
        return item


def event_filter(event_names: frozenset[str], variables: frozenset[str] | None) -> str:
    """The Asterisk include filter (a regex matched against the whole event text).

    One Filter action, not one per event: once Asterisk holds any include filter it sends
    only matching events, so adding them one by one would lose the events of the names not
    yet added while the others go in. VarSet is let through only for the variables wanted.
    The same text works as an `eventfilter =` line in manager.conf (asterisk-conf/).
    """
    names = sorted((event_names | ALWAYS_WANTED) - ({"VarSet"} if variables else set()))
    regex = f"Event: ({'|'.join(names)})[^A-Za-z0-9_]"
    if variables and "VarSet" in event_names:
        regex += f"|Variable: ({'|'.join(sorted(variables))})[^A-Za-z0-9_]"
    return regex


def _one_line(value: object) -> str:
    """An action value with CR/LF flattened: no value (a caller ID...) can inject a line."""
    return str(value).replace("\r", " ").replace("\n", " ")


class FramedProtocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's AMIProtocol fed whole frames: bytes are framed before they are decoded.

    `on_frames(frames, at)` gets the whole frames of each read, in order, each without its
    closing empty line (its last line without CRLF), with the time the read arrived; the
    AmiConnection parses them and hands answers back to panoramisk through `answer()`.
    """

    closed: bool
    transport: Any

    def __init__(self, on_frames: Callable[[list[bytes], float], None], *, pbx: str = "-",
                 repeats: RepeatLimiter | None = None) -> None:
        super().__init__()
        self.closed = False
        self.transport = None
        self._on_frames = on_frames
        self._pbx = pbx
        self._repeats = repeats or RepeatLimiter(log)
        self._buffer = bytearray()
        loop = asyncio.get_running_loop()
        self.banner: asyncio.Future[str] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.encoding = "utf-8"  # panoramisk encodes actions with this

    def data_received(self, data: bytes) -> None:
        at = time.time()
        buffer = self._buffer
        buffer += data
        if not self.banner.done():
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 1024:
                    self._fail_banner(bytes(buffer[:80]))
                return
            line = bytes(buffer[:end])
            if not line.startswith(BANNER_PREFIX):
                self._fail_banner(line)
                return
            del buffer[:end + 2]
            banner = line.decode("utf-8", errors="replace").strip()
            self.version = banner.partition("/")[2]
            self.banner.set_result(banner)
        end = buffer.rfind(_SEPARATOR)
        if end >= 0:
            with memoryview(buffer) as view:
                whole = bytes(view[:end])
            del buffer[:end + len(_SEPARATOR)]
            self._on_frames(whole.split(_SEPARATOR), at)
        if len(buffer) > MAX_FRAME_BYTES:
            self._repeats.warning(
                (self._pbx, "oversized"), "AMI frame too large: dropped", pbx=self._pbx,
                size=len(buffer), limit=MAX_FRAME_BYTES,
                hint="a frame without its end: check that ami[].host/port is an Asterisk "
                     "manager and nothing in between alters the stream")
            buffer.clear()

    def _fail_banner(self, line: bytes) -> None:
        self.banner.set_exception(ConnectionError(
            f"not an Asterisk manager interface (it said {line[:80]!r})"))
        self.close()

    def send_action(self, fields: Mapping[str, str | Sequence[str]], *,
                    expect_list: bool = False) -> asyncio.Future[Any]:
        """Send an action; the future gets the answer (a Message, or a list for lists).

        `expect_list=False` tells panoramisk the answer is one Response, whatever its Message
        says: its guess from the text ("successfully queued") read a missing Async key and
        raised KeyError (issues #90, #97), and would swallow the OriginateResponse event.
        """
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionError("AMI connection closed")
        # a list value is sent as one line per item (Originate's Variable: a=1, Variable: b=2)
        action = Action({key: [_one_line(item) for item in value]
                         if isinstance(value, list | tuple) else _one_line(value)
                         for key, value in fields.items()},
                        as_list=None if expect_list else False)
        future: asyncio.Future[Any] = self.send(action, as_list=action.as_list)
        return future

    def answer(self, fields: dict[str, str]) -> Any:
        """Hand a frame carrying one of our ActionIDs to panoramisk; the Action it belongs to,
        or None when no action waits for it (a late answer, an OriginateResponse)."""
        action_id = fields.get("ActionID", "")
        action = self.responses.get(action_id) if action_id else None
        if action is None:
            return None
        message = Message(fields)
        try:
            self.handle_message(message)
        except Exception:  # a malformed answer: settle the action with it, keep the link
            self._repeats.warning(
                (self._pbx, "malformed answer"), "AMI answer malformed: action settled with it",
                pbx=self._pbx, action=action.get("Action"), fields=sorted(fields),
                hint="a PBX answer panoramisk cannot read: report it with a capture "
                     "(mcdaemon capture)", exc_info=True)
            self.responses.pop(action_id, None)
            if not action.future.done():
                action.future.set_result(message)
        return action

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        detail = f"{type(exc).__name__}: {exc}" if exc else "connection closed by the PBX"
        if not self.banner.done():
            self.banner.set_exception(ConnectionError(detail))
        if not self.lost.done():
            self.lost.set_result(detail)

    def close(self) -> None:
        """Fail the actions still waiting (panoramisk would queue them for a resend, logging
        each one, a Login with its secret included) and close the socket."""
        actions = {id(action): action for action in self.responses.values()}
        self.responses.clear()
        for action in actions.values():
            if not action.future.done():
                action.future.set_exception(ConnectionError("AMI connection closed"))
                action.future.exception()  # retrieved: nobody may be waiting any more
        if not self.closed and self.transport is not None:
            self.transport.close()
        self.closed = True


class AmiConnection:
    """Keeps one PBX's AMI connection up and turns its frames into queue items: AmiEvents
    (a read's events), AmiEvent (one parsed while a channel list is read, or carrying our
    ActionID), AmiStatus (the connection's state)."""

    def __init__(self, config: AmiConfig, out: asyncio.Queue[AmiItem], *,
                 event_names: frozenset[str] | None = None,
                 variables: frozenset[str] | None = None,
                 raw_sink: Callable[[bytes, float], None] | None = None) -> None:
        self.config = config
        self._out = out
        self._wanted = None if event_names is None else event_names | ALWAYS_WANTED
        self._event_names = event_names
        self._variables = variables
        self._raw_sink = raw_sink
        self._repeats = RepeatLimiter(log)
        self._state = "disconnected"
        self._stopping = asyncio.Event()
        self._protocol: FramedProtocol | None = None
        self._ids = itertools.count(1)
        self._tag = f"{ACTION_ID_PREFIX}{config.name}-{random.randrange(16**6):06x}-"
        self._tag_bytes = self._tag.encode()
        # CoreShowChannels in progress: its Action and the channels born while it runs
        self._listing: Any = None
        self._born_while_listing: set[str] = set()
        #: the session whose reading the AmiFeed stopped until the consumer catches up
        self._held: FramedProtocol | None = None
        self.banner = ""

    @property
    def state(self) -> str:
        return self._state

    @property
    def pbx(self) -> str:
        return self.config.name

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Connect and read until stop(); reconnect with backoff after every failure."""
        cfg = self.config
        delay = cfg.reconnect_min
        while not self._stopping.is_set():
            reached = False
            detail = "connection closed by the PBX"
            logged = False  # the failure has its line already
            try:
                reached, detail = await self._session()
            except AmiLoginRefused:
                detail = (f"AMI login to {cfg.name} {cfg.host}:{cfg.port} refused: check "
                          f"ami[{cfg.name}].username/secret and manager.conf permit=")
                log.error("AMI login refused", pbx=cfg.name, host=cfg.host, port=cfg.port,
                          username=cfg.username, error=detail)
                self._set_state("auth_failed", detail)
                delay = max(delay, cfg.reconnect_max * _AUTH_FAILED_BACKOFF_SHARE)
            except (TimeoutError, OSError) as error:
                detail = connection_failure(cfg, error)
            except Exception as error:  # a defect must cost a reconnect, not the daemon
                detail = f"{type(error).__name__}: {error}".rstrip(": ")
                log.exception("AMI session failed", pbx=self.pbx, error=detail)
                logged = True
            finally:
                self._close()
            if self._stopping.is_set():
                break
            if reached:
                delay = cfg.reconnect_min
            pause = random.uniform(delay / 2, delay)
            if self._state != "auth_failed":
                if not logged and self._state == "connected":
                    log.warning("AMI connection lost", pbx=self.pbx, host=cfg.host,
                                port=cfg.port, error=detail, retry_in=round(pause, 1),
                                hint="Asterisk restarted, its manager was reloaded or the "
                                     "network dropped; calls that end meanwhile are closed "
                                     "on reconnection")
                elif not logged:
                    log.warning("AMI connection failed", pbx=self.pbx, host=cfg.host,
                                port=cfg.port, error=detail, retry_in=round(pause, 1))
                self._set_state("disconnected", detail)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            delay = min(delay * 2, cfg.reconnect_max)
        self._set_state("disconnected", "stopped")
        self._repeats.flush()
        log.debug("AMI connection stopped", pbx=self.pbx)

    async def stop(self) -> None:
        """Log off politely and close; run() returns."""
        self._stopping.set()
        if self._protocol is not None and self._state == "connected":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._action({"Action": "Logoff"}), 1.0)
        self._close()

    def action_id(self, reference: str) -> str:
        """An ActionID of this connection's own (its answers are matched to the action)."""
        return f"{self._tag}{_one_line(reference)}"

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._state == "connected"

    async def originate(self, fields: Mapping[str, str | Sequence[str]] | None = None, *,
                        action_id: str | None = None, **more: str) -> dict[str, str]:
        """Send an Originate (always Async); return the Response fields. The outcome comes
        later as an OriginateResponse event on the queue, with the same ActionID (give one
        made by `action_id()` to recognise it). A list value becomes one line per item."""
        if self._protocol is None or self._state != "connected":
            raise ConnectionError(f"AMI {self.pbx} is not connected")
        action: dict[str, str | Sequence[str]] = {"Action": "Originate", **(fields or {}),
                                                  **more, "Async": "true"}
        if action_id is not None:
            if not action_id.startswith(self._tag):
                raise ValueError("the ActionID must come from action_id()")
            answer = await asyncio.wait_for(
                self._protocol.send_action({**action, "ActionID": action_id}),
                self.config.connect_timeout)
        else:
            answer = await asyncio.wait_for(self._action(action), self.config.connect_timeout)
        return dict(answer.items())

    # ------------------------------------------------------------------ one session

    async def _session(self) -> tuple[bool, str]:
        """One connection, from connect to its end: (got as far as connected, why it ended)."""
        cfg = self.config
        self._set_state("connecting", f"{cfg.host}:{cfg.port}")
        log.debug("AMI connecting", pbx=self.pbx, host=cfg.host, port=cfg.port)
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: FramedProtocol(self._on_frames, pbx=self.pbx,
                                                          repeats=self._repeats),
                                   cfg.host, cfg.port),
            cfg.connect_timeout)
        self._protocol = protocol
        self.banner = await asyncio.wait_for(asyncio.shield(protocol.banner),
                                             cfg.connect_timeout)
        if self._stopping.is_set():
            return False, "stopped"
        login = {"Action": "Login", "Username": cfg.username, "Secret": cfg.secret}
        answer = await asyncio.wait_for(self._action(login), cfg.connect_timeout)
        if not answer.success:
            raise AmiLoginRefused(answer.get("Message", ""))
        await self._install_filter()
        await self._list_channels()
        watchdog = asyncio.create_task(self._watchdog(), name=f"ami-ping:{cfg.name}")
        try:
            ends: set[asyncio.Future[Any]] = {watchdog, protocol.lost}
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            if watchdog.done():
                watchdog.result()  # raises: the link is dead
            return True, protocol.lost.result()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watchdog

    async def _install_filter(self) -> None:
        if self._event_names is None or not self.config.event_filter:
            return
        regex = event_filter(self._event_names, self._variables)
        answer = await asyncio.wait_for(
            self._action({"Action": "Filter", "Operation": "Add", "Filter": regex}),
            self.config.connect_timeout)
        if not answer.success:
            log.warning("AMI event filter refused", pbx=self.pbx, message=answer.get("Message"),
                        hint="give the AMI user write=system, or put the eventfilter line "
                             "of asterisk-conf/manager.conf in manager.conf; events are "
                             "filtered here meanwhile")

    async def _list_channels(self) -> None:
        """Ask for the live channels. On success the read path reports "connected" when the
        list ends, at its place in the stream; otherwise it is reported here, without them."""
        assert self._protocol is not None
        self._born_while_listing = set()
        action_id = self._next_id()
        future = self._protocol.send_action(
            {"Action": "CoreShowChannels", "ActionID": action_id}, expect_list=True)
        self._listing = self._protocol.responses.get(action_id)
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), _CHANNELS_TIMEOUT)
        except TimeoutError:
            answer = None
        if self._listing is None:
            return  # listed: the read path has reported "connected"
        self._listing = None
        message = answer.get("Message", "no answer") if isinstance(answer, Message) else \
            "no answer"
        log.warning("AMI channel list unavailable", pbx=self.pbx, message=message,
                    hint="give the AMI user write=reporting so calls that end during a "
                         "disconnection are closed at once")
        self._set_state("connected", f"logged in (no channel list: {message})")
        log.info("AMI connected", pbx=self.pbx, host=self.config.host, port=self.config.port,
                 banner=self.banner)

    async def _watchdog(self) -> None:
        """Ping regularly; an answer that does not come in time means the link is dead."""
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.ping_interval)
            try:
                await asyncio.wait_for(self._action({"Action": "Ping"}), cfg.ping_timeout)
            except TimeoutError:
                if self._held is not None and self._held is self._protocol:
                    continue  # the answer waits unread behind events we have not read yet
                raise ConnectionError(
                    f"no answer to Ping within {cfg.ping_timeout:g} s (half-open link)"
                ) from None

    def _close(self) -> None:
        protocol, self._protocol = self._protocol, None
        self._listing = None
        if protocol is not None:
            protocol.close()

    # ------------------------------------------------------------------ actions

    def _next_id(self) -> str:
        return f"{self._tag}{next(self._ids)}"

    async def _action(self, fields: Mapping[str, str | Sequence[str]]) -> Any:
        """Send one action and wait for its single answer (a panoramisk Message)."""
        if self._protocol is None:
            raise ConnectionError("AMI connection closed")
        return await self._protocol.send_action({**fields, "ActionID": self._next_id()})

    # ------------------------------------------------------------------ reading

    def _on_frames(self, frames: list[bytes], at: float) -> None:
        """Handle one read's frames synchronously, in order; nothing in here may raise or
        wait. The events go on the queue as they are (`AmiEvents`), a run at a time; an
        answer to one of our actions, and anything else, is parsed here and dispatched."""
        sink = self._raw_sink
        protocol = self._protocol
        # only while an action waits for its answer may an event carry our ActionID (a late
        # one, an OriginateResponse, reads as an event like any other)
        tagged = self._tag_bytes if protocol is not None and protocol.responses else None
        events: list[bytes] = []
        for raw in frames:
            try:
                if sink is not None:
                    sink(raw + _SEPARATOR, at)
                if raw.startswith(b"Event: ") and (tagged is None or tagged not in raw):
                    if self._listing is not None and raw.startswith(b"Event: Newchannel\r"):
                        # alive, not yet listed: the list's end reports it live
                        self._born_while_listing.add(FrameFields(raw).get("Uniqueid", ""))
                    events.append(raw)  # the common case: read later, by the consumer
                    continue
                if events:
                    self._queue_events(events, at)
                    events = []
                fields = parse_frame(raw)
                if not fields:
                    if raw:
                        self._repeats.warning(
                            "garbage", "AMI frame not understood: dropped", pbx=self.pbx,
                            size=len(raw), hint=f"check that ami[{self.pbx}].host/port is an "
                            "Asterisk manager and nothing in between alters the stream")
                    continue
                self._dispatch(fields, at)
            except Exception:
                self._repeats.warning(
                    "failed", "AMI frame could not be handled: dropped", pbx=self.pbx,
                    size=len(raw), hint="a defect: report it with a capture (mcdaemon "
                    "capture)", exc_info=True)
        if events:
            self._queue_events(events, at)

    def _dispatch(self, fields: dict[str, str], at: float) -> None:
        protocol = self._protocol
        event = fields.get("Event", "")
        listing = self._listing
        if listing is not None and event == "Newchannel":
            self._born_while_listing.add(fields.get("Uniqueid", ""))  # alive, not yet listed
        if protocol is not None and fields.get("ActionID", "").startswith(self._tag):
            action = protocol.answer(fields)
            if action is not None and action is listing \
                    and event == "CoreShowChannelsComplete":
                self._listing_done(listing, at)
            if action is not None or "Event" not in fields:
                return
        if not event or not _is_read(event, fields.get("Variable", ""), self._wanted,
                                     self._variables):
            return
        self._out.put_nowait(AmiEvent(self.pbx, at, fields))

    def _queue_events(self, frames: list[bytes], at: float) -> None:
        out = self._out
        out.put_nowait(AmiEvents(self.pbx, at, frames, self._wanted, self._variables))
        protocol = self._protocol
        if isinstance(out, AmiFeed) and out.over_limit and protocol is not None \
                and not protocol.closed:
            protocol.transport.pause_reading()  # until the consumer catches up
            self._held = protocol
            out.hold(functools.partial(self._resume_reading, protocol))

    def _resume_reading(self, protocol: FramedProtocol) -> None:
        if self._held is protocol:
            self._held = None
        if protocol is self._protocol and not protocol.closed \
                and not protocol.transport.is_closing():
            protocol.transport.resume_reading()

    def _listing_done(self, listing: Any, at: float) -> None:
        channels = tuple({key: value for key, value in message.items()
                          if isinstance(value, str)}
                         for message in listing.responses
                         if message.get("Event") == "CoreShowChannel")
        listed = {channel.get("Uniqueid", "") for channel in channels}
        live = frozenset((listed | self._born_while_listing) - {""})
        self._listing = None
        self._set_state("connected", f"logged in, {len(live)} live channels", live, at,
                        channels)
        log.info("AMI connected", pbx=self.pbx, host=self.config.host, port=self.config.port,
                 banner=self.banner, live_channels=len(live))

    def _set_state(self, state: str, detail: str, live: frozenset[str] | None = None,
                   at: float | None = None,
                   channels: tuple[Mapping[str, str], ...] | None = None) -> None:
        self._state = state
        self._out.put_nowait(AmiStatus(self.pbx, time.time() if at is None else at, state,
                                       detail, live, channels))


def connection_failure(config: AmiConfig, error: BaseException) -> str:
    """What went wrong connecting to a PBX, naming the settings to check: `gaierror: Name or
    service not known` alone does not say which host of which PBX."""
    name, where = config.name, f"{config.host}:{config.port}"
    if isinstance(error, socket.gaierror):
        return (f"ami[{name}].host {config.host!r} cannot be resolved "
                f"({error.strerror or error}): check ami[{name}].host")
    if isinstance(error, ConnectionRefusedError):
        return (f"{where} refused the connection: check that Asterisk runs with its manager "
                f"on that port (manager.conf [general] enabled, bindaddr, port) and "
                f"ami[{name}].host/port")
    if isinstance(error, TimeoutError):
        return (f"no answer from {where} within {config.connect_timeout:g} s: check "
                f"ami[{name}].host/port and any firewall in between")
    text = f"{type(error).__name__}: {error}".rstrip(": ")
    if "not an Asterisk manager interface" in text:
        return f"{where}: {error}: check ami[{name}].port (the manager's, 5038 by default)"
    return f"{where}: {text}: check ami[{name}].host/port and the network to the PBX"
