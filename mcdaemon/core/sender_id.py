"""The sender address of the texts: the source_addr and its TON/NPI.

The TON/NPI decide what a phone shows and whether the caller can answer: an international
number flagged alphanumeric (TON 5) arrives as a name nobody can reply or text STOP to, a
national number flagged international reaches no one. So the config loader classifies the
address (`classify`), refuses TON/NPI values that contradict it, and stores numbers in E.164;
`source_numbering` then only reads the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import phonenumbers

if TYPE_CHECKING:
    from mcdaemon.config.model import SmppConfig

INTERNATIONAL = "international"
SHORT_CODE = "short code"
ALPHANUMERIC = "alphanumeric"

#: (TON, NPI) sent for each kind of address
NUMBERING = {INTERNATIONAL: (1, 1), SHORT_CODE: (3, 0), ALPHANUMERIC: (5, 0)}
#: the explicit values that still describe the address (0: "unknown", left to the SMSC)
ALLOWED_TON = {INTERNATIONAL: (0, 1), SHORT_CODE: (0, 3), ALPHANUMERIC: (5,)}
ALLOWED_NPI = {INTERNATIONAL: (0, 1), SHORT_CODE: (0, 1, 9), ALPHANUMERIC: (0,)}
#: how the address is named in messages
PHRASE = {INTERNATIONAL: "an international number", SHORT_CODE: "a short code",
          ALPHANUMERIC: "an alphanumeric sender id"}
#: the most digits of a short code; longer digit strings are phone numbers
SHORT_CODE_DIGITS = 8
#: the most characters of an alphanumeric sender id (GSM 03.40: 11 septets)
ALPHANUMERIC_MAX = 11

_NUMBER_LIKE = re.compile(r"\+?[\d\s().-]+")


@dataclass(frozen=True, slots=True)
class Sender:
    """A classified sender: `address` as it is stored (E.164 with '+' for numbers)."""

    address: str
    kind: str


def classify(text: str, region: str) -> Sender:
    """The sender written in the config, classified; ValueError says what to write instead.

    `+447700900000`, `+44 7700 900000` -> international; `07700 900000` -> international in
    `region`; up to 8 digits -> short code; anything with letters -> alphanumeric.
    """
    text = text.strip()
    if not text:
        raise ValueError("is required: the number (or name) the texts come from")
    if _NUMBER_LIKE.fullmatch(text):
        digits = re.sub(r"\D", "", text)
        if not text.startswith("+") and len(digits) <= SHORT_CODE_DIGITS:
            return Sender(digits, SHORT_CODE)
        if len(digits) > 15:
            raise ValueError(f"{len(digits)} digits; an international number has at most 15")
        try:
            parsed = phonenumbers.parse("+" + digits if text.startswith("+") else digits,
                                        region)
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is None or not phonenumbers.is_possible_number(parsed):
            where = "" if text.startswith("+") else f" in region {region}"
            raise ValueError(f"{text!r} is not a phone number{where}; write it as "
                             "+<country code><number>, e.g. +447700900000")
        return Sender(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
                      INTERNATIONAL)
    if len(text) > ALPHANUMERIC_MAX:
        raise ValueError(f"alphanumeric sender ids have at most {ALPHANUMERIC_MAX} characters; "
                         f"{text!r} has {len(text)}")
    if not (text.isascii() and text.isprintable()):
        raise ValueError(f"{text!r}: an alphanumeric sender id uses plain letters, digits and "
                         "spaces (no accents, no symbols phones may not show)")
    return Sender(text, ALPHANUMERIC)


def contradictions(sender: Sender, ton: int | None, npi: int | None) -> dict[str, str]:
    """Why an explicit source_ton / source_npi does not fit the address, by key."""
    problems: dict[str, str] = {}
    for key, value, allowed in (("source_ton", ton, ALLOWED_TON[sender.kind]),
                                ("source_npi", npi, ALLOWED_NPI[sender.kind])):
        if value is not None and value not in allowed:
            ton_wanted, npi_wanted = NUMBERING[sender.kind]
            problems[key] = (f"{value} contradicts source_addr {sender.address!r}, "
                    f"{PHRASE[sender.kind]} (TON {ton_wanted} NPI {npi_wanted}); leave {key} "
                    "out to derive it")
    return problems


def source_numbering(config: SmppConfig) -> tuple[str, int, int]:
    """(source_addr, TON, NPI): alphanumeric 5/0, international 1/1, short code 3/0."""
    address = config.source_addr
    digits = address.lstrip("+")
    if digits.isdigit():
        ton, npi = (1, 1) if address.startswith("+") or len(digits) > 8 else (3, 0)
        address = digits
    else:
        ton, npi = 5, 0
    if config.source_ton is not None:
        ton = config.source_ton
    if config.source_npi is not None:
        npi = config.source_npi
    return address, ton, npi


def describe(config: SmppConfig) -> str:
    """How the texts go out, for check-config and preview:
    `sender: +447700900000 (international, TON 1 NPI 1): callers can reply`."""
    if not config.source_addr:
        return "sender: none configured (smpp.source_addr)"
    address, ton, npi = source_numbering(config)
    if ton == 5:
        kind, reply = ALPHANUMERIC, "callers cannot reply (nor text STOP) to a name"
    elif ton == 3 or (ton == 0 and len(address) <= SHORT_CODE_DIGITS):
        kind, reply = SHORT_CODE, ("callers can reply if the carrier routes the short code "
                                   "back to this SMSC bind")
    else:
        kind, reply = INTERNATIONAL, "callers can reply"
        address = "+" + address
    return f"sender: {address} ({kind}, TON {ton} NPI {npi}): {reply}"
