"""Load and validate the YAML configuration into the frozen dataclasses of `config.model`.

Every problem is collected (not only the first). The loaded `Config` is the only global state
the daemon has; it is passed down explicitly. `config.example.yaml` documents every key; a test
checks that every key the loader reads (`Reader.known`) appears there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import phonenumbers
import structlog
import yaml

from mcdaemon.config.agi import read_agi
from mcdaemon.config.contacts import read_contacts
from mcdaemon.config.model import (
    BUILTIN_TEMPLATE,
    DEFAULT_GROUP,
    DEFAULT_INBOUND_CONTEXTS,
    DEFAULT_STORE_PATH,
    DEFAULT_TRIGGERS,
    TEMPLATE_KEYS,
    TEST_MOBILE_RANGES,
    TRIGGER_WORDS,
    AmiConfig,
    CapsConfig,
    Config,
    DaemonConfig,
    GroupConfig,
    InboundConfig,
    MetricsConfig,
    OutboxConfig,
    PolicyConfig,
    RetentionConfig,
    SmppConfig,
    StoreConfig,
)
from mcdaemon.config.outreach import (
    FollowupStep,
    read_callback,
    read_callbacks,
    read_followups,
)
from mcdaemon.config.reader import ConfigError, Reader, Section
from mcdaemon.config.webhooks import read_webhooks
from mcdaemon.core import sender_id, sms, templates
from mcdaemon.core.hours import DAY_NAMES, BusinessHours, Interval, parse_days, parse_intervals
from mcdaemon.core.listen import parse_listen
from mcdaemon.core.records import MISSED_OUTCOMES, Outcome

log = structlog.get_logger("mcdaemon.config")


def _read_ami(reader: Reader, value: Any) -> tuple[AmiConfig, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        reader.error("ami", "must be a list of PBXs (each with name, host, port, username, "
                            "secret)")
        return ()
    pbxs: list[AmiConfig] = []
    names: set[str] = set()
    files: dict[str, str] = {}  # queue_log -> the key that names it
    for index, item in enumerate(value):
        section = reader.mapping(item, f"ami[{index}]", "ami[]")
        name = section.str("name", "pbx" if len(value) == 1 else f"pbx{index + 1}")
        if name in names:
            section.error("name", f"{name!r} is used by two PBXs; names must be unique")
        names.add(name)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name):
            section.error("name", "use 1-40 letters, digits, '_', '.' or '-'")
        pbx = AmiConfig(
            name=name,
            host=section.str("host", "127.0.0.1"),
            port=section.int("port", 5038, minimum=1, maximum=65535),
            username=section.str("username", required=True),
            secret=section.secret("secret", required=True),
            ping_interval=section.duration("ping_interval", 5.0, minimum=0.1),
            ping_timeout=section.duration("ping_timeout", 3.0, minimum=0.1),
            connect_timeout=section.duration("connect_timeout", 5.0, minimum=0.1),
            reconnect_min=section.duration("reconnect_min", 0.5, minimum=0.01),
            reconnect_max=section.duration("reconnect_max", 30.0, minimum=0.1),
            event_filter=section.bool("event_filter", True),
            queue_log=_queue_log_path(section),
        )
        if pbx.queue_log is not None and pbx.queue_log in files:
            section.error("queue_log", f"{pbx.queue_log!r} is {files[pbx.queue_log]}'s too: "
                                       "each PBX writes a queue_log of its own")
        elif pbx.queue_log is not None:
            files[pbx.queue_log] = f"ami[{index}].queue_log"
        for key in ("username", "secret"):
            value_text = getattr(pbx, key)
            if any(ch in value_text for ch in "\r\n"):
                section.error(key, "must not contain line breaks")
        section.done()
        pbxs.append(pbx)
    return tuple(pbxs)


def _queue_log_path(section: Section) -> str | None:
    path = section.opt_str("queue_log")
    if path is not None and not path.startswith("/"):
        section.error("queue_log", f"{path!r}: give an absolute path (e.g. "
                                   "/var/log/asterisk/queue_log)")
        return None
    return path


def _one_pbx_queue_log(section: Section, ami: tuple[AmiConfig, ...]) -> tuple[AmiConfig, ...]:
    """`inbound.queue_log`: the file of the one PBX in `ami` (shorthand for
    `ami[0].queue_log`); with several PBXs each names its own."""
    path = _queue_log_path(section)
    if path is None:
        return ami
    if len(ami) != 1:
        section.error("queue_log", f"{len(ami)} PBXs in ami: give each its own file as "
                                   "ami[].queue_log instead")
        return ami
    if ami[0].queue_log not in (None, path):
        section.error("queue_log", f"differs from ami[0].queue_log ({ami[0].queue_log!r}): "
                                   "give the file once, as ami[].queue_log")
        return ami
    return (dataclasses.replace(ami[0], queue_log=path),)


def _read_inbound(section: Section) -> InboundConfig:
    inbound = InboundConfig(
        contexts=section.str_list("contexts", DEFAULT_INBOUND_CONTEXTS),
        after_hours_contexts=section.str_list("after_hours_contexts"),
        ignore_contexts=section.str_list("ignore_contexts"),
        ignore_dids=read_dids(section, "ignore_dids"),
        voicemail_contexts=section.str_list("voicemail_contexts"),
        trunks=section.str_list("trunks"),
        call_ttl=section.duration("call_ttl", 4 * 3600.0, minimum=60),
    )
    if not inbound.contexts:
        section.error("contexts", "name at least one dialplan context where inbound calls "
                                  "arrive (e.g. from-trunk)")
    section.done()
    return inbound


def _read_smpp(section: Section, region: str) -> SmppConfig:
    present = bool(section.data)
    smpp = SmppConfig(
        host=section.str("host", "127.0.0.1"),
        port=section.int("port", 2775, minimum=1, maximum=65535),
        system_id=section.str("system_id", required=present),
        password=section.secret("password", required=present),
        system_type=section.str("system_type", ""),
        bind_mode=section.choice("bind_mode", "transceiver",
                                 ("transceiver", "transmitter_receiver")),
        source_addr=section.str("source_addr", required=present),
        source_ton=section.opt_int("source_ton", minimum=0, maximum=6),
        source_npi=section.opt_int("source_npi", minimum=0, maximum=18),
        window=section.int("window", 10, minimum=1, maximum=1000),
        throughput=section.float("throughput", 10.0, minimum=0.01),
        enquire_link=section.duration("enquire_link", 30.0, minimum=1),
        response_timeout=section.duration("response_timeout", 10.0, minimum=0.1),
        reconnect_min=section.duration("reconnect_min", 1.0, minimum=0.01),
        reconnect_max=section.duration("reconnect_max", 60.0, minimum=0.1),
        registered_delivery=section.bool("registered_delivery", True),
        receipt_timeout=section.duration("receipt_timeout", 48 * 3600.0, minimum=1),
        data_coding_gsm=section.int("data_coding_gsm", 0, minimum=0, maximum=255),
        max_parts=section.int("max_parts", 3, minimum=1, maximum=10),
    )
    # smpplib truncates these silently; an SMSC would then refuse a password that looks right.
    if len(smpp.system_id) > 15:
        section.error("system_id", f"{len(smpp.system_id)} characters; SMPP allows at most 15")
    if len(smpp.password) > 8:
        section.error("password", f"{len(smpp.password)} characters; SMPP 3.4 allows at most "
                                  "8 (smpplib would cut it silently)")
    if len(smpp.system_type) > 12:
        section.error("system_type", f"{len(smpp.system_type)} characters; at most 12")
    if smpp.source_addr:
        try:
            sender = sender_id.classify(smpp.source_addr, region)
        except ValueError as exc:
            section.error("source_addr", str(exc))
        else:
            for key, problem in sender_id.contradictions(sender, smpp.source_ton,
                                                         smpp.source_npi).items():
                section.error(key, problem)
            smpp = dataclasses.replace(smpp, source_addr=sender.address)
    section.done()
    return smpp


def _read_retention(section: Section) -> RetentionConfig:
    """Each kind at least a week (a reply counts for the report within a week of its text),
    the webhooks' deliveries at least a day."""
    defaults = RetentionConfig()
    week = 7 * 86400.0
    retention = RetentionConfig(
        calls=section.duration("calls", defaults.calls, minimum=week),
        receipts=section.duration("receipts", defaults.receipts, minimum=week),
        replies=section.duration("replies", defaults.replies, minimum=week),
        webhooks=section.duration("webhooks", defaults.webhooks, minimum=86400.0),
        outreach=section.duration("outreach", defaults.outreach, minimum=week),
    )
    section.done()
    return retention


