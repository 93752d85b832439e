"""`mcdaemon report` and `record-booking`: every KPI against numbers worked out by hand.

One small store is seeded through the Store's own methods (calls, claims, submits, receipts,
replies, opt-outs, bookings) and the report is checked number by number; the A/B test gets
its own large sample. The CLI runs for real (in process, and as a subprocess on a read-only
store, as an unprivileged user when the tests run as root).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import math
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from mcdaemon import cli
from mcdaemon.commands.report import read_report
from mcdaemon.config.load import config_from_dict
from mcdaemon.config.model import Config
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.report.html import render
from mcdaemon.report.kpis import (
    MIN_SAMPLE,
    Kpis,
    Ratio,
    Report,
    as_csv,
    as_json,
    as_table,
    histogram_percentile,
    parse_since,
    two_proportion_z_test,
)
from mcdaemon.store import (
    SCHEMA_VERSION,
    NewCall,
    PgStore,
    Store,
    StoreError,
    migration_steps,
)

T0 = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.UTC).timestamp()  # a Monday morning (London)
DAY = 86400.0
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'

# the numbers in `seed`
S_CONTROL = "+447700900001"  # texted (control), delivered, replied after 1 h, booked
S_B = "+447700900002"  # texted (B), undeliverable, no reply
S_LANDLINE = "+442071230000"  # refused: not_mobile
S_STOP = "+447700900003"  # texted (control), no receipt yet, replied STOP
S_FAILED = "+447700900004"  # to be texted, the submit failed for good
U_LATE = "+447700900005"  # support: texted, delivered, replied after 8 days (too late)
OLD = "+447700900006"  # a call before the window: not counted


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """`cli.main` points the log at the stream of the moment (pytest's capture): undo it."""
    yield
    structlog.reset_defaults()


def config_data(store_path: str) -> dict[str, Any]:
    return {
        "region": "GB", "timezone": "Europe/London", "company": "Acme Ltd",
        "inbound": {"contexts": ["from-carrier"]},
        "store": {"path": store_path},
        "groups": {
            "sales": {"triggers": ["missed"], "variants": {"default": {
                "control": "Sorry we missed your call. We will call you back.",
                "B": "Hi {caller_name}, we missed you. Reply to book a time."}}},
            "support": {"triggers": ["missed"],
                        "templates": {"default": "Sorry we missed your call."}},
            "billing": {"triggers": ["missed"],
                        "templates": {"default": "Sorry we missed your call."}},
        },
    }


def make_config(store_path: str) -> Config:
    return config_from_dict(config_data(store_path))


def write_config(directory: Path, store_path: str) -> Path:
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config_data(store_path)))
    path.chmod(0o644)
    return path


def record(call_id: str, outcome: Outcome, caller: str | None, ended: float, *,
           group: str | None, name: str | None = None) -> CallRecord:
    return CallRecord(pbx="lab", call_id=call_id, caller=(caller or "").lstrip("+"),
                      caller_name=name, caller_e164=caller, did="442071230001", group=group,
                      outcome=outcome, stages=(), started=ended - 30, ended=ended,
                      wait_seconds=20.0)


async def texted_call(store: Store, call_id: str, caller: str, ended: float, *,
                      group: str, variant: str | None, submit_after: float | None,
                      receipt: str | None = None, outcome: Outcome = Outcome.QUEUE_ABANDON,
                      fail: bool = False) -> int:
    """A missed call the policy texted; submitted `submit_after` s after it ended (None: still
    queued), with a receipt if given, or failed for good."""
    decision = Decision(True, "text", group=group, body="Sorry we missed you.",
                        template="default", variant=variant, expires_at=ended + 900,
                        destination=caller)
    [message_id] = await store.record_calls(
        [NewCall(record(call_id, outcome, caller, ended, group=group), decision)], now=ended,
        destinations=[caller])
    assert message_id is not None
    if submit_after is None and not fail:
        return message_id
    [claimed] = await store.claim_due(ended + 1, 1)
    assert claimed.id == message_id
    if fail:
        assert await store.mark_failed(message_id, error_code=11, detail="invalid",
                                       now=ended + 2)
        return message_id
    assert submit_after is not None
    smsc_id = f"id-{call_id}"
    assert await store.mark_submitted(message_id, [smsc_id], ended + submit_after)
    if receipt is not None:
        await store.apply_receipt(smsc_id, receipt, None, ended + submit_after + 5, {})
    return message_id


