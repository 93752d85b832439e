"""The Asterisk kit in asterisk-conf/ agrees with the daemon and with config.example.yaml."""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import yaml

from mcdaemon.adapters.agi import HOOKS, tag_marks
from mcdaemon.adapters.agi_script import hook_params
from mcdaemon.adapters.ami import event_filter
from mcdaemon.core.tracker import NEEDED_EVENTS, NEEDED_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "asterisk-conf"


def manager_user() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       inline_comment_prefixes=(";",), comment_prefixes=(";",))
    parser.read(KIT / "manager.conf")
    return parser["mcdaemon"]


def test_the_manager_user_is_least_privilege_and_loopback_only() -> None:
    user = manager_user()
    assert set(user["read"].replace(" ", "").split(",")) == {"call", "agent", "dialplan",
                                                            "system"}
    assert set(user["write"].replace(" ", "").split(",")) == {"reporting"}
    assert user["deny"] == "0.0.0.0/0.0.0.0"
    assert user["permit"].startswith("127.0.0.1/")


def test_the_kits_event_filter_is_the_one_the_daemon_installs() -> None:
    assert manager_user()["eventfilter"] == event_filter(NEEDED_EVENTS, NEEDED_VARIABLES)


def test_the_example_config_names_contexts_the_example_dialplan_has() -> None:
    dialplan = (KIT / "extensions.conf").read_text(encoding="utf-8")
    contexts = set(re.findall(r"^\[([\w-]+)\]", dialplan, re.M))
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text(encoding="utf-8"))
    inbound = example["inbound"]
    assert set(inbound["contexts"]) <= contexts
    assert set(inbound["after_hours_contexts"]) <= contexts
    assert "MCD_GROUP" in dialplan and "MCD_AFTER_HOURS" in dialplan


def test_the_example_callback_uses_contexts_the_example_dialplan_has() -> None:
    dialplan = (KIT / "extensions.conf").read_text(encoding="utf-8")
    contexts = set(re.findall(r"^\[([\w-]+)\]", dialplan, re.M))
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text(encoding="utf-8"))
    callbacks = [group["callback"] for group in example["groups"].values()
                 if group.get("callback")]
    assert callbacks, "config.example.yaml shows a call-back"
    for callback in callbacks:
        assert callback["context"] in contexts
        channel_context = callback["channel"].rpartition("@")[2]
        assert channel_context in contexts
        # the number pattern of the call-back context accepts +E.164 only
        assert re.search(rf"^\[{channel_context}\]\nexten => _\+X\.,1,", dialplan, re.M)
    manager = (KIT / "manager.conf").read_text(encoding="utf-8")
    assert "originate" in manager  # documented, commented out: least privilege by default
    assert manager_user()["write"].strip() == "reporting"


def test_every_agi_hook_the_dialplan_calls_is_one_the_daemon_serves() -> None:
    served = set(HOOKS)
    dialplan = (KIT / "extensions.conf").read_text()
    used = re.findall(r"agi://127\.0\.0\.1:4573/([\w-]+)(\?[^)\s]*)?", dialplan)
    assert {"tag", "callback-request", "optout-check"} <= {name for name, _ in used}
    # each FastAGI call has its classic-script twin beside it: AGI(mcdaemon-agi,<hook>,k=v)
    scripts = [hook_params(hook, [part for part in args.split(",") if part])
               for hook, args in re.findall(r"AGI\(mcdaemon-agi,([a-z][a-z-]*)((?:,[^,)]+)*)\)",
                                           dialplan)]
    assert {name for name, _ in used} == {name for name, _ in scripts}
    used += [(name, "?" + urlencode(params, doseq=True)) for name, params in scripts]
    for name, query in used:
        assert name in served, f"extensions.conf calls the hook {name!r}, which is not served"
        if name == "tag":
            marks, problem = tag_marks(parse_qs(query.lstrip("?")), ["sales", "support"])
            assert marks and not problem, f"extensions.conf: tag{query}: {problem}"
