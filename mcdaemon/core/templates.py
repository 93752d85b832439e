"""Text templates: checking them at load, rendering them for a call. Pure functions.

A template is text with `{variable}` fields (`{{` and `}}` for literal braces). The variables:

=============== ==========================================================================
{caller_name}   the contact's name (store, lookup), else the caller ID name when it looks
                like a name, else `policy.name_fallback` (`caller_name_for`)
{caller}        the caller's number (`policy.number_format`: national or international)
{did}           the number they dialled, same format
{group}         the group's `display_name`
{date} {time}   when the call started, in the group's time zone (`policy.date_format`,
{weekday}       `policy.time_format`, `policy.weekday_format`: strftime formats)
{wait}          how long the caller waited ("45 s", "3 min")
{company}       the top-level `company`
{anything}      the group's own `variables` (e.g. {booking_link})
=============== ==========================================================================

Caller ID is attacker-controlled, so the name is whitelisted (letters, spaces, ' - . only, no
digits, nothing that looks like a web address, no generic carrier labels such as
"WIRELESS CALLER", no "DALLAS TX") and capped at `policy.caller_name_max` characters; a
contact's name passes a looser check (`clean_contact_name`) and the same cap. A template must fit
`max_parts` SMS in its worst case (longest name, longest numbers, longest date words); at
render time a name that still does not fit (e.g. "Zoë" would turn a GSM-7 text into UCS-2) is
folded to GSM-7 (transliterated: "Łukasiewicz" -> "Lukasiewicz"), then shortened, then replaced
by the fallback word; a name that fits as written (UCS-2 within `max_parts`) stays as written.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import string
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import phonenumbers
from anyascii import anyascii

from mcdaemon.core import sms
from mcdaemon.core.records import CallRecord

if TYPE_CHECKING:
    from mcdaemon.config.model import GroupConfig, PolicyConfig

BUILTIN_VARIABLES = ("caller_name", "caller", "did", "group", "date", "time", "weekday", "wait",
                     "company")

#: What carriers put in the name field when they have no name: never greet anyone with these.
GENERIC_NAMES = frozenset({
    "anonymous", "asterisk", "blocked", "caller id unknown", "cell phone", "mobile",
    "mobile caller", "name unavailable", "no caller id", "no name", "out of area", "private",
    "private caller", "private number", "restricted", "toll free", "toll free call", "unavailable",
    "unknown", "unknown caller", "unknown name", "withheld", "number withheld", "wireless caller",
    "wireless", "international", "payphone",
})

# Worst cases used by the length check: an E.164 number has at most 15 digits; formatted
# with its '+' and up to 4 spaces, 20 characters. {wait} is at most "9999 min".
_WORST_NUMBER = "+" + "9" * 19
_WORST_WAIT = "9999 min"
# "example.com", "exаmple.com" with a Cyrillic а, "acme . com", "www", "@": a web or e-mail
# address ("Mr. Smith" is not: the dot is followed by a space and no known domain ending)
_WEB = re.compile(r"[^\W\d_]{2,}\.[^\W\d_]{2,}|\.\s*(?:com|net|org|info|biz|io|ly|co|uk"
                  r"|me|xyz|link|click|app|site|online|top)\b|\b(?:www|https?|ftp)\b|@",
                  re.IGNORECASE)
_NAME_PUNCTUATION = frozenset(" '’-.")
#: "LONDON UK", "DALLAS TX": carriers put the caller's town and state or country in the name
#: field when they have no name (all capitals, then a two-letter region code)
_PLACE_CODES = frozenset(("AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI",
    "ID", "IL", "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT",
    "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD",
    "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY", "PR", "AB", "BC", "MB", "NB", "NL",
    "NS", "NT", "NU", "ON", "PE", "QC", "SK", "YT", "UK", "GB", "US", "IE"))


@dataclass(frozen=True, slots=True)
class Rendered:
    """A text ready to send, with how it goes over the air."""

    body: str
    plan: sms.SmsPlan
    name_used: str  # the caller name as it went into the text (possibly shortened or fallback)

    def fits(self, max_parts: int) -> bool:
        return self.plan.parts <= max_parts


def fields(template: str) -> tuple[str, ...]:
    """The variable names a template uses; ValueError for broken braces or `{x.y}`/`{x:>5}`."""
    names = []
    for _literal, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name:
            raise ValueError("'{}' needs a variable name (write {{ and }} for literal braces)")
        if spec or conversion or not name.isidentifier():
            raise ValueError(f"{{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}} is not a plain {{variable}}")
        names.append(name)
    return tuple(names)


def render(template: str, values: Mapping[str, str], *, caller_name: str | None = None) -> str:
    """Fill the fields literally (no format specs, no attribute access, no recursion);
    `caller_name`, when given, stands for the value of {caller_name}."""
    pieces = []
    for literal, name in _pieces(template):
        pieces.append(literal)
        if name is not None:
            pieces.append(caller_name if caller_name is not None and name == "caller_name"
                          else values[name])
    return "".join(pieces)


@functools.lru_cache(maxsize=1024)
def _pieces(template: str) -> tuple[tuple[str, str | None], ...]:
    """A template's literal texts and variable names, parsed once (a config has a few)."""
    return tuple((literal, name)
                 for literal, name, _spec, _conversion in string.Formatter().parse(template))