def _read_daemon(section: Section) -> DaemonConfig:
    name = section.str("name", "") or None
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        section.error("name", "use 1-64 letters, digits, '_', '.', '@' or '-' (or leave it "
                              "out: the daemon is then named by its process, PID@HOST)")
    section.done()
    return DaemonConfig(name=name)


def _read_outbox(section: Section) -> OutboxConfig:
    outbox = OutboxConfig(
        max_age=section.duration("max_age", 15 * 60.0, minimum=1),
        max_attempts=section.int("max_attempts", 8, minimum=1, maximum=100),
        retry_min=section.duration("retry_min", 2.0, minimum=0.01),
        retry_max=section.duration("retry_max", 120.0, minimum=0.01),
        after_crash=section.choice("after_crash", "resend", ("resend", "drop")),
    )
    section.done()
    return outbox


def _read_metrics(section: Section) -> MetricsConfig:
    enabled = section.bool("enabled", False)
    listen = section.str("listen", MetricsConfig().listen)
    section.done()
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        section.error("listen", str(exc))
        return MetricsConfig(enabled=enabled)
    return MetricsConfig(enabled=enabled, host=host, port=port)


def _read_caps(section: Section) -> CapsConfig:
    problems = len(section.reader.problems)
    caps = CapsConfig(
        per_prefix_hour=section.int("per_prefix_hour", 20, minimum=1),
        prefix_digits=section.int("prefix_digits", 7, minimum=1, maximum=15),
        per_hour=section.int("per_hour", 200, minimum=1),
        per_day=section.int("per_day", 1000, minimum=1),
    )
    # compared only when both are as written: a refused value stands in as its default,
    # and a complaint about that default would name a number that is not in the file
    if len(section.reader.problems) == problems and caps.per_day < caps.per_hour:
        section.error("per_day", f"{caps.per_day} is below per_hour ({caps.per_hour}); raise "
                                 "it or lower per_hour")
    section.done()
    return caps


