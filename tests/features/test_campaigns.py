"""Call-back campaigns with a fake clock and a fake AMI connection: attempts, results,
cancellations, one campaign per number, concurrency, business hours, restarts, safety."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mcdaemon.config.load import config_from_dict
from mcdaemon.config.model import Config
from mcdaemon.config.reader import ConfigError
from mcdaemon.core.records import Decision, Outcome
from mcdaemon.outreach import campaigns
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.store import NewCall, Store

from outreach_helpers import (
    CALLER,
    T0,
    Clock,
    FakeAmi,
    call,
    event,
    first_text_submitted,
    make_config,
    originate_response,
    outbound_dial,
)

CALLBACK = {"attempts": ["1m", "15m", "1h"], "caller_id": "Acme <+442071230000>",
            "variables": {"MCD_CALLBACK_QUEUE": "sales"}}
HOURS = {"mon-fri": "09:00-17:30"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    yield store
    await store.close()


def setup(clock: Clock, ami: FakeAmi, *, callback: dict[str, Any] | None = None,
          max_concurrent: int = 2, **group: Any) -> tuple[Outreach, Config]:
    config = make_config(callback={**CALLBACK, **(callback or {})}, **group)
    if max_concurrent != 2:
        raw = {"region": "GB", "timezone": "Europe/London",
               "ami": [{"name": "lab", "username": "mcd", "secret": "x"}],
               "callbacks": {"max_concurrent": max_concurrent},
               "groups": {"default": {"triggers": ["missed"], "templates": {"default": "Hi"},
                                      "callback": {**CALLBACK, **(callback or {})},
                                      **group}}}
        config = config_from_dict(raw)
    return Outreach(lambda: config, {"lab": ami}, clock), config


async def missed(worker: Outreach, store: Store, call_id: str = "c1", caller: str = CALLER,
                 outcome: Outcome = Outcome.CALLBACK_REQUESTED, ended: float = T0) -> None:
    record = call(call_id, caller, outcome=outcome, ended=ended)
    decided = [NewCall(record, Decision(False, "not_triggered"))]
    await store.record_calls(decided, now=ended, destinations=[None])
    await worker.calls_decided(store, decided)


async def states(store: Store) -> list[tuple[int, str]]:
    return [(attempt.seq, attempt.state) for attempt in await store.attempts()]


async def test_a_call_back_request_starts_a_campaign_whose_first_attempt_waits_its_delay(
        store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami)
    await missed(worker, store)
    clock.now = T0 + 59
    await worker.tick(store)
    assert ami.originates == []
    clock.now = T0 + 60
    await worker.tick(store)
    assert len(ami.originates) == 1
    action = ami.originates[0]
    assert action["Channel"] == "Local/+447700900123@mcd-callback"
    assert (action["Context"], action["Exten"], action["Priority"]) == (
        "mcd-callback-agents", "s", "1")
    assert action["CallerID"] == "Acme <+442071230000>"
    assert action["Timeout"] == "30000"
    assert action["Variable"] == ["MCD_CALLBACK_QUEUE=sales", "MCD_CALLBACK_CAMPAIGN=1",
                                  "MCD_CALLBACK_ATTEMPT=1"]
    assert action["ActionID"] == "mcdaemon-lab-test-cb1"
    assert await states(store) == [(1, "dialing")]
    await worker.tick(store)  # no second call while one is in progress
    assert len(ami.originates) == 1


async def test_no_answer_busy_or_failure_lead_to_the_next_attempt_then_exhaustion(
        store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami)
    await missed(worker, store)
    for seq, (response, reason, result) in enumerate(
            [("Failure", "3", "no_answer"), ("Failure", "5", "busy"),
             ("Failure", "8", "congestion")], start=1):
        clock.now += [60, 900, 3600][seq - 1]
        await worker.tick(store)
        assert len(ami.originates) == seq
        action_id = str(ami.originates[-1]["ActionID"])
        await worker.handle(store, originate_response(action_id, response, reason, clock.now))
        attempt = (await store.attempts())[seq - 1]
        assert attempt.state == result
    assert await states(store) == [(1, "no_answer"), (2, "busy"), (3, "congestion")]
    campaign = (await store.campaigns())[0]
    assert campaign.state == "exhausted"
    clock.now += 86400
    await worker.tick(store)
    assert len(ami.originates) == 3


async def test_a_success_ends_the_campaign_and_stops_the_follow_ups(store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami, followups=[{"after": "2h", "template": "Still there?"}],
                      callback={"triggers": ["queue_abandon"]})
    record = call(outcome=Outcome.QUEUE_ABANDON)
    await worker.texts_submitted(store, [await first_text_submitted(store, record, T0 + 2)])
    await worker.calls_decided(store, [NewCall(record, Decision(True, "text"))])
    clock.now = T0 + 60
    await worker.tick(store)
    await worker.handle(store, originate_response(str(ami.originates[0]["ActionID"]),
                                                  "Success", "4", T0 + 75))
    assert await states(store) == [(1, "answered")]
    campaign = (await store.campaigns())[0]
    assert (campaign.state, campaign.reason) == ("done", "callback_answered")
    followup = next(m for m in await store.messages() if m.kind == "followup")
    assert (followup.state, followup.error_detail) == (
        "failed", "cancelled: a call-back reached the caller")


async def test_customer_dial_mode_needs_the_customers_dial_answered(store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami, callback={"answered_when": "customer_dial"})
    await missed(worker, store)
    clock.now = T0 + 60
    await worker.tick(store)
    action_id = str(ami.originates[0]["ActionID"])
    response = originate_response(action_id, "Success", "4", T0 + 70)
    response.fields["Uniqueid"] = "7.1"
    await worker.handle(store, response)  # an agent answered; the customer not yet
    assert await states(store) == [(1, "connected")]
    await worker.handle(store, event(at=T0 + 120, Event="Hangup", Uniqueid="7.1"))
    assert await states(store) == [(1, "not_reached"), (2, "scheduled")]
    clock.now = T0 + 120 + 900
    await worker.tick(store)
    response = originate_response(str(ami.originates[1]["ActionID"]), "Success", "4",
                                  clock.now)
    response.fields["Uniqueid"] = "7.5"
    await worker.handle(store, response)
    for item in outbound_dial("+447700900123", clock.now + 5, dest="7.7"):
        await worker.handle(store, item)  # the dialplan's Dial to the customer answered
    assert await states(store) == [(1, "not_reached"), (2, "answered")]
    assert (await store.campaigns())[0].state == "done"


@pytest.mark.parametrize("how", ["answered_call", "agent_call"])
async def test_the_customer_calling_in_or_an_agent_calling_out_cancels_what_is_left(
        store: Store, how: str) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami)
    await missed(worker, store)
    if how == "answered_call":
        answered = call("c2", outcome=Outcome.ANSWERED, ended=T0 + 30)
        await worker.calls_decided(store, [NewCall(answered, Decision(False, "not_missed"))])
    else:
        for item in outbound_dial("07700 900123", T0 + 30):
            await worker.handle(store, item)
    campaign = (await store.campaigns())[0]
    assert (campaign.state, campaign.reason) == ("cancelled", how)
    assert await states(store) == [(1, "cancelled")]
    clock.now = T0 + 3600
    await worker.tick(store)
    assert ami.originates == []


async def test_one_campaign_per_number_more_calls_merge_and_a_replay_starts_nothing(
        store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami, callback={"triggers": ["missed"]})
    await missed(worker, store, "c1")
    await missed(worker, store, "c2", outcome=Outcome.QUEUE_ABANDON, ended=T0 + 20)
    await missed(worker, store, "c1")  # the same call again (a replayed stream)
    [campaign] = await store.campaigns()
    assert campaign.contacts == 2
    assert await states(store) == [(1, "scheduled")]
    clock.now = T0 + 60
    await worker.tick(store)
    await worker.tick(store)
    assert len(ami.originates) == 1


async def test_the_concurrency_limit_holds_the_third_call_back(store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami, max_concurrent=2)
    for index in range(3):
        await missed(worker, store, f"c{index}", f"+44770090010{index}")
    clock.now = T0 + 60
    await worker.tick(store)
    assert [a["Channel"] for a in ami.originates] == [
        "Local/+447700900100@mcd-callback", "Local/+447700900101@mcd-callback"]
    await worker.handle(store, originate_response(str(ami.originates[0]["ActionID"]),
                                                  "Success", "4", T0 + 70))
    await worker.tick(store)
    assert ami.originates[-1]["Channel"] == "Local/+447700900102@mcd-callback"


async def test_an_attempt_due_while_closed_waits_for_the_opening(store: Store) -> None:
    clock, ami = Clock(T0 + 8 * 3600), FakeAmi()  # 18:00 London, closed
    worker, _ = setup(clock, ami, hours=HOURS)
    await missed(worker, store, ended=clock.now)
    next_morning = T0 + 23 * 3600
    [attempt] = await store.attempts()
    assert attempt.due_at == next_morning  # planned at the opening already
    clock.now = next_morning - 1
    await worker.tick(store)
    assert ami.originates == []
    clock.now = next_morning
    await worker.tick(store)
    assert len(ami.originates) == 1


async def test_hours_changed_by_a_reload_defer_a_due_attempt_at_claim_time(
        store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami)  # no hours: due at T0 + 60
    await missed(worker, store)
    reloaded, _ = setup(clock, ami, hours={"sat": "10:00-12:00"})
    clock.now = T0 + 60
    await reloaded.tick(store)
    assert ami.originates == []
    saturday = T0 + 4 * 86400  # Saturday 10:00 London
    [attempt] = await store.attempts()
    assert (attempt.state, attempt.due_at) == ("scheduled", saturday)
    assert attempt.detail == "deferred to the group's opening hours"


async def test_a_restart_mid_attempt_marks_it_unknown_and_goes_on(store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami)
    await missed(worker, store)
    clock.now = T0 + 60
    await worker.tick(store)
    assert await states(store) == [(1, "dialing")]
    # the daemon dies; a new one starts on the same store
    clock.now = T0 + 100
    fresh_ami = FakeAmi()
    fresh, _ = setup(clock, fresh_ami)
    await fresh.recover(store)
    attempts = await store.attempts()
    assert [(a.seq, a.state) for a in attempts] == [(1, "unknown"), (2, "scheduled")]
    assert attempts[0].detail is not None and "may or may not" in attempts[0].detail
    assert attempts[1].due_at == T0 + 100 + 900
    # a late OriginateResponse of the old attempt changes nothing
    await fresh.handle(store, originate_response("mcdaemon-lab-test-cb1", "Success", "4",
                                                 T0 + 110))
    assert [a.state for a in await store.attempts()] == ["unknown", "scheduled"]
    clock.now = T0 + 100 + 900
    await fresh.tick(store)
    assert len(fresh_ami.originates) == 1


async def test_an_originate_the_pbx_refuses_is_recorded_and_the_next_attempt_planned(
        store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi(response="Error")
    worker, _ = setup(clock, ami)
    await missed(worker, store)
    clock.now = T0 + 60
    await worker.tick(store)
    attempt = (await store.attempts())[0]
    assert attempt.state == "refused" and "Permission denied" in (attempt.detail or "")
    assert await states(store) == [(1, "refused"), (2, "scheduled")]


async def test_an_attempt_without_any_result_times_out_as_unknown(store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami)
    await missed(worker, store)
    clock.now = T0 + 60
    await worker.tick(store)
    clock.now = T0 + 60 + 601
    worker._sweep_due = 0.0
    await worker.tick(store)
    assert await states(store) == [(1, "unknown"), (2, "scheduled")]


@pytest.mark.parametrize(("number", "why"), [
    ("+447700900123", ""),  # a mobile (test range)
    ("+442079460000", ""),  # a London landline: a call-back may go there
    ("+449098790000", "not_callable"),  # premium rate: never
    ("+33612345678", "country_not_allowed"),
    ("anonymous", "withheld"),
    ("12", "invalid_number"),
])
def test_only_numbers_that_pass_the_policy_are_called_back(number: str, why: str) -> None:
    _, reason = campaigns.callback_number(number, make_config())
    assert reason == why


async def test_a_withheld_or_premium_caller_gets_no_campaign(store: Store) -> None:
    clock, ami = Clock(T0), FakeAmi()
    worker, _ = setup(clock, ami)
    await missed(worker, store, "c1", "anonymous")
    await missed(worker, store, "c2", "+449098790000")
    assert await store.campaigns() == []


def test_the_originate_never_carries_line_breaks_or_unvalidated_numbers() -> None:
    config = make_config(callback=CALLBACK)
    callback = config.groups[0].callback
    assert callback is not None
    with pytest.raises(ValueError):
        campaigns.originate_fields(callback, number="+4477\r\nAction: Command",
                                   group="g", campaign=1, attempt=1)
    fields = campaigns.originate_fields(callback, number="+447700900123", group="g\r\nX",
                                        campaign=1, attempt=1)
    for value in fields.values():
        for item in value if isinstance(value, list) else [value]:
            assert "\r" not in item and "\n" not in item


@pytest.mark.parametrize(("callback", "message"), [
    ({"attempts": []}, "attempts: is required"),
    ({"channel": "Local/s@x", "exten": "s"}, "must contain ${number}"),
    ({"channel": "Local/${numbr}@x"}, "unknown placeholder ${numbr}"),
    ({"caller_id": "Acme\r\nAction: Command"}, "line breaks"),
    ({"answered_when": "never"}, "is not one of originate, customer_dial"),
    ({"triggers": ["answered"]}, "is not one of"),
])
def test_call_back_settings_are_validated(callback: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(callback={**CALLBACK, **callback})
    assert message in str(caught.value)


def test_the_call_back_pbx_must_be_a_configured_one() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"ami": [{"name": "lab", "username": "u", "secret": "s"}],
                          "callbacks": {"pbx": "other"}})
    assert "callbacks.pbx: 'other' is not an ami[] name" in str(caught.value)