async def refused_call(store: Store, call_id: str, outcome: Outcome, caller: str | None,
                       ended: float, reason: str, *, group: str | None,
                       decision_group: str | None = None, name: str | None = None) -> None:
    await store.record_calls(
        [NewCall(record(call_id, outcome, caller, ended, group=group, name=name),
                 Decision(False, reason, group=decision_group))], now=ended,
        destinations=[None])


async def seed(store: Store, t0: float) -> None:
    """Ten calls in the window (eight to sales, two to support), one before it."""
    minute = 60.0
    # sales
    await refused_call(store, "s1", Outcome.ANSWERED, "+447700900101", t0, "not_missed",
                       group="sales")
    await texted_call(store, "s2", S_CONTROL, t0 + 1 * minute, group="sales",
                      variant="control", submit_after=2, receipt="DELIVRD")
    await texted_call(store, "s3", S_B, t0 + 2 * minute, group="sales", variant="B",
                      submit_after=10, receipt="UNDELIV")
    await refused_call(store, "s4", Outcome.VOICEMAIL_LEFT, S_LANDLINE, t0 + 3 * minute,
                       "not_mobile", group="sales", decision_group="sales")
    await refused_call(store, "s5", Outcome.IVR_ABANDON, None, t0 + 4 * minute, "withheld",
                       group="sales", decision_group="sales", name=HOSTILE)
    await refused_call(store, "s6", Outcome.DEAD_END, "+447700900102", t0 + 5 * minute,
                       "not_missed", group="sales")
    await texted_call(store, "s7", S_STOP, t0 + 6 * minute, group="sales", variant="control",
                      submit_after=30, outcome=Outcome.QUEUE_TIMEOUT)
    await texted_call(store, "s8", S_FAILED, t0 + 7 * minute, group="sales",
                      variant="control", submit_after=None, fail=True)
    # support
    await texted_call(store, "u1", U_LATE, t0 + 8 * minute, group="support", variant=None,
                      submit_after=4, receipt="DELIVRD", outcome=Outcome.RING_NO_ANSWER)
    await refused_call(store, "u2", Outcome.ANSWERED, "+447700900103", t0 + 9 * minute,
                       "not_missed", group="support")
    # before the window: texted, replied, booked; none of it counts
    await texted_call(store, "old", OLD, t0 - 20 * DAY, group="sales", variant="B",
                      submit_after=3, receipt="DELIVRD")
    await store.add_inbound(OLD, "Acme", "yes please", t0 - 20 * DAY + 100)
    await store.add_booking(OLD, 999.0, t0 - 19 * DAY, currency="GBP")
    # replies, opt-outs, bookings
    await store.add_inbound(S_CONTROL, "Acme", "Yes, please call me back", t0 + 1 * minute
                            + 3600)
    await store.add_inbound(S_STOP, "Acme", "STOP", t0 + 6 * minute + 7200)
    await store.opt_out(S_STOP, "STOP", t0 + 6 * minute + 7200)
    await store.add_inbound(U_LATE, "Acme", "thanks", t0 + 8 * minute + 8 * DAY)
    await store.add_inbound("+447700900999", "Acme", "who is this?", t0 + 3600)
    booking = await store.add_booking(S_CONTROL, 120.0, t0 + DAY, currency="GBP",
                                      note="boiler service")
    assert (booking.pbx, booking.call_id) == ("lab", "s2")
    lost = await store.add_booking("+447700900999", 50.0, t0 + DAY, currency="GBP")
    assert lost.call_id is None


NOW = T0 + 10 * DAY
SINCE = T0 - 7 * DAY


@pytest.fixture
async def seeded(tmp_path: Path) -> tuple[Config, str]:
    path = str(tmp_path / "mcdaemon.db")
    store = await Store.open(path)
    try:
        await seed(store, T0)
    finally:
        await store.close()
    return make_config(path), path


async def compute(path: str, config: Config, *, since: float, until: float,
                  group: str | None = None) -> Report:
    """The report of the store at `path`, read as `mcdaemon report` reads it."""
    reader = await Store.open_readonly(path)
    try:
        return await read_report(reader, config, since=since, until=until, group=group)
    finally:
        await reader.close()


