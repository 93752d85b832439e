"""The PDUs of the sender's hot path, written and read by hand.

In a storm every text costs the SMPP thread a submit_sm to write, a submit_sm_resp to read
and, usually, a deliver_sm (its receipt) to answer. smpplib does each with its generic
machinery (a command object whose parameters are walked one by one, every optional TLV
too): about 90 µs to write a submit_sm, 18 µs to read its answer, 14 µs to build a
deliver_sm_resp, on a thread that competes for the GIL with the event loop and so delays
the next caller's text. These have one fixed layout each, so they are put together and
taken apart here with a few byte operations instead.

smpplib stays the reference: tests/test_pdus.py checks byte for byte that these PDUs are the
ones smpplib generates, and reads what smpplib reads. Everything else (bind, enquire_link,
unbind, the parsing of a deliver_sm's content) still goes through smpplib. Where smpplib
would emit a PDU that breaks SMPP 3.4 (it silently cuts an address that is too long, passes
a NUL inside one, sends 255 octets of short message), `submit_sm` raises ValueError instead.
"""

from __future__ import annotations

import struct

SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
GENERIC_NACK = 0x80000000
SUBMIT_SM_RESP = 0x80000004
DELIVER_SM_RESP = 0x80000005

HEADER = struct.Struct(">IIII")  # command_length, command_id, command_status, sequence_number
MAX_SEQUENCE = 0x7FFFFFFF  # SMPP 3.4 sequence numbers run from 1 to 0x7FFFFFFF
MAX_ADDRESS = 20  # characters: a C-octet string of at most 21 octets, its NUL included
MAX_SHORT_MESSAGE = 254  # octets

#: service_type: empty C-octet string, the SMSC's default service
_SERVICE_TYPE = b"\0"
#: dest_addr_ton 1, dest_addr_npi 1: destinations are E.164 numbers without their '+'
_DESTINATION_NUMBERING = b"\x01\x01"


def submit_sm(sequence: int, *, source: str, source_ton: int, source_npi: int,
              destination: str, short_message: bytes, data_coding: int, esm_class: int,
              registered_delivery: int) -> bytes:
    """A submit_sm, byte for byte what smpplib generates for these fields.

    protocol_id, priority_flag, replace_if_present_flag and sm_default_msg_id are 0,
    schedule_delivery_time and validity_period empty (immediately, the SMSC's default
    validity), and no optional TLV is sent. `sequence` comes from the smpplib client
    (`client.next_sequence()`) so it never collides with the PDUs smpplib builds itself."""
    if not 0 < sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence number {sequence} is outside 1..0x{MAX_SEQUENCE:X}")
    if len(short_message) > MAX_SHORT_MESSAGE:
        raise ValueError(f"short_message has {len(short_message)} octets; SMPP allows "
                         f"{MAX_SHORT_MESSAGE}")
    source_octets = _address("source_addr", source)
    destination_octets = _address("destination_addr", destination)
    try:
        source_numbering = bytes((source_ton, source_npi))
        # esm_class, protocol_id, priority_flag, schedule_delivery_time (empty),
        # validity_period (empty), registered_delivery, replace_if_present_flag,
        # data_coding, sm_default_msg_id, sm_length
        fields = bytes((esm_class, 0, 0, 0, 0, registered_delivery, 0, data_coding, 0,
                        len(short_message)))
    except ValueError:
        raise ValueError(_octet_error(source_ton=source_ton, source_npi=source_npi,
                                      esm_class=esm_class, data_coding=data_coding,
                                      registered_delivery=registered_delivery)) from None
    body = b"".join((_SERVICE_TYPE, source_numbering, source_octets, _DESTINATION_NUMBERING,
                     destination_octets, fields, short_message))
    return HEADER.pack(16 + len(body), SUBMIT_SM, 0, sequence) + body


def _address(field: str, address: str) -> bytes:
    """An address as a C-octet string (latin-1, as smpplib encodes it), NUL included. The
    complaints leave the address out: a destination is a caller's number."""
    if len(address) > MAX_ADDRESS:
        raise ValueError(f"{field} has {len(address)} characters; SMPP allows "
                         f"{MAX_ADDRESS}")
    try:
        octets = address.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{field} has characters an SMPP address cannot carry (it is "
                         "sent as latin-1)") from None
    if b"\0" in octets:
        raise ValueError(f"{field} contains a NUL, which would end it early")
    return octets + b"\0"


def _octet_error(**fields: int) -> str:
    bad = [f"{name}={value!r}" for name, value in fields.items()
           if not (isinstance(value, int) and 0 <= value <= 0xFF)]
    return f"{', '.join(bad)}: a one-octet field holds 0..255"


def header(pdu: bytes) -> tuple[int, int, int]:
    """(command_id, command_status, sequence_number) of a PDU of at least 16 octets."""
    _length, command_id, status, sequence = HEADER.unpack_from(pdu)
    return command_id, status, sequence


def message_id(pdu: bytes) -> str:
    """The message_id a submit_sm_resp carries: its body's C-octet string, as ASCII.

    Empty when there is no body, as SMSCs answer with an error status; a body missing its NUL
    is taken whole (smpplib drops its last octet)."""
    end = pdu.find(b"\0", 16)
    return pdu[16:end if end >= 0 else len(pdu)].decode("ascii", errors="replace")


def deliver_sm_resp(sequence: int) -> bytes:
    """The answer to a deliver_sm: status 0 and an empty message_id, as smpplib writes it."""
    return HEADER.pack(17, DELIVER_SM_RESP, 0, sequence) + b"\0"
