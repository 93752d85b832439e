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

from mcdaemon.config import ConfigError, config_from_dict, known_keys, load_config, reload_config

ROOT = Path(__file__).resolve().parent.parent
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
     "smpp.source_addr: 21 digits; SMPP 3.4 carries at most 20"),
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
