"""The CallRecord: what the tracker says about one finished inbound call.

It is the only thing that crosses from the tracker to the policy and the store, so it is a
plain frozen value with a stable JSON form (`as_dict`).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class Outcome(enum.StrEnum):
    ANSWERED = "answered"
    QUEUE_ABANDON = "queue_abandon"
    QUEUE_TIMEOUT = "queue_timeout"
    IVR_ABANDON = "ivr_abandon"
    RING_NO_ANSWER = "ring_no_answer"
    VOICEMAIL_LEFT = "voicemail_left"
    VOICEMAIL_NO_MESSAGE = "voicemail_no_message"
    AFTER_HOURS = "after_hours"
    DEAD_END = "dead_end"
    CALLBACK_REQUESTED = "callback_requested"


#: Outcomes where nobody spoke to the caller and a text may help.
MISSED_OUTCOMES: frozenset[Outcome] = frozenset(Outcome) - {Outcome.ANSWERED, Outcome.DEAD_END}


@dataclass(frozen=True, slots=True)
class CallRecord:
    pbx: str
    call_id: str
    caller: str
    caller_name: str | None
    caller_e164: str | None
    did: str | None
    group: str | None
    outcome: Outcome
    stages: tuple[str, ...]
    started: float
    ended: float
    wait_seconds: float
    partial: bool = False
    evicted: bool = False
    channel: str | None = None
    adopted: bool = False  # already in progress at an AMI connect: its start was not seen
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def missed(self) -> bool:
        return self.outcome in MISSED_OUTCOMES

    def as_dict(self) -> dict[str, Any]:
        """Field by field: `dataclasses.asdict` deep-copies, a cost paid for every call of a
        storm while its callers wait for their texts."""
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        data["outcome"] = str(self.outcome)
        data["stages"] = list(self.stages)
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallRecord:
        values = dict(data)
        values["outcome"] = Outcome(values["outcome"])
        values["stages"] = tuple(values.get("stages", ()))
        values.setdefault("extra", {})
        return cls(**values)


_RECORD_FIELDS: tuple[str, ...] = tuple(item.name for item in fields(CallRecord))


@dataclass(frozen=True, slots=True)
class PolicyView:
    """What the store knows that the policy needs, read before the policy runs (no I/O inside)."""

    opted_out: bool = False
    last_text_at: float | None = None  # epoch of the last text to this number (any call)
    texts_last_hour: int = 0  # all texts, every destination (fraud-shield global caps)
    texts_last_day: int = 0
    prefix_texts_last_hour: int = 0  # texts to numbers sharing this number's prefix
    global_enabled: bool = True  # the run-time switch (`mcdaemon enable|disable`)
    group_enabled: bool = True
    #: the caller's name from the contact store or the lookup (filled by the service; raw,
    #: `templates.caller_name_for` cleans it), None when neither knows the number
    contact_name: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's verdict on one call; stored with the call whether it texts or not."""

    text: bool
    reason: str  # a stable reason code, e.g. "sent", "not_mobile", "cooldown", "opted_out"
    group: str | None = None
    body: str | None = None  # the rendered text when `text` is true
    template: str | None = None  # which template (outcome key) produced it
    variant: str | None = None  # A/B variant name
    send_after: float | None = None  # epoch; deferred to the next opening hours
    expires_at: float | None = None  # epoch; not sent after this
    detail: str = ""  # words for the log (e.g. "cap 50/h reached")
    destination: str | None = None  # the caller's E.164 number as the policy validated it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
