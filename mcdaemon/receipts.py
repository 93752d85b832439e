"""Delivery receipts: what a receipt deliver_sm says, read from its TLVs and its text.

Sans-IO: the SMPP link hands over the text and TLVs of a receipt; `parse_receipt` makes a
`DeliveryReceipt` of them, and `receipt_id_candidates` lists the readings of an SMSC id.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _nothing() -> None:
    return None


_RECEIPT_STATES = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV",
                   6: "ACCEPTD", 7: "UNKNOWN", 8: "REJECTD"}
_RECEIPT_WORDS = {state[:5]: state for state in _RECEIPT_STATES.values()}
_KEY_VALUE = re.compile(r"\b(id|sub|dlvrd|submit date|done date|stat|err)\s*:\s*(\S*)",
                        re.IGNORECASE)
_TEXT_FIELD = re.compile(r"\btext\s*:(.*)\Z", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    smsc_id: str
    state: str
    error: str | None
    at: float
    raw: dict[str, str]
    #: answers the deliver_sm that carried it: called once the receipt is stored
    acknowledge: Callable[[], None] = field(default=_nothing, compare=False, repr=False)


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


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip("\0")
    return str(value or "").strip("\0")


def parse_receipt(text: str, receipted_id: Any, message_state: Any,
                  at: float) -> DeliveryReceipt | None:
    """A receipt from its TLVs (preferred) and its text (`id:… stat:DELIVRD err:…`)."""
    head, body = text, ""
    text_field = _TEXT_FIELD.search(text)
    if text_field is not None:  # the original text may itself contain "id:" and the like
        head, body = text[:text_field.start()], text_field.group(1).strip()
    fields: dict[str, str] = {}
    for key, value in _KEY_VALUE.findall(head):
        fields.setdefault(key.lower(), value)
    if text_field is not None:
        fields["text"] = body
    smsc_id = _text(receipted_id) or fields.get("id", "")
    if not smsc_id:
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
    return DeliveryReceipt(smsc_id, state, error, at, raw)
