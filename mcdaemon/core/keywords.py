"""What an inbound text (MO) asks for: opt-out and opt-in keywords.

Carriers and regulators expect the standard keywords to work however they are typed
("stop", "STOP.", " Stop please"), so the first word decides, case- and punctuation-blind.
"""

from __future__ import annotations

import re

OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN = frozenset({"START", "UNSTOP"})

_FIRST_WORD = re.compile(r"[A-Za-z]+")


def classify_reply(text: str) -> str | None:
    """`"opt_out"`, `"opt_in"` or None (an ordinary reply)."""
    match = _FIRST_WORD.search(text)
    if match is None or text[: match.start()].strip(" \t\r\n.,!*\"'"):
        return None
    word = match.group(0).upper()
    if word in OPT_OUT:
        return "opt_out"
    if word in OPT_IN:
        return "opt_in"
    return None