def plain_text(name: str) -> str:
    """NFKC (full-width and styled letters become plain ones), without control or format
    characters (bidi overrides, zero-width joiners), whitespace collapsed."""
    text = unicodedata.normalize("NFKC", name[:1000])
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or not unicodedata.category(ch).startswith("C"))
    return " ".join(text.split())


def _shorten(text: str, max_length: int) -> str:
    """At most `max_length` characters, cut at a word boundary when there is one."""
    if len(text) > max_length:
        words = text[:max_length + 1]
        text = (words.rsplit(" ", 1)[0] if " " in words else text[:max_length]).rstrip(" '’-.")
    return text


def clean_caller_name(name: str | None, max_length: int) -> str | None:
    """The caller's name if it looks like a person's or a company's name, else None.

    Caller ID names are attacker-controlled: only letters, spaces and ' - . pass (no digits,
    no brackets, no emoji), nothing that reads as a web or e-mail address, no carrier
    placeholder (`GENERIC_NAMES`), no town-and-state ("DALLAS TX"), no pile of combining marks.
    """
    if not name:
        return None
    text = plain_text(name).strip(" '’-.")
    if not text or not any(ch.isalpha() for ch in text):
        return None
    if any(not (ch.isalpha() or ch in _NAME_PUNCTUATION or unicodedata.category(ch) == "Mn")
           for ch in text):
        return None  # digits, URLs, e-mail addresses, emoji, brackets: not a name
    if _WEB.search(text) or text.casefold() in GENERIC_NAMES:
        return None
    if sum(unicodedata.category(ch) == "Mn" for ch in text) > len(text) // 3:
        return None  # "Z̷̢a̸l̴g̵o̶": marks stacked on letters
    words = text.split()
    if text.isupper() and len(words) >= 2 and words[-1] in _PLACE_CODES:
        return None  # "LONDON UK", "DALLAS TX"
    if text.isupper():
        text = text.title()  # carriers send "SMITH JOHN"; texts read better as "Smith John"
    return _shorten(text, max_length) or None


def clean_contact_name(name: str | None, max_length: int) -> str | None:
    """A name from the contact store or the lookup: trusted more than caller ID (digits, '&'
    and brackets pass: "Flat 3 Ltd", "Smith & Co"), but still plain text only: no control or
    format characters, nothing that reads as a web or e-mail address, no placeholder."""
    if not name:
        return None
    text = plain_text(name).strip(" '’-.,;:")
    if not any(ch.isalpha() for ch in text) or _WEB.search(text):
        return None
    if text.casefold() in GENERIC_NAMES:
        return None
    return _shorten(text, max_length) or None


