"""The SMPP sender: one account at the carrier's SMSC, on the event loop.

Every PDU is built and read by smpplib's codec (`smpplib.smpp.make_pdu` / `parse_pdu`);
smpplib's blocking Client is not used. The bytes travel over asyncio streams. Nothing here
touches the store: the service decides what a result or an event means.

The link's life. `start()` runs one task, `_run`, until `stop()`. It opens a TCP
connection (`asyncio.open_connection`, TCP_NODELAY: a submit is a small PDU that Nagle's
algorithm would hold back) and binds: one bind_transceiver, or a bind_transmitter and a
bind_receiver on two connections (smpp.bind_mode). The bound link (`_Link`) then runs a
few tasks: one per connection reads PDUs (a 4-byte length, then the rest) and handles each
as it comes; one writes the submits; one sends enquire_link every smpp.enquire_link seconds
and calls the link dead when an answer has not come within smpp.response_timeout; one
releases long replies whose missing parts never came. The first task to end ends the link:
the SMSC closed the connection or unbound (its unbind answered), the link went dead, the
stream broke, or the sender stops (it unbinds, and waits a moment for the answer). Then
`_run` waits and binds again: smpp.reconnect_min at first, doubled after each failed
attempt up to min(smpp.reconnect_max, REBIND_MAX_WAIT), ±20 % of jitter, so that sending
resumes within seconds of an SMSC's return however long it was away. A bind the SMSC
refuses (`auth_failed`: a person must fix the account) is retried more slowly, up to
smpp.reconnect_max.

The window. `submit()` queues a text (split into parts by `sms.split`); its submit_sm go
out, one per part, while fewer than smpp.window are outstanding. Each is matched to its
submit_sm_resp (or generic_nack) by sequence number. A text's result comes once all its
parts are answered, or at the first that fails (its remaining parts are then not sent). A
submit_sm unanswered after smpp.response_timeout is a timeout; one still outstanding when
the link drops is `unbound` and `in_doubt`.

The rate. A token bucket: smpp.throughput submits per second, holding 50 ms worth (at
least one), a smooth flow, since some SMSCs (Jasmin) throttle on the gap between two
submits. ESME_RTHROTTLED or ESME_RMSGQFUL halves the rate for THROTTLE_BACKOFF seconds.
smpp.throughput is the account's: with several daemons sharing a store, each sends its share
(`share_throughput`, from the daemons' heartbeats).

Acknowledgement after storage. A deliver_sm (a receipt, a reply, a STOP) is not answered
when it arrives: what it says goes on the events queue with `acknowledge` set to a function
that writes its deliver_sm_resp, on the connection that brought it. The service calls it
once what the event says is stored (on the event loop). Until then the SMSC keeps the
message: if the daemon dies, or the link drops first (`acknowledge` then does nothing),
the SMSC delivers it again after the next bind. A reply in several parts is held until
it is whole, or until its missing parts are given up on (`sms.Reassembler`); its
`acknowledge` answers every part. A deliver_sm that tells nothing usable is refused at once
(see `_Link._refuse`).

Result outcomes and what the service does with them:

    submitted   all parts accepted; their message ids come back, one per part
    throttled   ESME_RTHROTTLED / ESME_RMSGQFUL: retried later; the sender halves its rate
    temporary   any other error status: retried with backoff
    permanent   PERMANENT_STATUSES (bad destination, bad source, bad length...), or an
                address SMPP cannot carry (refused here, never sent): not retried
    timeout     no submit_sm_resp within smpp.response_timeout: retried, as a duplicate risk
    unbound     not bound, or the link dropped with the submit in flight: retried (as a
                duplicate risk when its submit_sm had gone out unanswered: `in_doubt`)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from smpplib import consts, exceptions, smpp

from mcdaemon.config.model import MAX_ADDRESS, SmppConfig
from mcdaemon.core import sms
from mcdaemon.core.daemons import throughput_share
from mcdaemon.core.outbox import SubmitResult
from mcdaemon.core.receipts import (
    DeliveryReceipt,
    no_acknowledgement,
    parse_receipt,
    receipt_text,
)
from mcdaemon.core.sender_id import source_numbering

# smpplib's own stdlib log records go through mcdaemon.logs (its per-PDU notes at DEBUG)
log = structlog.get_logger("mcdaemon.smpp")

ESME_RINVCMDID = 0x03
ESME_RSYSERR = 0x08
ESME_RMSGQFUL = 0x14
ESME_RTHROTTLED = 0x58
ESME_RX_P_APPN = 0x64  # "ESME receiver permanent app error": see _Link._refuse
#: statuses that no retry can fix
PERMANENT_STATUSES = frozenset({
    0x01,  # ESME_RINVMSGLEN
    0x0A,  # ESME_RINVSRCADR
    0x0B,  # ESME_RINVDSTADR
    0x43,  # ESME_RINVESMCLASS
    0x48, 0x49,  # ESME_RINVSRCTON, ESME_RINVSRCNPI
    0x50, 0x51,  # ESME_RINVDSTTON, ESME_RINVDSTNPI
    0x61, 0x62,  # ESME_RINVSCHED, ESME_RINVEXPIRY
    0x104,  # ESME_RINVDCS (SMPP 5)
    0xC2,  # ESME_RINVPARLEN
})
#: bind answers that mean the account is wrong: ESME_RBINDFAIL, ESME_RINVPASWD, ESME_RINVSYSID
BIND_REFUSALS = frozenset({0x0D, 0x0E, 0x0F})
THROTTLE_BACKOFF = 10.0  # seconds at a reduced rate after ESME_RTHROTTLED / ESME_RMSGQFUL
MIN_RATE = 0.2  # submits per second, however often the SMSC throttles
#: the longest wait between two attempts to reach the SMSC (±20 %), whatever
#: smpp.reconnect_max says: the SMSC must be used again soon after an outage
REBIND_MAX_WAIT = 10.0  # seconds
UNBIND_WAIT = 1.0  # seconds for the SMSC to answer our unbind when the sender stops
REPLY_CHECK = 5.0  # seconds between two looks for long replies whose parts stopped coming
_MAX_PDU = 65536  # bytes; anything longer means the stream is out of step
_RESPONSE = 0x80000000  # command_id bit of every response
_DELIVER_SM = 0x00000005




@dataclass(frozen=True, slots=True)
class MobileOriginated:
    source: str
    destination: str
    text: str
    at: float
    #: answers the deliver_sm(s) that carried it: called once the reply is stored
    acknowledge: Callable[[], None] = field(default=no_acknowledgement, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class BindState:
    state: str
    detail: str
    at: float


SmppEvent = DeliveryReceipt | MobileOriginated | BindState


_STATUS_NAMES = {value: name.removeprefix("SMPP_") for name, value in vars(consts).items()
                 if name.startswith("SMPP_ESME_R") and isinstance(value, int)}


def status_name(status: int) -> str:
    """`ESME_RINVDSTADR (0x0B, Invalid Destination Address)`: what an administrator can search."""
    name = _STATUS_NAMES.get(status, "status")
    description = consts.DESCRIPTIONS.get(status, "unknown to SMPP 3.4")
    return f"{name} (0x{status:02X}, {description})"


def address_problem(field_name: str, address: str) -> str | None:
    """Why SMPP cannot carry this address, or None. smpplib would cut a long one silently
    and send a NUL inside one as is. The complaint leaves the address out: a destination is
    a caller's number."""
    if len(address) > MAX_ADDRESS:
        return f"{field_name} has {len(address)} characters; SMPP allows {MAX_ADDRESS}"
    try:
        address.encode("latin-1")  # as smpplib encodes it
    except UnicodeEncodeError:
        return f"{field_name} has characters an SMPP address cannot carry (it is sent as latin-1)"
    if "\0" in address:
        return f"{field_name} contains a NUL, which would end it early"
    return None