@pytest.mark.postgres
async def test_postgresql_gives_the_same_report_as_sqlite(tmp_path: Path, pg_url: str) -> None:
    """Both backends seeded alike, plus a missed call 0.4 s before a London midnight: its
    quarter hour (the day it counts for) is the one it ended in, though PostgreSQL's CAST
    would round it into the next."""
    path = str(tmp_path / "mcdaemon.db")
    midnight = dt.datetime(2025, 1, 8, tzinfo=dt.UTC).timestamp()  # London is UTC in January
    for store in (await Store.open(path), await PgStore.open(pg_url)):
        try:
            await seed(store, T0)
            await refused_call(store, "late", Outcome.QUEUE_ABANDON, None, midnight - 0.4,
                               "withheld", group="sales")
        finally:
            await store.close()
    config = make_config(path)
    reader = await PgStore.open_readonly(pg_url)
    try:
        from_postgresql = await read_report(reader, config, since=SINCE, until=NOW)
    finally:
        await reader.close()
    from_sqlite = await compute(path, config, since=SINCE, until=NOW)

    assert from_postgresql.as_dict() == from_sqlite.as_dict()
    assert from_postgresql.days == from_sqlite.days
    missed = {day.date: day.missed_calls for day in from_sqlite.days}
    assert missed[dt.date(2025, 1, 7)] == 1 and missed.get(dt.date(2025, 1, 8), 0) == 0
    assert render(from_postgresql) == render(from_sqlite)


def kpi(report: Report, scope: str) -> dict[str, Any]:
    data = report.as_dict()
    result: dict[str, Any] = data["overall"] if scope == "overall" else data["groups"][scope]
    return result


def ratio(data: dict[str, Any]) -> tuple[float, int]:
    return data["numerator"], data["denominator"]


# ---------------------------------------------------------------------- the KPIs, by hand

async def test_every_kpi_overall_matches_the_hand_count(
        seeded: tuple[Config, str]) -> None:
    config, path = seeded
    overall = kpi(await compute(path, config, since=SINCE, until=NOW), "overall")

    assert overall["inbound_calls"] == 10
    assert overall["missed_calls"] == 7  # s2 s3 s4 s5 s7 s8 u1 (not answered, not dead_end)
    assert ratio(overall["missed_call_rate"]) == (7, 10)
    assert overall["missed_call_rate"]["value"] == pytest.approx(0.7)
    assert ratio(overall["contactability"]) == (5, 7)  # not s4 (landline), not s5 (withheld)
    assert ratio(overall["auto_text_send_rate"]) == (4, 5)  # s8 failed
    assert (overall["texts_pending"], overall["texts_not_sent"]) == (0, 1)
    assert ratio(overall["delivery_rate"]) == (2, 4)  # s2 and u1
    # submitted 2, 10, 30 and 4 s after the calls: nearest rank p50 = 4 s, p90 = 30 s
    assert overall["time_to_first_text"] == {"count": 4, "p50_seconds": 4.0,
                                             "p90_seconds": 30.0}
    assert overall["texted_callers"] == 4
    # s2 replied within the hour; s7's STOP is an opt-out, not a reply; u1 replied too late
    assert ratio(overall["reply_rate"]) == (1, 4)
    assert ratio(overall["opt_out_rate"]) == (1, 4)
    assert overall["callback_reach_rate"] is None
    assert (overall["bookings"], overall["revenue"]) == (1, 120.0)
    assert ratio(overall["revenue_per_missed_call"]) == (120.0, 7)
    assert overall["revenue_per_missed_call"]["value"] == pytest.approx(120 / 7)
    assert ratio(overall["booking_rate"]) == (1, 4)