def caller_name_for(contact_name: str | None, caller_id_name: str | None,
                    max_length: int) -> str | None:
    """{caller_name}: the contact's name (store, then lookup), else the caller ID name when it
    looks like a name, else None (the template then gets `policy.name_fallback`)."""
    return (clean_contact_name(contact_name, max_length)
            or clean_caller_name(caller_id_name, max_length))


def fold_to_gsm7(text: str) -> str:
    """The text in GSM-7 letters: what GSM-7 has stays (é, ö, Ø, Å, ß), accents it lacks go
    ("Zoë" -> "Zoe"), letters without a decomposition are transliterated by anyascii
    ("Łukasiewicz" -> "Lukasiewicz", "Þór" -> "Thor", "王" -> "Wang"); anything else (an
    emoji, a symbol) is dropped."""
    if sms.is_gsm7(text):
        return text
    out = []
    for ch in text:
        if sms.is_gsm7(ch):
            out.append(ch)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", ch)
                       if unicodedata.category(c) != "Mn")
        if base and sms.is_gsm7(base):
            out.append(base)
            continue
        latin = anyascii(ch)
        # anyascii spells symbols out (":grinning:"): only letters belong in a name
        out.append(latin if latin and sms.is_gsm7(latin) and all(
            c.isalpha() or c in _NAME_PUNCTUATION for c in latin) else "")
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def format_number(number: str | None, style: str, region: str) -> str:
    """A phone number for people: `national` ("07911 123456") or `international`."""
    if not number:
        return ""
    parsed = parse_number(number, region)
    if parsed is None:
        return number
    fmt = (phonenumbers.PhoneNumberFormat.NATIONAL if style == "national"
           else phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return phonenumbers.format_number(parsed, fmt)


@functools.lru_cache(maxsize=4096)
def parse_number(number: str, region: str) -> phonenumbers.PhoneNumber | None:
    """Parse E.164 (with or without '+', as Asterisk shows DIDs) or a national number.

    Memoised (a pure function; phonenumbers' parse is the costliest step of a decision, and
    a storm asks about the same DIDs over and over); callers must not modify the result."""
    text = number.strip()
    candidates = [text]
    if text.isdigit() and not text.startswith("0"):
        candidates.insert(0, "+" + text)
    for candidate in candidates:
        try:
            parsed = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(parsed):
            return parsed
    return None


def format_wait(seconds: float) -> str:
    if seconds < 60:
        return f"{max(0, round(seconds))} s"
    return f"{round(seconds / 60)} min"


def call_values(record: CallRecord, group: GroupConfig, policy: PolicyConfig, company: str,
                region: str) -> CallValues:
    """Every variable's value for this call, the caller name still raw (see `render_call`)."""
    return CallValues(record, group, policy, company, region)


class CallValues(Mapping[str, str]):
    """The variables of one call, each worked out when a template first asks for it: most
    templates use two or three, and the dates and numbers cost most (they are formatted
    while the caller waits for the text)."""

    def __init__(self, record: CallRecord, group: GroupConfig, policy: PolicyConfig,
                 company: str, region: str) -> None:
        self._record, self._group, self._policy = record, group, policy
        self._company, self._region = company, region
        self._values: dict[str, str] = {}
        self._local: dt.datetime | None = None

    def __getitem__(self, name: str) -> str:
        value = self._values.get(name)
        if value is None:
            value = self._values[name] = self._work_out(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._group.variables, *BUILTIN_VARIABLES]))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def _work_out(self, name: str) -> str:
        record, policy = self._record, self._policy
        if name == "caller_name":
            return policy.name_fallback
        if name == "caller":
            return format_number(record.caller_e164 or record.caller, policy.number_format,
                                 self._region)
        if name == "did":
            return format_number(record.did, policy.number_format, self._region)
        if name == "group":
            return self._group.display_name
        if name in ("date", "time", "weekday"):
            if self._local is None:
                self._local = dt.datetime.fromtimestamp(record.started,
                                                        ZoneInfo(self._group.timezone))
            return self._local.strftime(policy.date_format if name == "date" else
                                        policy.time_format if name == "time" else
                                        policy.weekday_format)
        if name == "wait":
            return format_wait(record.wait_seconds)
        if name == "company":
            return self._company
        return self._group.variables[name]  # KeyError: no such variable


