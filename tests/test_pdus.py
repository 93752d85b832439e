"""The hand-written PDUs of the sender's hot path are the ones smpplib generates, byte for byte.

smpplib is the reference: each case builds the same PDU both ways and compares the bytes.
"""

from __future__ import annotations

import random
import re
import string
from typing import Any

import pytest
from smpplib import command_codes, smpp
from smpplib.client import Client

from mcdaemon import pdus, sms

SMPPLIB = Client("127.0.0.1", 1, allow_unknown_opt_params=True)  # never connected
LONG_TEXT = " ".join(f"Part of a long apology number {n}." for n in range(12))


def smpplib_submit_sm(sequence: int, **fields: Any) -> bytes:
    """What the sender wrote before: smpplib's submit_sm with the same fields."""
    pdu = smpp.make_pdu(
        "submit_sm", client=SMPPLIB, source_addr_ton=fields["source_ton"],
        source_addr_npi=fields["source_npi"], source_addr=fields["source"], dest_addr_ton=1,
        dest_addr_npi=1, destination_addr=fields["destination"],
        short_message=fields["short_message"], data_coding=fields["data_coding"],
        esm_class=fields["esm_class"], registered_delivery=fields["registered_delivery"])
    pdu.sequence = sequence
    generated: bytes = pdu.generate()
    return generated


def fields(**overrides: Any) -> dict[str, Any]:
    encoded = sms.split("Sorry we missed your call.", reference=1)
    chosen: dict[str, Any] = dict(
        source="Acme", source_ton=5, source_npi=0, destination="447700900123",
        short_message=encoded.parts[0], data_coding=encoded.data_coding,
        esm_class=encoded.esm_class, registered_delivery=1)
    chosen.update(overrides)
    return chosen


def sms_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for name, text in [("gsm7", "Sorry we missed you @ 9! {€}"),
                       ("ucs2", "We missed you 📞 call back? 🙂"),
                       ("udh-gsm7", LONG_TEXT), ("udh-ucs2", "🙂 " + LONG_TEXT)]:
        encoded = sms.split(text, reference=77)
        for number, part in enumerate(encoded.parts, 1):
            cases.append((f"{name}-{number}", fields(
                short_message=part, data_coding=encoded.data_coding,
                esm_class=encoded.esm_class)))
    return cases


@pytest.mark.parametrize(("case", "chosen"), sms_cases())
def test_the_texts_the_sender_splits_are_encoded_as_smpplib_would(
        case: str, chosen: dict[str, Any]) -> None:
    assert pdus.submit_sm(42, **chosen) == smpplib_submit_sm(42, **chosen), case


def test_a_concatenated_part_carries_its_udh_flag() -> None:
    encoded = sms.split(LONG_TEXT, reference=77)
    assert encoded.esm_class == 0x40 and len(encoded.parts) == 3  # the case above is one


@pytest.mark.parametrize("chosen", [
    fields(source="Acme Dental", source_ton=5, source_npi=0),  # alphanumeric sender id
    fields(source="447700900000", source_ton=1, source_npi=1),  # international number
    fields(source="60777", source_ton=3, source_npi=0),  # short code
    fields(source="", source_ton=0, source_npi=0),  # the SMSC fills in the account's
    fields(source="Café", source_ton=5, source_npi=0),  # latin-1, as smpplib encodes str
    fields(registered_delivery=0),
    fields(registered_delivery=1),
    fields(short_message=b""),
    fields(short_message=bytes(range(254))),  # the longest SMPP allows, NULs and all
    fields(destination="1" * pdus.MAX_ADDRESS, source="A" * pdus.MAX_ADDRESS),
    fields(data_coding=0xFF, esm_class=0xFF, registered_delivery=0xFF,
           source_ton=0xFF, source_npi=0xFF),
], ids=lambda chosen: repr(chosen)[:60])
def test_every_field_is_where_smpplib_puts_it(chosen: dict[str, Any]) -> None:
    assert pdus.submit_sm(7, **chosen) == smpplib_submit_sm(7, **chosen)


@pytest.mark.parametrize("sequence", [1, 2, 0xFFFF, 0x10000, pdus.MAX_SEQUENCE])
def test_the_sequence_number_goes_in_the_header_as_given(sequence: int) -> None:
    written = pdus.submit_sm(sequence, **fields())

    assert written == smpplib_submit_sm(sequence, **fields())
    assert int.from_bytes(written[12:16], "big") == sequence


def test_random_fields_are_encoded_as_smpplib_would() -> None:
    rng = random.Random(20261123)
    letters = string.ascii_letters + string.digits + " +-_.éü"
    for _ in range(500):
        chosen = dict(
            source="".join(rng.choices(letters, k=rng.randint(0, pdus.MAX_ADDRESS))),
            source_ton=rng.randint(0, 255), source_npi=rng.randint(0, 255),
            destination="".join(rng.choices(string.digits, k=rng.randint(0, 20))),
            short_message=rng.randbytes(rng.randint(0, pdus.MAX_SHORT_MESSAGE)),
            data_coding=rng.randint(0, 255), esm_class=rng.randint(0, 255),
            registered_delivery=rng.randint(0, 255))
        sequence = rng.randint(1, pdus.MAX_SEQUENCE)

        assert pdus.submit_sm(sequence, **chosen) == smpplib_submit_sm(sequence, **chosen), \
            (sequence, chosen)


