"""Call-back campaigns: who may be called back, when each attempt is due, what the PBX is
asked to do, and what its answer means (sans-IO; `mcdaemon.outreach.callbacks` does the I/O).

A campaign is per number: at most one is open for a number at any time (the store enforces
it), and a second missed call (or any other contact) from the number while one is open merges
into it. Its attempts run one after another, never two at once: attempt 1 is due
`attempts[0]` after the call ended (0s: at once), attempt i+1 `attempts[i]` after attempt i
ended without reaching the customer. With `within_hours` an attempt falling while the group is
closed waits for the next opening; an attempt due while `callbacks.max_concurrent` call-backs
are in progress waits for a free slot.

Attempt states::

    scheduled ──claim──► dialing ──OriginateResponse Success──► connected ──► answered
        │                  │  (answered_when: originate: Success is `answered`)  └──► not_reached
        └──► cancelled     └──► no_answer | busy | congestion | failed | refused
    dialing, connected ──► unknown  (no result within callbacks.attempt_timeout, or in flight
                                     when the daemon stopped uncleanly)

A campaign is `open` until it is `done` (the customer was reached), `cancelled` (the customer
called in and was answered, or an agent called the number and it was answered) or
`exhausted` (every attempt made, none reached the customer).

Which numbers are called back (`callback_number`): only a caller's E.164 number that passes
the same checks as a text, except the mobile rule: valid, in `policy.allowed_countries`, and
of a type a person answers — mobile, fixed line, or either (landlines are fine for a call);
premium-rate, shared-cost, toll-free, UAN, VoIP, pager, personal and voicemail numbers are
refused (toll fraud). Withheld or invalid numbers never start a campaign. The caller ID *name*
(attacker-controlled) is never used anywhere in the Originate; every field is stripped of CR
and LF (AMI injection), and the number placed in it must match `^\\+[1-9][0-9]{6,14}$`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType

from mcdaemon.config.model import Config, GroupConfig
from mcdaemon.config.outreach import CallbackConfig, fill
from mcdaemon.core import templates
from mcdaemon.core.followups import due_time

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_CALLABLE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE,
                             PhoneNumberType.FIXED_LINE_OR_MOBILE})

#: OriginateResponse Reason (Asterisk's AST_CONTROL_* of the outgoing channel) -> result
ORIGINATE_REASONS: dict[str, str] = {
    "0": "failed",  # no such extension, channel driver refused, ...
    "1": "no_answer",  # the far end hung up before answering
    "3": "no_answer",  # rang until the Timeout
    "4": "answered",
    "5": "busy",
    "8": "congestion",  # congestion, or the channel was unavailable
}
#: attempt states: still running / over
LIVE_ATTEMPTS = ("dialing", "connected")
#: results after which the campaign goes on with its next attempt
UNREACHED = frozenset({"no_answer", "busy", "congestion", "failed", "refused", "not_reached",
                       "unknown"})


def callback_number(number: str | None, config: Config) -> tuple[str | None, str]:
    """(E.164, "") when the number may be called back, else (None or E.164, why not)."""
    if not number or not any(ch.isdigit() for ch in number):
        return None, "withheld"
    parsed = templates.parse_number(number, config.region)
    if parsed is None:
        return None, "invalid_number"
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not _E164.match(e164):
        return None, "invalid_number"
    if any(e164.startswith(prefix) for prefix in config.policy.treat_as_mobile):
        country = phonenumbers.region_code_for_country_code(parsed.country_code or 0)
        number_type = PhoneNumberType.MOBILE
    elif not phonenumbers.is_valid_number(parsed):
        return e164, "invalid_number"
    else:
        country = phonenumbers.region_code_for_number(parsed) or "?"
        number_type = phonenumbers.number_type(parsed)
    if country not in config.allowed_countries:
        return e164, "country_not_allowed"
    if number_type not in _CALLABLE_TYPES:
        return e164, "not_callable"
    return e164, ""


def attempt_due(callback: CallbackConfig, group: GroupConfig, seq: int,
                after: float) -> float | None:
    """When attempt `seq` (1-based) is due, counting from `after` (the call's end for the
    first, the previous attempt's end for the others); None: no such attempt."""
    if seq < 1 or seq > len(callback.attempts):
        return None
    return due_time(after + callback.attempts[seq - 1], group.hours, callback.within_hours)


def defer_to_hours(callback: CallbackConfig, group: GroupConfig, now: float) -> float:
    """`now` when an attempt may start now, else when it may (the group's next opening)."""
    return due_time(now, group.hours, callback.within_hours)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What an OriginateResponse says about one attempt."""

    result: str  # answered | connected | no_answer | busy | congestion | failed
    reason_code: str
    uniqueid: str | None


def originate_result(fields: Mapping[str, str], callback: CallbackConfig) -> AttemptResult:
    """Read an OriginateResponse. Success is `answered` when the Originate's channel rang
    the customer (`answered_when: originate`), else `connected` (the customer still has to
    answer the Dial the dialplan makes after the agents)."""
    reason = fields.get("Reason", "").strip()
    uniqueid = fields.get("Uniqueid", "").strip()
    uid = None if uniqueid in ("", "<null>") else uniqueid
    if fields.get("Response", "").strip().lower() == "success":
        return AttemptResult("answered" if callback.answered_when == "originate"
                             else "connected", reason, uid)
    result = ORIGINATE_REASONS.get(reason, "failed")
    return AttemptResult("failed" if result == "answered" else result, reason, uid)


def originate_fields(callback: CallbackConfig, *, number: str, group: str, campaign: int,
                     attempt: int) -> dict[str, str | list[str]]:
    """The Originate action's fields (ActionID and Async are added by the AMI adapter).

    Only the validated E.164 `number`, the group's name and our own ids are placed into the
    admin's templates; CR and LF are removed from every value."""
    if not _E164.match(number):
        raise ValueError("a call-back goes only to a validated E.164 number")
    values = {"number": number, "digits": number[1:], "group": group,
              "campaign": str(campaign), "attempt": str(attempt)}
    fields: dict[str, str | list[str]] = {
        "Channel": fill(callback.channel, values),
        "Context": fill(callback.context, values),
        "Exten": fill(callback.exten, values),
        "Priority": str(callback.priority),
        "Timeout": str(int(callback.ring_timeout * 1000)),
    }
    if callback.caller_id:
        fields["CallerID"] = fill(callback.caller_id, values)
    variables = [f"{name}={fill(value, values)}" for name, value in callback.variables.items()]
    variables += [f"MCD_CALLBACK_CAMPAIGN={campaign}", f"MCD_CALLBACK_ATTEMPT={attempt}"]
    fields["Variable"] = [_one_line(item) for item in variables]
    return {key: value if isinstance(value, list) else _one_line(value)
            for key, value in fields.items()}


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "")
