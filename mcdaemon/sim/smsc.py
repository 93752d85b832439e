"""An SMSC simulator (SMPP 3.4 over TCP): the demo's embedded SMSC and the tests' fault injector.

PDUs are written by hand with `struct`, independently of smpplib, so a test of the sender
against it is a test between two implementations. It takes binds (checking credentials),
answers submit_sm with configurable message id formats (`id_format`: hex from 0x1000, decimal
from "0" as SMPPSim numbers them, or UUIDs), sends delivery receipts (TLV and text form) and
mobile-originated texts, and can misbehave on request: error statuses, throttling above a
rate, submits never answered, a connection dropped mid-window, binds refused, an
SMSC-initiated unbind, receipts out of order or before the submit's answer, receipt texts in
ASCII marked UCS-2, a message id counter that restarts (`restart_ids`: ids reused). With
`redeliver=True` it behaves as a real SMSC does with a deliver_sm left unanswered when its
connection closes: it sends it again after the next bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import struct
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from mcdaemon.core import sms

BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER = 0x01, 0x02, 0x09
SUBMIT_SM, DELIVER_SM, UNBIND, ENQUIRE_LINK = 0x04, 0x05, 0x06, 0x15
SUBMIT_SM_RESP, DELIVER_SM_RESP = 0x80000004, 0x80000005
UNBIND_RESP, ENQUIRE_LINK_RESP = 0x80000006, 0x80000015
RESP = 0x80000000
GENERIC_NACK = 0x80000000
ESME_ROK, ESME_RINVPASWD, ESME_RBINDFAIL, ESME_RTHROTTLED = 0x00, 0x0E, 0x0D, 0x58
TLV_RECEIPTED_MESSAGE_ID, TLV_MESSAGE_STATE = 0x001E, 0x0427
MESSAGE_STATES = {"ENROUTE": 1, "DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5,
                  "ACCEPTD": 6, "UNKNOWN": 7, "REJECTD": 8}


@dataclass(frozen=True, slots=True)
class Submit:
    """One submit_sm as the SMSC read it."""

    destination: str
    source: str
    source_ton: int
    source_npi: int
    data_coding: int
    esm_class: int
    registered_delivery: int
    text: str  # this part's text, UDH removed
    udh_reference: int | None
    udh_total: int
    udh_part: int
    message_id: str
    at: float


def _cstring(data: bytes, offset: int) -> tuple[str, int]:
    end = data.index(b"\0", offset)
    return data[offset:end].decode("latin-1"), end + 1


def pdu(command: int, sequence: int, body: bytes = b"", status: int = 0) -> bytes:
    return struct.pack(">IIII", 16 + len(body), command, status, sequence) + body


def _short_message_body(source: str, destination: str, esm_class: int, data_coding: int,
                        payload: bytes, tlvs: bytes = b"", source_ton: int = 1) -> bytes:
    return (b"\0" + bytes((source_ton, 1)) + source.encode() + b"\0" + bytes((1, 1))
            + destination.encode() + b"\0" + bytes((esm_class, 0, 0)) + b"\0\0"
            + bytes((0, 0, data_coding, 0, len(payload))) + payload + tlvs)


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    mode: int = 0  # the bind command, 0 while unbound
    unanswered: set[int] = field(default_factory=set)
    submits: int = 0
    answers: list[bytes] = field(default_factory=list)  # submit_sm_resp not yet written
    delivered: dict[int, bytes] = field(default_factory=dict)  # deliver_sm unanswered: bodies

    def flush(self) -> None:
        """Write the answers not yet written (those of a read: together), in one system call."""
        if self.answers and not self.writer.is_closing():
            self.writer.write(b"".join(self.answers))
        self.answers.clear()


class TestSmsc:
    """`async with TestSmsc(...) as smsc:` then bind to 127.0.0.1:`smsc.port`."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, system_id: str = "mcdaemon", password: str = "secret",
                 host: str = "127.0.0.1", port: int = 0, id_format: str = "hex",
                 receipts: bool = True, receipt_delay: float = 0.05,
                 receipt_id_in_text_base: str | None = None, vendor_tlvs: bool = False,
                 response_delay: float = 0.0, redeliver: bool = False,
                 receipt_jitter: float = 0.0, receipt_before_answer: bool = False,
                 receipt_data_coding: int = 0, seed: int = 0,
                 on_submit: Callable[[Submit], None] | None = None) -> None:
        self.system_id, self.password = system_id, password
        self.host, self.port = host, port
        if id_format not in ("hex", "decimal", "uuid"):
            raise ValueError(f"id_format {id_format!r}: hex, decimal or uuid")
        self.id_format = id_format
        self.receipts, self.receipt_delay = receipts, receipt_delay
        self.receipt_id_in_text_base = receipt_id_in_text_base
        self.vendor_tlvs = vendor_tlvs
        #: each receipt waits receipt_delay plus up to this (seeded): receipts out of order
        self.receipt_jitter = receipt_jitter
        #: a receipt is sent when its submit is read, before the submit_sm_resp goes out
        self.receipt_before_answer = receipt_before_answer
        #: the data_coding a receipt is marked with (its text is ASCII whatever it says)
        self.receipt_data_coding = receipt_data_coding
        self._random = random.Random(seed)
        self._texts: dict[str, str] = {}  # message id -> the start of its text (latest)
        self.response_delay = response_delay
        self.redeliver = redeliver
        self.on_submit = on_submit
        self.receipt_state = "DELIVRD"
        self.accept_binds = True
        self.throttle_above: float | None = None  # submits per second
        self.submits: list[Submit] = []
        self.binds: list[tuple[int, str]] = []  # (bind command, system_id) of accepted binds
        self.refused_binds = 0
        self.bind_attempts: list[float] = []  # monotonic time of every bind PDU received
        self.max_outstanding_seen = 0
        self.submit_pdus = 0  # every submit_sm read, whatever the answer
        self.answer_enquire_link = True  # False: play a dead link
        self.enquire_links_received = 0
        self.enquire_link_responses = 0  # answers to our own enquire_link
        self.unbind_responses = 0  # answers to our own unbind
        self.unbinds_received = 0
        self.deliver_sm_answered = 0
        self.deliver_sm_sent: list[int] = []  # sequence numbers of every deliver_sm written
        self.deliver_sm_responses: list[tuple[int, int]] = []  # (sequence, status) of answers
        self._undelivered: list[bytes] = []  # unanswered when their connection closed
        self._fail: list[int] = []  # statuses for the next submits
        self._ignore = 0
        self._drop_after: int | None = None
        self._ids = itertools.count(0)
        self._sequence = itertools.count(1)
        self._clients: list[_Client] = []
        self._recent: list[float] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._arrived = asyncio.Condition()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            client.writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def __aenter__(self) -> TestSmsc:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.stop()

    # ---------------------------------------------------------------- what tests use

    def fail_next(self, status: int, count: int = 1) -> None:
        self._fail += [status] * count

    def ignore_next(self, count: int = 1) -> None:
        self._ignore += count

    def restart_ids(self) -> None:
        """Number message ids from the start again, as an SMSC does after a restart: the ids
        of earlier texts come again."""
        self._ids = itertools.count(0)

    def drop_after(self, submits: int) -> None:
        """Close the submitting connection once it has sent this many more submits."""
        self._drop_after = submits

    @property
    def bound_clients(self) -> int:
        return sum(1 for client in self._clients if client.mode)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `condition()` holds (checked each time a PDU arrives, and every 20 ms)."""
        async def poll() -> None:
            while not condition():
                await asyncio.sleep(0.02)
        await asyncio.wait_for(poll(), timeout)

    async def wait_for_submits(self, count: int, timeout: float = 5.0) -> list[Submit]:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.submits) >= count), timeout)
        return self.submits[:count]

    def messages(self) -> list[tuple[str, str]]:
        """(destination, whole text): concatenated parts put back together."""
        whole: list[tuple[str, str]] = []
        groups: dict[tuple[str, int], dict[int, str]] = {}
        for submit in self.submits:
            if submit.udh_reference is None:
                whole.append((submit.destination, submit.text))
                continue
            parts = groups.setdefault((submit.destination, submit.udh_reference), {})
            parts[submit.udh_part] = submit.text
            if len(parts) == submit.udh_total:
                whole.append((submit.destination, "".join(parts[n] for n in sorted(parts))))
        return whole

    async def send_mo(self, source: str, text: str, destination: str = "Acme") -> None:
        """A text from a phone: "+<digits>" goes as TON 1 (international), others as TON 0."""
        encoded = sms.split(text, reference=next(self._sequence) & 0xFF)
        ton = 1 if source.startswith("+") else 0
        for part in encoded.parts:  # a long text arrives as concatenated parts, UDH and all
            await self._deliver(_short_message_body(source.lstrip("+"), destination,
                                                    encoded.esm_class, encoded.data_coding,
                                                    part, source_ton=ton))

    async def send_receipt(self, message_id: str, state: str = "DELIVRD",
                           text_only: bool = False) -> None:
        text_id = message_id
        if self.receipt_id_in_text_base == "decimal" and self.id_format == "hex":
            text_id = str(int(message_id, 16))
        elif self.receipt_id_in_text_base == "hex" and message_id.isdigit():
            text_id = format(int(message_id), "x")
        stamp = time.strftime("%y%m%d%H%M")
        original = self._texts.get(message_id, "mcdaemon")[:20]  # as SMSCs quote it
        receipt = (f"id:{text_id} sub:001 dlvrd:{'001' if state == 'DELIVRD' else '000'} "
                   f"submit date:{stamp} done date:{stamp} stat:{state} "
                   f"err:{'000' if state == 'DELIVRD' else '099'} Text:{original}").encode()
        tlvs = b""
        if not text_only:
            tlvs = (struct.pack(">HH", TLV_RECEIPTED_MESSAGE_ID, len(message_id) + 1)
                    + message_id.encode() + b"\0"
                    + struct.pack(">HHB", TLV_MESSAGE_STATE, 1, MESSAGE_STATES[state]))
        if self.vendor_tlvs:
            tlvs += struct.pack(">HH", 0x1401, 4) + b"VEND"
            tlvs += struct.pack(">HHB", 0x1403, 1, 1)  # SMPPSim adds 0x1403 to each receipt
        await self._deliver(_short_message_body("447700900000", "Acme", 0x04,
                                                self.receipt_data_coding, receipt, tlvs))

    async def unbind_all(self) -> None:
        for client in self._clients:
            if client.mode:
                client.writer.write(pdu(UNBIND, next(self._sequence)))

    async def send_to_all(self, command: int, body: bytes = b"") -> None:
        """Any PDU, even one the ESME cannot know (a vendor or SMPP 5 command)."""
        for client in self._clients:
            if client.mode:
                client.writer.write(pdu(command, next(self._sequence), body))

    async def enquire_link_all(self) -> None:
        """The SMSC checks the link: every bound ESME must answer."""
        for client in self._clients:
            if client.mode:
                client.writer.write(pdu(ENQUIRE_LINK, next(self._sequence)))

    # ---------------------------------------------------------------- the protocol

    async def _deliver(self, body: bytes) -> None:
        for client in self._clients:
            if client.mode in (BIND_RECEIVER, BIND_TRANSCEIVER) \
                    and not client.writer.is_closing():  # a receipt due after the unbind
                self._write_deliver_sm(client, body)
                with contextlib.suppress(ConnectionError):
                    await client.writer.drain()
                return
        if self.redeliver:  # nobody bound to receive it: kept for the next bind
            self._undelivered.append(body)

    def _write_deliver_sm(self, client: _Client, body: bytes) -> None:
        sequence = next(self._sequence)
        client.delivered[sequence] = body
        self.deliver_sm_sent.append(sequence)
        client.writer.write(pdu(DELIVER_SM, sequence, body))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        self._clients.append(client)
        buffer = bytearray()
        try:
            while data := await reader.read(65536):  # a window of submits in one read
                buffer += data
                while len(buffer) >= 16:
                    length, command, status, sequence = struct.unpack_from(">IIII", buffer)
                    if length < 16:
                        raise ValueError(f"a PDU of {length} bytes")
                    if len(buffer) < length:
                        break
                    body = bytes(buffer[16:length])
                    del buffer[:length]
                    if command != SUBMIT_SM:
                        client.flush()  # what was answered first goes first
                    await self._handle(client, command, sequence, body, status)
                client.flush()
        except (ConnectionError, ValueError):
            pass
        finally:
            self._clients.remove(client)
            writer.close()
            if self.redeliver:
                self._undelivered += client.delivered.values()

    async def _handle(self, client: _Client, command: int, sequence: int, body: bytes,
                      status: int = 0) -> None:
        writer = client.writer
        if command in (BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER):
            self.bind_attempts.append(time.monotonic())
            system_id, offset = _cstring(body, 0)
            password, offset = _cstring(body, offset)
            if not self.accept_binds:
                status = ESME_RBINDFAIL
            elif (system_id, password) != (self.system_id, self.password):
                status = ESME_RINVPASWD
            else:
                status = ESME_ROK
                client.mode = command
                self.binds.append((command, system_id))
            if status:
                self.refused_binds += 1
            writer.write(pdu(command | RESP, sequence, b"TestSmsc\0", status))
            if client.mode in (BIND_RECEIVER, BIND_TRANSCEIVER):
                undelivered, self._undelivered = self._undelivered, []
                for kept in undelivered:
                    self._write_deliver_sm(client, kept)
        elif command == ENQUIRE_LINK:
            self.enquire_links_received += 1
            if self.answer_enquire_link:
                writer.write(pdu(ENQUIRE_LINK | RESP, sequence))
        elif command == UNBIND:
            self.unbinds_received += 1
            writer.write(pdu(UNBIND | RESP, sequence))
            await writer.drain()
            writer.close()
            return
        elif command == SUBMIT_SM and client.mode in (BIND_TRANSMITTER, BIND_TRANSCEIVER):
            await self._submit(client, sequence, body)
        elif command == ENQUIRE_LINK_RESP:
            self.enquire_link_responses += 1
        elif command == UNBIND_RESP:
            self.unbind_responses += 1
            client.mode = 0
        elif command == DELIVER_SM_RESP:
            self.deliver_sm_answered += 1
            self.deliver_sm_responses.append((sequence, status))
            client.delivered.pop(sequence, None)
        elif command & RESP:
            pass
        else:
            writer.write(pdu(GENERIC_NACK, sequence, status=0x03))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _submit(self, client: _Client, sequence: int, body: bytes) -> None:
        offset = _cstring(body, 0)[1]
        source_ton, source_npi = body[offset], body[offset + 1]
        source, offset = _cstring(body, offset + 2)
        destination, offset = _cstring(body, offset + 2)
        esm_class = body[offset]
        offset = _cstring(body, offset + 3)[1]  # schedule_delivery_time
        offset = _cstring(body, offset)[1]  # validity_period
        registered_delivery, data_coding = body[offset], body[offset + 2]
        length = body[offset + 4]
        payload = body[offset + 5:offset + 5 + length]
        text, udh = sms.decode(payload, data_coding, esm_class)
        reference, total, part = (udh[3], udh[4], udh[5]) if len(udh) >= 6 else (None, 1, 1)
        client.submits += 1
        self.submit_pdus += 1
        if self._drop_after is not None:
            self._drop_after -= 1
            if self._drop_after < 0:
                self._drop_after = None
                client.writer.close()
                return
        if self._ignore:
            self._ignore -= 1
            client.unanswered.add(sequence)
            self.max_outstanding_seen = max(self.max_outstanding_seen, len(client.unanswered))
            return
        status = self._fail.pop(0) if self._fail else ESME_ROK
        if self.throttle_above is not None:
            now = time.monotonic()
            self._recent = [at for at in self._recent if at > now - 1.0] + [now]
            if len(self._recent) > self.throttle_above:
                status = ESME_RTHROTTLED
        message_id = ""
        if status == ESME_ROK:
            number = next(self._ids)
            message_id = (format(number + 0x1000, "x") if self.id_format == "hex"
                          else str(number) if self.id_format == "decimal"
                          else str(uuid.uuid4()))
            submit = Submit(destination, source, source_ton, source_npi, data_coding,
                            esm_class, registered_delivery, text, reference, total, part,
                            message_id, time.time())
            self.submits.append(submit)
            self._texts[message_id] = text
            if self.on_submit is not None:
                self.on_submit(submit)
            async with self._arrived:
                self._arrived.notify_all()
        client.unanswered.add(sequence)
        self.max_outstanding_seen = max(self.max_outstanding_seen, len(client.unanswered))
        if status == ESME_ROK and registered_delivery & 0x01 and self.receipts \
                and self.receipt_before_answer:
            self._spawn(self._receipt_later(message_id))
        if self.response_delay:
            self._spawn(self._respond_later(client, sequence, status, message_id,
                                            registered_delivery))
        else:  # answered as read, as a quick SMSC does: no task per submit; the answers
            # of one read go out together (`_serve` flushes them)
            self._respond(client, sequence, status, message_id, registered_delivery)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respond_later(self, client: _Client, sequence: int, status: int,
                             message_id: str, registered_delivery: int) -> None:
        await asyncio.sleep(self.response_delay)
        self._respond(client, sequence, status, message_id, registered_delivery)
        client.flush()

    def _respond(self, client: _Client, sequence: int, status: int, message_id: str,
                 registered_delivery: int) -> None:
        """Answer a submit (with the other answers of `client.answers`, at its flush)."""
        client.unanswered.discard(sequence)
        if client.writer.is_closing():
            return
        client.answers.append(pdu(SUBMIT_SM | RESP, sequence, message_id.encode() + b"\0",
                                  status))
        if status == ESME_ROK and registered_delivery & 0x01 and self.receipts \
                and not self.receipt_before_answer:
            self._spawn(self._receipt_later(message_id))

    async def _receipt_later(self, message_id: str) -> None:
        await asyncio.sleep(self.receipt_delay + self._random.random() * self.receipt_jitter)
        await self.send_receipt(message_id, self.receipt_state)
