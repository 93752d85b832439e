"""The policy: for one finished call, whether to text, what, and when. Sans-IO.

Inputs: the CallRecord, the Config, a PolicyView (what the store knows: opt-out, last text to
this number, counters, run-time switches, read before the policy runs) and `now`. Output: a
Decision whose `reason` is a stable code, logged and stored for every call, texted or not.
The rules run in this order; the first that refuses gives the reason:

=================== ========================================================================
reason              meaning
=================== ========================================================================
not_missed          answered, or a dead end (nobody to call back about)
partial_record      the daemon did not see the whole call (connected mid-call, evicted)
global_off          `policy.enabled: false` or `mcdaemon disable`
no_group            no group matches (queue, MCD_GROUP, DID) and there is no `default` group
group_off           the group's `enabled: false` or `mcdaemon disable --group G`
not_triggered       the outcome is not in the group's `triggers`
too_old             the call ended more than `outbox.max_age` ago
withheld            no caller number (anonymous, private, restricted)
invalid_number      not a valid phone number
country_not_allowed the number's country is not in `policy.allowed_countries` (fraud shield)
not_mobile          a landline, VoIP, premium or other number that cannot receive texts
opted_out           the caller sent STOP
cooldown            this number got a text less than `policy.cooldown` ago
cap_day             fraud shield: `policy.caps.per_day` texts in the last 24 h
cap_hour            fraud shield: `policy.caps.per_hour` texts in the last hour
cap_prefix_hour     fraud shield: `policy.caps.per_prefix_hour` texts to this number range
outside_hours       closed (group hours) and `outside_hours: drop`, or never open
too_long            the rendered text does not fit `max_parts` even with the fallback name
deferred            yes, at the next opening (`outside_hours: defer`): see `send_after`
text                yes, now
=================== ========================================================================

`is_fraud_shield_trip(reason)` tells the caps apart: when one trips the service logs an error
once and counts them. Texts are sent only while `now <= expires_at`: `ended + max_age`, or
`send_after + max_age` for a deferred text (the age limit then runs from the opening).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from collections.abc import Sequence

import phonenumbers
from phonenumbers import PhoneNumberType

from mcdaemon.config.model import DEFAULT_GROUP, Config, GroupConfig
from mcdaemon.core import templates
from mcdaemon.core.records import CallRecord, Decision, Outcome, PolicyView

NOT_MISSED = "not_missed"
PARTIAL_RECORD = "partial_record"
GLOBAL_OFF = "global_off"
NO_GROUP = "no_group"
GROUP_OFF = "group_off"
NOT_TRIGGERED = "not_triggered"
TOO_OLD = "too_old"
WITHHELD = "withheld"
INVALID_NUMBER = "invalid_number"
COUNTRY_NOT_ALLOWED = "country_not_allowed"
NOT_MOBILE = "not_mobile"
OPTED_OUT = "opted_out"
COOLDOWN = "cooldown"
CAP_DAY = "cap_day"
CAP_HOUR = "cap_hour"
CAP_PREFIX_HOUR = "cap_prefix_hour"
OUTSIDE_HOURS = "outside_hours"
TOO_LONG = "too_long"
DEFERRED = "deferred"
TEXT = "text"

REASONS = (NOT_MISSED, PARTIAL_RECORD, GLOBAL_OFF, NO_GROUP, GROUP_OFF, NOT_TRIGGERED, TOO_OLD,
           WITHHELD, INVALID_NUMBER, COUNTRY_NOT_ALLOWED, NOT_MOBILE, OPTED_OUT, COOLDOWN,
           CAP_DAY, CAP_HOUR, CAP_PREFIX_HOUR, OUTSIDE_HOURS, TOO_LONG, DEFERRED, TEXT)

FRAUD_SHIELD_TRIPS = frozenset({CAP_DAY, CAP_HOUR, CAP_PREFIX_HOUR})

_MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE})


def is_fraud_shield_trip(reason: str) -> bool:
    """True for the caps: the service logs an error once per trip and counts each refusal."""
    return reason in FRAUD_SHIELD_TRIPS


def match_group(record: CallRecord, config: Config) -> GroupConfig | None:
    """The group for a call: by queue or MCD_GROUP (`record.group`), then DID, then `default`."""
    if record.group:
        for group in config.groups:
            if record.group == group.name or record.group in group.queues:
                return group
    if record.did:
        did = record.did.lstrip("+")
        for group in config.groups:
            if did in group.dids:
                return group
    return config.group(DEFAULT_GROUP)


def destination_prefix(e164: str, config: Config) -> str:
    """The number range the per-prefix cap counts: '+' and the first `prefix_digits` digits."""
    return "+" + e164.lstrip("+")[:config.policy.caps.prefix_digits]


def assign_variant(e164: str, group: str, names: Sequence[str]) -> str:
    """A/B variant for a caller: the same number in the same group always gets the same one."""
    ordered = sorted(names)
    digest = hashlib.sha256(f"{group}\x00{e164}".encode()).digest()
    return ordered[int.from_bytes(digest[:8], "big") % len(ordered)]


def classify_number(number: str | None, config: Config) -> tuple[str | None, str, str]:
    """(E.164, reason, detail) for a caller number: reason is TEXT when it can get a text."""
    if not number or not any(ch.isdigit() for ch in number):
        return None, WITHHELD, ""
    return _classify(number, config.region, config.policy.treat_as_mobile,
                     config.allowed_countries, config.policy.fixed_line_or_mobile)


@functools.lru_cache(maxsize=4096)
def _classify(number: str, region: str, treat_as_mobile: tuple[str, ...],
              allowed_countries: tuple[str, ...],
              fixed_line_or_mobile: str) -> tuple[str | None, str, str]:
    """Memoised on everything it reads: phonenumbers' validity and type checks are most of a
    decision's cost, and a storm's callers were already classified when their calls began
    (`prepare_caller`)."""
    parsed = templates.parse_number(number, region)
    if parsed is None:
        return None, INVALID_NUMBER, ""
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if any(e164.startswith(prefix) for prefix in treat_as_mobile):
        country = phonenumbers.region_code_for_country_code(parsed.country_code or 0)
        number_type = PhoneNumberType.MOBILE
    elif not phonenumbers.is_valid_number(parsed):
        return e164, INVALID_NUMBER, ""
    else:
        country = phonenumbers.region_code_for_number(parsed) or "?"
        number_type = phonenumbers.number_type(parsed)
    if country not in allowed_countries:
        return e164, COUNTRY_NOT_ALLOWED, (f"{country} is not in allowed_countries "
                                           f"({', '.join(allowed_countries)})")
    mobile = number_type in _MOBILE_TYPES or (
        number_type == PhoneNumberType.FIXED_LINE_OR_MOBILE
        and fixed_line_or_mobile == "text")
    if not mobile:
        return e164, NOT_MOBILE, _type_name(number_type)
    return e164, TEXT, ""


def prepare_caller(number: str, config: Config) -> None:
    """Classify and format a caller's number while the call is still going on, so the
    decision when it ends (when the caller waits for the text) finds both ready (memoised)."""
    classify_number(number, config)
    templates.format_number(number, config.policy.number_format, config.region)


def decide(record: CallRecord, config: Config, view: PolicyView, now: float) -> Decision:
    """The verdict on one call; see the module docstring for the order of the rules."""
    if not record.missed:
        return Decision(False, NOT_MISSED, detail=str(record.outcome))
    if record.partial or record.evicted:
        return Decision(False, PARTIAL_RECORD,
                        detail="evicted" if record.evicted else "seen in part")
    if not (config.policy.enabled and view.global_enabled):
        return Decision(False, GLOBAL_OFF)
    group = match_group(record, config)
    if group is None:
        return Decision(False, NO_GROUP, detail=f"group={record.group or '-'} "
                                                f"did={record.did or '-'}")

    def refuse(reason: str, detail: str = "") -> Decision:
        return Decision(False, reason, group=group.name, detail=detail)

    if not (group.enabled and view.group_enabled):
        return refuse(GROUP_OFF)
    if record.outcome not in group.triggers:
        return refuse(NOT_TRIGGERED, str(record.outcome))
    max_age = config.outbox.max_age
    if now - record.ended > max_age:
        return refuse(TOO_OLD, f"ended {now - record.ended:.0f} s ago; max_age {max_age:.0f} s")
    e164, verdict, detail = classify_number(record.caller_e164 or record.caller, config)
    if verdict != TEXT or e164 is None:
        return refuse(verdict, detail)
    if view.opted_out:
        return refuse(OPTED_OUT)
    cooldown = config.policy.cooldown
    if view.last_text_at is not None and now - view.last_text_at < cooldown:
        return refuse(COOLDOWN, f"last text {now - view.last_text_at:.0f} s ago; "
                                f"cooldown {cooldown:.0f} s")
    caps = config.policy.caps
    for reason, count, cap, what in (
            (CAP_DAY, view.texts_last_day, caps.per_day, "per_day"),
            (CAP_HOUR, view.texts_last_hour, caps.per_hour, "per_hour"),
            (CAP_PREFIX_HOUR, view.prefix_texts_last_hour, caps.per_prefix_hour,
             f"per_prefix_hour ({destination_prefix(e164, config)}…)")):
        if count >= cap:
            return refuse(reason, f"{count} texts; policy.caps.{what} is {cap}")

    closed = group.hours is not None and not group.hours.is_open(now)
    send_after: float | None = None
    if closed and group.outside_hours != "send":
        opening = group.hours.next_opening(now) if group.hours else None
        if group.outside_hours == "drop" or opening is None:
            return refuse(OUTSIDE_HOURS, "never open" if opening is None else "closed")
        send_after = opening
    after_hours = closed or record.outcome == Outcome.AFTER_HOURS
    key = group.template_key(record.outcome, after_hours)
    if key is None:  # the loader refuses triggers without a text; kept for hand-made configs
        return refuse(NOT_TRIGGERED, f"no template for {record.outcome}")
    texts = group.texts(key)
    variant = None if None in texts else assign_variant(e164, group.name, [
        name for name in texts if name is not None])
    values = templates.call_values(record, group, config.policy, config.company, config.region)
    caller_name = templates.caller_name_for(view.contact_name, record.caller_name,
                                            config.policy.caller_name_max)
    rendered = templates.render_call(texts[variant], values, caller_name, group.max_parts)
    if not rendered.fits(group.max_parts):
        return refuse(TOO_LONG, f"{rendered.plan.parts} parts; max_parts {group.max_parts}")
    return Decision(True, DEFERRED if send_after is not None else TEXT, group=group.name,
                    body=rendered.body, template=key, variant=variant, send_after=send_after,
                    expires_at=(record.ended if send_after is None else send_after) + max_age,
                    detail=f"{rendered.plan.encoding} {rendered.plan.units} units, "
                           f"{rendered.plan.parts} part(s)",
                    destination=e164)

def _type_name(number_type: int) -> str:
    for name in dir(PhoneNumberType):
        if not name.startswith("_") and getattr(PhoneNumberType, name) == number_type:
            return name
    return str(number_type)


def decide_batch(records: Sequence[CallRecord], views: Sequence[PolicyView], config: Config,
                 now: float) -> list[Decision]:
    """Decide the calls of one batch in order. The store's views were read before the batch,
    so the texts decided earlier in it are counted here for the later ones (cooldown, caps,
    the fraud shield). A text gets its expiry (`outbox.max_age` after the call) if the
    decision set none."""
    decisions: list[Decision] = []
    batch_last: dict[str, float] = {}
    batch_texts = 0
    batch_prefixes: collections.Counter[str] = collections.Counter()
    for record, view in zip(records, views, strict=True):
        number = record.caller_e164
        prefix = destination_prefix(number, config) if number else None
        if batch_texts:
            view = dataclasses.replace(
                view,
                last_text_at=batch_last.get(number or "", view.last_text_at),
                texts_last_hour=view.texts_last_hour + batch_texts,
                texts_last_day=view.texts_last_day + batch_texts,
                prefix_texts_last_hour=view.prefix_texts_last_hour + (
                    batch_prefixes[prefix] if prefix else 0))
        decision = decide(record, config, view, now)
        if decision.text and decision.expires_at is None:
            decision = dataclasses.replace(
                decision, expires_at=record.ended + config.outbox.max_age)
        if decision.text and decision.destination:
            batch_last[decision.destination] = now
            batch_texts += 1
            batch_prefixes[destination_prefix(decision.destination, config)] += 1
        decisions.append(decision)
    return decisions
