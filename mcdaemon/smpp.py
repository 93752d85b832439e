"""The SMPP sender: smpplib in a thread of its own, bridged to asyncio.

smpplib is blocking and has no window, no reconnect and no answer to an SMSC's `unbind`, so
one thread owns the socket(s) and runs the link: bind (with exponential backoff), a window of
outstanding submit_sm matched to their responses by sequence number, a token-bucket rate
limit, enquire_link both ways, receipts and MO texts. The event loop talks to it through a
queue plus a wake-up socket (so a submit goes out at once, not at the next poll), and gets
results back with `call_soon_threadsafe`. Nothing here touches the store: the service decides
what a result means for a message.

Under a storm the two threads share one GIL, and every system call a thread makes costs it a
wait for the GIL afterwards (up to the interpreter's switch interval while the event loop
is busy: 5 ms by default, 0.2 ms while the daemon runs, see `service.GIL_SWITCH_INTERVAL`).
So the crossings are batched: one wake-up byte while the thread has not yet
taken the jobs, the submits that fit the window written with one `sendall`, what the SMSC
sends read in chunks and cut into PDUs here, the deliver_sm_resp of a read written together,
and then (the SMSC answered first) what the read told handed to the event loop in one
`call_soon_threadsafe`. And the thread's own work per text is kept small: the PDUs of a
storm are written and read by hand (`pdus`: a submit_sm, its submit_sm_resp or
generic_nack, a deliver_sm's header and its deliver_sm_resp; smpplib's generic machinery
cost about 120 µs per text on this thread); smpplib builds and parses the rest.

A deliver_sm is answered at once, from its header, but what it says (a receipt, a reply) is
bookkeeping: while submits are outstanding or waiting, the link keeps the raw PDUs and
parses and handles them (with smpplib, ~95 µs each) once nothing has been outstanding or
waiting for DELIVER_QUIET, or once the oldest has waited DELIVER_DEFERRAL, whichever comes
first. The SMSC will not send them again, so whatever is kept is handled before the link
goes, however it goes.

Result outcomes and what the service does with them:

    submitted   all parts accepted; their message ids come back, one per part
    throttled   ESME_RTHROTTLED / ESME_RMSGQFUL: retried later; the sender halves its rate
    temporary   any other error status: retried with backoff
    permanent   PERMANENT_STATUSES (bad destination, bad source, bad length...), or an
                address SMPP cannot carry (refused by pdus.submit_sm, never sent): not retried
    timeout     no submit_sm_resp within smpp.response_timeout: retried, as a duplicate risk
    unbound     not bound, or the link dropped with the submit in flight: retried (as a
                duplicate risk when its submit_sm had gone out unanswered: `in_doubt`)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from smpplib import consts, exceptions, smpp
from smpplib.client import Client

from . import pdus, sms
from .config import SmppConfig
from .receipts import DeliveryReceipt, _nothing, parse_receipt
from .sender_id import source_numbering

log = structlog.get_logger("mcdaemon.smpp")

ESME_RTHROTTLED = 0x58
ESME_RMSGQFUL = 0x14
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
_POLL = 0.5  # the longest the thread sleeps when nothing happens
_READ_CHUNK = 65536
_MAX_PDU = 65536  # bytes; anything longer means the stream is out of step
#: the longest a deliver_sm's content (a receipt, a reply: bookkeeping) is kept unparsed while
#: submits are outstanding or waiting, so that in a storm the thread's share of the GIL goes
#: to the submits (parsing a receipt with smpplib costs ~95 µs). The same bound as the
#: service's BOOKKEEPING_DEFERRAL, which keeps receipts for the decisions in the same way.
DELIVER_DEFERRAL = 0.5  # seconds
#: ... and before that, how long nothing must have been outstanding or waiting: between two
#: batches of a storm's decisions the window empties for a moment, which is no pause
DELIVER_QUIET = 0.05  # seconds
THROTTLE_BACKOFF = 10.0  # seconds at a reduced rate after ESME_RTHROTTLED / ESME_RMSGQFUL
MIN_RATE = 0.2  # submits per second, however often the SMSC throttles


@dataclass(frozen=True, slots=True)
class SubmitResult:
    outcome: str
    smsc_ids: tuple[str, ...] = ()
    status: int | None = None
    detail: str = ""
    #: the submit_sm went out and no answer came back: the SMSC may have taken it, so a
    #: resend may reach the caller twice (a timeout, or a link that dropped mid-window)
    in_doubt: bool = False


@dataclass(frozen=True, slots=True)
class MobileOriginated:
    source: str
    destination: str
    text: str
    at: float
    #: answers the deliver_sm(s) that carried it: called once the reply is stored
    acknowledge: Callable[[], None] = field(default=_nothing, compare=False, repr=False)


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


@dataclass
class _Job:
    destination: str
    encoded: sms.EncodedSms
    future: asyncio.Future[SubmitResult]
    ids: list[str | None] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    done: bool = False
    abandoned: bool = False  # the caller gave up (cancelled) before any part went out


class SmppSender:
    """One SMSC account: `start()`, then `submit()` texts; events arrive on the queue."""

    def __init__(self, config: SmppConfig,
                 events: asyncio.Queue[DeliveryReceipt | MobileOriginated | BindState]) -> None:
        self.config = config
        self._events = events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)  # the event loop never waits on the thread
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "down"
        self._in_flight = 0
        self._accept = True
        self._slow_factor = 1.0  # < 1 for THROTTLE_BACKOFF s after the SMSC said "throttled"
        self._slow_until = 0.0
        self._slowed_at = float("-inf")  # monotonic time of the last halving
        self._replies = sms.Reassembler()  # parts of long replies; only the thread touches it
        self._woken = False  # a wake-up byte is on its way and the thread has not read it
        self._to_loop: list[Callable[[], None]] = []  # the thread's results, for the loop
        self._to_loop_lock = threading.Lock()
        self._holding = False  # the thread is reading: results wait for its answers to go

    @property
    def state(self) -> str:
        return self._state

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def rate(self) -> float:
        """Submits per second allowed now: smpp.throughput, less while the SMSC throttles us."""
        if time.monotonic() < self._slow_until:
            return max(MIN_RATE, self.config.throughput * self._slow_factor)
        self._slow_factor = 1.0
        return self.config.throughput

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

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="smpp", daemon=True)
        self._thread.start()

    async def stop(self, timeout: float = 5.0) -> None:
        self._accept = False
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, max(0.5, deadline - time.monotonic()))
        if self._thread is None or not self._thread.is_alive():
            self._wake_read.close()
            self._wake_write.close()

    async def submit(self, destination: str, text: str, *, reference: int) -> SubmitResult:
        """Submit one text (all its parts) and wait for the SMSC's answers."""
        job = self._enqueue(destination, text, reference)
        if isinstance(job, SubmitResult):
            return job
        try:
            return await job.future
        except asyncio.CancelledError:
            job.abandoned = True  # not sent if still queued: the caller thinks it was not
            raise

    def submit_soon(self, destination: str, text: str, *,
                    reference: int) -> asyncio.Future[SubmitResult]:
        """`submit` without a coroutine of its own (the daemon sends hundreds at once): the
        future of the result. Cancelling it gives up on the text, as cancelling `submit`."""
        assert self._loop is not None, "start() the sender first"
        job = self._enqueue(destination, text, reference)
        if isinstance(job, SubmitResult):
            settled: asyncio.Future[SubmitResult] = self._loop.create_future()
            settled.set_result(job)
            return settled
        return job.future

    def _enqueue(self, destination: str, text: str, reference: int) -> _Job | SubmitResult:
        """Hand the text to the thread; or the result at once if it cannot go."""
        assert self._loop is not None, "start() the sender first"
        if self._state != "bound" or not self._accept:
            return SubmitResult("unbound", detail=f"not bound to the SMSC ({self._state})")
        try:
            encoded = sms.split(text, reference=reference,
                                gsm_data_coding=self.config.data_coding_gsm)
        except ValueError as exc:  # more than 255 parts: no SMS can carry it
            return SubmitResult("permanent", detail=str(exc))
        if len(encoded.parts) > self.config.max_parts:
            return SubmitResult("permanent", detail=f"{len(encoded.parts)} SMS parts; "
                                f"smpp.max_parts is {self.config.max_parts}")
        job = _Job(destination.lstrip("+"), encoded, self._loop.create_future())
        self._in_flight += 1
        job.future.add_done_callback(functools.partial(self._job_settled, job))
        self._jobs.put(job)
        self._wake()
        return job

    def _job_settled(self, job: _Job, future: asyncio.Future[SubmitResult]) -> None:
        self._in_flight -= 1
        if future.cancelled():
            job.abandoned = True  # not sent if still queued

    def _wake(self) -> None:
        if self._woken:
            return  # the thread will take every queued job when it reads the byte on its way
        self._woken = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")

    def _woken_up(self) -> None:
        """The thread read the wake-up socket: the bytes are drained first, and only then may
        the loop send another. The other way round, a byte sent in between was drained with
        the first, `_woken` stayed set, and the next jobs slept until the SMSC spoke or
        `_POLL` passed. The jobs queued before the flag drops are taken next."""
        with contextlib.suppress(OSError):
            self._wake_read.recv(4096)
        self._woken = False

    # ---------------------------------------------------------------- bridge to the loop

    def _emit(self, event: SmppEvent) -> None:
        self._in_loop(lambda: self._events.put_nowait(event))

    def _in_loop(self, call: Callable[[], None]) -> None:
        """Run `call` in the event loop, with the others handed over since it last ran."""
        with self._to_loop_lock:
            self._to_loop.append(call)
            first = len(self._to_loop) == 1
        if first and not self._holding:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._run_handed_over)

    @contextlib.contextmanager
    def _holding_results(self) -> Iterator[None]:
        """Keep what the thread learns for the loop until the block ends (the SMSC has its
        answers by then), then hand it all over at once."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            with self._to_loop_lock:
                pending = bool(self._to_loop)
            if pending:
                self._hand_over()

    def _run_handed_over(self) -> None:
        with self._to_loop_lock:
            calls, self._to_loop = self._to_loop, []
        for call in calls:
            call()

    def _set_state(self, state: str, detail: str) -> None:
        if state != self._state:
            self._state = state
            self._emit(BindState(state, detail, time.time()))

    def _finish(self, job: _Job, result: SubmitResult) -> None:
        if job.done:
            return
        job.done = True

        def settle() -> None:
            if not job.future.done():
                job.future.set_result(result)

        self._in_loop(settle)

    # ---------------------------------------------------------------- the thread

    def _run(self) -> None:
        delay = self.config.reconnect_min
        while not self._stopping.is_set():
            link = _Link(self)
            if self._state != "auth_failed":  # keep showing why until a bind succeeds
                self._set_state("binding", f"binding to {self.config.host}:{self.config.port}")
            try:
                link.bind()
            except _BindRefused as exc:
                self._set_state("auth_failed", str(exc))
                delay = max(delay, self.config.reconnect_max / 4)  # retry slower: a person must act
                # "SMSC host:port refused the bind as 'id' (ESME_RINVPASWD ...): check ..."
                log.error(f"SMSC {exc}", retry_in=round(delay, 1))
                link.close()
                delay = self._backoff(delay)
                continue
            except Exception as exc:  # the thread must outlive any SMSC: retry instead
                self._set_state("down", f"cannot bind: {exc or type(exc).__name__}")
                log.warning("SMSC bind failed", smsc=f"{self.config.host}:{self.config.port}",
                            error=str(exc) or type(exc).__name__, retry_in=round(delay, 1))
                link.close()
                delay = self._backoff(delay)
                continue
            delay = self.config.reconnect_min
            self._set_state("bound", f"bound to {self.config.host}:{self.config.port} as "
                                     f"{self.config.system_id} ({self.config.bind_mode})")
            log.info("SMSC bound", smsc=f"{self.config.host}:{self.config.port}",
                     mode=self.config.bind_mode)
            reason = link.serve()
            self._set_state("down", reason)
            if not self._stopping.is_set():
                log.warning("SMSC link lost", reason=reason, retry_in=round(delay, 1))
                delay = self._backoff(delay)
        self._fail_queued("the sender stopped")

    def _backoff(self, delay: float) -> float:
        self._stopping.wait(delay * random.uniform(0.8, 1.2))
        self._fail_queued("not bound to the SMSC")
        return min(self.config.reconnect_max, delay * 2)

    def _fail_queued(self, detail: str) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            self._finish(job, SubmitResult("unbound", detail=detail))


class _BindRefused(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _KeptDelivery:
    """A deliver_sm answered, its content (receipt or reply) left for later: see _Link."""

    raw: bytes
    client: Client
    at: float  # wall-clock time it arrived: the time of its receipt or reply
    due: float  # monotonic time by which it is handled, storm or not


class _Link:
    """One bound session (one or two smpplib clients) until it drops.

    The deliver_sm it gets are answered at once and kept (`kept`); their content is handled
    once nothing has been outstanding or waiting for DELIVER_QUIET, or DELIVER_DEFERRAL after
    the oldest came, and in any case before `serve` returns."""

    def __init__(self, sender: SmppSender) -> None:
        self.sender = sender
        self.config = sender.config
        self.clients: list[Client] = []
        self.outstanding: dict[int, tuple[_Job, int, float]] = {}  # seq -> job, part, deadline
        self.waiting: deque[_Job] = deque()
        self.tokens = max(1.0, sender.rate / 20)  # full bucket: see _refill
        self.last_refill = time.monotonic()
        self.enquire_due = time.monotonic() + self.config.enquire_link
        self.enquire_pending: dict[int, float] = {}  # seq -> deadline
        self.buffers: dict[int, bytearray] = {}  # id(client) -> bytes of a PDU not yet whole
        self.kept: deque[_KeptDelivery] = deque()  # deliver_sm answered, not yet handled
        self.last_busy = float("-inf")  # monotonic: when submits were last out or waiting

    def _client(self) -> Client:
        client = Client(self.config.host, self.config.port,
                        timeout=max(self.config.response_timeout, 5.0),
                        allow_unknown_opt_params=True)
        client.set_error_pdu_handler(lambda pdu: None)
        client.logger.setLevel(logging.ERROR)  # its warnings duplicate ours, without context
        return client

    def bind(self) -> None:
        modes = (["bind_transceiver"] if self.config.bind_mode == "transceiver"
                 else ["bind_transmitter", "bind_receiver"])
        for mode in modes:
            client = self._client()
            self.clients.append(client)
            client.connect()
            # submits are small PDUs written one after another: without TCP_NODELAY, Nagle's
            # algorithm holds each one back until the previous one is acknowledged
            client._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                getattr(client, mode)(system_id=self.config.system_id,
                                      password=self.config.password,
                                      system_type=self.config.system_type)
            except exceptions.PDUError as exc:
                status = exc.args[1] if len(exc.args) > 1 else None
                if status in (0x0D, 0x0E, 0x0F):  # RBINDFAIL, RINVPASWD, RINVSYSID
                    raise _BindRefused(
                        f"{self.config.host}:{self.config.port} refused the bind as "
                        f"{self.config.system_id!r} ({status_name(status)}): check "
                        "smpp.system_id / smpp.password") from exc
                raise

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.disconnect()

    def serve(self) -> str:
        """Run until the link drops or the sender stops; return why."""
        reason = "stopped"
        try:
            while not self.sender._stopping.is_set():
                self._take_jobs()
                self._send_due()
                now = time.monotonic()
                if self.outstanding or self.waiting:
                    self.last_busy = now
                if self.kept and (now - self.last_busy >= DELIVER_QUIET
                                  or now >= self.kept[0].due):
                    self._handle_kept()
                timeout = self._housekeeping()
                if timeout is None:
                    reason = "no answer to enquire_link: the link is dead"
                    break
                sockets = [client._socket for client in self.clients] + \
                    [self.sender._wake_read]
                readable, _, _ = select.select(sockets, [], [], timeout)
                if self.sender._wake_read in readable:
                    self.sender._woken_up()
                for client in self.clients:
                    if client._socket in readable and not self._read(client):
                        reason = "the SMSC unbound"
                        raise _Unbound
        except _Unbound:
            pass
        except (OSError, exceptions.ConnectionError, exceptions.PDUError) as exc:
            reason = f"connection lost ({exc or type(exc).__name__})"
        except Exception as exc:  # a bug or a PDU nobody foresaw: rebind rather than die
            log.exception("SMPP link failed unexpectedly")
            reason = f"unexpected error ({exc!r})"
        self._handle_kept()  # answered already: the SMSC will not send them again
        if self.sender._stopping.is_set():
            self._unbind()
        self._fail_all("unbound", reason)
        self.close()
        return reason

    # ---------------------------------------------------------------- sending

    def _take_jobs(self) -> None:
        while True:
            try:
                self.waiting.append(self.sender._jobs.get_nowait())
            except queue.Empty:
                return

    def _refill(self) -> float:
        """Add the tokens earned since the last refill; return the current rate.

        The bucket holds 50 ms worth of submits (at least one): a smooth flow, since some
        SMSCs (Jasmin) throttle on the gap between two submits rather than per second."""
        now = time.monotonic()
        rate = self.sender.rate
        self.tokens = min(max(1.0, rate / 20), self.tokens + (now - self.last_refill) * rate)
        self.last_refill = now
        return rate

    def _send_due(self, first: Sequence[bytes] = ()) -> None:
        """Write the submits the window and the rate allow now, all in one `sendall`, after
        the PDUs `first` (answers to the transmitter's link)."""
        transmitter = self.clients[0]
        source, ton, npi = source_numbering(self.config)
        registered_delivery = 1 if self.config.registered_delivery else 0
        batch: list[bytes] = list(first)
        while self.waiting and len(self.outstanding) < self.config.window:
            self._refill()
            if self.tokens < 1.0:
                break
            job = self.waiting[0]
            if job.abandoned and job.sent == 0:
                self.waiting.popleft()
                continue
            part = job.sent
            sequence = transmitter.next_sequence()  # shared with the PDUs smpplib builds
            try:
                batch.append(pdus.submit_sm(
                    sequence, source=source, source_ton=ton, source_npi=npi,
                    destination=job.destination, short_message=job.encoded.parts[part],
                    data_coding=job.encoded.data_coding, esm_class=job.encoded.esm_class,
                    registered_delivery=registered_delivery))
            except ValueError as exc:  # an address SMPP cannot carry: no retry would help
                self.waiting.popleft()
                self.sender._finish(job, SubmitResult("permanent", detail=str(exc)))
                continue
            self.tokens -= 1.0
            job.sent += 1
            job.ids.append(None)
            self.outstanding[sequence] = (job, part,
                                          time.monotonic() + self.config.response_timeout)
            if job.sent == len(job.encoded.parts):
                self.waiting.popleft()
        _write(transmitter, batch)

    def _housekeeping(self) -> float | None:
        """Time out submits and enquire_links; return how long select may wait (None: dead)."""
        for sender, text, _complete in self.sender._replies.expire(time.time()):
            self._emit_reply(sender, text, time.time())  # parts missing: what came, not lost
        now = time.monotonic()
        for sequence, (job, _part, deadline) in list(self.outstanding.items()):
            if now >= deadline:
                del self.outstanding[sequence]
                self._drop_waiting(job)  # its remaining parts would make no whole text
                self.sender._finish(job, SubmitResult(
                    "timeout", detail=f"no submit_sm_resp within "
                                      f"{self.config.response_timeout:g} s", in_doubt=True))
        if any(now >= deadline for deadline in self.enquire_pending.values()):
            return None
        if now >= self.enquire_due:
            for client in self.clients:
                pdu = smpp.make_pdu("enquire_link", client=client)
                client.send_pdu(pdu)
                self.enquire_pending[pdu.sequence] = now + self.config.response_timeout
            self.enquire_due = now + self.config.enquire_link
        waits = [self.enquire_due - now, _POLL]
        waits += [deadline - now for _, _, deadline in self.outstanding.values()]
        if self.kept:
            waits.append(min(self.kept[0].due, self.last_busy + DELIVER_QUIET) - now)
        if self.waiting and len(self.outstanding) < self.config.window:
            rate = self._refill()
            waits.append(max(0.0, (1.0 - self.tokens) / rate))
        return max(0.0, min(waits))

    # ---------------------------------------------------------------- receiving

    def _read(self, client: Client) -> bool:
        """Read what the SMSC sent (several PDUs at once, often) and handle each whole PDU;
        False when it unbinds."""
        try:
            data = client._socket.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return True
        except OSError as exc:
            raise exceptions.ConnectionError(f"cannot read from the SMSC: {exc}") from exc
        if not data:
            raise exceptions.ConnectionError("the SMSC closed the connection")
        buffer = self.buffers.setdefault(id(client), bytearray())
        buffer += data
        answers: list[bytes] = []  # deliver_sm_resp of this read, written together
        with self.sender._holding_results():  # the SMSC gets its answers first
            try:
                bound = self._handle_buffered(client, buffer, answers)
            except BaseException:
                _write(client, answers)
                raise
            if bound and client is self.clients[0]:  # the submits its answers freed a slot
                self._take_jobs()  # for go out with the deliver_sm_resps, before the results
                self._send_due(answers)  # go to the loop: each system call costs a GIL wait
            else:  # (a receiver's link gets no submit_sm_resp)
                _write(client, answers)
            return bound

    def _handle_buffered(self, client: Client, buffer: bytearray, answers: list[bytes]) -> bool:
        """Handle the whole PDUs in `buffer`. A storm's PDUs (submit_sm_resp, generic_nack,
        deliver_sm) are told apart by their header and answered without smpplib; it parses
        the rest."""
        while len(buffer) >= 4:
            length = int.from_bytes(buffer[:4], "big")
            if length < 16 or length > _MAX_PDU:
                raise exceptions.PDUError(f"a PDU of {length} bytes: the stream is broken")
            if len(buffer) < length:
                break
            raw = bytes(buffer[:length])
            del buffer[:length]
            command_id, status, sequence = pdus.header(raw)
            if command_id == pdus.SUBMIT_SM_RESP:
                self._submit_answered(sequence, status, pdus.message_id(raw))
            elif command_id == pdus.GENERIC_NACK:
                self._submit_answered(sequence, status, "", nack=True)
            elif command_id == pdus.DELIVER_SM:
                answers.append(pdus.deliver_sm_resp(sequence))
                self.kept.append(_KeptDelivery(raw, client, time.time(),
                                               time.monotonic() + DELIVER_DEFERRAL))
            else:
                try:
                    pdu = smpp.parse_pdu(raw, client=client, allow_unknown_opt_params=True)
                except exceptions.UnknownCommandError as exc:  # cut whole: the framing holds
                    log.warning("SMSC sent a PDU smpplib does not know: ignored",
                                error=str(exc))
                    continue
                if not self._handle(client, pdu):
                    return False
        return True

    def _handle(self, client: Client, pdu: Any) -> bool:
        command = pdu.command
        if command == "enquire_link":
            answer = smpp.make_pdu("enquire_link_resp", client=client)
            answer.sequence = pdu.sequence
            client.send_pdu(answer)
        elif command == "enquire_link_resp":
            self.enquire_pending.pop(pdu.sequence, None)
        elif command == "unbind":
            answer = smpp.make_pdu("unbind_resp", client=client)
            answer.sequence = pdu.sequence
            with contextlib.suppress(Exception):
                client.send_pdu(answer)
            return False
        return True

    def _submit_answered(self, sequence: int, status: int, message_id: str, *,
                         nack: bool = False) -> None:
        """Settle the submit_sm `sequence` from its submit_sm_resp (or generic_nack)."""
        entry = self.outstanding.pop(sequence, None)
        if entry is None:
            return  # late answer to a submit that already timed out
        self.last_busy = time.monotonic()  # it was out until now
        job, part, deadline = entry
        if status or nack:
            if status in (ESME_RTHROTTLED, ESME_RMSGQFUL):
                self.sender._throttled(sent_at=deadline - self.config.response_timeout)
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
        job.ids[part] = message_id.strip("\0 ")
        job.answered += 1
        if job.answered == len(job.encoded.parts):
            self.sender._finish(job, SubmitResult(
                "submitted", smsc_ids=tuple(smsc_id or "" for smsc_id in job.ids)))

    def _drop_waiting(self, job: _Job) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.remove(job)

    def _handle_kept(self) -> None:
        """Handle the deliver_sm kept so far; what they tell goes to the loop in one call."""
        with self.sender._holding_results():
            while self.kept:
                kept = self.kept.popleft()
                self._delivered(kept.client, kept.raw, kept.at)

    def _delivered(self, client: Client, raw: bytes, now: float) -> None:
        """Emit what a deliver_sm (already answered) tells: a receipt or a reply."""
        try:
            pdu = smpp.parse_pdu(raw, client=client, allow_unknown_opt_params=True)
        except Exception as exc:  # answered already: the SMSC will not send it again
            _, _, sequence = pdus.header(raw)
            log.warning("deliver_sm smpplib cannot parse: skipped", sequence=sequence,
                        length=len(raw), error=type(exc).__name__)
            return
        try:
            payload = pdu.short_message or getattr(pdu, "message_payload", None) or b""
            if isinstance(payload, str):
                payload = payload.encode("latin-1")
            esm_class = int(pdu.esm_class or 0)
            text, _udh = sms.decode(payload, int(pdu.data_coding or 0), esm_class)
            if esm_class & 0x3C:  # a delivery receipt (SMSC delivery receipt or ack)
                receipt = parse_receipt(text, _tlv(pdu, "receipted_message_id"),
                                        _tlv(pdu, "message_state"), now)
                if receipt is not None:
                    self.sender._emit(receipt)
                return
            source = _text(pdu.source_addr)
            if int(pdu.source_addr_ton or 0) == 1:  # international: E.164 without its '+'
                source = "+" + source.lstrip("+")
            elif source.startswith("00") and source[2:].isdigit():  # international prefix
                source = "+" + source[2:]
            destination = _text(pdu.destination_addr)
            # a long reply comes in parts: by a UDH, or by the SAR TLVs of SMPP 3.4
            part = sms.concatenation(_udh) if _udh else None
            if part is None and _tlv(pdu, "sar_total_segments"):
                part = (int(_tlv(pdu, "sar_msg_ref_num") or 0),
                        int(_tlv(pdu, "sar_total_segments") or 1),
                        int(_tlv(pdu, "sar_segment_seqnum") or 1))
            reference, total, number = part or (0, 1, 1)
            for sender, whole, _complete in self.sender._replies.add(
                    (source, destination), reference, total, number, text, now):
                self._emit_reply(sender, whole, now)
        except Exception:  # one odd PDU must not take the link down
            log.warning("deliver_sm not understood", exc_info=True)

    def _emit_reply(self, sender: tuple[str, str], text: str, at: float) -> None:
        source, destination = sender
        self.sender._emit(MobileOriginated(source, destination, text, at))

    def _unbind(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.send_pdu(smpp.make_pdu("unbind", client=client))

    def _fail_all(self, outcome: str, detail: str) -> None:
        for job, _part, _deadline in self.outstanding.values():
            self.sender._finish(job, SubmitResult(outcome, detail=f"{detail} (the submit was"
                                                  " out: it may have been taken)",
                                                  in_doubt=True))
        for job in self.waiting:
            self.sender._finish(job, SubmitResult(outcome, detail=detail))
        self.outstanding.clear()
        self.waiting.clear()


class _Unbound(Exception):
    pass


def _write(client: Client, generated: list[bytes]) -> None:
    """Write PDUs already generated, in one system call."""
    if generated:
        try:
            client._socket.sendall(b"".join(generated))
        except OSError as exc:
            raise exceptions.ConnectionError(f"cannot write to the SMSC: {exc}") from exc


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip("\0")
    return str(value or "").strip("\0")


def _tlv(pdu: Any, name: str) -> Any:
    return getattr(pdu, name, None)
