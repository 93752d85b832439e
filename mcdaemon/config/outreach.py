"""The settings of follow-up texts and call-back campaigns (`groups.*.followups`,
`groups.*.callback`, and the global `callbacks:`).

Kept apart from `config.load` (which calls the readers here) so the follow-up and call-back
code owns its settings; it imports nothing of the loader (the `Section` and the
`Reader` are passed in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mcdaemon.core.records import MISSED_OUTCOMES, Outcome

if TYPE_CHECKING:
    from mcdaemon.config.reader import Reader, Section

#: the most follow-up texts after one first text
MAX_FOLLOWUPS = 5
#: the most call-back attempts in one campaign
MAX_ATTEMPTS = 10
#: `${name}` placeholders the call-back's AMI fields may use
CALLBACK_PLACEHOLDERS = ("number", "digits", "group", "campaign", "attempt")
ANSWERED_WHEN = ("originate", "customer_dial")
DEFAULT_CHANNEL = "Local/${number}@mcd-callback"
DEFAULT_CONTEXT = "mcd-callback-agents"
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_NAME = re.compile(r"^_{0,2}[A-Za-z][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class FollowupStep:
    """One follow-up text: `after` seconds after the first text was submitted."""

    after: float
    template: str
    within_hours: bool = True  # a step due while the group is closed waits for the opening
    enabled: bool = True  # false: checked at load, never sent (`GroupConfig` leaves it out)


@dataclass(frozen=True, slots=True)
class CallbackConfig:
    """A group's call-back campaign: what to Originate, and when."""

    attempts: tuple[float, ...]  # [0]: after the call; [i]: after attempt i ended unreached
    channel: str = DEFAULT_CHANNEL
    context: str = DEFAULT_CONTEXT
    exten: str = "s"
    priority: int = 1
    caller_id: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    within_hours: bool = True
    triggers: frozenset[Outcome] = frozenset({Outcome.CALLBACK_REQUESTED})
    #: originate: the Originate's channel rings the customer, so its answer (OriginateResponse
    #: Success) means the customer answered. customer_dial: the channel rings agents first;
    #: the customer counts as reached only when a Dial to the number is answered.
    answered_when: str = "originate"
    ring_timeout: float = 30.0  # the Originate's Timeout


@dataclass(frozen=True, slots=True)
class CallbacksConfig:
    """Settings shared by every group's call-backs."""

    max_concurrent: int = 2  # call-backs in progress at once, every number and group
    pbx: str = ""  # the ami[] entry that places call-backs ("": the PBX the call came on)
    attempt_timeout: float = 600.0  # an attempt without a result after this: unknown


def placeholders(text: str) -> list[str]:
    return _PLACEHOLDER.findall(text)


def fill(text: str, values: dict[str, str]) -> str:
    """`${name}` replaced by its value (names checked at load); CR/LF never survive."""
    filled = _PLACEHOLDER.sub(lambda match: values.get(match.group(1), ""), text)
    return filled.replace("\r", "").replace("\n", "")


def read_followups(section: Section) -> tuple[FollowupStep, ...]:
    """`groups.*.followups`: a list of {after, template, within_hours, enabled}, every step
    (the group keeps the enabled ones; the others are checked all the same)."""
    value = section.raw("followups")
    if value is None:
        return ()
    if not isinstance(value, list):
        section.error("followups", "must be a list of steps ({after: 2h, template: ...})")
        return ()
    if len(value) > MAX_FOLLOWUPS:
        section.error("followups", f"{len(value)} steps; at most {MAX_FOLLOWUPS}")
    steps: list[FollowupStep] = []
    reader = section.reader
    for index, item in enumerate(value):
        step = reader.mapping(item, f"{section.path}.followups[{index}]",
                              "groups.*.followups[]")
        after = step.duration("after", 0.0)
        if not step.has("after") or after <= 0:
            step.error("after", "is required: how long after the first text (e.g. 2h)")
        template = step.str("template", required=True).strip()
        within = step.bool("within_hours", True)
        enabled = step.bool("enabled", True)
        step.done()
        if steps and after <= steps[-1].after:
            step.error("after", "must be later than the step before (each `after` counts "
                                "from the first text)")
        steps.append(FollowupStep(after, template, within, enabled))
    return tuple(steps)