async def test_every_kpi_per_group_and_n_a_for_a_group_without_calls(
        seeded: tuple[Config, str]) -> None:
    config, path = seeded
    report = await compute(path, config, since=SINCE, until=NOW)
    assert list(report.groups) == ["sales", "support", "billing"]

    sales = kpi(report, "sales")
    assert (sales["inbound_calls"], sales["missed_calls"]) == (8, 6)
    assert ratio(sales["contactability"]) == (4, 6)
    assert ratio(sales["auto_text_send_rate"]) == (3, 4)
    assert ratio(sales["delivery_rate"]) == (1, 3)
    assert sales["time_to_first_text"] == {"count": 3, "p50_seconds": 10.0,
                                           "p90_seconds": 30.0}
    assert ratio(sales["reply_rate"]) == (1, 3)
    assert ratio(sales["opt_out_rate"]) == (1, 3)
    assert ratio(sales["revenue_per_missed_call"]) == (120.0, 6)
    assert ratio(sales["booking_rate"]) == (1, 3)

    support = kpi(report, "support")
    assert ratio(support["missed_call_rate"]) == (1, 2)
    assert ratio(support["reply_rate"]) == (0, 1)
    assert support["reply_rate"]["value"] == 0.0  # zero of one is 0 %, not n/a
    assert ratio(support["booking_rate"]) == (0, 1)

    billing = kpi(report, "billing")  # configured, no calls: every rate n/a, never 0 %
    assert billing["inbound_calls"] == 0
    for name in ("missed_call_rate", "contactability", "auto_text_send_rate", "delivery_rate",
                 "reply_rate", "opt_out_rate", "revenue_per_missed_call", "booking_rate"):
        assert billing[name] == {"value": None, "numerator": 0, "denominator": 0}, name
    assert billing["time_to_first_text"] == {"count": 0, "p50_seconds": None,
                                             "p90_seconds": None}
    table = io.StringIO()
    as_table(report, table)
    billing_part = table.getvalue().split("== group billing")[1].split("==")[0]
    assert "reply rate                     n/a   0 replied / 0 texted callers" in billing_part
    assert "0.0%" not in billing_part


async def test_group_filter_keeps_only_that_groups_calls(
        seeded: tuple[Config, str]) -> None:
    config, path = seeded
    report = await compute(path, config, since=SINCE, until=NOW, group="support")

    assert list(report.groups) == ["support"]
    assert report.overall.inbound_calls == 2 and report.overall.missed_calls == 1
    assert report.ab_tests == ()


async def test_the_small_ab_test_says_not_enough_data(
        seeded: tuple[Config, str]) -> None:
    config, path = seeded
    [test] = (await compute(path, config, since=SINCE, until=NOW)).ab_tests

    assert (test.group, test.template, test.control) == ("sales", "default", "control")
    control, b = test.arms
    assert (control.variant, control.texts, control.texted_callers) == ("control", 2, 2)
    assert (control.reply_rate.numerator, control.booking_rate.numerator) == (1, 1)
    assert (b.variant, b.texted_callers, b.reply_rate.numerator) == ("B", 1, 0)
    assert b.verdict.startswith("not enough data yet (1 vs 2 texted callers")
    assert b.reply_lift == pytest.approx(-1.0)


async def test_unattributed_bookings_and_their_currency_are_reported(
        seeded: tuple[Config, str]) -> None:
    config, path = seeded
    report = await compute(path, config, since=SINCE, until=NOW)

    assert report.unattributed_bookings == 1  # the +447700900999 one; the old one is outside
    assert report.currencies == ("GBP",)
    table = io.StringIO()
    as_table(report, table)
    assert "bookings                         1   worth 120.00 GBP" in table.getvalue()


# ---------------------------------------------------------------------- the A/B statistics

def test_the_z_test_matches_the_textbook_numbers() -> None:
    result = two_proportion_z_test(40, 200, 80, 200)  # 20 % vs 40 %

    assert result is not None
    pooled_se = math.sqrt(0.3 * 0.7 * (2 / 200))
    assert result.z == pytest.approx(0.2 / pooled_se)
    assert result.z == pytest.approx(4.3644, abs=1e-4)
    assert result.p_value == pytest.approx(1.2748e-5, rel=1e-3)
    assert two_proportion_z_test(0, 100, 0, 100) is None  # no variance: no test
    assert two_proportion_z_test(1, 0, 1, 10) is None


def test_percentiles_are_nearest_rank() -> None:
    assert histogram_percentile({}, 50) is None
    assert histogram_percentile({7000: 1}, 90) == 7.0
    assert histogram_percentile({ms * 1000: 1 for ms in range(1, 11)}, 90) == 9.0
    assert histogram_percentile({3000: 1, 1000: 1, 2000: 1, 4000: 1}, 50) == 2.0
    assert histogram_percentile({1500: 3, 250: 1}, 50) == 1.5  # counts weigh
    assert Ratio(0, 0).value is None and Ratio(0, 5).value == 0.0


