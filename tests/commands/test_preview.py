"""`mcdaemon preview`: each template rendered with its encoding, length and parts."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

from mcdaemon.commands.preview import preview
from mcdaemon.config.load import config_from_dict, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
NOW = dt.datetime(2025, 1, 6, 10, 0, tzinfo=dt.UTC).timestamp()


def run(group: str | None = None, outcome: str | None = None,
        caller: str | None = None) -> tuple[int, str]:
    out = io.StringIO()
    status = preview(load_config(EXAMPLE), out, group, outcome, caller, NOW)
    return status, out.getvalue()


def test_preview_shows_every_group_template_and_variant() -> None:
    status, text = run()
    assert status == 0
    for heading in ("== group sales (Sales)", "-- queue_abandon (variant short)",
                    "-- queue_abandon (variant link)", "== group support (Support)",
                    "== group default (the team)"):
        assert heading in text
    assert "Hi Alex Smith, sorry we missed your call to Acme Ltd Sales." in text
    assert "GSM-7, 87 characters used, 73 left of 160, 1 SMS (fits, max_parts 1)" in text


def test_preview_of_one_outcome_shows_the_open_and_the_closed_text() -> None:
    status, text = run(group="sales", outcome="queue_abandon")
    assert status == 0
    assert "-- queue_abandon (variant short)" in text and "-- after_hours" in text
    assert "-- default" not in text and "support" not in text


def test_preview_says_when_an_outcome_is_not_a_trigger() -> None:
    _, text = run(group="sales", outcome="ivr_abandon")
    assert "ivr_abandon: not a trigger of this group: no text" in text


def test_preview_with_a_caller_number_says_whether_it_can_get_texts() -> None:
    _, text = run(group="support", caller="+442079460000")
    assert "caller +442079460000: no text (not_mobile: FIXED_LINE)" in text
    assert "We will call you back on 020 7946 0000." in text


def test_preview_shows_ucs2_when_a_template_needs_it() -> None:
    config = config_from_dict({"groups": {"a": {"templates": {"default": "Merci 🙏 {group}"}}}})
    out = io.StringIO()
    assert preview(config, out, None, None, None, NOW) == 0
    assert "UCS-2, 10 characters used, 60 left of 70, 1 SMS" in out.getvalue()


def test_preview_of_an_unknown_group_fails() -> None:
    status, text = run(group="billing")
    assert status == 1 and "no group 'billing' (groups: sales, support, default)" in text
