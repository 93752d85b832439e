"""Config loading: the example file, every key documented, many problems at once, secrets,
permissions, reload."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcdaemon.config.load import config_from_dict, known_keys, load_config, reload_config
from mcdaemon.config.model import DEFAULT_TRIGGERS
from mcdaemon.config.reader import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.yaml"


def example_paths(data: Any, prefix: str = "") -> set[str]:
    """Schema paths present in a YAML document (`ami[].host`, `groups.*.templates`)."""
    paths: set[str] = set()
    if isinstance(data, list):
        for item in data:
            paths |= example_paths(item, f"{prefix}[]")
    elif isinstance(data, dict):
        for key, value in data.items():
            star = prefix == "groups"
            path = f"{prefix}.*" if star else (f"{prefix}.{key}" if prefix else str(key))
            paths.add(path)
            paths |= example_paths(value, path)
    return paths


def test_the_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert [pbx.name for pbx in config.ami] == ["lab"]
    assert config.inbound.contexts == ("from-carrier",)
    assert config.inbound.after_hours_contexts == ("closed",)
    assert config.region == "GB"
    assert [group.name for group in config.groups] == ["sales", "support", "default"]


def test_the_example_copied_as_it_is_switches_on_nothing_that_reaches_out() -> None:
    """An administrator who changes only ami, smpp and store gets texts to missed callers and
    nothing else: no webhook POSTs, no call-backs placed, no follow-up texts, no staff notes."""
    config = load_config(EXAMPLE)
    assert config.webhooks == ()
    assert [group.name for group in config.groups if group.callback is not None] == []
    assert [group.name for group in config.groups if group.followups] == []
    assert [group.name for group in config.groups if group.notify_staff] == []
    assert not config.metrics.enabled and not config.agi.enabled
    assert not config.contacts.lookup.url
    # each feature is still written out, so turning it on is one line
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert data["webhooks"][0]["enabled"] is False
    assert data["groups"]["sales"]["callback"]["enabled"] is False
    assert all(step["enabled"] is False for step in data["groups"]["sales"]["followups"])


def test_switched_off_features_are_still_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({
            "webhooks": [{"enabled": False, "url": "ftp://x", "secret": "s"}],
            "groups": {"a": {"templates": {"default": "x"},
                             "followups": [{"enabled": False, "after": "2h",
                                            "template": "Hi {nmae}"}],
                             "callback": {"enabled": False, "attempts": ["soon"]}}}},
            source="c.yaml")
    problems = "\n".join(caught.value.problems)
    assert "c.yaml: webhooks[0].url: must be an http:// or https:// URL" in problems
    assert "c.yaml: groups.a.followups[0].template: unknown variable {nmae}" in problems
    assert "c.yaml: groups.a.callback.attempts: 'soon' is not a duration" in problems


def test_the_example_says_which_outcomes_a_group_texts_without_triggers() -> None:
    """The code's default (`DEFAULT_TRIGGERS`) leaves out voicemail_left: the example says so."""
    text = " ".join(line.strip().lstrip("#").strip()
                    for line in EXAMPLE.read_text(encoding="utf-8").splitlines())
    match = re.search(r"Without triggers, a group texts: ([a-z_, ]+)\.", text)
    assert match is not None
    assert match.group(1).split(", ") == [str(outcome) for outcome in DEFAULT_TRIGGERS]
    assert "Not voicemail_left nor callback_requested" in text


def test_every_key_the_loader_knows_is_in_the_example() -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    text = EXAMPLE.read_text(encoding="utf-8")
    present = example_paths(data)
    missing = []
    for key in sorted(known_keys(data, base_dir=ROOT)):
        alternative = re.search(r"_(env|file)$", key)  # only one secret form can be live
        if key not in present and not (alternative and key.rsplit(".", 1)[-1] in text):
            missing.append(key)
    assert missing == []


