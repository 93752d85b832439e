"""GSM-7 texts received (receipts, replies) read back as the GSM 03.38 tables say."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from smpplib import gsm

from mcdaemon.core.sms import GSM7, decode, encode, gsm_decode


def one_septet_at_a_time(data: bytes) -> str:
    """The tables applied literally: each byte's low 7 bits; ESC and the next septet are one
    character of the extension table; an ESC with nothing after it stays itself."""
    table = gsm.GSM_CHARACTER_TABLE
    septets = [byte & 0x7F for byte in data]
    text, escaped = [], False
    for position, septet in enumerate(septets):
        if escaped:
            text.append(table[0x80 + septet])
            escaped = False
        elif septet == 0x1B and position < len(septets) - 1:
            escaped = True
        else:
            text.append(table[septet])
    return "".join(text)


@given(st.binary(max_size=300))
def test_any_bytes_read_as_the_tables_say(data: bytes) -> None:
    assert gsm_decode(data) == one_septet_at_a_time(data)


@given(st.binary(max_size=40).map(lambda data: bytes(byte & 0x7F for byte in data)
                                  .replace(b"\x1b", b"")))
def test_texts_without_an_escape_read_as_the_tables_say(data: bytes) -> None:
    assert gsm_decode(data) == one_septet_at_a_time(data)


def test_a_receipt_and_a_text_with_extension_characters_read_back() -> None:
    receipt = b"id:1a2b sub:001 dlvrd:001 stat:DELIVRD err:000 Text:Sorry we missed you"
    assert gsm_decode(receipt) == receipt.decode()
    text = "Price: 10€ [£9] {ok} @Acme ^_^ ~ | \\ Ñoño"
    assert decode(encode(text, GSM7), 0, 0) == (text, b"")
    assert gsm_decode(b"\x00\x1b") == "@\x1b"  # an escape at the end stays an escape