@pytest.mark.parametrize(("overrides", "complaint"), [
    # smpplib would cut these addresses to 20 characters and send the text elsewhere
    (dict(destination="4" * 21), "destination_addr has 21 characters; SMPP allows 20"),
    (dict(source="A" * 21), "source_addr has 21 characters"),
    # smpplib would write the NUL, and the SMSC would read the rest as other fields
    (dict(destination="4477\x00123"), "contains a NUL"),
    (dict(source="Acme™"), "cannot carry"),  # not latin-1: smpplib raises UnicodeEncodeError
    (dict(short_message=b"x" * 255), "255 octets; SMPP allows 254"),
    (dict(data_coding=256), "data_coding=256"),
    (dict(source_ton=-1, esm_class=300), "source_ton=-1, esm_class=300"),
])
def test_what_smpp_cannot_carry_is_refused_rather_than_sent(
        overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        pdus.submit_sm(1, **fields(**overrides))


@pytest.mark.parametrize("sequence", [0, pdus.MAX_SEQUENCE + 1, -1])
def test_a_sequence_number_outside_smpps_range_is_refused(sequence: int) -> None:
    with pytest.raises(ValueError, match="sequence number"):
        pdus.submit_sm(sequence, **fields())


# ---------------------------------------------------------------- what the SMSC sends


@pytest.mark.parametrize("sequence", [1, 2, 0x1234, 0xFFFF, 0x10000, pdus.MAX_SEQUENCE])
def test_a_deliver_sm_resp_is_the_one_smpplib_writes(sequence: int) -> None:
    answer = smpp.make_pdu("deliver_sm_resp", client=SMPPLIB)
    answer.sequence = sequence

    assert pdus.deliver_sm_resp(sequence) == answer.generate()


def smpplib_submit_sm_resp(sequence: int, status: int, message_id: str | None) -> bytes:
    answer = smpp.make_pdu("submit_sm_resp", client=SMPPLIB, message_id=message_id,
                           status=status)
    answer.sequence = sequence
    generated: bytes = answer.generate()
    return generated


@pytest.mark.parametrize(("sequence", "status", "message_id"), [
    (1, 0, "1a2b"),  # hex, as most SMSCs write it
    (2, 0, "4711"),  # decimal
    (3, 0, "8c1d7a4e-5b8f-4d6a-9e0e-3f4d2a1b0c9d"),  # Jasmin's UUIDs
    (4, 0, "0" * 64),  # the longest SMPP allows
    (pdus.MAX_SEQUENCE, 0x58, None),  # ESME_RTHROTTLED: an empty message_id
    (5, 0x0B, ""),
])
def test_a_submit_sm_resp_is_read_as_smpplib_reads_it(
        sequence: int, status: int, message_id: str | None) -> None:
    raw = smpplib_submit_sm_resp(sequence, status, message_id)
    parsed = smpp.parse_pdu(raw, client=SMPPLIB)

    assert pdus.header(raw) == (pdus.SUBMIT_SM_RESP, parsed.status, parsed.sequence)
    assert pdus.message_id(raw) == (parsed.message_id or b"").decode("ascii")


def test_a_submit_sm_resp_without_a_body_has_an_empty_message_id() -> None:
    refused = pdus.HEADER.pack(16, pdus.SUBMIT_SM_RESP, 0x58, 9)  # as some SMSCs refuse

    assert pdus.header(refused) == (pdus.SUBMIT_SM_RESP, 0x58, 9)
    assert pdus.message_id(refused) == ""


def test_a_message_id_missing_its_nul_is_taken_whole() -> None:
    sloppy = pdus.HEADER.pack(20, pdus.SUBMIT_SM_RESP, 0, 9) + b"1a2b"

    assert pdus.message_id(sloppy) == "1a2b"


@pytest.mark.parametrize("command", ["generic_nack", "deliver_sm", "enquire_link", "unbind"])
def test_the_header_is_read_as_smpplib_reads_it(command: str) -> None:
    pdu = smpp.make_pdu(command, client=SMPPLIB, status=0x03 if command == "generic_nack" else 0)
    pdu.sequence = 0x01020304
    raw = pdu.generate()
    parsed = smpp.parse_pdu(raw, client=SMPPLIB, allow_unknown_opt_params=True)

    command_id, status, sequence = pdus.header(raw)
    assert command_codes.get_command_name(command_id) == parsed.command == command
    assert (status, sequence) == (parsed.status, parsed.sequence) == (pdu.status, 0x01020304)


def test_the_command_ids_are_smpplibs() -> None:
    ours = {"submit_sm": pdus.SUBMIT_SM, "deliver_sm": pdus.DELIVER_SM,
            "generic_nack": pdus.GENERIC_NACK, "submit_sm_resp": pdus.SUBMIT_SM_RESP,
            "deliver_sm_resp": pdus.DELIVER_SM_RESP}
    for name, command_id in ours.items():
        assert command_codes.get_command_code(name) == command_id, name
