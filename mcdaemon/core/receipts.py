"""Delivery receipts: what a receipt deliver_sm says, read from its TLVs and its text.

Sans-IO: the SMPP link decodes a receipt's short_message with `receipt_text` and hands it
over with its TLVs; `parse_receipt` makes a `DeliveryReceipt` of them. A receipt names its
text twice: the `receipted_message_id` TLV (the id exactly as the SMSC gave it in
submit_sm_resp) and `id:` in its text (which some SMSCs write in another base). The store
matches the TLV id first and only (see docs/receipts.md); `receipt_id_candidates` lists the
other-base readings it falls back to.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


def no_acknowledgement() -> None:
    """The `acknowledge` of an event that came over no link (a test's, a replay's)."""
    return None


_RECEIPT_STATES = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV",
                   6: "ACCEPTD", 7: "UNKNOWN", 8: "REJECTD"}
_RECEIPT_WORDS = {state[:5]: state for state in _RECEIPT_STATES.values()}
_KEY_VALUE = re.compile(r"\b(id|sub|dlvrd|submit date|done date|stat|err)\s*:\s*(\S*)",
                        re.IGNORECASE)
_TEXT_FIELD = re.compile(r"\btext\s*:(.*)\Z", re.IGNORECASE | re.DOTALL)
#: what makes a decoding of a receipt's bytes the right one: its `id:` or `stat:` field
_RECEIPT_FIELDS = re.compile(r"\b(id|stat)\s*:", re.IGNORECASE)
_DATA_CODING_UCS2 = 0x08


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """A receipt as received. `receipted_id`: the `receipted_message_id` TLV, as given;
    `text_id`: the `id:` of its text. Either may be missing, never both."""

    receipted_id: str | None
    text_id: str | None
    state: str
    error: str | None
    at: float
    raw: dict[str, str]
    #: answers the deliver_sm that carried it: called once the receipt is stored
    acknowledge: Callable[[], None] = field(default=no_acknowledgement, compare=False, repr=False)

    @property
    def smsc_id(self) -> str:
        """The id this receipt is matched by first (the TLV's, else the text's): for logs."""
        return self.receipted_id or self.text_id or ""


def normalised_id(smsc_id: str | None) -> str | None:
    """SMSC ids compare without surrounding blanks and case (hex comes back in either)."""
    value = (smsc_id or "").strip().strip("\0").strip().lower()
    return value or None


def exact_receipt_id(receipted_id: str | None, text_id: str | None) -> str | None:
    """The one id a receipt is matched by first: the TLV's; the text's only without a TLV."""
    return normalised_id(receipted_id) or normalised_id(text_id)


def receipt_id_candidates(smsc_id: str) -> tuple[str, ...]:
    """The id as given (lower-case) and its hex<->decimal reading: SMSCs differ in the base
    of the id they put in a receipt's text."""
    given = smsc_id.strip().lower()
    candidates = [given]
    if given.isdigit():
        candidates += [str(int(given)), format(int(given), "x")]
    if given and re.fullmatch(r"[0-9a-f]+", given) and len(given) <= 16:
        candidates += [format(int(given, 16), "x"), str(int(given, 16))]
    return tuple(dict.fromkeys(candidate for candidate in candidates if candidate))


def other_base_readings(receipted_id: str | None, text_id: str | None) -> tuple[str, ...]:
    """The ids a receipt may mean besides its exact one: both ids read in the other base
    (and the text's id as written, when a TLV came too). Only a last resort: see the store."""
    exact = exact_receipt_id(receipted_id, text_id)
    readings: list[str] = []
    for given in (receipted_id, text_id):
        value = normalised_id(given)
        if value is not None:
            readings += receipt_id_candidates(value)
    return tuple(reading for reading in dict.fromkeys(readings) if reading != exact)


def matches_submitted(receipt: DeliveryReceipt, smsc_ids: Iterable[str]) -> str | None:
    """How `receipt` names one of `smsc_ids` (the ids of texts known to be waiting for it):
    'exact', 'other_base' (no reading matched exactly), or None."""
    wanted = {value for value in map(normalised_id, smsc_ids) if value is not None}
    exact = exact_receipt_id(receipt.receipted_id, receipt.text_id)
    if exact in wanted:
        return "exact"
    if wanted & set(other_base_readings(receipt.receipted_id, receipt.text_id)):
        return "other_base"
    return None


def receipt_text(payload: bytes, data_coding: int) -> str:
    """The text of a receipt's short_message (or message_payload), UDH-free.

    Receipt texts are ASCII in practice, whatever `data_coding` says: some SMSCs mark the
    receipt of a UCS-2 text with data_coding 8 and still write `id:… stat:… err:…` in ASCII.
    So ASCII (as latin-1: no byte lost) is read first and kept when it shows a receipt's
    fields; else the declared coding (a real UCS-2 receipt); else ASCII as it is.
    """
    ascii_text = payload.decode("latin-1").strip("\0")
    if _RECEIPT_FIELDS.search(ascii_text):
        return ascii_text
    coding = data_coding & 0x0F if data_coding & 0xF0 in (0x00, 0xF0) else data_coding
    if _DATA_CODING_UCS2 in (data_coding, coding) and len(payload) % 2 == 0:
        wide = payload.decode("utf-16-be", errors="replace").strip("\0")
        if _RECEIPT_FIELDS.search(wide):
            return wide
    return ascii_text


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip("\0").strip()
    return str(value or "").strip("\0").strip()


def parse_receipt(text: str, receipted_id: Any, message_state: Any,
                  at: float) -> DeliveryReceipt | None:
    """A receipt from its TLVs (preferred) and its text (`id:… stat:DELIVRD err:…`);
    None when it names no id at all. Both ids are kept, apart: the store decides."""
    head, body = text, ""
    text_field = _TEXT_FIELD.search(text)
    if text_field is not None:  # the original text may itself contain "id:" and the like
        head, body = text[:text_field.start()], text_field.group(1).strip()
    fields: dict[str, str] = {}
    for key, value in _KEY_VALUE.findall(head):
        fields.setdefault(key.lower(), value)
    if text_field is not None:
        fields["text"] = body
    tlv_id = _text(receipted_id) or None
    text_id = fields.get("id") or None
    if tlv_id is None and text_id is None:
        return None
    state = None
    if message_state is not None:
        with contextlib.suppress(TypeError, ValueError):
            state = _RECEIPT_STATES.get(int(message_state))
    if state is None:
        word = fields.get("stat", "").upper()
        state = _RECEIPT_WORDS.get(word[:5], "UNKNOWN")
    error = fields.get("err") or None
    raw = {**fields, "receipt": text[:300]}
    if tlv_id is not None:
        raw["receipted_message_id"] = tlv_id
    return DeliveryReceipt(tlv_id, text_id, state, error, at, raw)