class _Numbering:
    """What smpplib's PDU classes want of a client: the next sequence number of a request."""

    def __init__(self) -> None:
        self._last = 0

    def next_sequence(self) -> int:
        self._last = self._last % 0x7FFFFFFF + 1  # SMPP 3.4: 1..0x7FFFFFFF, then round again
        return self._last


class _Reading:
    """The client smpplib wants while parsing: the sequence number comes from the PDU."""

    def next_sequence(self) -> int:
        return 0


_READING = _Reading()


def _answer(command: str, sequence: int, status: int = 0) -> bytes:
    """A response PDU (no body fields of ours) to the request numbered `sequence`."""
    pdu = smpp.make_pdu(command, client=_READING, status=status)
    pdu.sequence = sequence
    return bytes(pdu.generate())


def _header(raw: bytes) -> tuple[int, int, int]:
    """(command_id, command_status, sequence_number): for a PDU smpplib cannot parse."""
    command_id, status, sequence = struct.unpack_from(">III", raw, 4)
    return command_id, status, sequence


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip("\0")
    return str(value or "").strip("\0")


@dataclass(eq=False)
class _Job:
    destination: str
    encoded: sms.EncodedSms
    future: asyncio.Future[SubmitResult]
    ids: list[str] = field(default_factory=list)
    sent: int = 0
    answered: int = 0


