"""The README is part of the product: its commands and its reference must match the code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from mcdaemon.cli import build_parser
from mcdaemon.config.load import known_keys

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _reference_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("config_reference",
                                                  ROOT / "scripts" / "config_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_is_the_one_generated_from_the_example() -> None:
    reference = _reference_module()
    assert reference.readme_block(ROOT / "README.md") == reference.render(), (
        "README.md's configuration reference is stale: run "
        "`python scripts/config_reference.py` and paste its output")


def test_every_setting_the_loader_knows_is_in_the_readme() -> None:
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text(encoding="utf-8"))
    for key in known_keys(example, base_dir=ROOT):
        if key.endswith(("_env", "_file")):
            continue  # the secret's other forms, described in its row
        assert f"`{key}`" in README, f"README.md does not document `{key}`"


def test_the_readme_starts_with_the_demo_and_the_test_command_and_ci_runs_the_latter() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands[:2] == ["scripts/dev.sh demo", "scripts/dev.sh test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash scripts/dev.sh test" in ci


def test_every_mcdaemon_subcommand_shown_in_the_readme_exists() -> None:
    parser = build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    shown = set(re.findall(r"^mcdaemon ([a-z-]+) -", README, re.M))
    assert shown, "the README shows no mcdaemon command"
    assert shown <= subcommands, f"unknown commands in README: {shown - subcommands}"