def render_call(template: str, values: Mapping[str, str], caller_name: str | None,
                max_parts: int) -> Rendered:
    """Render, fitting the caller name into `max_parts` SMS: as is, folded, shortened, fallback."""
    fallback = values["caller_name"]
    candidates: list[str] = []
    if caller_name:
        candidates.append(caller_name)
        folded = fold_to_gsm7(caller_name).strip()
        if folded and folded != caller_name:
            candidates.append(folded)
        shortest = folded or caller_name
        candidates.extend(shortest[:length].rstrip() for length in range(len(shortest) - 1, 1, -1))
    candidates.append(fallback)
    rendered = None
    for name in candidates:
        body = render(template, values, caller_name=name)
        rendered = Rendered(body, sms.plan(body), name)
        if rendered.fits(max_parts):
            return rendered
    assert rendered is not None
    return rendered


def worst_case_values(group: GroupConfig, policy: PolicyConfig, company: str) -> dict[str, str]:
    """The longest value each variable can take, for the length check at load."""
    zone = ZoneInfo(group.timezone)
    moments = [dt.datetime(2024, 1, 1, hour, minute, tzinfo=zone) + dt.timedelta(days=day)
               for day in range(366) for hour, minute in ((0, 0), (12, 0), (23, 59))]

    def longest(fmt: str) -> str:
        return max((moment.strftime(fmt) for moment in moments), key=_units)

    name = "W" * max(policy.caller_name_max, 1)
    values = dict(group.variables)
    values.update(
        caller_name=max(name, policy.name_fallback, key=_units),
        caller=_WORST_NUMBER, did=_WORST_NUMBER, group=group.display_name,
        date=longest(policy.date_format), time=longest(policy.time_format),
        weekday=longest(policy.weekday_format), wait=_WORST_WAIT, company=company,
    )
    return values


def template_problem(template: str, known: set[str], worst: Mapping[str, str],
                     max_parts: int, group: str) -> str | None:
    """What is wrong with a group's template (a bad or unknown variable, a worst case too
    long for `max_parts`), said for the config's error list; None when it is fine."""
    try:
        names = fields(template)
    except ValueError as exc:
        return str(exc)
    unknown = sorted(set(names) - known)
    if unknown:
        return (f"unknown variable {', '.join('{' + n + '}' for n in unknown)}; known: "
                f"{', '.join(sorted(known))} (add your own under groups.{group}.variables)")
    return length_problem(template, worst, max_parts)


def length_problem(template: str, worst: Mapping[str, str], max_parts: int) -> str | None:
    """Why the worst case of `template` does not fit `max_parts` SMS, or None when it does."""
    body = render(template, worst)
    encoding = sms.encoding_for(body)
    plan = sms.plan(body, encoding)
    if plan.parts <= max_parts:
        return None
    if encoding == sms.GSM7:
        limit = sms.GSM7_SINGLE if max_parts == 1 else sms.GSM7_PART * max_parts
        label = "GSM-7"
    else:
        limit = sms.UCS2_SINGLE if max_parts == 1 else sms.UCS2_PART * max_parts
        label = "UCS-2"
    why = "" if encoding == sms.GSM7 else f" ({_ucs2_culprit(body)} needs UCS-2)"
    return (f"{plan.units} {label} characters at most{why}; limit is {limit} "
            f"(max_parts: {max_parts})")


def _ucs2_culprit(text: str) -> str:
    culprit = next((ch for ch in text if not sms.is_gsm7(ch)), "?")
    return f"{culprit!r} (U+{ord(culprit):04X})"


def _units(text: str) -> int:
    return sms.plan(text).units if text else 0