async def ab_store(path: str, arms: dict[str, tuple[int, int]], t0: float) -> None:
    """`arms`: variant -> (texted callers, how many replied), in group sales."""
    store = await Store.open(path)
    try:
        calls: list[NewCall] = []
        destinations: list[str | None] = []
        for variant, (count, _) in arms.items():
            for number in range(count):
                caller = f"+4477009{variant == 'B':d}{number:04d}"
                ended = t0 + len(calls)
                calls.append(NewCall(
                    record(f"{variant}{number}", Outcome.QUEUE_ABANDON, caller, ended,
                           group="sales"),
                    Decision(True, "text", group="sales", body="Hi", template="default",
                             variant=variant, destination=caller)))
                destinations.append(caller)
        await store.record_calls(calls, now=t0, destinations=destinations)
        claimed = await store.claim_due(t0 + 10_000, 10_000)
        assert len(claimed) == len(calls)
        for message in claimed:
            await store.mark_submitted(message.id, [f"x{message.id}"], t0 + 10_001)
        for variant, (_, replied) in arms.items():
            for number in range(replied):
                caller = f"+4477009{variant == 'B':d}{number:04d}"
                await store.add_inbound(caller, "Acme", "yes", t0 + 20_000)
    finally:
        await store.close()


async def ab_report(tmp_path: Path, arms: dict[str, tuple[int, int]]) -> Report:
    path = str(tmp_path / "ab.db")
    await ab_store(path, arms, T0)
    return await compute(path, make_config(path), since=SINCE, until=NOW)


async def test_b_beats_control_with_200_texted_callers_each(tmp_path: Path) -> None:
    [test] = (await ab_report(tmp_path, {"control": (200, 40), "B": (200, 80)})).ab_tests

    control, b = test.arms
    assert (control.texted_callers, control.reply_rate.value) == (200, 0.2)
    assert (b.texted_callers, b.reply_rate.value) == (200, 0.4)
    assert b.reply_lift == pytest.approx(1.0)  # +100 % against the control
    assert b.reply_test is not None and b.reply_test.p_value < 0.001
    assert b.verdict == "B beats control (p<0.001)"


async def test_verdicts_no_difference_worse_and_not_enough_data(tmp_path: Path) -> None:
    [same] = (await ab_report(tmp_path / "same", {"control": (150, 30),
                                                  "B": (150, 33)})).ab_tests
    assert same.arms[1].verdict.startswith("no significant difference (p=0.")
    [worse] = (await ab_report(tmp_path / "worse", {"control": (150, 60),
                                                    "B": (150, 30)})).ab_tests
    assert worse.arms[1].verdict.startswith("B does worse than control (p")
    [small] = (await ab_report(tmp_path / "small", {"control": (MIN_SAMPLE - 1, 10),
                                                    "B": (200, 150)})).ab_tests
    assert small.arms[1].verdict == (f"not enough data yet (200 vs {MIN_SAMPLE - 1} texted "
                                     f"callers; {MIN_SAMPLE} per variant needed)")


# ---------------------------------------------------------------------- output formats

async def test_json_csv_and_table_carry_the_same_numbers(
        seeded: tuple[Config, str]) -> None:
    config, path = seeded
    report = await compute(path, config, since=SINCE, until=NOW)

    out = io.StringIO()
    as_json(report, out)
    data = json.loads(out.getvalue())
    assert data["overall"]["reply_rate"] == {"value": 0.25, "numerator": 1, "denominator": 4}
    assert data["overall"]["callback_reach_rate"] is None
    assert data["groups"]["billing"]["missed_call_rate"]["value"] is None
    assert data["ab_tests"][0]["arms"][1]["verdict"].startswith("not enough data yet")
    assert data["definitions"]["reply_window_days"] == 7

    out = io.StringIO()
    as_csv(report, out)
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    by_key = {(row["scope"], row["kpi"]): row for row in table}
    assert by_key[("overall", "missed_call_rate")] == {
        "scope": "overall", "kpi": "missed_call_rate", "value": "0.7", "numerator": "7",
        "denominator": "10", "note": ""}
    assert by_key[("billing", "reply_rate")]["value"] == "n/a"
    assert by_key[("overall", "callback_reach_rate")]["value"] == "n/a"
    assert by_key[("sales", "time_to_first_text_p50_seconds")]["value"] == "10"
    assert by_key[("ab:sales/default/B", "reply_rate")]["note"].startswith("not enough")

    out = io.StringIO()
    as_table(report, out)
    text = out.getvalue()
    assert "missed-call rate             70.0%   7 missed / 10 inbound calls" in text
    assert "call-back reach rate           n/a   no group has call-backs" in text
    assert "time to first text       p50 4.0 s   p90 30.0 s (4 sent texts)" in text
    assert "== A/B test: group sales, template default" in text