def read_callback(section: Section) -> CallbackConfig | None:
    """`groups.*.callback`, or None when the group places no call-backs (none given, or
    `enabled: false`: then checked all the same, so turning it on cannot reveal a typo)."""
    if not section.has("callback") or section.data.get("callback") is None:
        section.raw("callback")
        return None
    cb = section.section("callback")
    enabled = cb.bool("enabled", True)
    attempts: list[float] = []
    raw_attempts = cb.raw("attempts")
    if not isinstance(raw_attempts, list) or not raw_attempts:
        cb.error("attempts", "is required: the waits before each attempt, e.g. [1m, 15m, 1h]")
    else:
        from mcdaemon.config.reader import parse_duration
        for item in raw_attempts:
            try:
                attempts.append(parse_duration(item))
            except ValueError as exc:
                cb.error("attempts", str(exc))
        if len(attempts) > MAX_ATTEMPTS:
            cb.error("attempts", f"{len(attempts)} attempts; at most {MAX_ATTEMPTS}")
    config = CallbackConfig(
        attempts=tuple(attempts),
        channel=cb.str("channel", DEFAULT_CHANNEL),
        context=cb.str("context", DEFAULT_CONTEXT),
        exten=cb.str("exten", "s"),
        priority=cb.int("priority", 1, minimum=1),
        caller_id=cb.str("caller_id", ""),
        variables=_read_variables(cb),
        within_hours=cb.bool("within_hours", True),
        triggers=_read_callback_triggers(cb),
        answered_when=cb.choice("answered_when", "originate", ANSWERED_WHEN),
        ring_timeout=cb.duration("ring_timeout", 30.0, minimum=5.0),
    )
    for key in ("channel", "context", "exten", "caller_id"):
        text = getattr(config, key)
        _check_field(cb, key, text)
    if "${number}" not in config.channel + config.exten and "${digits}" not in (
            config.channel + config.exten):
        cb.error("channel", "must contain ${number} or ${digits} (in channel or exten): the "
                            "number called back")
    if not config.channel.strip():
        cb.error("channel", "is required (e.g. Local/${number}@mcd-callback)")
    cb.done()
    return config if enabled else None


def _check_field(cb: Section, key: str, text: str) -> None:
    if any(ch in text for ch in "\r\n"):
        cb.error(key, "must not contain line breaks")
    unknown = sorted(set(placeholders(text)) - set(CALLBACK_PLACEHOLDERS))
    if unknown:
        cb.error(key, f"unknown placeholder {', '.join('${' + n + '}' for n in unknown)}; "
                      f"known: {', '.join('${' + n + '}' for n in CALLBACK_PLACEHOLDERS)}")


def _read_variables(cb: Section) -> dict[str, str]:
    variables: dict[str, str] = {}
    section = cb.section("variables")
    for name, value in section.items():
        if not _VARIABLE_NAME.match(name):
            section.error(name, "a channel variable name: letters, digits and '_'")
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            section.error(name, "must be text")
        else:
            text = str(value)
            _check_field(section, name, text)
            variables[name] = text
    return variables


def _read_callback_triggers(cb: Section) -> frozenset[Outcome]:
    words = cb.str_list("triggers", (str(Outcome.CALLBACK_REQUESTED),))
    outcomes: set[Outcome] = set()
    names = {str(outcome) for outcome in MISSED_OUTCOMES}
    for word in words:
        if word == "missed":
            outcomes.update(MISSED_OUTCOMES)
        elif word in names:
            outcomes.add(Outcome(word))
        else:
            cb.error("triggers", f"{word!r} is not one of missed, {', '.join(sorted(names))}")
    return frozenset(outcomes)


def read_callbacks(reader: Reader, section: Section, pbx_names: list[str],
                   groups_with_callback: list[str]) -> CallbacksConfig:
    """The global `callbacks:` section, checked against the PBXs and the groups."""
    config = CallbacksConfig(
        max_concurrent=section.int("max_concurrent", 2, minimum=1, maximum=100),
        pbx=section.str("pbx", ""),
        attempt_timeout=section.duration("attempt_timeout", 600.0, minimum=30.0),
    )
    section.done()
    if config.pbx and config.pbx not in pbx_names:
        section.error("pbx", f"{config.pbx!r} is not an ami[] name "
                             f"({', '.join(pbx_names) or 'no PBX is configured'})")
    if groups_with_callback and not pbx_names:
        reader.error(f"groups.{groups_with_callback[0]}.callback",
                     "call-backs need a PBX to call through (ami:)")
    return config
