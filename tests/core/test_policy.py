"""The policy, rule by rule: every reason code, cooldown on a fake clock, caps, A/B stability."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from mcdaemon.config.load import config_from_dict
from mcdaemon.config.model import Config
from mcdaemon.core.policy import (
    REASONS,
    assign_variant,
    decide,
    destination_prefix,
    is_fraud_shield_trip,
    match_group,
)
from mcdaemon.core.records import CallRecord, Outcome, PolicyView

MONDAY_10 = dt.datetime(2025, 1, 6, 10, 0, tzinfo=dt.UTC).timestamp()  # 10:00 in London
SUNDAY_10 = dt.datetime(2025, 1, 5, 10, 0, tzinfo=dt.UTC).timestamp()

BASE: dict[str, Any] = {
    "region": "GB", "timezone": "Europe/London", "company": "Acme",
    "policy": {"cooldown": "1h", "caps": {"per_prefix_hour": 5, "per_hour": 10, "per_day": 20}},
    "outbox": {"max_age": "15m"},
    "groups": {
        "sales": {"queues": ["sales"], "triggers": ["queue_abandon", "voicemail_no_message"],
                  "templates": {"default": "Hi {caller_name}, {group} missed you."}},
        "support": {"queues": ["support"], "dids": ["442071230001"], "triggers": ["abandon"],
                    "hours": {"mon-fri": "09:00-17:30"}, "outside_hours": "defer",
                    "templates": {"default": "Support missed you.",
                                  "after_hours": "Support is closed; we call back at 9."}},
        "default": {"triggers": ["missed"], "templates": {"default": "We missed you."}},
    },
}


def make_config(**policy: Any) -> Config:
    data = copy.deepcopy(BASE)
    data["policy"].update(policy)
    return config_from_dict(data)


CONFIG = make_config()
LAB = make_config(treat_as_mobile=["+447700900"])
NO_TEST_RANGES = make_config(treat_as_mobile=[])


def call(**changes: Any) -> CallRecord:
    values: dict[str, Any] = dict(
        pbx="lab", call_id="1.0", caller="+447400123456", caller_name="Jane Doe",
        caller_e164="+447400123456", did="442071230000", group="sales",
        outcome=Outcome.QUEUE_ABANDON, stages=("queue:sales",), started=MONDAY_10 - 100,
        ended=MONDAY_10 - 5, wait_seconds=95.0)
    values.update(changes)
    return CallRecord(**values)


NUMBER = {"caller": "", "caller_e164": None}


@pytest.mark.parametrize(("case", "record", "view", "config", "now", "reason"), [
    ("answered", call(outcome=Outcome.ANSWERED), PolicyView(), CONFIG, MONDAY_10, "not_missed"),
    ("dead end", call(outcome=Outcome.DEAD_END), PolicyView(), CONFIG, MONDAY_10, "not_missed"),
    ("seen in part", call(partial=True), PolicyView(), CONFIG, MONDAY_10, "partial_record"),
    ("evicted", call(evicted=True), PolicyView(), CONFIG, MONDAY_10, "partial_record"),
    ("switched off live", call(), PolicyView(global_enabled=False), CONFIG, MONDAY_10,
     "global_off"),
    ("switched off in file", call(), PolicyView(), make_config(enabled=False), MONDAY_10,
     "global_off"),
    ("group off live", call(), PolicyView(group_enabled=False), CONFIG, MONDAY_10, "group_off"),
    ("not a trigger", call(outcome=Outcome.IVR_ABANDON), PolicyView(), CONFIG, MONDAY_10,
     "not_triggered"),
    ("too old", call(ended=MONDAY_10 - 16 * 60), PolicyView(), CONFIG, MONDAY_10, "too_old"),
    ("anonymous", call(caller="anonymous", caller_e164=None), PolicyView(), CONFIG, MONDAY_10,
     "withheld"),
    ("empty", call(caller="", caller_e164=None), PolicyView(), CONFIG, MONDAY_10, "withheld"),
    ("garbage", call(caller="12", caller_e164=None), PolicyView(), CONFIG, MONDAY_10,
     "invalid_number"),
    ("drama range, test ranges off", call(caller="+447700900123",
     caller_e164="+447700900123"), PolicyView(), NO_TEST_RANGES, MONDAY_10, "invalid_number"),
    ("landline", call(caller="+442079460000", caller_e164="+442079460000"), PolicyView(),
     CONFIG, MONDAY_10, "not_mobile"),
    ("premium rate", call(caller="+449098790000", caller_e164=None), PolicyView(), CONFIG,
     MONDAY_10, "not_mobile"),
    ("French mobile", call(caller="+33612345678", caller_e164="+33612345678"), PolicyView(),
     CONFIG, MONDAY_10, "country_not_allowed"),
    ("US number, refuse setting", call(caller="+12015550123", caller_e164="+12015550123"),
     PolicyView(), make_config(allowed_countries=["GB", "US"],
                               fixed_line_or_mobile="refuse"), MONDAY_10, "not_mobile"),
    ("Guernsey mobile on +44", call(caller="+447911123456", caller_e164="+447911123456"),
     PolicyView(), CONFIG, MONDAY_10, "country_not_allowed"),
    ("opted out", call(), PolicyView(opted_out=True), CONFIG, MONDAY_10, "opted_out"),
    ("texted 10 min ago", call(), PolicyView(last_text_at=MONDAY_10 - 600), CONFIG, MONDAY_10,
     "cooldown"),
    ("daily cap", call(), PolicyView(texts_last_day=20), CONFIG, MONDAY_10, "cap_day"),
    ("hourly cap", call(), PolicyView(texts_last_hour=10), CONFIG, MONDAY_10, "cap_hour"),
    ("prefix cap", call(), PolicyView(prefix_texts_last_hour=5), CONFIG, MONDAY_10,
     "cap_prefix_hour"),
    ("support closed on Sunday: defer", call(group="support", ended=SUNDAY_10 - 5),
     PolicyView(), CONFIG, SUNDAY_10, "deferred"),
    ("texted", call(), PolicyView(), CONFIG, MONDAY_10, "text"),
    ("national caller id", call(caller="07400123456", caller_e164=None), PolicyView(), CONFIG,
     MONDAY_10, "text"),
    ("drama range in the lab", call(caller="+447700900123", caller_e164="+447700900123"),
     PolicyView(), LAB, MONDAY_10, "text"),
    ("drama range by default", call(caller="+447700900123", caller_e164="+447700900123"),
     PolicyView(), CONFIG, MONDAY_10, "text"),
    ("US number, text setting", call(caller="+12015550123", caller_e164="+12015550123"),
     PolicyView(), make_config(allowed_countries=["GB", "US"]), MONDAY_10, "text"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_each_rule_gives_its_own_reason(case: str, record: CallRecord, view: PolicyView,
                                        config: Config, now: float, reason: str) -> None:
    decision = decide(record, config, view, now)
    assert decision.reason == reason, decision.detail
    assert decision.text is (reason in ("text", "deferred"))
    assert reason in REASONS


def test_outside_hours_drop_refuses() -> None:
    data = copy.deepcopy(BASE)
    data["groups"]["support"]["outside_hours"] = "drop"
    decision = decide(call(group="support", ended=SUNDAY_10), config_from_dict(data),
                      PolicyView(), SUNDAY_10)
    assert (decision.text, decision.reason) == (False, "outside_hours")


def test_a_group_with_no_default_and_no_match_is_no_group() -> None:
    data = copy.deepcopy(BASE)
    del data["groups"]["default"]
    decision = decide(call(group="billing", did="449999"), config_from_dict(data), PolicyView(),
                      MONDAY_10)
    assert decision.reason == "no_group"


def test_deferred_text_waits_for_the_opening_and_uses_the_after_hours_template() -> None:
    decision = decide(call(group="support", ended=SUNDAY_10 - 5), CONFIG, PolicyView(),
                      SUNDAY_10)
    monday_9 = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.UTC).timestamp()
    assert decision.send_after == monday_9
    assert decision.expires_at == monday_9 + 15 * 60
    assert decision.template == "after_hours"
    assert decision.body == "Support is closed; we call back at 9."


def test_after_hours_send_texts_now_with_the_after_hours_template() -> None:
    data = copy.deepcopy(BASE)
    data["groups"]["support"]["outside_hours"] = "send"
    decision = decide(call(group="support", ended=SUNDAY_10), config_from_dict(data),
                      PolicyView(), SUNDAY_10)
    assert (decision.reason, decision.send_after, decision.template) == (
        "text", None, "after_hours")


def test_a_text_carries_body_group_destination_and_expiry() -> None:
    decision = decide(call(caller_name="WIRELESS CALLER"), CONFIG, PolicyView(), MONDAY_10)
    assert decision.body == "Hi there, sales missed you."
    assert decision.group == "sales" and decision.template == "default"
    assert decision.destination == "+447400123456"
    assert decision.expires_at == MONDAY_10 - 5 + 15 * 60


@pytest.mark.parametrize(("record", "group"), [
    (call(group="sales"), "sales"),                                   # queue name
    (call(group="support", did="442071230000"), "support"),
    (call(group=None, did="442071230001"), "support"),                # DID
    (call(group=None, did="+442071230001"), "support"),
    (call(group="sales", did="442071230001"), "sales"),               # queue before DID
    (call(group=None, did="442071230000"), "default"),                # the IVR: default
    (call(group="nobody", did=None), "default"),
])
def test_groups_match_by_queue_or_mcd_group_then_did_then_default(record: CallRecord,
                                                                   group: str) -> None:
    matched = match_group(record, CONFIG)
    assert matched is not None and matched.name == group


def test_three_quick_calls_give_one_text_on_a_fake_clock() -> None:
    clock, last_text_at, reasons = MONDAY_10, None, []
    for _ in range(3):
        decision = decide(call(ended=clock - 5), CONFIG, PolicyView(last_text_at=last_text_at),
                          clock)
        reasons.append(decision.reason)
        if decision.text:
            last_text_at = clock
        clock += 20
    assert reasons == ["text", "cooldown", "cooldown"]
    clock = last_text_at + 3600  # type: ignore[operator]
    assert decide(call(ended=clock - 5), CONFIG, PolicyView(last_text_at=last_text_at),
                  clock).reason == "text"


def test_caps_trip_exactly_at_the_limit() -> None:
    assert decide(call(), CONFIG, PolicyView(texts_last_hour=9), MONDAY_10).text
    assert not decide(call(), CONFIG, PolicyView(texts_last_hour=10), MONDAY_10).text


def test_only_caps_count_as_fraud_shield_trips() -> None:
    assert {r for r in REASONS if is_fraud_shield_trip(r)} == {
        "cap_day", "cap_hour", "cap_prefix_hour"}


def test_destination_prefix_uses_prefix_digits() -> None:
    assert destination_prefix("+447400123456", CONFIG) == "+4474001"


def variant_config() -> Config:
    data = copy.deepcopy(BASE)
    data["groups"]["sales"]["variants"] = {"queue_abandon": {"a": "Text A.", "b": "Text B."}}
    return config_from_dict(data)


def test_ab_variant_is_stable_per_caller_and_spreads_over_callers() -> None:
    config = variant_config()
    numbers = [f"+4474001{n:05d}" for n in range(200)]
    first = [decide(call(caller=n, caller_e164=n), config, PolicyView(), MONDAY_10)
             for n in numbers]
    again = [decide(call(caller=n, caller_e164=n), config, PolicyView(), MONDAY_10)
             for n in numbers]
    assert [d.variant for d in first] == [d.variant for d in again]
    assert all(d.body == f"Text {d.variant.upper()}." for d in first if d.variant)
    counts = {v: sum(d.variant == v for d in first) for v in ("a", "b")}
    assert min(counts.values()) > 60, counts


def test_ab_assignment_depends_on_the_group_too() -> None:
    numbers = [f"+4474001{n:05d}" for n in range(50)]
    assert [assign_variant(n, "sales", ["a", "b"]) for n in numbers] != \
        [assign_variant(n, "support", ["a", "b"]) for n in numbers]