async def test_the_html_page_is_self_contained_and_escapes_the_store(
        seeded: tuple[Config, str]) -> None:
    config, path = seeded
    page = render(await compute(path, config, since=SINCE, until=NOW))

    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "onerror=" not in page.replace(
        "onerror=alert", "")  # the hostile name is shown only as text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert re.findall(r"<[^>]*\b(?:src|href)\s*=", page) == []  # nothing to load
    assert "<img" not in page and "<link" not in page
    assert "Content-Security-Policy" in page
    assert "Missed calls, texts sent and replies per day" in page
    assert "Time to first text" in page and "&lt; 5 s" in page


# ---------------------------------------------------------------------- --since

@pytest.mark.parametrize(("text", "seconds"), [("7d", 7 * DAY), ("24h", DAY), ("30m", 1800.0)])
def test_since_durations(text: str, seconds: float) -> None:
    assert parse_since(text).start(NOW, "UTC") == NOW - seconds


def test_since_iso_dates_are_in_the_config_time_zone() -> None:
    start = parse_since("2025-01-06").start(NOW, "Europe/London")
    assert start == dt.datetime(2025, 1, 6, tzinfo=dt.UTC).timestamp()  # GMT in January
    summer = parse_since("2025-07-01T09:30").start(NOW + 365 * DAY, "Europe/London")
    assert summer == dt.datetime(2025, 7, 1, 8, 30, tzinfo=dt.UTC).timestamp()
    assert parse_since("2025-01-06T10:00+01:00").start(NOW, "UTC") == T0
    with pytest.raises(ValueError, match="not in the past"):
        parse_since("2999-01-01").start(NOW, "UTC")


@pytest.mark.parametrize("text", ["7", "7 days", "0d", "-3d", "2025-13-01", "yesterday", "7w"])
def test_bad_since_values_exit_2_with_a_clear_error(
        text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"use a duration|more than zero"):
        parse_since(text)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", "-c", "unused.yaml", f"--since={text}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --since" in err
    assert "7d, 24h, 30m" in err or "more than zero" in err


# ---------------------------------------------------------------------- the CLI

def seed_now(tmp_path: Path) -> tuple[Path, str]:
    """The seeded store, its calls 10 days and an hour ago (so `--since 14d` takes them)."""
    path = str(tmp_path / "state" / "mcdaemon.db")

    async def work() -> None:
        store = await Store.open(path)
        try:
            await seed(store, _now() - 10 * DAY - 3600)
        finally:
            await store.close()

    asyncio.run(work())
    return write_config(tmp_path, path), path


def _now() -> float:
    import time

    return time.time()