def test_every_key_in_the_example_has_a_comment() -> None:
    previous = ""
    for number, line in enumerate(EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        documented = "#" in line or previous.lstrip().startswith("#")
        if line.strip():
            previous = line
        if documented or not line.strip() or re.match(r"^\s*[a-z_]+:\s*$", line):
            continue
        if line.lstrip().startswith(("- ", "default:", "after_hours:", "short:", "link:")):
            continue  # list items and template texts, explained in the lines above
        raise AssertionError(f"config.example.yaml:{number}: no comment: {line.strip()}")


def test_unknown_keys_are_errors_with_their_path() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"policy": {"cooldwn": "1h"},
                          "groups": {"sales": {"templates": {"default": "x"}, "hourz": {}}}},
                         source="c.yaml")
    assert caught.value.problems == [
        "c.yaml: policy.cooldwn: unknown key (a typo? see config.example.yaml)",
        "c.yaml: groups.sales.hourz: unknown key (a typo? see config.example.yaml)",
    ]


BROKEN = """\
region: XX
policy:
  cooldown: soon
groups:
  sales:
    triggers: [queue_abandon, abandonned]
    hours:
      mon-fry: "09:00-17:00"
    templates:
      queue_abandon: "Hi {nmae}"
"""


def test_check_config_prints_every_problem_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mcdaemon", "check-config", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    for fragment in ("region: 'XX'", "policy.cooldown:", "groups.sales.triggers: 'abandonned'",
                     "groups.sales.hours.mon-fry:", "groups.sales.templates.queue_abandon: "
                     "unknown variable {nmae}"):
        assert f"{path}: {fragment}" in result.stderr, result.stderr