@dataclass(frozen=True, slots=True)
class _Outstanding:
    """A submit_sm out, waiting for its answer."""

    job: _Job
    part: int
    sent_at: float  # monotonic
    timer: asyncio.TimerHandle  # its response timeout


class SmppSender:
    """One SMSC account: `start()`, then `submit()` texts; events arrive on the queue."""

    def __init__(self, config: SmppConfig,
                 events: asyncio.Queue[DeliveryReceipt | MobileOriginated | BindState]) -> None:
        self.config = config
        self._events = events
        self._state = "down"
        self._accept = True
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waiting: deque[_Job] = deque()  # texts with parts not yet sent, in order
        self._wakeup = asyncio.Event()  # a text came, or a slot of the window freed
        self._in_flight = 0
        self._slow_factor = 1.0  # < 1 for THROTTLE_BACKOFF s after the SMSC said "throttled"
        self._slow_until = 0.0
        self._slowed_at = float("-inf")  # monotonic time of the last halving
        self._throughput = config.throughput  # this daemon's share of smpp.throughput

    @property
    def state(self) -> str:
        return self._state

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def throughput(self) -> float:
        """Submits per second this daemon may send: its share of smpp.throughput."""
        return self._throughput

    def share_throughput(self, daemons_alive: int) -> None:
        """smpp.throughput is the account's limit: `daemons_alive` daemons (this one
        included) share it equally."""
        self._throughput = throughput_share(self.config.throughput, daemons_alive)

    @property
    def rate(self) -> float:
        """Submits per second allowed now: this daemon's throughput, less while the SMSC
        throttles us."""
        if time.monotonic() < self._slow_until:
            return max(MIN_RATE, self._throughput * self._slow_factor)
        self._slow_factor = 1.0
        return self._throughput

    def _throttled(self, sent_at: float) -> None:
        """Halve the rate, once per burst: the other answers to submits sent before the last
        halving tell nothing new (a full window of them would otherwise divide it by 2^10)."""
        if sent_at < self._slowed_at:
            return
        self._slowed_at = time.monotonic()
        self._slow_factor = max(1 / 64, self._slow_factor / 2)
        self._slow_until = self._slowed_at + THROTTLE_BACKOFF
        log.warning("SMSC throttles us: slowing down", rate=round(self.rate, 2),
                    for_seconds=THROTTLE_BACKOFF)

    # ---------------------------------------------------------------- the caller's side

    async def start(self) -> None:
        """Start binding (in the background): returns at once, the SMSC up or not."""
        self._task = asyncio.create_task(self._run(), name="smpp")

    async def stop(self, timeout: float = 5.0) -> None:
        """Take no more texts, wait up to `timeout` for those in flight, unbind, close."""
        self._accept = False
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._stopping.set()
        if self._task is None:
            return
        await asyncio.wait({self._task}, timeout=max(0.5, deadline - time.monotonic()))
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, destination: str, text: str, *, reference: int) -> SubmitResult:
        """Submit one text (all its parts) and wait for the SMSC's answers. Cancelling this
        gives up on the text if none of it went out yet."""
        return await self.submit_soon(destination, text, reference=reference)

    def submit_soon(self, destination: str, text: str, *,
                    reference: int) -> asyncio.Future[SubmitResult]:
        """`submit` without a coroutine of its own (the daemon sends hundreds at once): the
        future of the result. Cancelling it gives up on the text, as cancelling `submit`."""
        future: asyncio.Future[SubmitResult] = asyncio.get_running_loop().create_future()
        refused = self._refusal(destination, text, reference)
        if isinstance(refused, SubmitResult):
            future.set_result(refused)
            return future
        self._waiting.append(_Job(destination.lstrip("+"), refused, future))
        self._in_flight += 1
        future.add_done_callback(self._job_settled)
        self._wakeup.set()
        return future

    def _refusal(self, destination: str, text: str,
                 reference: int) -> SubmitResult | sms.EncodedSms:
        """The result at once if the text cannot go, else its parts."""
        if self._state != "bound" or not self._accept:
            return SubmitResult("unbound", detail=f"not bound to the SMSC ({self._state})")
        problem = address_problem("destination_addr", destination.lstrip("+")) or \
            address_problem("source_addr", source_numbering(self.config)[0])
        if problem:
            return SubmitResult("permanent", detail=problem)
        try:
            encoded = sms.split(text, reference=reference,
                                gsm_data_coding=self.config.data_coding_gsm)
        except ValueError as exc:  # more than 255 parts: no SMS can carry it
            return SubmitResult("permanent", detail=str(exc))
        if len(encoded.parts) > self.config.max_parts:
            return SubmitResult("permanent", detail=f"{len(encoded.parts)} SMS parts; "
                                f"smpp.max_parts is {self.config.max_parts}")
        return encoded

    def _job_settled(self, _future: asyncio.Future[SubmitResult]) -> None:
        self._in_flight -= 1  # a cancelled job still waiting is dropped when its turn comes

    # ---------------------------------------------------------------- for the link

    def _emit(self, event: SmppEvent) -> None:
        self._events.put_nowait(event)

    def _set_state(self, state: str, detail: str) -> bool:
        """Record a state; tell the service. False when it was the state already."""
        if state == self._state:
            return False
        self._state = state
        self._emit(BindState(state, detail, time.time()))
        return True

    @staticmethod
    def _finish(job: _Job, result: SubmitResult) -> None:
        if not job.future.done():
            job.future.set_result(result)

    def _fail_waiting(self, detail: str) -> None:
        while self._waiting:
            self._finish(self._waiting.popleft(), SubmitResult("unbound", detail=detail))

    # ---------------------------------------------------------------- binding, again and again

    async def _run(self) -> None:
        smsc = f"{self.config.host}:{self.config.port}"
        delay = self.config.reconnect_min
        retrying = False  # the last attempt failed: its line was logged, say nothing more
        try:
            while not self._stopping.is_set():
                if not retrying and self._set_state("binding", f"binding to {smsc}"):
                    log.info("Binding to the SMSC", smsc=smsc, mode=self.config.bind_mode)
                link = _Link(self)
                try:
                    await link.bind()
                except asyncio.CancelledError:
                    link.close()
                    raise
                except _BindRefused as exc:
                    link.close()
                    delay = max(delay, self.config.reconnect_max / 4)  # a person must act
                    wait = _jitter(delay)
                    if self._set_state("auth_failed", str(exc)):
                        # "SMSC host:port refused the bind as 'id' (...): check ..."
                        log.error(f"SMSC {exc}", retry_in=round(wait, 1))
                    retrying = True
                    await self._pause(wait)
                    delay = min(self.config.reconnect_max, delay * 2)
                    continue
                except Exception as exc:  # whatever the SMSC does, keep trying
                    link.close()
                    wait = _jitter(delay)
                    why = _describe(exc)
                    if self._set_state("down", f"cannot bind: {why}"):
                        log.warning("Cannot bind to the SMSC: check smpp.host and smpp.port, "
                                    "and that the SMSC is up; retrying", smsc=smsc,
                                    error=why, retry_in=round(wait, 1))
                    retrying = True
                    await self._pause(wait)
                    delay = self._longer(delay)
                    continue
                delay, retrying = self.config.reconnect_min, False
                self._set_state("bound", f"bound to {smsc} as {self.config.system_id} "
                                         f"({self.config.bind_mode})")
                log.info("SMSC bound", smsc=smsc, mode=self.config.bind_mode)
                reason = await link.serve(self._stopping)
                self._set_state("down", reason)
                self._fail_waiting(reason)
                if self._stopping.is_set():
                    log.info("SMSC unbound: the sender stops", smsc=smsc)
                    break
                wait = _jitter(delay)
                log.warning("SMSC link lost: binding again", smsc=smsc, reason=reason,
                            retry_in=round(wait, 1))
                await self._pause(wait)
                delay = self._longer(delay)
        finally:
            self._fail_waiting("the sender stopped")

    def _longer(self, delay: float) -> float:
        """The wait after the next failure to reach the SMSC: doubled, at most
        min(smpp.reconnect_max, REBIND_MAX_WAIT)."""
        return min(self.config.reconnect_max, REBIND_MAX_WAIT, delay * 2)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the SMSC closed the connection"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