def test_report_cli_prints_json_csv_table_and_writes_html(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = seed_now(tmp_path)
    capsys.readouterr()
    page = tmp_path / "report.html"

    assert cli.main(["report", "-c", str(config), "--since", "14d", "--format", "json",
                     "--html", str(page)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert ratio(data["overall"]["missed_call_rate"]) == (7, 10)
    assert ratio(data["groups"]["sales"]["reply_rate"]) == (1, 3)
    assert "<svg" in page.read_text(encoding="utf-8")

    assert cli.main(["report", "-c", str(config), "--since", "14d", "--format", "csv",
                     "--group", "sales"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["scope"] for row in rows} == {"overall", "sales", "ab:sales/default/control",
                                              "ab:sales/default/B"}

    assert cli.main(["report", "-c", str(config), "--since", "14d"]) == 0
    assert "missed-call rate             70.0%   7 missed / 10 inbound calls" in (
        capsys.readouterr().out)
    assert cli.main(["report", "-c", str(config), "--since", "1h"]) == 0  # nothing ended since
    assert "missed-call rate               n/a   0 missed / 0 inbound calls" in (
        capsys.readouterr().out)


def test_report_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = seed_now(tmp_path)
    capsys.readouterr()
    assert cli.main(["report", "-c", str(config), "--group", "nope"]) == 2
    assert "no group 'nope'" in capsys.readouterr().err
    assert cli.main(["report", "-c", str(config), "--since", "2999-01-01"]) == 2
    assert "not in the past" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    missing = write_config(tmp_path / "other", str(tmp_path / "none" / "mcdaemon.db"))
    assert cli.main(["report", "-c", str(missing)]) == 1
    assert "there is no store at" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # reading never creates the store


def test_record_booking_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, path = seed_now(tmp_path)
    capsys.readouterr()

    assert cli.main(["record-booking", "-c", str(config), "07700 900001", "--value", "80",
                     "--currency", "GBP", "--note", "survey"]) == 0
    out = capsys.readouterr().out
    assert "+447700900001, 80.00 GBP" in out and "attributed to the texted missed call lab/s2" \
        in out
    assert cli.main(["record-booking", "-c", str(config), "+447700900777", "--value", "10",
                     "--at", "2025-01-01T12:00"]) == 0
    assert "not attributed: no texted missed call from +447700900777 in the 30 days" in (
        capsys.readouterr().out)

    assert cli.main(["record-booking", "-c", str(config), "not a number", "--value",
                     "10"]) == 2
    assert "'not a number' is not a phone number" in capsys.readouterr().err
    assert cli.main(["record-booking", "-c", str(config), "+447700900001", "--value",
                     "-5"]) == 2
    assert "must be a number, 0 or more" in capsys.readouterr().err
    assert cli.main(["record-booking", "-c", str(config), "+447700900001", "--value", "5",
                     "--at", "last tuesday"]) == 2
    assert "not an ISO date" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["record-booking", "-c", str(config), "+447700900001", "--value", "lots"])
    assert exit_info.value.code == 2

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT e164, value, currency, note, pbx, call_id FROM bookings"
                          " ORDER BY id").fetchall()
    assert rows[-2:] == [("+447700900001", 80.0, "GBP", "survey", "lab", "s2"),
                         ("+447700900777", 10.0, None, None, None, None)]

    assert cli.main(["report", "-c", str(config), "--since", "14d", "--format", "json"]) == 0
    overall = json.loads(capsys.readouterr().out)["overall"]
    assert (overall["bookings"], overall["revenue"]) == (2, 200.0)
    assert ratio(overall["booking_rate"]) == (1, 4)  # still one booked caller


# ---------------------------------------------------------------------- bookings in the store

async def test_a_booking_goes_to_the_latest_texted_missed_call_within_30_days(
        tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "b.db"))
    try:
        await texted_call(store, "first", S_CONTROL, T0, group="sales", variant=None,
                          submit_after=2)
        await texted_call(store, "second", S_CONTROL, T0 + 2 * DAY, group="sales",
                          variant=None, submit_after=2)
        await texted_call(store, "unsent", S_CONTROL, T0 + 3 * DAY, group="sales",
                          variant=None, submit_after=None)
        latest = await store.add_booking(S_CONTROL, 10.0, T0 + 4 * DAY)
        between = await store.add_booking(S_CONTROL, 10.0, T0 + DAY)
        too_late = await store.add_booking(S_CONTROL, 10.0, T0 + 2 * DAY + 31 * DAY)
        before = await store.add_booking(S_CONTROL, 10.0, T0 - 1)
    finally:
        await store.close()
    assert latest.call_id == "second"  # "unsent" got no text
    assert between.call_id == "first"
    assert too_late.call_id is None and before.call_id is None


# ---------------------------------------------------------------------- reading, read-only

async def test_report_reads_while_the_daemon_holds_the_store_open(tmp_path: Path) -> None:
    path = str(tmp_path / "live.db")
    daemon = await Store.open(path)  # stays open: the daemon
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        await seed(daemon, T0)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE status SET value = value")
        reader = await Store.open_readonly(path)
        try:
            report = await read_report(reader, make_config(path), since=SINCE, until=NOW)
            with pytest.raises(StoreError, match="readonly"):
                await reader.set_status("x", "y", T0)
        finally:
            await reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        await daemon.close()
    assert report.overall.inbound_calls == 10


async def test_reading_a_closed_store_creates_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "mcdaemon.db"
    store = await Store.open(str(path))
    await seed(store, T0)
    await store.close()
    before = path.read_bytes()

    for _ in range(2):
        reader = await Store.open_readonly(str(path))
        try:
            report = await read_report(reader, make_config(str(path)), since=SINCE, until=NOW)
            assert report.overall.inbound_calls == 10
        finally:
            await reader.close()
    # a -wal/-shm left by another user could keep the daemon from opening its store
    assert sorted(item.name for item in path.parent.iterdir()) == ["mcdaemon.db"]
    assert path.read_bytes() == before


async def test_open_readonly_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="there is no store at"):
        await Store.open_readonly(str(tmp_path / "missing.db"))
    assert not (tmp_path / "missing.db").exists()
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("CREATE TABLE calls (x)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="written by a newer mcdaemon"):
        await Store.open_readonly(str(newer))
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n" * 100)
    with pytest.raises(StoreError, match="is it an mcdaemon database"):
        await Store.open_readonly(str(notes))
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="not an mcdaemon store"):
        await Store.open_readonly(str(empty))


