"""Follow-up texts: the plan of a sequence after a first text (sans-IO).

A group's `followups: [{after: 2h, template: "...", within_hours: true}, ...]` are texts sent
after the call's first text: step n (seq n, kind `followup` in the outbox) is due `after`
seconds after the first text was **submitted** (every `after` counts from that moment, so the
steps are in increasing order). A step with `within_hours` that falls while the group is
closed waits for the next opening. Each step expires `outbox.max_age` after its own due time
(not after the call: a follow-up is late only relative to when it was meant to go).

The sequence stops as soon as the caller is reached or answers (`STOP_KINDS`): a reply from
the number (any text), an opt-out, an inbound call from the number that a person answered, a
call-back that reached the number, or an agent's outbound call to the number that was
answered. Queued steps then become `failed` with `error_detail` "cancelled: <why>", and the
daemon logs `follow-ups cancelled` with the reason. Steps are planned (rows written) when the
first text is submitted; a stop that came before that (e.g. an answered call between the
first text's decision and its submission) cancels them in the same transaction, so a
follow-up never goes out after the caller has been reached.

Follow-ups are texts to callers: they count for the caps and `mcdaemon disable` holds them,
but the cooldown (one *first* text per number per `policy.cooldown`) does not apply to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcdaemon.config.model import Config, GroupConfig
from mcdaemon.core import templates
from mcdaemon.core.hours import BusinessHours
from mcdaemon.core.records import CallRecord

#: why a sequence (or a campaign) stopped: contact_events.kind -> the words logged and stored
STOP_KINDS: dict[str, str] = {
    "reply": "the caller replied",
    "opt_out": "the caller opted out",
    "answered_call": "the caller called again and was answered",
    "callback_answered": "a call-back reached the caller",
    "agent_call": "an agent called the number and it was answered",
}


@dataclass(frozen=True, slots=True)
class PlannedText:
    """One follow-up to queue: seq 1..n, due at `not_before`, dropped after `expires_at`."""

    seq: int
    body: str
    not_before: float
    expires_at: float


def due_time(start: float, hours: BusinessHours | None, within_hours: bool) -> float:
    """`start`, or the next opening when `within_hours` and the group is closed then."""
    if not within_hours or hours is None or hours.is_open(start):
        return start
    opening = hours.next_opening(start)
    return start if opening is None else opening


def plan(group: GroupConfig, config: Config, record: CallRecord, submitted_at: float,
         contact_name: str | None = None) -> list[PlannedText]:
    """The follow-ups of one call whose first text was submitted at `submitted_at`."""
    if not group.followups:
        return []
    values = templates.call_values(record, group, config.policy, config.company, config.region)
    caller_name = templates.caller_name_for(contact_name, record.caller_name,
                                            config.policy.caller_name_max)
    planned: list[PlannedText] = []
    for seq, step in enumerate(group.followups, start=1):
        due = due_time(submitted_at + step.after, group.hours, step.within_hours)
        rendered = templates.render_call(step.template, values, caller_name, group.max_parts)
        planned.append(PlannedText(seq, rendered.body, due, due + config.outbox.max_age))
    return planned


def cancel_detail(kind: str) -> str:
    """The `error_detail` of a follow-up cancelled by a stop of this kind."""
    return f"cancelled: {STOP_KINDS.get(kind, kind)}"
