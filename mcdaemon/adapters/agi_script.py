"""`mcdaemon-agi`: the AGI hooks as a classic AGI script, for dialplans that run scripts.

    AGI(mcdaemon-agi,tag,group=sales)             MCD_GROUP=sales
    AGI(mcdaemon-agi,tag,did=442071230000,after_hours=1)
    AGI(mcdaemon-agi,callback-request)            MCD_CALLBACK=1   (alias: callback)
    AGI(mcdaemon-agi,optout-check)                MCD_OPTED_OUT=1 if the caller opted out, else 0
    AGI(mcdaemon-agi,-c,/etc/mcdaemon/other.yaml,optout-check)

Many dialplans call scripts (FreePBX's agi-bin habit), and a script needs no port: Asterisk
starts it for each call and speaks AGI on its stdin/stdout (pyst2's `asterisk.agi`). The
decision is the FastAGI server's (`agi.hook_marks`): same hook names, same variables, same
commands; parameters come as arguments (`group=sales`) or as the URL's query (`tag?group=sales`).

Nothing but AGI commands may reach stdout: logs go to stderr (Asterisk's console and log).
The script only reads: the config (secrets left out: it needs none, and the Asterisk user
should not read them) and, for `optout-check`, the store, read-only. So the answer it gives
reports a committed row: a read-only connection sees only committed transactions, and the
SET VARIABLE goes out only after that read returned. Any failure (config, store) answers
nothing and exits 1: Asterisk sets AGISTATUS=FAILURE, the dialplan goes on, the call is still
tracked by inference.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs

import structlog
import yaml
from asterisk.agi import AGI, AGIError, AGIHangup

from mcdaemon import logs
from mcdaemon.adapters.agi import HOOKS, HookContext, Marks, hook_marks, set_variable
from mcdaemon.config.load import config_from_dict
from mcdaemon.config.model import Config, StoreConfig
from mcdaemon.config.reader import ConfigError
from mcdaemon.store import StoreError, StoreInterface, open_store_readonly

log = structlog.get_logger("mcdaemon.agi")

DEFAULT_CONFIG = "/etc/mcdaemon/config.yaml"
#: the keys `Section.secret` reads, in each of their forms
_SECRETS = ("secret", "password")
_SECRET_FORMS = ("", "_env", "_file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcdaemon-agi", description="mcdaemon's AGI hooks as a classic AGI script: "
        "run by Asterisk's AGI() application, it sets MCD_* channel variables.")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"the daemon's YAML configuration (default {DEFAULT_CONFIG})")
    parser.add_argument("--log-level", default="warning",
                        choices=("debug", "info", "warning", "error"))
    parser.add_argument("hook", help=f"one of {', '.join(HOOKS)}; may end with ?key=value&…")
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE",
                        help="the hook's parameters (tag: group, did, after_hours, ignore)")
    return parser


def hook_params(hook: str, params: Sequence[str]) -> tuple[str, dict[str, list[str]]]:
    """`tag?group=sales` and `tag group=sales` alike: the hook and its parameters."""
    name, _, query = hook.partition("?")
    parsed: dict[str, list[str]] = {}
    for text in (query, *params):
        for key, values in parse_qs(text, keep_blank_values=True).items():
            parsed.setdefault(key, []).extend(values)
    return name.strip("/"), parsed


def load_hook_config(path: str | Path) -> Config:
    """The daemon's config without its secrets: the hooks use none, and needing them would
    mean giving the Asterisk user the SMSC password (or the daemon's environment)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror} (the Asterisk user needs "
                           "read access to the config, e.g. through its group)"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    return config_from_dict(_without_secrets(data), source=str(path), base_dir=path.parent)


def _without_secrets(data: Any) -> Any:
    if isinstance(data, list):
        return [_without_secrets(item) for item in data]
    if not isinstance(data, dict):
        return data
    cleaned = {key: _without_secrets(value) for key, value in data.items()}
    for name in _SECRETS:
        if any(cleaned.get(name + form) for form in _SECRET_FORMS):
            for form in _SECRET_FORMS:
                cleaned.pop(name + form, None)
            cleaned[name] = "unread"  # valid wherever a secret is (smpp: 8 at most)
    return cleaned


async def _is_opted_out(store_config: StoreConfig, number: str) -> bool:
    store: StoreInterface = await open_store_readonly(store_config)
    try:
        return await store.is_opted_out(number)
    finally:
        await store.close()


def run_hook(agi: AGI, config: Config, hook: str, params: dict[str, list[str]]) -> int:
    """Decide, then answer: each mark is one SET VARIABLE, sent once the decision (and the
    store read it needs) is complete."""
    context = HookContext(
        groups=[group.name for group in config.groups], region=config.region,
        opted_out=lambda number: _is_opted_out(config.store, number),
        full_numbers=config.log_full_numbers)
    marks: Marks | None = asyncio.run(hook_marks(hook, agi.env, params, context,
                                                 via="mcdaemon-agi"))
    if marks is None:
        log.warning("mcdaemon-agi hook unknown: nothing set", hook=hook[:40],
                    known=sorted(HOOKS), hint="check the first argument of the dialplan's "
                    "AGI(mcdaemon-agi,…)")
        return 1
    for name, value in marks:
        try:
            agi.execute(set_variable(name, value))  # the FastAGI server's very command
        except AGIHangup:
            return 0  # the caller hung up: nothing left to mark
        except AGIError as exc:
            log.warning("mcdaemon-agi SET VARIABLE refused", variable=name,
                        result=str(exc)[:80],
                        hint="Asterisk's log says why (the channel hung up?)")
            return 0
    log.info("mcdaemon-agi hook", hook=hook, uniqueid=agi.env.get("agi_uniqueid"),
             set=dict(marks))
    return 0


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """The console script: Asterisk's AGI() runs it with the hook and its parameters."""
    args = build_parser().parse_args(argv)
    logs.configure("auto", args.log_level, stream=stderr or sys.stderr)
    # pyst2 reads the agi_* headers at once and prints each one (the caller's number
    # among them) on its stderr: that goes nowhere here
    agi = AGI(stdin=stdin or sys.stdin, stdout=stdout or sys.stdout, stderr=io.StringIO())
    hook, params = hook_params(args.hook, args.params)
    try:
        config = load_hook_config(args.config)
        return run_hook(agi, config, hook, params)
    except ConfigError as exc:
        log.error("mcdaemon-agi: the config cannot be used; nothing set",
                  problems=exc.problems, hint="mcdaemon check-config -c " + args.config)
    except StoreError as exc:
        log.error("mcdaemon-agi: the store cannot be read; nothing set", error=str(exc))
    return 1


if __name__ == "__main__":
    sys.exit(main())
