"""Follow-up texts: planning (fake clock), validation, and every event that stops them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcdaemon.config.model import InboundConfig
from mcdaemon.config.reader import ConfigError
from mcdaemon.core import followups
from mcdaemon.core.records import Decision, Outcome
from mcdaemon.core.tracker import CallTracker
from mcdaemon.core.transcript import read_transcript
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.store import NewCall, Store

from outreach_helpers import (
    CALLER,
    T0,
    Clock,
    call,
    first_text_submitted,
    make_config,
    outbound_dial,
)
from recordings import recording_path

STEPS = [{"after": "2h", "template": "Still there, {caller_name}? Reply to talk."},
         {"after": "1d", "template": "Last note from {company}.", "within_hours": False}]
HOURS = {"mon-fri": "09:00-17:30"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    yield store
    await store.close()


def outreach(clock: Clock, **group: object) -> Outreach:
    config = make_config(followups=STEPS, **group)
    return Outreach(lambda: config, {}, clock)


async def followup_rows(store: Store) -> list[tuple[int, str, float, float | None, str | None]]:
    return [(m.seq, m.state, m.not_before, m.expires_at, m.error_detail)
            for m in await store.messages() if m.kind == "followup"]


# ------------------------------------------------------------------ planning


def test_each_step_is_due_after_the_first_text_and_expires_relative_to_its_own_due_time(
        ) -> None:
    config = make_config(followups=STEPS)
    planned = followups.plan(config.groups[0], config, call(name="Ann Lee"), T0 + 5)
    assert [(p.seq, p.not_before, p.expires_at) for p in planned] == [
        (1, T0 + 5 + 7200, T0 + 5 + 7200 + 900), (2, T0 + 5 + 86400, T0 + 5 + 86400 + 900)]
    assert planned[0].body == "Still there, Ann Lee? Reply to talk."


def test_a_step_due_while_closed_waits_for_the_opening_unless_within_hours_is_off() -> None:
    config = make_config(followups=STEPS, hours=HOURS)
    evening = T0 + 7 * 3600  # 17:00 London: +2h is 19:00, closed
    planned = followups.plan(config.groups[0], config, call(ended=evening), evening)
    next_morning = T0 + 23 * 3600  # Wednesday 09:00
    assert planned[0].not_before == next_morning
    assert planned[0].expires_at == next_morning + 900
    assert planned[1].not_before == evening + 86400  # within_hours: false


@pytest.mark.parametrize(("steps", "message"), [
    ([{"after": "1h", "template": "Hi {nobody}"}], "unknown variable {nobody}"),
    ([{"after": "1h", "template": "x" * 200}], "limit is 160"),
    ([{"after": "2h", "template": "a"}, {"after": "1h", "template": "b"}], "must be later"),
    ([{"template": "a"}], "after: is required"),
    ([{"after": "1h", "template": "a", "when": 1}], "unknown key"),
])
def test_follow_up_templates_are_validated_like_the_others(steps: object,
                                                           message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(followups=steps)
    assert message in str(caught.value)
    assert "groups.default.followups" in str(caught.value)


# ------------------------------------------------------------------ the store


async def test_a_submitted_first_text_gets_its_follow_ups_once(store: Store) -> None:
    clock = Clock(T0 + 3)
    worker = outreach(clock)
    first = await first_text_submitted(store, call(), T0 + 3)
    await worker.texts_submitted(store, [first])
    await worker.texts_submitted(store, [first])  # repeated: nothing new
    rows = await followup_rows(store)
    assert [(seq, state, due) for seq, state, due, _, _ in rows] == [
        (1, "queued", T0 + 3 + 7200), (2, "queued", T0 + 3 + 86400)]
    # due in two hours, not now
    assert [m.kind for m in await store.claim_due(T0 + 60, 10)] == []
    assert [m.seq for m in await store.claim_due(T0 + 3 + 7200, 10)] == [1]


async def test_a_crash_before_planning_is_caught_up_by_the_sweep(store: Store) -> None:
    clock = Clock(T0 + 3)
    await first_text_submitted(store, call(), T0 + 3)  # the daemon died before planning
    worker = outreach(clock)
    clock.now = T0 + 20
    await worker.tick(store)
    assert len(await followup_rows(store)) == 2


@pytest.mark.parametrize(("kind", "reason"), [
    ("reply", "cancelled: the caller replied"),
    ("opt_out", "cancelled: the caller opted out"),
])
async def test_a_reply_or_an_opt_out_stops_the_sequence(store: Store, kind: str,
                                                        reason: str) -> None:
    clock = Clock(T0 + 3)
    worker = outreach(clock)
    await worker.texts_submitted(store, [await first_text_submitted(store, call(), T0 + 3)])
    await worker.reply(store, CALLER, None if kind == "reply" else "opt_out", T0 + 600)
    rows = await followup_rows(store)
    assert [(state, detail) for _, state, _, _, detail in rows] == [("failed", reason)] * 2
    assert await store.claim_due(T0 + 90000, 10) == []


async def test_an_opt_in_is_not_a_reply_that_stops_anything(store: Store) -> None:
    worker = outreach(Clock(T0 + 3))
    await worker.texts_submitted(store, [await first_text_submitted(store, call(), T0 + 3)])
    await worker.reply(store, CALLER, "opt_in", T0 + 600)
    assert {state for _, state, _, _, _ in await followup_rows(store)} == {"queued"}


async def test_the_caller_calling_again_and_being_answered_stops_the_sequence(
        store: Store) -> None:
    """The recorded answered call (answered.ami) with its caller renamed to ours."""
    worker = outreach(Clock(T0 + 3))
    await worker.texts_submitted(store, [await first_text_submitted(store, call(), T0 + 3)])
    transcript = read_transcript(recording_path("answered"))
    tracker = CallTracker("lab", InboundConfig(contexts=("from-carrier",)), "GB")
    records = []
    for at, fields in transcript.events():
        fields = {key: value.replace("+447700900777", CALLER) for key, value in fields.items()}
        records += tracker.feed(fields, at)
    assert [(r.outcome, r.caller_e164) for r in records] == [(Outcome.ANSWERED, CALLER)]
    answered = records[0]
    await store.record_calls([NewCall(answered, Decision(False, "not_missed"))], now=T0 + 60,
                             destinations=[None])
    await worker.calls_decided(store, [NewCall(answered, Decision(False, "not_missed"))])
    details = {detail for _, _, _, _, detail in await followup_rows(store)}
    assert details == {"cancelled: the caller called again and was answered"}


async def test_an_agents_answered_outbound_call_to_the_number_stops_the_sequence(
        store: Store) -> None:
    worker = outreach(Clock(T0 + 3))
    await worker.texts_submitted(store, [await first_text_submitted(store, call(), T0 + 3)])
    for item in outbound_dial("07700900123", T0 + 900, answer=False):  # not answered
        await worker.handle(store, item)
    assert {state for _, state, _, _, _ in await followup_rows(store)} == {"queued"}
    for item in outbound_dial("07700900123", T0 + 1000, dest="9.3"):
        await worker.handle(store, item)
    details = {detail for _, _, _, _, detail in await followup_rows(store)}
    assert details == {"cancelled: an agent called the number and it was answered"}


async def test_a_stop_before_the_first_text_was_submitted_cancels_them_at_birth(
        store: Store) -> None:
    worker = outreach(Clock(T0 + 3))
    record = call()
    # the caller replied before the first text's submit was recorded (a slow SMSC)
    await store.record_stop(CALLER, "reply", T0 + 1)
    await worker.texts_submitted(store, [await first_text_submitted(store, record, T0 + 3)])
    assert {state for _, state, _, _, _ in await followup_rows(store)} == {"failed"}


async def test_an_undeliverable_first_text_stops_the_sequence(store: Store) -> None:
    clock = Clock(T0 + 3)
    worker = outreach(clock)
    first = await first_text_submitted(store, call(), T0 + 3)
    await worker.texts_submitted(store, [first])
    await store.apply_receipt("smsc-1", "UNDELIV", "001", T0 + 10, {})
    clock.now = T0 + 30
    await worker.tick(store)
    details = {detail for _, _, _, _, detail in await followup_rows(store)}
    assert details == {"cancelled: the first text was undeliverable"}


async def test_a_group_without_follow_ups_plans_nothing(store: Store) -> None:
    config = make_config()
    worker = Outreach(lambda: config, {}, Clock(T0 + 3))
    await worker.texts_submitted(store, [await first_text_submitted(store, call(), T0 + 3)])
    assert await followup_rows(store) == []