def _read_policy(section: Section, smpp: SmppConfig) -> PolicyConfig:
    countries = tuple(code.upper() for code in section.str_list("allowed_countries"))
    for code in countries:
        if code not in phonenumbers.SUPPORTED_REGIONS:
            section.error("allowed_countries", f"{code!r} is not a two-letter country code "
                                               "(e.g. GB, IE, FR)")
    prefixes = section.str_list("treat_as_mobile", TEST_MOBILE_RANGES)
    for prefix in prefixes:
        if not re.fullmatch(r"\+\d{2,15}", prefix):
            section.error("treat_as_mobile", f"{prefix!r} is not an E.164 prefix like "
                                             "+447700900")
    policy = PolicyConfig(
        enabled=section.bool("enabled", True),
        cooldown=section.duration("cooldown", 3600.0),
        allowed_countries=countries,
        fixed_line_or_mobile=section.choice("fixed_line_or_mobile", "text", ("text", "refuse")),
        treat_as_mobile=prefixes,
        caps=_read_caps(section.section("caps")),
        max_parts=section.int("max_parts", 1, minimum=1, maximum=10),
        name_fallback=section.str("name_fallback", "there"),
        caller_name_max=section.int("caller_name_max", 20, minimum=0, maximum=60),
        number_format=section.choice("number_format", "national",
                                     ("national", "international")),
        date_format=section.str("date_format", "%d %b"),
        time_format=section.str("time_format", "%H:%M"),
        weekday_format=section.str("weekday_format", "%A"),
        opt_out_confirmation=section.str("opt_out_confirmation", ""),
    )
    if policy.max_parts > smpp.max_parts:
        section.error("max_parts", f"{policy.max_parts} is more than smpp.max_parts "
                                   f"({smpp.max_parts}), so the sender would refuse such texts")
    if templates.clean_caller_name(policy.name_fallback, 60) != policy.name_fallback and \
            policy.name_fallback:
        section.error("name_fallback", f"{policy.name_fallback!r} must be a plain word or "
                                       "two (letters, spaces, ' - .)")
    if policy.opt_out_confirmation:
        confirmation = sms.plan(policy.opt_out_confirmation)
        if confirmation.parts > 1:
            single = sms.GSM7_SINGLE if confirmation.encoding == sms.GSM7 else sms.UCS2_SINGLE
            section.error("opt_out_confirmation",
                          f"{confirmation.units} {confirmation.encoding.upper()} characters; "
                          f"limit is {single} (one SMS)")
    for key in ("date_format", "time_format", "weekday_format"):
        fmt = getattr(policy, key)
        if "%" not in fmt:
            section.error(key, f"{fmt!r} has no strftime field (e.g. %d %b, %H:%M, %A)")
    section.done()
    return policy


def _read_hours(section: Section, timezone: str) -> BusinessHours | None:
    if not section.data:
        section.done()
        return None
    weekly: list[list[Interval]] = [[] for _ in DAY_NAMES]
    holidays: set[dt.date] = set()
    for key, value in section.items():
        if key == "holidays":
            holidays.update(_read_holidays(section, value))
            continue
        try:
            days = parse_days(key)
        except ValueError as exc:
            section.error(key, f"{exc}, or holidays")
            continue
        if value is False or value is None:
            value = "closed"
        if isinstance(value, list):
            value = ", ".join(str(item) for item in value)
        if not isinstance(value, str):
            section.error(key, f"must be time ranges like \"09:00-17:30\" or closed, got "
                               f"{value!r}")
            continue
        try:
            intervals = parse_intervals(value)
        except ValueError as exc:
            section.error(key, str(exc))
            continue
        for day in days:
            weekly[day].extend(intervals)
    section.reader.known.add(f"{section.schema}.holidays")
    section.done()
    return BusinessHours(timezone=timezone,
                         weekly=tuple(tuple(sorted(day, key=lambda i: i.start))
                                      for day in weekly),
                         holidays=frozenset(holidays))


def _read_holidays(section: Section, value: Any) -> Iterator[dt.date]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dt.date) and not isinstance(item, dt.datetime):
            yield item
            continue
        try:
            yield dt.date.fromisoformat(str(item))
        except ValueError:
            section.error("holidays", f"{item!r} is not a date like 2025-12-25")


def _read_triggers(section: Section, texts: set[str]) -> frozenset[Outcome]:
    """The outcomes named; without `triggers`, those with a text (all usual ones for `default`)."""
    if not section.has("triggers"):
        section.raw("triggers")
        if "default" in texts:
            return frozenset(DEFAULT_TRIGGERS)
        return frozenset(outcome for outcome in MISSED_OUTCOMES if str(outcome) in texts)
    outcomes: set[Outcome] = set()
    for word in section.str_list("triggers"):
        if word in TRIGGER_WORDS:
            outcomes.update(TRIGGER_WORDS[word])
        elif word in {str(outcome) for outcome in MISSED_OUTCOMES}:
            outcomes.add(Outcome(word))
        else:
            choices = sorted({*TRIGGER_WORDS, *(str(o) for o in MISSED_OUTCOMES)})
            section.error("triggers", f"{word!r} is not one of {', '.join(choices)}")
    return frozenset(outcomes)


def _read_texts(section: Section) -> dict[str, str]:
    texts: dict[str, str] = {}
    for key, value in section.items():
        if key not in TEMPLATE_KEYS:
            section.error(key, f"not a template name; use one of {', '.join(TEMPLATE_KEYS)}")
        elif not isinstance(value, str) or not value.strip():
            section.error(key, "must be the text to send")
        else:
            texts[key] = value.strip()
    return texts


def _read_group(reader: Reader, name: str, value: Any, defaults: Config,
                smpp: SmppConfig) -> GroupConfig:
    section = reader.mapping(value, f"groups.{name}", "groups.*")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name):
        reader.error(f"groups.{name}", "group names use 1-40 letters, digits, '_', '.' or '-'")
    timezone = section.str("timezone", defaults.timezone)
    if not _is_zone(timezone):
        section.error("timezone", f"{timezone!r} is not an IANA time zone (e.g. Europe/London)")
        timezone = "UTC"
    dids = read_dids(section, "dids")
    variables: dict[str, str] = {}
    for key, text in section.section("variables").items():
        if not key.isidentifier() or key in templates.BUILTIN_VARIABLES:
            section.error(f"variables.{key}", "choose another name: variables are plain words "
                                              "and must not shadow "
                                              f"{', '.join(templates.BUILTIN_VARIABLES)}")
        elif not isinstance(text, str | int | float) or isinstance(text, bool):
            section.error(f"variables.{key}", "must be text")
        else:
            variables[key] = str(text)
    variants = {key: _read_variants(reader, value, f"groups.{name}.variants.{key}")
                for key, value in section.section("variants").items()}
    for key in variants:
        if key not in TEMPLATE_KEYS:
            section.error(f"variants.{key}", "not a template name; use one of "
                                             f"{', '.join(TEMPLATE_KEYS)}")
    texts = _read_texts(section.section("templates"))
    followups = read_followups(section)
    group = GroupConfig(
        name=name,
        display_name=section.str("display_name", name),
        timezone=timezone,
        enabled=section.bool("enabled", True),
        queues=section.str_list("queues"),
        dids=dids,
        triggers=_read_triggers(section, {*texts, *variants}),
        templates=texts,
        variants=variants,
        variables=variables,
        hours=_read_hours(section.section("hours"), timezone),
        outside_hours=section.choice("outside_hours", "defer", ("defer", "drop", "send")),
        max_parts=section.int("max_parts", defaults.policy.max_parts, minimum=1, maximum=10),
        notify_staff=_read_staff_numbers(section, defaults.region,
                                         defaults.policy.treat_as_mobile),
        followups=tuple(step for step in followups if step.enabled),
        callback=read_callback(section),
    )
    if group.max_parts > smpp.max_parts:
        section.error("max_parts", f"{group.max_parts} is more than smpp.max_parts "
                                   f"({smpp.max_parts}), so the sender would refuse such texts")
    _check_group_texts(section, group, defaults)
    check_followup_texts(section, followups,
                         set(templates.BUILTIN_VARIABLES) | set(group.variables),
                         templates.worst_case_values(group, defaults.policy, defaults.company),
                         group.max_parts, group.name)
    section.done()
    return group


def _read_staff_numbers(section: Section, region: str,
                        treat_as_mobile: tuple[str, ...]) -> tuple[str, ...]:
    """`notify_staff`: staff mobiles in any form the region understands, kept as E.164."""
    numbers: list[str] = []
    for index, number in enumerate(section.str_list("notify_staff")):
        try:
            numbers.append(mobile_number(number, region, treat_as_mobile))
        except ValueError as exc:
            section.error(f"notify_staff[{index}]", str(exc))
    return tuple(numbers)


_PHONE_TEXT = re.compile(r"\+?[\d\s().-]+")
_MOBILE_TYPES = (phonenumbers.PhoneNumberType.MOBILE,
                 phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)


def mobile_number(text: str, region: str, treat_as_mobile: tuple[str, ...] = ()) -> str:
    """A number texts go to, as E.164; ValueError says why not. Letters are refused, not
    read as a keypad would ('900abc' would silently become another number)."""
    if re.search(r"[^\W\d_]", text):
        raise ValueError(f"{text!r} has letters; write the digits (e.g. +447700900456)")
    parsed = templates.parse_number(text, region) if _PHONE_TEXT.fullmatch(text) else None
    if parsed is None:
        raise ValueError(f"{text!r} is not a valid phone number (e.g. +447700900456, or "
                         f"national in region {region})")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if any(e164.startswith(prefix) for prefix in treat_as_mobile):
        return e164
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError(f"{text!r} is not a valid phone number (e.g. +447700900456, or "
                         f"national in region {region})")
    if phonenumbers.number_type(parsed) not in _MOBILE_TYPES:
        raise ValueError(f"{text!r} is not a mobile number, so it cannot get texts")
    return e164