def test_check_config_accepts_the_example() -> None:
    result = subprocess.run([sys.executable, "-m", "mcdaemon", "check-config", "-c",
                             str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def lab_config(secret_line: str) -> str:
    return f"ami:\n  - name: lab\n    username: mcd\n    {secret_line}\n"


def test_secret_from_a_file_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "ami.secret").write_text("s3cret\n", encoding="utf-8")
    (tmp_path / "ami.secret").chmod(0o600)
    path = tmp_path / "config.yaml"
    path.write_text(lab_config("secret_file: ami.secret"), encoding="utf-8")
    path.chmod(0o644)
    config = load_config(path)
    assert config.ami[0].secret == "s3cret"
    assert config.warnings == ()  # no inline secret: world-readable is fine


def test_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCD_TEST_AMI_SECRET", "from-env")
    path = tmp_path / "config.yaml"
    path.write_text(lab_config("secret_env: MCD_TEST_AMI_SECRET"), encoding="utf-8")
    assert load_config(path).ami[0].secret == "from-env"
    monkeypatch.delenv("MCD_TEST_AMI_SECRET")
    with pytest.raises(ConfigError, match="environment variable MCD_TEST_AMI_SECRET is not set"):
        load_config(path)


def test_an_inline_secret_in_a_world_readable_file_gets_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(lab_config("secret: inline"), encoding="utf-8")
    path.chmod(0o644)
    (warning,) = load_config(path).warnings
    assert "readable by other users" in warning and f"chmod 600 {path}" in warning
    path.chmod(0o600)
    assert load_config(path).warnings == ()


def test_reload_with_a_bad_config_raises_and_the_old_one_stays(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("company: Old\n", encoding="utf-8")
    old = load_config(path)
    path.write_text("company: New\npolicy: {cooldown: whenever}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"policy\.cooldown"):
        reload_config(old, path)
    assert old.company == "Old"
    path.write_text("company: New\n", encoding="utf-8")
    assert reload_config(old, path).company == "New"


def test_reload_refuses_a_new_database_path(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("store: {path: /tmp/a.db}\n", encoding="utf-8")
    old = load_config(path)
    path.write_text("store: {path: /tmp/b.db}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="needs a restart"):
        reload_config(old, path)


@pytest.mark.parametrize(("data", "fragment"), [
    ({"smpp": {"system_id": "x", "password": "123456789", "source_addr": "A"}},
     "smpp.password: 9 characters"),
    ({"smpp": {"system_id": "x", "password": "p", "source_addr": "+" + "4" * 21}},
     "smpp.source_addr: 21 digits; an international number has at most 15"),
    ({"smpp": {"system_id": "x", "password": "p", "source_addr": "Acme Widgets"}},
     "smpp.source_addr: alphanumeric sender ids have at most 11 characters"),
    ({"policy": {"max_parts": 4}}, "policy.max_parts: 4 is more than smpp.max_parts (3)"),
    ({"policy": {"allowed_countries": ["UK"]}}, "policy.allowed_countries: 'UK'"),
    ({"policy": {"caps": {"per_hour": 50, "per_day": 10}}}, "policy.caps.per_day"),
    ({"groups": {"a": {"queues": ["q"], "templates": {"default": "x"}},
                 "b": {"queues": ["q"], "templates": {"default": "x"}}}},
     "groups.b.queues: queue q is also in group a"),
    ({"groups": {"a": {"triggers": ["ring_no_answer"], "templates": {"queue_abandon": "x"}}}},
     "groups.a.triggers: ring_no_answer has no text"),
    ({"groups": {"a": {"templates": {"default": "x"}, "hours": {"holidays": ["25/12"]}}}},
     "groups.a.hours.holidays: '25/12' is not a date"),
    ({"groups": {"a": {"templates": {"default": "x"}, "variants": {"default": {"x": "y"}}}}},
     "groups.a.variants.default: an A/B test needs at least two variants"),
    ({"groups": {"a": {"templates": {"queue_abandn": "x"}}}},
     "groups.a.templates.queue_abandn: not a template name"),
    ({"daemon": {"name": "host 1"}}, "daemon.name: use 1-64 letters, digits"),
])
def test_problems_name_the_key_and_the_fix(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, source="c.yaml")
    assert any(problem.startswith(f"c.yaml: {fragment}") for problem in caught.value.problems), \
        caught.value.problems


def test_groups_without_triggers_text_the_outcomes_they_have_templates_for() -> None:
    config = config_from_dict({"groups": {"a": {"templates": {"queue_abandon": "x"}}}})
    assert {str(o) for o in config.groups[0].triggers} == {"queue_abandon"}


def test_existing_api_still_works_without_new_sections() -> None:
    config = config_from_dict({"inbound": {"contexts": ["from-carrier"]}})
    assert config.allowed_countries == ("GB",)
    # with no groups, an implicit default group texts the usual missed outcomes
    assert [group.name for group in config.groups] == ["default"]
    assert config.inbound.contexts == ("from-carrier",)
    assert os.fspath(config.store.path) == "/var/lib/mcdaemon/mcdaemon.db"


# ---------------------------------------------------------------- the sender of the texts

def smpp_with(**sender: Any) -> dict[str, Any]:
    return {"region": "GB", "ami": [{"name": "lab", "username": "mcd", "secret": "s"}],
            "smpp": {"host": "127.0.0.1", "system_id": "x", "password": "p", **sender}}


@pytest.mark.parametrize(("sender", "expected"), [
    ({"source_addr": "+447700900000"}, ("447700900000", 1, 1)),
    ({"source_addr": "+44 7700 900000"}, ("447700900000", 1, 1)),  # spaces as people write
    ({"source_addr": "07700 900000"}, ("447700900000", 1, 1)),  # national: made international
    ({"source_addr": "07700900000", "source_ton": 1, "source_npi": 1}, ("447700900000", 1, 1)),
    ({"source_addr": "60777"}, ("60777", 3, 0)),  # short code
    ({"source_addr": "Acme"}, ("Acme", 5, 0)),  # alphanumeric
    ({"source_addr": "Acme", "source_ton": 5, "source_npi": 0}, ("Acme", 5, 0)),
])
def test_the_sender_goes_out_with_the_numbering_its_address_calls_for(
        sender: dict[str, Any], expected: tuple[str, int, int]) -> None:
    from mcdaemon.core.sender_id import source_numbering

    assert source_numbering(config_from_dict(smpp_with(**sender)).smpp) == expected


@pytest.mark.parametrize(("sender", "problem"), [
    ({"source_addr": "+447700900000", "source_ton": 5, "source_npi": 0},
     "c.yaml: smpp.source_ton: 5 contradicts source_addr '+447700900000', an international "
     "number (TON 1 NPI 1); leave source_ton out to derive it"),
    ({"source_addr": "Acme", "source_ton": 1},
     "c.yaml: smpp.source_ton: 1 contradicts source_addr 'Acme', an alphanumeric sender id "
     "(TON 5 NPI 0); leave source_ton out to derive it"),
    ({"source_addr": "60777", "source_ton": 1},
     "c.yaml: smpp.source_ton: 1 contradicts source_addr '60777', a short code (TON 3 NPI 0); "
     "leave source_ton out to derive it"),
    ({"source_addr": "0123 456 789 012"},
     "c.yaml: smpp.source_addr: '0123 456 789 012' is not a phone number in region GB; write "
     "it as +<country code><number>, e.g. +447700900000"),
    ({"source_addr": "Acme Widgets"},
     "c.yaml: smpp.source_addr: alphanumeric sender ids have at most 11 characters; "
     "'Acme Widgets' has 12"),
])
def test_a_sender_that_would_go_out_wrong_is_refused(sender: dict[str, Any],
                                                     problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(smpp_with(**sender), source="c.yaml")
    assert caught.value.problems == [problem]


@pytest.mark.parametrize(("sender", "line"), [
    ("+44 7700 900000", "sender: +447700900000 (international, TON 1 NPI 1): callers can reply"),
    ("Acme", "sender: Acme (alphanumeric, TON 5 NPI 0): callers cannot reply (nor text STOP) "
             "to a name"),
    ("60777", "sender: 60777 (short code, TON 3 NPI 0): callers can reply if the carrier "
              "routes the short code back to this SMSC bind"),
])
def test_check_config_and_preview_say_how_the_sender_goes_out(tmp_path: Path, sender: str,
                                                              line: str) -> None:
    import io

    from mcdaemon.commands.preview import preview

    path = tmp_path / "config.yaml"
    data = smpp_with(source_addr=sender) | {"store": {"path": str(tmp_path / "m.db")}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    path.chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "mcdaemon", "check-config", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert line in result.stdout.splitlines(), result.stdout + result.stderr
    out = io.StringIO()
    preview(load_config(path), out, None, None, None, 0.0)
    assert line in out.getvalue().splitlines()


# ---------------------------------------------------------------- numbers and what run needs

STAFF = "+447911123456"  # a valid UK mobile


@pytest.mark.parametrize(("number", "problem"), [
    ("12345", "'12345' is not a valid phone number (e.g. +447700900456, or national in "
              "region GB)"),
    ("07700 900abc", "'07700 900abc' has letters; write the digits (e.g. +447700900456)"),
    ("+44 20 7123 0000", "'+44 20 7123 0000' is not a mobile number, so it cannot get texts"),
])
def test_a_staff_number_that_cannot_get_texts_is_refused_by_its_place(number: str,
                                                                      problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"groups": {"sales": {"templates": {"default": "x"},
                                               "notify_staff": [STAFF, number]}}},
                         source="config.yaml")
    assert caught.value.problems == [f"config.yaml: groups.sales.notify_staff[1]: {problem}"]


def test_staff_numbers_are_kept_as_e164_mobiles() -> None:
    config = config_from_dict({"groups": {"sales": {
        "templates": {"default": "x"},
        "notify_staff": ["07911 123456", STAFF, "07700 900456"]}}})  # the last: test range
    assert config.groups[0].notify_staff == (STAFF, STAFF, "+447700900456")


@pytest.mark.parametrize("shown_by_the_pbx", ["442071230009", "+442071230009"])
def test_ignored_dids_match_however_they_are_written(shown_by_the_pbx: str) -> None:
    from mcdaemon.core.records import Outcome

    from core.test_tracker import Call, only, tracker

    config = config_from_dict({"inbound": {"contexts": ["from-carrier"],
                                           "ignore_dids": ["+44 20 7123 0009"]}})
    assert config.inbound.ignore_dids == ("442071230009",)
    fax = Call(did=shown_by_the_pbx)
    fax.app("BackGround", "menu", context="ivr", exten="s")
    fax.hangup()
    assert only(fax, tracker(config.inbound)).outcome == Outcome.DEAD_END
    with pytest.raises(ConfigError, match=r"c\.yaml: inbound\.ignore_dids\[0\]: 'fax line' "
                                          "is not a number"):
        config_from_dict({"inbound": {"ignore_dids": ["fax line"]}}, source="c.yaml")


@pytest.mark.parametrize(("data", "problems"), [
    ({}, ["config.yaml: ami: missing: the PBX(s) to watch (name, host, port, username, secret)",
          "config.yaml: smpp: missing: the SMSC to send through (host, port, system_id, "
          "password)"]),
    ({"ami": [{"name": "lab", "username": "mcd", "secret": "s"}],
      "smpp": {"system_id": "x", "password": "p", "source_addr": "Acme"}},
     ["config.yaml: smpp.host: missing: the SMSC's address (the daemon would try 127.0.0.1)"]),
])
def test_check_config_and_run_require_a_pbx_and_an_smsc(tmp_path: Path, data: dict[str, Any],
                                                        problems: list[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data | {"store": {"path": str(tmp_path / "m.db")}}),
                    encoding="utf-8")
    path.chmod(0o600)
    for command in ("check-config", "run"):
        result = subprocess.run([sys.executable, "-m", "mcdaemon", command, "-c", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        shown = [line.replace(str(path), "config.yaml") for line in result.stderr.splitlines()]
        assert shown[:len(problems)] == problems


def pbx(name: str, **extra: str) -> dict[str, str]:
    return {"name": name, "username": "mcd", "secret": "s", **extra}


def test_each_pbx_has_its_own_queue_log_and_one_pbx_may_name_it_in_inbound() -> None:
    config = config_from_dict({"ami": [pbx("a", queue_log="/srv/a/queue_log"), pbx("b")]})
    assert [entry.queue_log for entry in config.ami] == ["/srv/a/queue_log", None]
    one = config_from_dict({"ami": [pbx("a")], "inbound": {"queue_log": "/var/q"}})
    assert one.ami[0].queue_log == "/var/q"


@pytest.mark.parametrize(("data", "problem"), [
    ({"ami": [pbx("a"), pbx("b")], "inbound": {"queue_log": "/var/q"}},
     "c.yaml: inbound.queue_log: 2 PBXs in ami: give each its own file as ami[].queue_log"),
    ({"ami": [pbx("a", queue_log="/var/a")], "inbound": {"queue_log": "/var/q"}},
     "c.yaml: inbound.queue_log: differs from ami[0].queue_log ('/var/a')"),
    ({"ami": [pbx("a", queue_log="/var/q"), pbx("b", queue_log="/var/q")]},
     "c.yaml: ami[1].queue_log: '/var/q' is ami[0].queue_log's too"),
    ({"ami": [pbx("a", queue_log="queue_log")]},
     "c.yaml: ami[0].queue_log: 'queue_log': give an absolute path"),
])
def test_a_queue_log_that_cannot_be_one_pbx_s_is_refused_naming_the_key(
        data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, source="c.yaml")
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems
