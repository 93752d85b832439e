"""Phone numbers to E.164, one rule for every place a number comes in (AMI, SMSC, CLI).

"Possible", not "valid": test ranges (e.g. Ofcom's 07700 900xxx) must work too, and the
policy, not this, decides what may be texted.
"""

from __future__ import annotations

import phonenumbers


def to_e164(number: str, region: str) -> str | None:
    """`+447700900123` for "07700 900123" (region GB) or "447700900123"; None if it cannot be
    a phone number."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    result: str = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return result
