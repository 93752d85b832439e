"""A batch of calls decided at once: the texts decided earlier in it count for later ones."""

from __future__ import annotations

from mcdaemon.core.policy import decide_batch
from mcdaemon.core.records import PolicyView

from core.test_policy import CONFIG, MONDAY_10, call, make_config


def test_a_caller_twice_in_one_batch_gets_one_text() -> None:
    first, second = call(call_id="1.0"), call(call_id="2.0")
    decisions = decide_batch([first, second], [PolicyView(), PolicyView()], CONFIG, MONDAY_10)
    assert [decision.reason for decision in decisions] == ["text", "cooldown"]


def test_texts_earlier_in_the_batch_count_for_the_hourly_cap() -> None:
    config = make_config(caps={"per_prefix_hour": 5, "per_hour": 2, "per_day": 20})
    calls = [call(call_id=f"{index}.0", caller=f"+4474001234{index:02d}",
                  caller_e164=f"+4474001234{index:02d}") for index in range(3)]
    decisions = decide_batch(calls, [PolicyView()] * 3, config, MONDAY_10)
    assert [decision.text for decision in decisions] == [True, True, False]


def test_a_text_expires_outbox_max_age_after_the_call_unless_the_policy_set_it() -> None:
    record = call()
    [decision] = decide_batch([record], [PolicyView()], CONFIG, MONDAY_10)
    assert decision.expires_at == record.ended + CONFIG.outbox.max_age
