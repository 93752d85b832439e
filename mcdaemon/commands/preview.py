"""`mcdaemon preview`: every template rendered with sample values, and what it costs to send.

Shows, per group, template and A/B variant: the text, its encoding, characters used and left,
the number of SMS, and the worst case the config check measured, so an administrator sees
the texts before the daemon sends them (as contact-centre consoles show before saving).
"""

from __future__ import annotations

from typing import TextIO

from mcdaemon.config.model import TEMPLATE_KEYS, Config, GroupConfig
from mcdaemon.core import sender_id, sms, templates
from mcdaemon.core.policy import TEXT, classify_number
from mcdaemon.core.records import CallRecord, Outcome

SAMPLE_CALLER = "+447700900123"
SAMPLE_NAME = "Alex Smith"
SAMPLE_DID = "442071230000"
SAMPLE_WAIT = 95.0


def preview(config: Config, out: TextIO, group: str | None, outcome: str | None,
            caller: str | None, now: float) -> int:
    """Print the preview; 0, or 1 when the group or outcome named does not exist."""
    groups = config.groups
    if group is not None:
        chosen = config.group(group)
        if chosen is None:
            names = ", ".join(g.name for g in config.groups) or "none configured"
            print(f"{config.source}: no group {group!r} (groups: {names})", file=out)
            return 1
        groups = (chosen,)
    if outcome is not None and outcome not in {str(o) for o in Outcome}:
        print(f"no outcome {outcome!r}; use one of {', '.join(str(o) for o in Outcome)}",
              file=out)
        return 1
    print(sender_id.describe(config.smpp), file=out)
    if not groups:
        print(f"{config.source}: no groups configured, so nothing is ever texted", file=out)
        return 0
    if caller is not None:
        e164, verdict, detail = classify_number(caller, config)
        shown = e164 or caller
        print(f"caller {shown}: " + ("can receive texts" if verdict == TEXT else
                                     f"no text ({verdict}{': ' + detail if detail else ''})"),
              file=out)
    for each in groups:
        _preview_group(config, each, out, outcome, caller or SAMPLE_CALLER, now)
    return 0


def _preview_group(config: Config, group: GroupConfig, out: TextIO, outcome: str | None,
                   caller: str, now: float) -> None:
    state = "" if group.enabled else " [disabled]"
    hours = f"; hours: {group.hours.describe()} ({group.timezone}), outside: " \
            f"{group.outside_hours}" if group.hours else ""
    print(f"\n== group {group.name} ({group.display_name}){state}", file=out)
    print(f"   triggers: {', '.join(sorted(group.triggers)) or 'none'}{hours}", file=out)
    if outcome is not None:
        keys = _keys_for_outcome(group, Outcome(outcome))
        if not keys:
            print(f"   {outcome}: not a trigger of this group: no text", file=out)
            return
    else:
        keys = [key for key in TEMPLATE_KEYS if key in group.templates or key in group.variants]
    record = CallRecord(
        pbx="preview", call_id="preview", caller=caller, caller_name=SAMPLE_NAME,
        caller_e164=None, did=group.dids[0] if group.dids else SAMPLE_DID, group=group.name,
        outcome=Outcome(outcome) if outcome else Outcome.QUEUE_ABANDON, stages=(),
        started=now - SAMPLE_WAIT, ended=now, wait_seconds=SAMPLE_WAIT)
    values = templates.call_values(record, group, config.policy, config.company, config.region)
    worst = templates.worst_case_values(group, config.policy, config.company)
    name = templates.clean_caller_name(SAMPLE_NAME, config.policy.caller_name_max)
    for key in keys:
        for variant, text in group.texts(key).items():
            label = key + (f" (variant {variant})" if variant else "")
            rendered = templates.render_call(text, values, name, group.max_parts)
            print(f"-- {label}", file=out)
            print(f"   {rendered.body}", file=out)
            print(f"   {_describe(rendered.plan, group.max_parts)}", file=out)
            print(f"   worst case: "
                  f"{_describe(sms.plan(templates.render(text, worst)), group.max_parts)}",
                  file=out)


def _keys_for_outcome(group: GroupConfig, outcome: Outcome) -> list[str]:
    if outcome not in group.triggers:
        return []
    keys = []
    for after_hours in (False, True):
        key = group.template_key(outcome, after_hours)
        if key is not None and key not in keys:
            keys.append(key)
    return keys


def _describe(plan: sms.SmsPlan, max_parts: int) -> str:
    encoding = "GSM-7" if plan.encoding == sms.GSM7 else "UCS-2"
    single = sms.GSM7_SINGLE if plan.encoding == sms.GSM7 else sms.UCS2_SINGLE
    part = sms.GSM7_PART if plan.encoding == sms.GSM7 else sms.UCS2_PART
    limit = single if max_parts == 1 else part * max_parts
    verdict = "fits" if plan.parts <= max_parts else "TOO LONG"
    return (f"{encoding}, {plan.units} characters used, {limit - plan.units} left of {limit}, "
            f"{plan.parts} SMS ({verdict}, max_parts {max_parts})")
