"""Shared pieces of the follow-up and call-back tests: a fake clock, configs, calls, a fake
AMI connection that records Originates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mcdaemon.adapters.ami import AmiEvent
from mcdaemon.config.load import config_from_dict
from mcdaemon.config.model import Config
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import NewCall, Store

#: Tuesday 2025-01-07 10:00:00 UTC (Europe/London: 10:00, inside Mon-Fri 09:00-17:30)
T0 = 1736244000.0
CALLER = "+447700900123"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_config(**group: Any) -> Config:
    base: dict[str, Any] = {
        "triggers": ["missed"],
        "templates": {"default": "Sorry we missed your call, {caller_name}."},
    }
    base.update(group)
    return config_from_dict({
        "region": "GB", "timezone": "Europe/London",
        "ami": [{"name": "lab", "username": "mcd", "secret": "x"}],
        "outbox": {"max_age": "15m"},
        "groups": {"default": base},
    })


def call(call_id: str = "c1", caller: str = CALLER, *,
         outcome: Outcome = Outcome.QUEUE_ABANDON, ended: float = T0,
         name: str | None = None) -> CallRecord:
    return CallRecord(pbx="lab", call_id=call_id, caller=caller, caller_name=name,
                      caller_e164=caller if caller.startswith("+") else None,
                      did="442071230001", group=None, outcome=outcome, stages=(),
                      started=ended - 30, ended=ended, wait_seconds=10.0)


async def first_text_submitted(store: Store, record: CallRecord, at: float) -> int:
    """Record the call with its first text, and have the SMSC take it at `at`."""
    decision = Decision(True, "text", group="default", body="Sorry we missed your call.",
                        destination=record.caller_e164, expires_at=record.ended + 900)
    ids = await store.record_calls([NewCall(record, decision)], now=record.ended,
                                   destinations=[record.caller_e164])
    assert ids[0] is not None
    claimed = await store.claim_due(at, 10)
    assert [message.id for message in claimed] == [ids[0]]
    assert await store.mark_submitted(ids[0], ["smsc-1"], at)
    return ids[0]


def event(pbx: str = "lab", at: float = T0, **fields: str) -> AmiEvent:
    return AmiEvent(pbx, at, dict(fields))


def outbound_dial(number: str, at: float, *, answer: bool = True,
                  dest: str = "9.2") -> list[AmiEvent]:
    """An agent's phone dialling `number` through the trunk, as AMI shows it."""
    common = {"Channel": "PJSIP/101-00000001", "Uniqueid": "9.1", "Linkedid": "9.1",
              "DestChannel": "PJSIP/carrier-00000002", "DestUniqueid": dest}
    return [
        event(at=at, Event="DialBegin", DialString=f"{number}@carrier",
              DestCallerIDNum=number, **common),
        event(at=at + 5, Event="DialEnd", DialStatus="ANSWER" if answer else "NOANSWER",
              **common),
    ]


class FakeAmi:
    """An AMI connection that is up and answers every Originate with `response`."""

    def __init__(self, response: str = "Success") -> None:
        self.originates: list[dict[str, Any]] = []
        self.response = response
        self.connected = True

    def action_id(self, reference: str) -> str:
        return f"mcdaemon-lab-test-{reference}"

    async def originate(self, fields: Mapping[str, str | Sequence[str]] | None = None, *,
                        action_id: str | None = None, **more: str) -> dict[str, str]:
        self.originates.append({**(fields or {}), **more, "ActionID": action_id})
        return {"Response": self.response, "ActionID": action_id or "",
                "Message": "Originate successfully queued" if self.response == "Success"
                else "Permission denied"}


def originate_response(action_id: str, response: str, reason: str,
                       at: float) -> AmiEvent:
    return event(at=at, Event="OriginateResponse", ActionID=action_id, Response=response,
                 Reason=reason, Uniqueid="<null>", Channel="Local/x@mcd-callback")