class _BindRefused(Exception):
    pass


class _LinkBroken(Exception):
    pass


class _Connection:
    """One TCP connection of a link, bound as `mode` (bind_transceiver, ...)."""

    def __init__(self, mode: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.mode = mode
        self.reader = reader
        self.writer = writer
        self.open = True

    def write(self, data: bytes) -> None:
        """Write PDU bytes; nothing once the link is gone (a late acknowledgement)."""
        if self.open and not self.writer.is_closing():
            self.writer.write(data)

    async def read_pdu(self) -> bytes:
        head = await self.reader.readexactly(4)
        length = int.from_bytes(head, "big")
        if not 16 <= length <= _MAX_PDU:
            raise _LinkBroken(f"a PDU of {length} bytes: the stream is out of step")
        return head + await self.reader.readexactly(length - 4)

    def close(self) -> None:
        self.open = False
        self.writer.close()


class _Link:
    """One bound session (one or two connections) until it drops; see the module docstring."""

    def __init__(self, sender: SmppSender) -> None:
        self.sender = sender
        self.config = sender.config
        self.numbering = _Numbering()  # one sequence space for the link's requests
        self.connections: list[_Connection] = []
        self.outstanding: dict[int, _Outstanding] = {}  # sequence -> submit_sm out
        self.tokens = max(1.0, sender.rate / 20)  # full bucket: see _refill
        self.last_refill = time.monotonic()
        self.enquire_pending: set[int] = set()  # our enquire_link not yet answered
        self.unbind_pending: set[int] = set()
        self.unbind_answered = asyncio.Event()
        #: parts of long replies, each tagged with the answer to its deliver_sm. Not answered,
        #: so the link may forget them: the SMSC delivers them again after the next bind.
        self.replies: sms.Reassembler[Callable[[], None]] = sms.Reassembler()

    def _request(self, command: str, **fields: Any) -> Any:
        return smpp.make_pdu(command, client=self.numbering, **fields)

    # ---------------------------------------------------------------- bind and close

    async def bind(self) -> None:
        modes = (["bind_transceiver"] if self.config.bind_mode == "transceiver"
                 else ["bind_transmitter", "bind_receiver"])
        timeout = max(self.config.response_timeout, 5.0)
        for mode in modes:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.config.host, self.config.port), timeout)
            connection = _Connection(mode, reader, writer)
            self.connections.append(connection)
            sock = writer.get_extra_info("socket")
            if sock is not None:  # submits are small PDUs written one after another
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = self._request(mode, system_id=self.config.system_id,
                                    password=self.config.password,
                                    system_type=self.config.system_type)
            connection.write(request.generate())
            status = await asyncio.wait_for(self._bind_answer(connection, request.sequence),
                                            timeout)
            if status in BIND_REFUSALS:
                raise _BindRefused(
                    f"{self.config.host}:{self.config.port} refused the bind as "
                    f"{self.config.system_id!r} ({status_name(status)}): check "
                    "smpp.system_id / smpp.password")
            if status:
                raise _LinkBroken(f"the SMSC answered {mode} with {status_name(status)}")

    async def _bind_answer(self, connection: _Connection, sequence: int) -> int:
        """The status of the answer to our bind (what else comes first is skipped)."""
        while True:
            pdu = smpp.parse_pdu(await connection.read_pdu(), client=_READING,
                                 allow_unknown_opt_params=True)
            if pdu.sequence == sequence and pdu.command in (f"{connection.mode}_resp",
                                                            "generic_nack"):
                return int(pdu.status)
            if pdu.command == "enquire_link":
                connection.write(_answer("enquire_link_resp", pdu.sequence))

    def close(self) -> None:
        for connection in self.connections:
            connection.close()

    # ---------------------------------------------------------------- the bound link

    async def serve(self, stopping: asyncio.Event) -> str:
        """Run until the link drops or the sender stops; return why."""
        tasks = [asyncio.create_task(self._reading(connection))
                 for connection in self.connections]
        tasks += [asyncio.create_task(self._sending()), asyncio.create_task(self._keepalive()),
                  asyncio.create_task(self._expiring_replies())]
        stop = asyncio.create_task(stopping.wait())
        reason = "the sender stopped"
        try:
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            ended = [task for task in tasks if task in done]
            if ended:
                reason = self._why(ended[0])
            else:
                await self._unbind()
        finally:  # also when the sender's task is cancelled
            for task in [*tasks, stop]:
                task.cancel()
            await asyncio.gather(*tasks, stop, return_exceptions=True)
            self._fail_outstanding(reason)
            self.close()
        return reason

    @staticmethod
    def _why(task: asyncio.Task[str]) -> str:
        exc = task.exception()
        if exc is None:
            return task.result()
        if isinstance(exc, asyncio.IncompleteReadError):
            return "the SMSC closed the connection"
        if isinstance(exc, _LinkBroken):
            return str(exc)
        if isinstance(exc, OSError):
            return f"connection lost ({exc or type(exc).__name__})"
        log.error("SMPP link failed unexpectedly: binding again", exc_info=exc)
        return f"unexpected error ({exc!r})"

    async def _unbind(self) -> None:
        for connection in self.connections:
            request = self._request("unbind")
            self.unbind_pending.add(request.sequence)
            connection.write(request.generate())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.unbind_answered.wait(), UNBIND_WAIT)

    def _fail_outstanding(self, detail: str) -> None:
        for out in self.outstanding.values():
            out.timer.cancel()
            self.sender._finish(out.job, SubmitResult(
                "unbound", detail=f"{detail} (the submit was out: it may have been taken)",
                in_doubt=True))
        self.outstanding.clear()

    # ---------------------------------------------------------------- sending

    async def _sending(self) -> str:
        """Write the submits the window and the rate allow, then wait for more to."""
        transmitter = self.connections[0]
        wakeup = self.sender._wakeup
        while True:
            wakeup.clear()
            wait = self._send_due(transmitter)
            await transmitter.writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), wait)

    def _refill(self) -> float:
        """Add the tokens earned since the last refill; return the current rate.

        The bucket holds 50 ms worth of submits (at least one): a smooth flow, since some
        SMSCs (Jasmin) throttle on the gap between two submits rather than per second."""
        now = time.monotonic()
        rate = self.sender.rate
        self.tokens = min(max(1.0, rate / 20), self.tokens + (now - self.last_refill) * rate)
        self.last_refill = now
        return rate

    def _send_due(self, transmitter: _Connection) -> float | None:
        """Write the submit_sm due now; return how long until the rate allows the next one
        (None: nothing can go until a text comes or an answer frees the window)."""
        waiting = self.sender._waiting
        source, ton, npi = source_numbering(self.config)
        loop = asyncio.get_running_loop()
        while waiting and len(self.outstanding) < self.config.window:
            job = waiting[0]
            if job.future.cancelled() and job.sent == 0:  # the caller gave up on it
                waiting.popleft()
                continue
            rate = self._refill()
            if self.tokens < 1.0:
                return (1.0 - self.tokens) / rate
            part = job.sent
            pdu = self._request(
                "submit_sm", service_type="", source_addr_ton=ton, source_addr_npi=npi,
                source_addr=source, dest_addr_ton=1, dest_addr_npi=1,  # E.164 without '+'
                destination_addr=job.destination, esm_class=job.encoded.esm_class,
                registered_delivery=1 if self.config.registered_delivery else 0,
                data_coding=job.encoded.data_coding, short_message=job.encoded.parts[part])
            transmitter.write(pdu.generate())
            self.tokens -= 1.0
            job.sent += 1
            job.ids.append("")
            timer = loop.call_later(self.config.response_timeout, self._timed_out, pdu.sequence)
            self.outstanding[pdu.sequence] = _Outstanding(job, part, time.monotonic(), timer)
            if job.sent == len(job.encoded.parts):
                waiting.popleft()
        return None

    def _timed_out(self, sequence: int) -> None:
        out = self.outstanding.pop(sequence, None)
        if out is None:
            return
        self._drop_waiting(out.job)  # its remaining parts would make no whole text
        self.sender._finish(out.job, SubmitResult(
            "timeout", detail=f"no submit_sm_resp within {self.config.response_timeout:g} s",
            in_doubt=True))
        self.sender._wakeup.set()

    def _answered(self, sequence: int, status: int, message_id: str, *,
                  nack: bool = False) -> None:
        """Settle the submit_sm `sequence` from its submit_sm_resp (or generic_nack)."""
        out = self.outstanding.pop(sequence, None)
        if out is None:
            return  # a late answer to a submit that timed out already
        out.timer.cancel()
        self.sender._wakeup.set()  # a slot of the window is free
        job = out.job
        if status or nack:
            if status in (ESME_RTHROTTLED, ESME_RMSGQFUL):
                self.sender._throttled(sent_at=out.sent_at)
                outcome = "throttled"
            elif status in PERMANENT_STATUSES:
                outcome = "permanent"
            else:
                outcome = "temporary"
            self._drop_waiting(job)
            self.sender._finish(job, SubmitResult(
                outcome, status=status,
                detail=status_name(status) if status else "generic_nack without a status"))
            return
        job.ids[out.part] = message_id
        job.answered += 1
        if job.answered == len(job.encoded.parts):
            self.sender._finish(job, SubmitResult("submitted", smsc_ids=tuple(job.ids)))

    def _drop_waiting(self, job: _Job) -> None:
        with contextlib.suppress(ValueError):
            self.sender._waiting.remove(job)

    # ---------------------------------------------------------------- keeping the link alive

    async def _keepalive(self) -> str:
        """enquire_link on every connection, every smpp.enquire_link seconds: a link that
        does not answer within smpp.response_timeout is dead."""
        while True:
            await asyncio.sleep(self.config.enquire_link)
            for connection in self.connections:
                request = self._request("enquire_link")
                self.enquire_pending.add(request.sequence)
                connection.write(request.generate())
            await asyncio.sleep(self.config.response_timeout)
            if self.enquire_pending:
                return "no answer to enquire_link: the link is dead"

    async def _expiring_replies(self) -> str:
        while True:
            await asyncio.sleep(REPLY_CHECK)
            for released in self.replies.expire(time.time()):
                self._emit_reply(released, time.time())  # parts missing: what came, not lost

    # ---------------------------------------------------------------- receiving

    async def _reading(self, connection: _Connection) -> str:
        while True:
            if not self._handle(connection, await connection.read_pdu()):
                return "the SMSC unbound"

    def _handle(self, connection: _Connection, raw: bytes) -> bool:
        """Handle one PDU from the SMSC; False when it unbinds."""
        command_id, _status, sequence = _header(raw)
        try:
            pdu = smpp.parse_pdu(raw, client=_READING, allow_unknown_opt_params=True)
        except exceptions.UnknownCommandError:
            if command_id & _RESPONSE:
                log.warning("The SMSC answered with a command smpplib does not know: ignored",
                            command_id=f"0x{command_id:08X}")
            else:  # SMPP 3.4 §2.3: a request that cannot be handled gets a generic_nack
                connection.write(_answer("generic_nack", sequence, ESME_RINVCMDID))
                log.warning("The SMSC sent a command smpplib does not know: answered with "
                            "generic_nack", command_id=f"0x{command_id:08X}")
            return True
        except Exception as exc:  # the PDU's length held, so the stream is still in step
            if command_id == _DELIVER_SM:
                log.warning("The SMSC sent a deliver_sm smpplib cannot parse: refused; if it "
                            "repeats, ask the carrier what it sends", sequence=sequence,
                            length=len(raw), error=type(exc).__name__)
                self._refuse(connection, sequence)
            elif command_id & _RESPONSE:
                log.warning("The SMSC sent an answer smpplib cannot parse: ignored",
                            command_id=f"0x{command_id:08X}", error=type(exc).__name__)
            else:
                connection.write(_answer("generic_nack", sequence, ESME_RSYSERR))
                log.warning("The SMSC sent a request smpplib cannot parse: answered with "
                            "generic_nack", command_id=f"0x{command_id:08X}",
                            error=type(exc).__name__)
            return True
        command = pdu.command
        if command == "submit_sm_resp":
            self._answered(pdu.sequence, int(pdu.status), _text(pdu.message_id).strip())
        elif command == "generic_nack":
            self._answered(pdu.sequence, int(pdu.status), "", nack=True)
            self.enquire_pending.discard(pdu.sequence)  # a nack is an answer: the link lives
        elif command == "deliver_sm":
            self._delivered(connection, pdu)
        elif command == "enquire_link":
            connection.write(_answer("enquire_link_resp", pdu.sequence))
        elif command == "enquire_link_resp":
            self.enquire_pending.discard(pdu.sequence)
        elif command == "unbind":
            connection.write(_answer("unbind_resp", pdu.sequence))
            return False
        elif command == "unbind_resp":
            self.unbind_pending.discard(pdu.sequence)
            if not self.unbind_pending:
                self.unbind_answered.set()
        elif not command_id & _RESPONSE and command != "alert_notification":
            connection.write(_answer("generic_nack", pdu.sequence, ESME_RINVCMDID))
            log.warning("The SMSC sent a request mcdaemon does not handle: answered with "
                        "generic_nack", command=command)
        return True

    def _refuse(self, connection: _Connection, sequence: int) -> None:
        """Answer a deliver_sm that tells nothing usable with ESME_RX_P_APPN.

        Not answering would make the SMSC resend it forever, and ESME_ROK would tell it the
        message was taken when nothing was kept of it. ESME_RX_P_APPN ("ESME receiver
        permanent app error") is SMPP 3.4's status for exactly this: the SMSC does not
        retry, and its own records show the message was refused, not delivered."""
        connection.write(_answer("deliver_sm_resp", sequence, ESME_RX_P_APPN))

    def _acknowledgement(self, connection: _Connection, sequence: int) -> Callable[[], None]:
        """What answers the deliver_sm `sequence`, once: nothing if the link is gone by then
        (the SMSC will deliver it again)."""
        answered = False

        def acknowledge() -> None:
            nonlocal answered
            if not answered:
                answered = True
                connection.write(_answer("deliver_sm_resp", sequence))

        return acknowledge

    def _delivered(self, connection: _Connection, pdu: Any) -> None:
        """Hand over what a deliver_sm tells (a receipt or a reply), not yet answered."""
        now = time.time()
        acknowledge = self._acknowledgement(connection, pdu.sequence)
        try:
            payload = pdu.short_message or getattr(pdu, "message_payload", None) or b""
            if isinstance(payload, str):
                payload = payload.encode("latin-1")
            esm_class = int(pdu.esm_class or 0)
            if esm_class & 0x3C:  # a delivery receipt (SMSC delivery receipt or ack)
                text = receipt_text(payload, int(pdu.data_coding or 0))
                receipt = parse_receipt(text, pdu.receipted_message_id, pdu.message_state, now)
                if receipt is None:
                    log.warning("The SMSC sent a delivery receipt without a message id: "
                                "refused", sequence=pdu.sequence, length=len(text))
                    self._refuse(connection, pdu.sequence)
                    return
                self.sender._emit(dataclasses.replace(receipt, acknowledge=acknowledge))
                return
            text, udh = sms.decode(payload, int(pdu.data_coding or 0), esm_class)
            source = _text(pdu.source_addr)
            if int(pdu.source_addr_ton or 0) == 1:  # international: E.164 without its '+'
                source = "+" + source.lstrip("+")
            elif source.startswith("00") and source[2:].isdigit():  # international prefix
                source = "+" + source[2:]
            destination = _text(pdu.destination_addr)
            # a long reply comes in parts: by a UDH, or by the SAR TLVs of SMPP 3.4
            part = sms.concatenation(udh) if udh else None
            if part is None and pdu.sar_total_segments:
                part = (int(pdu.sar_msg_ref_num or 0), int(pdu.sar_total_segments or 1),
                        int(pdu.sar_segment_seqnum or 1))
            reference, total, number = part or (0, 1, 1)
            for released in self.replies.add((source, destination), reference, total, number,
                                             text, now, tag=acknowledge):
                self._emit_reply(released, now)
        except Exception as exc:  # one odd PDU must not take the link down
            log.warning("The SMSC sent a deliver_sm mcdaemon cannot read: refused",
                        sequence=pdu.sequence, error=type(exc).__name__)
            self._refuse(connection, pdu.sequence)

    def _emit_reply(self, released: sms.Released[Callable[[], None]], at: float) -> None:
        source, destination = released.sender
        self.sender._emit(MobileOriginated(source, destination, released.text, at,
                                           functools.partial(_call_all, released.tags)))


def _call_all(calls: tuple[Callable[[], None], ...]) -> None:
    for call in calls:
        call()