def read_dids(section: Section, key: str) -> tuple[str, ...]:
    """DIDs as Asterisk shows them: digits only (spaces, '+', brackets and dashes dropped), so
    `+44 20 7123 0009` matches the 442071230009 the PBX reports."""
    dids = []
    for index, did in enumerate(section.str_list(key)):
        digits = re.sub(r"[\s+().-]", "", did)
        if not digits.isdigit():
            section.error(f"{key}[{index}]", f"{did!r} is not a number (write it as the PBX "
                                             "shows it, e.g. 442071230000)")
        else:
            dids.append(digits)
    return tuple(dids)


def _read_variants(reader: Reader, value: Any, path: str) -> dict[str, str]:
    section = reader.mapping(value, path, "groups.*.variants.*")
    texts: dict[str, str] = {}
    for name, text in section.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,20}", name):
            section.error(name, "variant names use 1-20 letters, digits, '_' or '-'")
        elif not isinstance(text, str) or not text.strip():
            section.error(name, "must be the text to send")
        else:
            texts[name] = text.strip()
    if len(section.data) < 2:
        reader.error(path, "an A/B test needs at least two variants (name: text)")
    return texts


def check_followup_texts(section: Section, steps: tuple[FollowupStep, ...],
                         known: set[str], worst: dict[str, str], max_parts: int,
                         group: str) -> None:
    """Follow-up templates (`config.outreach`) are checked here as the others: variables
    and worst-case length."""
    for index, step in enumerate(steps):
        where = f"followups[{index}].template"
        if not step.template:
            continue
        problem = templates.template_problem(step.template, known, worst, max_parts, group)
        if problem:
            section.error(where, problem)


def _check_group_texts(section: Section, group: GroupConfig, defaults: Config) -> None:
    for key in set(group.templates) & set(group.variants):
        section.error(f"templates.{key}", f"is also given in variants.{key}; give the text in "
                                          "one place (variants hold every version)")
    known = set(templates.BUILTIN_VARIABLES) | set(group.variables)
    worst = templates.worst_case_values(group, defaults.policy, defaults.company)
    located = [(f"templates.{key}", text) for key, text in group.templates.items()]
    located += [(f"variants.{key}.{variant}", text)
                for key, texts in group.variants.items() for variant, text in texts.items()]
    for where, text in located:
        problem = templates.template_problem(text, known, worst, group.max_parts, group.name)
        if problem:
            section.error(where, problem)
    silent = [str(outcome) for outcome in sorted(group.triggers)
              if group.template_key(outcome, after_hours=False) is None]
    if silent:
        section.error("triggers", f"{', '.join(silent)} has no text; add templates.default or "
                                  f"one template per outcome (templates.{silent[0]}: …)")


def _read_groups(reader: Reader, section: Section, defaults: Config,
                 smpp: SmppConfig) -> tuple[GroupConfig, ...]:
    groups = []
    for name, value in section.items():
        groups.append(_read_group(reader, name, value, defaults, smpp))
    if not section.has_any():
        # No groups configured: text every usual missed outcome with a neutral text, so a
        # minimal config (inbound + region) already does the obvious thing.
        groups.append(_read_group(reader, DEFAULT_GROUP, {"templates": {
            "default": BUILTIN_TEMPLATE}}, defaults, smpp))
    for attribute, what in (("queues", "queue"), ("dids", "DID")):
        owners: dict[str, str] = {}
        for group in groups:
            for item in getattr(group, attribute):
                if item in owners:
                    reader.error(f"groups.{group.name}.{attribute}",
                                 f"{what} {item} is also in group {owners[item]}; a call must "
                                 "match one group only")
                owners[item] = group.name
    return tuple(groups)


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ValueError, OSError, KeyError):
        return False
    return True