async def test_an_older_store_is_read_as_it_is_without_bookings(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as db:
        for number in range(2):
            for statement in migration_steps(number, "sqlite"):
                db.execute(statement)
        db.execute("PRAGMA user_version = 2")
    before = path.read_bytes()

    store = await Store.open_readonly(str(path))
    try:
        assert "bookings" not in await store.tables()
        report = await read_report(store, make_config(str(path)), since=SINCE, until=NOW)
    finally:
        await store.close()
    assert report.overall.inbound_calls == 0 and report.overall.bookings == 0
    assert path.read_bytes() == before  # not migrated


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user may enter (pytest's tmp_path is private to its owner)."""
    directory = Path(tempfile.mkdtemp(prefix="mcdaemon-report-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        for path in (directory, *directory.rglob("*")):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(directory)


def unprivileged(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file modes would not bind")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_report_and_status_work_on_a_read_only_store(shared_dir: Path) -> None:
    config, path = seed_now(shared_dir)
    state = Path(path).parent
    Path(path).chmod(0o444)
    state.chmod(0o555)
    before = Path(path).read_bytes()
    env = {**os.environ, "HOME": str(shared_dir)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(unprivileged([sys.executable, "-m", "mcdaemon", *args]),
                              capture_output=True, text=True, timeout=60, env=env,
                              cwd=shared_dir)

    report = run("report", "-c", str(config), "--since", "14d", "--format", "json")
    assert report.returncode == 0, report.stderr
    assert ratio(json.loads(report.stdout)["overall"]["missed_call_rate"]) == (7, 10)
    status = run("status", "-c", str(config), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["daemon"] == "not running"
    booking = run("record-booking", "-c", str(config), "+447700900001", "--value", "1")
    assert booking.returncode == 1 and "writable by this user" in booking.stderr

    assert Path(path).read_bytes() == before
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o444
    assert sorted(item.name for item in state.iterdir()) == ["mcdaemon.db"]


async def test_call_back_reach_rate_counts_the_campaigns_that_ended_per_group(
        seeded: tuple[Config, str]) -> None:
    config, path = seeded
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO campaigns (id, e164, grp, pbx, state, reason, created_at, updated_at,"
            " closed_at) VALUES (?, '+447700900001', ?, 'lab', ?, '', ?, ?, ?)",
            [(number, group, state, SINCE + 60, SINCE + 600, SINCE + 600)
             for number, group, state in (
                 (1, "sales", "done"), (2, "sales", "exhausted"),
                 (3, "sales", "cancelled"),  # got through by calling
                 (4, "support", "done"), (5, "support", "open"))])

    report = await compute(path, config, since=SINCE, until=NOW)

    def reach(scope: Kpis) -> tuple[float, int] | None:
        rate = scope.callback_reach_rate
        return None if rate is None else (rate.numerator, rate.denominator)

    assert reach(report.overall) == (2, 3)
    assert reach(report.groups["sales"]) == (1, 2)
    assert reach(report.groups["support"]) == (1, 1)
    assert reach((await compute(path, config, since=SINCE, until=NOW,
                                group="support")).overall) == (1, 1)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM campaigns")
    assert (await compute(path, config, since=SINCE,
                          until=NOW)).overall.callback_reach_rate is None
