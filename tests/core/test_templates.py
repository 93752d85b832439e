"""Templates: variables, caller-name hygiene, GSM-7/UCS-2 length rules, fitting a name in."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

import pytest

from mcdaemon.config.load import config_from_dict
from mcdaemon.config.reader import ConfigError
from mcdaemon.core import sms, templates
from mcdaemon.core.records import CallRecord, Outcome


def config_with(template: str, **policy: Any) -> dict[str, Any]:
    return {"company": "Acme", "policy": policy,
            "groups": {"sales": {"variables": {"booking_link": "acme.example/b"},
                                 "templates": {"queue_abandon": template}}}}


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, source="config.yaml")
    return caught.value.problems


def test_an_unknown_variable_is_a_config_error_naming_the_key_path() -> None:
    (problem,) = problems_of(config_with("Hi {caller_nmae}"))
    assert problem.startswith("config.yaml: groups.sales.templates.queue_abandon: unknown "
                              "variable {caller_nmae}")
    assert "booking_link" in problem  # the group's own variables are listed as known


@pytest.mark.parametrize("template", ["Hi {caller_name.__class__}", "Hi {caller_name:>40}",
                                      "Hi {caller_name!r}", "Hi {}", "Hi {caller_name"])
def test_only_plain_variables_are_allowed(template: str) -> None:
    (problem,) = problems_of(config_with(template))
    assert "groups.sales.templates.queue_abandon" in problem


def test_double_braces_are_literal_braces() -> None:
    assert templates.render("{{x}} {company}", {"company": "Acme"}) == "{x} Acme"


def test_worst_case_beyond_one_sms_is_refused_with_count_and_limit() -> None:
    # 131 fixed characters + {caller_name} at its longest (20) + {company} (Acme, 4) = 155;
    # six '€' count double in GSM-7: 161 -> refused although it is 155 characters long.
    fixed = "x" * 125 + "€€€€€€"
    (problem,) = problems_of(config_with(fixed + "{caller_name}{company}"))
    assert problem == ("config.yaml: groups.sales.templates.queue_abandon: 161 GSM-7 characters "
                       "at most; limit is 160 (max_parts: 1)")
    config_from_dict(config_with("x" * 125 + "€€€€€" + "{caller_name}{company}"))  # 159 fits


def test_an_emoji_makes_the_text_ucs2_with_a_70_character_limit() -> None:
    (problem,) = problems_of(config_with("Sorry we missed you 🙏 " + "x" * 50 + " {company}"))
    assert re.search(r"queue_abandon: \d+ UCS-2 characters at most \('🙏' \(U\+1F64F\) needs "
                     r"UCS-2\); limit is 70 \(max_parts: 1\)$", problem)


def test_max_parts_two_allows_two_concatenated_parts() -> None:
    long = "x" * 250 + " {caller_name}"
    assert problems_of(config_with(long))  # one SMS: refused
    config_from_dict(config_with(long, max_parts=2))  # 271 <= 2 x 153


@pytest.mark.parametrize(("raw", "clean"), [
    ("Jane Doe", "Jane Doe"),
    ("SMITH JOHN", "Smith John"),                # carriers shout; texts should not
    ("Zoë O'Brien", "Zoë O'Brien"),
    ("  Ann\x00\x1b[31m  ", None),                # escape sequence leaves "[31m": not a name
    ("Ann\u202eLee", "AnnLee"),                  # bidi override stripped
    ("WIRELESS CALLER", None),
    ("Unknown", None),
    ("anonymous", None),
    ("07700900123", None),
    ("+447700900123", None),
    ("Call 0800 123", None),
    ("win.prize.com", None),
    ("http://x.co", None),
    ("bob@evil.io", None),
    ("🙂 Fan", None),
    ("", None),
    (None, None),
    ("Maximilian Alexander Von Habsburg", "Maximilian Alexander"),  # cut at a word, <= 20
    ("Supercalifragilisticexpialidocious", "Supercalifragilistic"),
])
def test_caller_names_are_used_only_when_they_look_like_names(raw: str | None,
                                                                 clean: str | None) -> None:
    assert templates.clean_caller_name(raw, 20) == clean


def record(**changes: Any) -> CallRecord:
    values: dict[str, Any] = dict(
        pbx="lab", call_id="1.0", caller="+447700900123", caller_name="Jane Doe",
        caller_e164="+447700900123", did="442071230001", group="sales",
        outcome=Outcome.QUEUE_ABANDON, stages=(), started=1736153100.0, ended=1736153195.0,
        wait_seconds=95.0)
    values.update(changes)
    return CallRecord(**values)


def test_call_values_format_numbers_dates_and_wait() -> None:
    config = config_from_dict({"timezone": "Europe/London", "company": "Acme",
                               "groups": {"sales": {"display_name": "Sales team",
                                                    "templates": {"default": "x"}}}})
    group = config.groups[0]
    values = templates.call_values(record(), group, config.policy, config.company, "GB")
    assert values["caller"] == "07700 900123"
    assert values["did"] == "020 7123 0001"
    assert values["group"] == "Sales team"
    assert (values["date"], values["time"], values["weekday"]) == ("06 Jan", "08:45", "Monday")
    assert values["wait"] == "2 min"
    assert values["company"] == "Acme"


def test_call_values_hold_the_group_variables_and_work_out_only_what_is_asked_for() -> None:
    config = config_from_dict({"company": "Acme", "groups": {"sales": {
        "templates": {"default": "x"}, "variables": {"link": "acme.example/book"}}}})
    group = config.groups[0]
    unknown_zone = dataclasses.replace(group, timezone="No/Such_Zone")

    values = templates.call_values(record(), unknown_zone, config.policy, config.company, "GB")

    assert templates.render("{company}: {link}", values) == "Acme: acme.example/book"
    with pytest.raises(ZoneInfoNotFoundError):  # the date was never needed until now
        values["date"]
    values = templates.call_values(record(), group, config.policy, config.company, "GB")
    assert set(values) == {"link", "caller_name", "caller", "did", "group", "date", "time",
                           "weekday", "wait", "company"}
    assert dict(values)["link"] == "acme.example/book" and len(values) == 10
    with pytest.raises(KeyError):
        values["nope"]


def test_international_number_format() -> None:
    assert templates.format_number("442071230001", "international", "GB") == "+44 20 7123 0001"


def test_a_name_that_would_force_ucs2_is_folded_to_gsm7_to_fit() -> None:
    text = "x" * 150 + " {caller_name}"
    values = {"caller_name": "there"}
    rendered = templates.render_call(text, values, "Zoë", max_parts=1)
    assert rendered.body.endswith(" Zoe")
    assert rendered.plan.encoding == "gsm7" and rendered.plan.parts == 1


def test_a_name_too_long_for_the_room_left_is_shortened_then_replaced() -> None:
    text = "x" * 150 + " {caller_name}"
    values = {"caller_name": "there"}
    assert templates.render_call(text, values, "Alexandra Smith", 1).name_used == "Alexandra"
    assert templates.render_call("x" * 158 + "{caller_name}", values, "Al", 1).name_used == "Al"
    assert templates.render_call("x" * 159 + "{caller_name}", values, "Al", 1).name_used == \
        "there"  # nothing fits: the fallback, and the plan says how long it is


def test_a_name_that_fits_is_kept_as_written_even_in_ucs2() -> None:
    rendered = templates.render_call("Hi {caller_name}", {"caller_name": "there"}, "Zoë", 1)
    assert rendered.body == "Hi Zoë" and rendered.plan.encoding == "ucs2"


@pytest.mark.parametrize(("name", "folded"), [
    ("Zoë Łukasiewicz", "Zoe Lukasiewicz"),  # Ł has no decomposition: transliterated
    ("Đorđe Þórsson", "Dorde Thorsson"),
    ("Øystein Ærø", "Øystein Ærø"),  # GSM-7 has Ø, Æ and ø: kept
    ("Jürgen Großmann", "Jürgen Großmann"),  # ü and ß too
    ("Ōtani Shōhei", "Otani Shohei"),
    ("Björk Guðmundsdóttir", "Björk Gudmundsdottir"),  # ð: transliterated, ö kept
    ("王小明", "WangXiaoMing"),
    ("Ana 😀", "Ana "),  # a symbol is no letter: dropped, not spelt ":grinning:"
])
def test_names_are_folded_to_gsm7_letter_by_letter(name: str, folded: str) -> None:
    assert templates.fold_to_gsm7(name) == folded
    assert sms.is_gsm7(folded)


def test_a_name_keeps_its_letters_in_a_gsm7_text_when_ucs2_would_not_fit() -> None:
    text = "x" * 130 + " Hi {caller_name}"
    rendered = templates.render_call(text, {"caller_name": "there"}, "Zoë Łukasiewicz", 1)
    assert rendered.body.endswith(" Hi Zoe Lukasiewicz")
    assert rendered.plan.encoding == "gsm7" and rendered.plan.parts == 1
    # where the group allows the longer text, the name stays as written, in UCS-2
    roomy = templates.render_call("Hi {caller_name}", {"caller_name": "there"},
                                  "Zoë Łukasiewicz", 1)
    assert roomy.body == "Hi Zoë Łukasiewicz" and roomy.plan.encoding == "ucs2"