def load_config(path: str | Path) -> Config:
    """Read, validate and return the config; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}:{where}: not valid YAML: "
                           f"{getattr(exc, 'problem', None) or exc}"]) from exc
    return config_from_dict(data, source=str(path), base_dir=path.parent, path=path)


def reload_config(old: Config, path: str | Path) -> Config:
    """The config for SIGHUP: the new file, or ConfigError (the caller keeps `old`).

    Settings the running daemon cannot change in place (the database file) are refused too,
    so a reload never half-applies.
    """
    new = load_config(path)
    log_warnings(new)
    problems = []
    if new.store.address != old.store.address:
        key = "store.url" if new.store.url or old.store.url else "store.path"
        problems.append(f"{new.source}: {key}: changed from {old.store.address} to "
                        f"{new.store.address}; a new database needs a restart "
                        "(systemctl restart mcdaemon)")
    if problems:
        raise ConfigError(problems)
    return new


def config_from_dict(data: Any, *, source: str = "config", base_dir: Path | None = None,
                     path: Path | None = None) -> Config:
    config, _known = _build(data, source=source, base_dir=base_dir, path=path)
    return config


def known_keys(data: Any, *, source: str = "config", base_dir: Path | None = None) -> set[str]:
    """The schema path of every setting the loader reads (`ami[].host`, `groups.*.hours`)."""
    _config, known = _build(data, source=source, base_dir=base_dir, path=None)
    return known


def _build(data: Any, *, source: str, base_dir: Path | None,
           path: Path | None) -> tuple[Config, set[str]]:
    problems: list[str] = []
    reader = Reader(source, problems, base_dir)
    top = reader.mapping(data, "")
    region = top.str("region", "GB").upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        top.error("region", f"{region!r} is not a two-letter country code phonenumbers knows "
                            "(e.g. GB, US, DE)")
    timezone = top.str("timezone", "UTC")
    if not _is_zone(timezone):
        top.error("timezone", f"{timezone!r} is not an IANA time zone (e.g. Europe/London)")
        timezone = "UTC"
    ami = _read_ami(reader, top.raw("ami"))
    inbound_section = top.section("inbound")
    ami = _one_pbx_queue_log(inbound_section, ami)
    inbound = _read_inbound(inbound_section)
    store = _read_store(top.section("store"))
    daemon = _read_daemon(top.section("daemon"))
    smpp = _read_smpp(top.section("smpp"), region)
    outbox = _read_outbox(top.section("outbox"))
    company = top.str("company", "")
    log_full_numbers = top.bool("log_full_numbers", False)
    policy = _read_policy(top.section("policy"), smpp)
    if store.retention.calls < policy.cooldown:
        reader.error("store.retention.calls", f"{store.retention.calls / 86400:g} days is "
                     f"shorter than policy.cooldown ({policy.cooldown / 86400:g} days): a "
                     "caller's last text would be forgotten before the cooldown ends")
    metrics = _read_metrics(top.section("metrics"))
    contacts = read_contacts(top.section("contacts"))
    agi, agi_warnings = read_agi(top.section("agi"))
    partial = Config(source=source, region=region, timezone=timezone, company=company,
                     policy=policy, smpp=smpp)
    groups = _read_groups(reader, top.section("groups"), partial, smpp)
    webhooks, webhook_warnings = read_webhooks(reader, top.raw("webhooks"),
                                               {group.name for group in groups})
    callbacks = read_callbacks(reader, top.section("callbacks"), [pbx.name for pbx in ami],
                               [group.name for group in groups if group.callback])
    top.done()
    if problems:
        raise ConfigError(problems)
    warnings: list[str] = []
    if path is not None and "inline-secret" in reader.warnings:
        warnings.extend(_permission_warnings(path))
    for key, secret_path in reader.secret_files:
        warnings.extend(f"{source}: {warning}"
                        for warning in _secret_file_warnings(key, secret_path))
    if metrics.enabled and not metrics.loopback:
        warnings.append(f"{source}: metrics.listen: {metrics.listen} is not a loopback "
                        "address: anyone who can reach it reads the metrics (there is no "
                        "authentication); prefer 127.0.0.1 with the scraper on this host, or "
                        "firewall the port")
    warnings.extend(webhook_warnings)
    warnings.extend(f"{source}: {warning}" for warning in agi_warnings)
    config = Config(source=source, region=region, timezone=timezone, ami=ami, inbound=inbound,
                    store=store, daemon=daemon, smpp=smpp, outbox=outbox,
                    raw=data if isinstance(data, dict) else {}, warnings=tuple(warnings),
                    company=company, policy=policy, groups=groups,
                    log_full_numbers=log_full_numbers, metrics=metrics, webhooks=webhooks,
                    contacts=contacts, agi=agi, callbacks=callbacks)
    return config, reader.known


#: libpq's sslmode values (`store.sslmode`), passed to asyncpg as its `ssl`
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _read_store(section: Section) -> StoreConfig:
    url = section.str("url", "")
    path = section.str("path", DEFAULT_STORE_PATH)
    password = section.secret("password")
    sslmode = section.str("sslmode", "")
    retention = _read_retention(section.section("retention"))
    outage_max = section.duration("outage_max", 300.0, minimum=1)
    if url:
        if section.data.get("path"):
            section.error("url", "give only one of store.path (SQLite, one host) and "
                                 "store.url (PostgreSQL, shared by several daemons)")
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
            section.error("url", f"{url!r} is not a PostgreSQL URL (postgresql://USER@HOST:"
                                 "5432/DATABASE)")
        elif parts.password is not None:
            section.error("url", "holds a password: give it by store.password_env or "
                                 "store.password_file instead, so it never reaches a log")
        if sslmode and sslmode not in SSL_MODES:
            section.error("sslmode", f"{sslmode!r} is not one of {', '.join(SSL_MODES)}")
    else:
        for key in ("password", "password_env", "password_file", "sslmode"):
            if section.data.get(key):
                section.error(key, "only with store.url (PostgreSQL); the SQLite store "
                                   "(store.path) has no password")
    section.done()
    return StoreConfig(path=path, url=url, password=password, sslmode=sslmode,
                       retention=retention, outage_max=outage_max)


def runtime_problems(config: Config) -> list[str]:
    """What `run` needs beyond a valid file, for `check-config` and `run` to refuse early: a
    PBX to watch, an SMSC to send through (other commands read partial configs), the store's
    directory and file usable by this user (run check-config as the daemon's user: root may
    write anywhere)."""
    problems = []
    if not config.ami:
        problems.append(f"{config.source}: ami: missing: the PBX(s) to watch (name, host, "
                        "port, username, secret)")
    smpp = config.raw.get("smpp")
    if not isinstance(smpp, dict) or not smpp:
        problems.append(f"{config.source}: smpp: missing: the SMSC to send through (host, "
                        "port, system_id, password)")
    elif "host" not in smpp:
        problems.append(f"{config.source}: smpp.host: missing: the SMSC's address (the "
                        "daemon would try 127.0.0.1)")
    if config.store.url:  # checked by connecting (check-config), not here
        return problems
    where = f"{config.source}: store.path"
    path = Path(config.store.path)
    if path.exists():
        if not path.is_file():
            problems.append(f"{where}: {path} is not a file (name the database file, e.g. "
                            f"{DEFAULT_STORE_PATH})")
        elif not os.access(path, os.R_OK | os.W_OK):
            problems.append(f"{where}: {path} is not readable and writable by this user "
                            f"(check its owner and mode: chown mcdaemon {path})")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not problems:
        if not ancestor.is_dir():
            problems.append(f"{where}: {ancestor} is a file, not a directory" + (
                "" if ancestor == path.parent else f", so {path.parent} cannot be created")
                + f" (store.path names the database file, e.g. {DEFAULT_STORE_PATH})")
        elif not os.access(ancestor, os.W_OK | os.X_OK):
            what = ("the directory" if ancestor == path.parent
                    else f"{path.parent} does not exist and its parent")
            problems.append(f"{where}: {what} {ancestor} is not writable by this user; "
                            "the store and its -wal and -shm files are created there (create "
                            f"it for the daemon's user: install -d -o mcdaemon {path.parent})")
    return problems


def _permission_warnings(path: Path) -> Iterator[str]:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWOTH):
        yield (f"{path}: holds secrets but is readable by other users "
               f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}, or move the secrets to "
               "secret_file:/secret_env:")


def _secret_file_warnings(key: str, path: Path) -> Iterator[str]:
    """A secret file others can read is a leaked secret. Its group may read it: that is how
    the daemon's user is usually given access (root:mcdaemon, mode 640)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        yield (f"{key}: {path} is readable by other users (mode {stat.S_IMODE(mode):o}); run: "
               f"chmod 600 {path} (or 640 with the daemon's group)")


def log_warnings(config: Config) -> None:
    """Each warning of a config as a log line: a bare print would break `--log-format json`
    and would not reach journald with its priority."""
    for warning in config.warnings:
        log.warning("config warning", source=config.source, warning=warning)
