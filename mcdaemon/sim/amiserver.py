"""A small Asterisk Manager server that replays recordings over real TCP (tests and demo).

It speaks the protocol as Asterisk does: the banner, Login (Success or "Authentication
failed"), ActionID echo, Ping, Filter (include and `!` exclude regexes applied to the events
it sends, as Asterisk's legacy filters),
CoreShowChannels (the channels the replay has created and not hung up yet, each with the
fields Asterisk lists: context, application, caller, duration…, `sim.channels`), Originate with
an OriginateResponse, Logoff. The replay starts when a client has logged in and is paced by
the frames' offsets divided by `speed`, the frames due at one moment in one write, as a
burst of events from Asterisk comes (0: as fast as possible, one frame per turn of the event
loop). Faults for the adapter's
tests: drop the connection after a frame (and lose `gap_frames` frames, as Asterisk keeps no
history; or refuse connections `down_for` seconds; with `goes_on`, the PBX goes on
unheard), go half-open (silent, socket open), split a frame across two TCP writes, inject
raw bytes. Plain asyncio; it has no test dependencies, as `mcdaemon demo` uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from mcdaemon.core.transcript import Frame, Transcript, parse_frame
from mcdaemon.sim.channels import LiveChannels

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
_GAP_BETWEEN_RECORDINGS = 1.0
#: frames due together go in one write of at most this much (then the loop breathes)
_MAX_BURST_BYTES = 256 * 1024
_ORIGINATE_REASONS = {"success": ("Success", "4"), "no_answer": ("Failure", "3"),
                      "busy": ("Failure", "5"), "failure": ("Failure", "0"),
                      "hangup": ("Failure", "1"), "congestion": ("Failure", "8")}


def _frame(*pairs: tuple[str, str]) -> bytes:
    return "".join(f"{key}: {value}\r\n" for key, value in pairs).encode() + b"\r\n"


class AmiTestServer:
    """Serves the frames of `transcripts`, one after the other, to the logged-in client."""

    def __init__(self, transcripts: Sequence[Transcript], *, username: str = "mcd",
                 secret: str = "mcdsecret", speed: float = 1.0, host: str = "127.0.0.1",
                 port: int = 0, originate_result: str = "success",
                 on_frame: Callable[[Frame], None] | None = None) -> None:
        self.frames: list[Frame] = []
        shift = 0.0
        for transcript in transcripts:
            for frame in transcript.frames:
                self.frames.append(Frame(shift + frame.offset, frame.raw))
            if transcript.frames:
                shift += transcript.frames[-1].offset + _GAP_BETWEEN_RECORDINGS
        self.username, self.secret, self.speed = username, secret, speed
        self.host, self.port = host, port
        self.originate_result = originate_result
        #: results for the next Originates, in order (then `originate_result`); besides the
        #: keys of _ORIGINATE_REASONS, "refused" answers the action with an Error (no event)
        #: and "silent" queues it but never sends its OriginateResponse
        self.originate_results: list[str] = []
        self.on_frame = on_frame
        self.actions: list[dict[str, str]] = []
        self.connections = 0
        self.drop_after_frames: int | None = None  # close after frame k-1 was sent, once
        self.gap_frames = 0  # frames lost (not sent) after a drop
        #: with drop_after_frames: connections are refused this long (seconds) after the drop
        self.down_for = 0.0
        #: the PBX goes on at the replay's pace while no client listens (after a drop, or a
        #: client gone), as a real one does: those frames are not sent, but CoreShowChannels
        #: and `on_frame` see them; the next client to log in gets the replay from there
        self.goes_on = False
        self._down_until = 0.0
        self._unheard: tuple[asyncio.Task[None], float] | None = None  # (task, its base)
        self.half_open_after_frames: int | None = None  # go silent after k frames, once
        self.split_at: tuple[int, int] | None = None  # (frame index, byte offset)
        self.inject: dict[int, bytes] = {}  # raw bytes to send before frame k
        # every new connection gets the whole stream again (a duplicated stream, as after a
        # restart of both ends), instead of going on where the last one stopped
        self.replay_each_connection = False
        self._next = 0
        self._live = LiveChannels()  # what CoreShowChannels lists
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._live_sessions: set[_Session] = set()
        self._done: asyncio.Event | None = None

    async def start(self) -> None:
        self._done = asyncio.Event()
        if not self.frames:
            self._done.set()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._unheard is not None:
            self._unheard[0].cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def __aenter__(self) -> AmiTestServer:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.stop()

    async def push(self, raw: bytes) -> None:
        """Send one event frame now to every logged-in client (through its filters)."""
        for session in list(self._live_sessions):
            if session.logged_in and not session.writer.is_closing():
                await session.send_event(raw)

    def skip(self, frames: int) -> None:
        """Let the first `frames` frames happen on the PBX before any client listens: the
        replay starts after them, and CoreShowChannels lists the channels they left alive
        (a daemon started, or reconnected, mid-call)."""
        for _ in range(min(frames, len(self.frames) - self._next)):
            self._advance()

    async def finished(self) -> None:
        """Resolves when every frame has been sent (or lost in a gap)."""
        assert self._done is not None, "start() the server first"
        await self._done.wait()

    # ------------------------------------------------------------------ one client

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self.connections += 1
        if asyncio.get_running_loop().time() < self._down_until:  # the link is down
            writer.close()
            self._sessions.discard(task)
            return
        session = _Session(self, writer)
        self._live_sessions.add(session)
        try:
            writer.write(BANNER)
            while not writer.is_closing():
                data = await reader.readuntil(b"\r\n\r\n")
                action = parse_frame(data)
                self.actions.append(action)
                if not session.silent:
                    await session.answer(action)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            session.close()
            self._live_sessions.discard(session)
            self._sessions.discard(task)
            if self.goes_on and session.base is not None and self._unheard is None \
                    and self._next < len(self.frames):
                self._unheard = (asyncio.create_task(self._play_unheard(session.base)),
                                 session.base)

    async def _play_unheard(self, base: float) -> None:
        """The PBX goes on while no client listens: frames happen at their pace, unsent."""
        loop = asyncio.get_running_loop()
        while self._next < len(self.frames):
            due = base + self.frames[self._next].offset / (self.speed or 1)
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            self._advance()

    def _advance(self) -> None:
        if self.on_frame is not None:
            self.on_frame(self.frames[self._next])
        self._live.feed(self.frames[self._next].raw, time.monotonic())
        self._next += 1
        if self._next >= len(self.frames) and self._done is not None:
            self._done.set()


class _Session:
    """The state of one client connection: login, filters, the replay task."""

    def __init__(self, server: AmiTestServer, writer: asyncio.StreamWriter) -> None:
        self.server, self.writer = server, writer
        self.includes: list[re.Pattern[str]] = []  # Filter: REGEX
        self.excludes: list[re.Pattern[str]] = []  # Filter: !REGEX
        self.logged_in = False
        self.silent = False
        self.lock = asyncio.Lock()
        self.replay: asyncio.Task[None] | None = None
        self.base: float | None = None  # the replay's clock: loop time of offset 0

    async def send(self, data: bytes, split: int | None = None) -> None:
        async with self.lock:
            if split is None:
                self.writer.write(data)
            else:  # two TCP writes with a pause between, as a busy network would deliver
                self.writer.write(data[:split])
                await self.writer.drain()
                await asyncio.sleep(0.05)
                self.writer.write(data[split:])
            await self.writer.drain()

    async def answer(self, action: dict[str, str]) -> None:
        name = action.get("Action", "").lower()
        aid = ("ActionID", action.get("ActionID", ""))
        if name == "login":
            if (action.get("Username") == self.server.username
                    and action.get("Secret") == self.server.secret):
                self.logged_in = True
                await self.send(_frame(("Response", "Success"), aid,
                                       ("Message", "Authentication accepted")))
                await self.send_event(_frame(("Event", "FullyBooted"),
                                             ("Privilege", "system,all"), ("Uptime", "1"),
                                             ("LastReload", "1"), ("Status", "Fully Booted")))
                self.replay = asyncio.create_task(self._replay())
            else:
                await self.send(_frame(("Response", "Error"), aid,
                                       ("Message", "Authentication failed")))
        elif not self.logged_in:
            await self.send(_frame(("Response", "Error"), aid, ("Message", "Permission denied")))
        elif name == "ping":
            await self.send(_frame(("Response", "Success"), aid, ("Ping", "Pong"),
                                   ("Timestamp", f"{time.time():.6f}")))
        elif name == "filter":
            regex = action.get("Filter", "")
            try:
                if regex.startswith("!"):
                    self.excludes.append(re.compile(regex[1:]))
                else:
                    self.includes.append(re.compile(regex))
                await self.send(_frame(("Response", "Success"), aid,
                                       ("Message", "Filter Added Successfully")))
            except re.error:
                await self.send(_frame(("Response", "Error"), aid,
                                       ("Message", "Filter Not Added")))
        elif name == "coreshowchannels":
            await self.send(_frame(("Response", "Success"), aid, ("EventList", "start"),
                                   ("Message", "Channels will follow")))
            live = self.server._live.listing(time.monotonic())
            for fields in live:
                await self.send(_frame(("Event", "CoreShowChannel"), aid,
                                       *fields.items()))
            await self.send(_frame(("Event", "CoreShowChannelsComplete"), aid,
                                   ("EventList", "Complete"), ("ListItems", str(len(live)))))
        elif name == "originate":
            result = (self.server.originate_results.pop(0) if self.server.originate_results
                      else self.server.originate_result)
            if result == "refused":
                await self.send(_frame(("Response", "Error"), aid,
                                       ("Message", "Permission denied")))
                return
            await self.send(_frame(("Response", "Success"), aid,
                                   ("Message", "Originate successfully queued")))
            if result == "silent":
                return
            response, reason = _ORIGINATE_REASONS.get(result, ("Failure", "0"))
            await self.send_event(_frame(
                ("Event", "OriginateResponse"), ("Privilege", "call,all"), aid,
                ("Response", response), ("Channel", action.get("Channel", "")),
                ("Context", action.get("Context", "")), ("Exten", action.get("Exten", "")),
                ("Reason", reason), ("Uniqueid", "<null>")))
        elif name == "logoff":
            await self.send(_frame(("Response", "Goodbye"), aid,
                                   ("Message", "Thanks for all the fish.")))
            self.writer.close()
        else:
            await self.send(_frame(("Response", "Error"), aid,
                                   ("Message", "Invalid/unknown command")))

    async def send_event(self, raw: bytes, split: int | None = None) -> None:
        if self._passes(raw):
            await self.send(raw, split)

    def _passes(self, raw: bytes) -> bool:
        """Whether Asterisk's legacy filters let the event through: with include filters only
        what one of them matches, then nothing an exclude (`!`) filter matches."""
        if self.includes or self.excludes:
            text = raw.decode("utf-8", errors="replace")
            if self.includes and not any(pattern.search(text) for pattern in self.includes):
                return False
            if any(pattern.search(text) for pattern in self.excludes):
                return False
        return True

    async def _replay(self) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        if server.replay_each_connection:
            server._next = 0
            server._live.clear()
        base = loop.time()
        if server._next < len(server.frames):
            base -= server.frames[server._next].offset / (server.speed or 1)
        if server._unheard is not None:  # the PBX went on unheard: its clock too
            server._unheard[0].cancel()
            base = server._unheard[1]
            server._unheard = None
        self.base = base
        while server._next < len(server.frames):
            index = server._next
            frame = server.frames[index]
            if server.speed > 0:
                await asyncio.sleep(max(0.0, base + frame.offset / server.speed - loop.time()))
            else:
                await asyncio.sleep(0)
            if server._next != index or self.writer.is_closing():
                return  # another connection took over
            if server.half_open_after_frames == index:
                server.half_open_after_frames = None
                self.silent = True  # socket stays open, nothing more is said
                return
            if server.drop_after_frames == index:
                server.drop_after_frames = None
                for _ in range(min(server.gap_frames, len(server.frames) - index)):
                    server._advance()  # happened on the PBX while nobody listened
                server._down_until = loop.time() + server.down_for
                self.writer.close()
                return
            if index in server.inject:
                await self.send(server.inject[index])
            split = server.split_at[1] if server.split_at and server.split_at[0] == index \
                else None
            if server.speed > 0 and split is None:
                await self._send_due(base, loop.time())
            else:  # as fast as possible: one frame per turn of the loop, actions answered
                await self.send_event(frame.raw, split)
                server._advance()

    async def _send_due(self, base: float, now: float) -> None:
        """Send the next frame and those due with it in one write, as Asterisk's burst of
        events after simultaneous hangups reaches the socket: the frames are stamped
        (`on_frame`) when they go, not after the writes of every frame before them."""
        server = self.server
        async with self.lock:
            batch: list[bytes] = []
            size = 0
            first = server._next
            while server._next < len(server.frames) and size < _MAX_BURST_BYTES:
                index = server._next
                frame = server.frames[index]
                if index != first and (index in server.inject or index in (
                        server.half_open_after_frames, server.drop_after_frames)
                        or (server.split_at and server.split_at[0] == index)
                        or base + frame.offset / server.speed > now):
                    break
                if self._passes(frame.raw):
                    batch.append(frame.raw)
                    size += len(frame.raw)
                server._advance()
            self.writer.write(b"".join(batch))
            await self.writer.drain()

    def close(self) -> None:
        if self.replay is not None:
            self.replay.cancel()
        self.writer.close()
