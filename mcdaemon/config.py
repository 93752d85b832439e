"""Load and validate the YAML configuration into frozen dataclasses.

Every problem is collected (not only the first) and names the file, the key path and the fix,
e.g. ``config.yaml: smpp.password: 9 characters, smpplib sends at most 8``. Unknown keys are
errors, so a typo never passes silently. The loaded `Config` is the only global state the
daemon has; it is passed down explicitly. `config.example.yaml` documents every key; a test
checks that every key the loader reads (`Reader.known`) appears there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import phonenumbers
import structlog
import yaml

from mcdaemon.agi_config import AgiConfig, read_agi
from mcdaemon.contacts_config import ContactsConfig, read_contacts
from mcdaemon.core import sender_id, sms, templates
from mcdaemon.core.hours import DAY_NAMES, BusinessHours, Interval, parse_days, parse_intervals
from mcdaemon.core.listen import is_loopback, listen_text, parse_listen
from mcdaemon.core.records import MISSED_OUTCOMES, Outcome
from mcdaemon.outreach_config import (
    CallbackConfig,
    CallbacksConfig,
    FollowupStep,
    check_followup_texts,
    read_callback,
    read_callbacks,
    read_followups,
)
from mcdaemon.webhook_config import WebhookEndpoint, read_webhooks

log = structlog.get_logger(__name__)

T = TypeVar("T")
N = TypeVar("N", int, float)

# Builtin names, for annotations inside `Section`, whose getters are named after them.
_Str = str
_Int = int
_Float = float
_Bool = bool

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*"
                       r"(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*"
                       r"(?:(\d+(?:\.\d+)?)\s*ms)?\s*$")


class ConfigError(Exception):
    """One or more problems in a config file; `problems` lists each, path and fix included."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `1.5`, `"15m"`, `"1h30m"`, `"2d"`, `"250ms"`; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration, not true/false")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if text.endswith("ms"):
            number = text[:-2].strip()
            if re.fullmatch(r"\d+(?:\.\d+)?", number):
                return float(number) / 1000
        match = _DURATION.match(text)
        if match and any(match.groups()):
            d, h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
            return d * 86400 + h * 3600 + m * 60 + s + ms / 1000
    raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 15m, 1h, 2d)")


class Reader:
    """Walks a YAML mapping, collecting problems with their key paths and spotting unknown keys.

    `known` collects the schema path of every key the loader asks for (`ami[].host`,
    `groups.*.hours`), present or not: the list of settings this version understands.
    """

    def __init__(self, source: str, problems: list[str], base_dir: Path | None = None) -> None:
        self.source = source
        self.problems = problems
        self.base_dir = base_dir or Path.cwd()
        self.warnings: list[str] = []
        self.secret_files: list[tuple[str, Path]] = []  # (key path, file) of each *_file read
        self.known: set[str] = set()

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}" if path else
                             f"{self.source}: {message}")

    def mapping(self, value: Any, path: str, schema: str | None = None) -> Section:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping of keys to values, got {_kind(value)}")
            value = {}
        return Section(self, value, path, path if schema is None else schema)


class Section:
    """One mapping of the config. Read keys with the typed getters, then call `done()`."""

    def __init__(self, reader: Reader, data: dict[Any, Any], path: _Str,
                 schema: _Str | None = None) -> None:
        self.reader = reader
        self.data = data
        self.path = path
        self.schema = path if schema is None else schema
        self._seen: set[_Str] = set()

    def key_path(self, key: _Str) -> _Str:
        return f"{self.path}.{key}" if self.path else key

    def _mark(self, key: _Str) -> None:
        self._seen.add(key)
        self.reader.known.add(f"{self.schema}.{key}" if self.schema else key)

    def has(self, key: _Str) -> _Bool:
        return key in self.data

    def raw(self, key: _Str, default: Any = None) -> Any:
        self._mark(key)
        return self.data.get(key, default)

    def has_any(self) -> _Bool:
        return bool(self.data)

    def items(self) -> list[tuple[_Str, Any]]:
        """Every entry of a mapping whose keys are names the user chooses (groups, templates)."""
        self._seen.update(str(key) for key in self.data)
        return [(str(key), value) for key, value in self.data.items()]

    def error(self, key: _Str, message: _Str) -> None:
        self.reader.error(self.key_path(key), message)

    def _typed(self, key: _Str, default: T, check: Callable[[Any], T], what: _Str) -> T:
        self._mark(key)
        if key not in self.data or self.data[key] is None:
            return default
        try:
            return check(self.data[key])
        except (TypeError, ValueError) as exc:
            detail = str(exc) if str(exc) else f"must be {what}"
            given = repr(self.data[key])
            # said once: "'1 hour' is not a duration (...)", not "...; got '1 hour'" again
            self.error(key, detail if given in detail else f"{detail}; got {given}")
            return default

    def str(self, key: _Str, default: _Str = "", *, required: _Bool = False) -> _Str:
        if required and not self.data.get(key):
            self._mark(key)
            self.error(key, "is required")
            return default
        return self._typed(key, default, _as_str, "text")

    def opt_str(self, key: _Str) -> _Str | None:
        value = self._typed(key, "", _as_str, "text")
        return value or None

    def int(self, key: _Str, default: _Int, *, minimum: _Int | None = None,
            maximum: _Int | None = None) -> _Int:
        value = self._typed(key, default, _as_int, "a whole number")
        return self._bounded(key, value, default, minimum, maximum)

    def opt_int(self, key: _Str, *, minimum: _Int | None = None,
                maximum: _Int | None = None) -> _Int | None:
        value = self._typed(key, None, _as_int, "a whole number")
        if value is None:
            return None
        return self._bounded(key, value, value, minimum, maximum)

    def float(self, key: _Str, default: _Float, *, minimum: _Float | None = None,
              maximum: _Float | None = None) -> _Float:
        value = self._typed(key, default, _as_float, "a number")
        return self._bounded(key, value, default, minimum, maximum)

    def bool(self, key: _Str, default: _Bool) -> _Bool:
        return self._typed(key, default, _as_bool, "true or false")

    def duration(self, key: _Str, default: _Float, *, minimum: _Float = 0.0) -> _Float:
        value = self._typed(key, default, parse_duration, "a duration")
        return self._bounded(key, value, default, minimum, None)

    def str_list(self, key: _Str, default: tuple[_Str, ...] = ()) -> tuple[_Str, ...]:
        return self._typed(key, default, _as_str_list, "a list of text values")

    def choice(self, key: _Str, default: _Str, choices: tuple[_Str, ...]) -> _Str:
        value = self.str(key, default)
        if value not in choices:
            self.error(key, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def section(self, key: _Str) -> Section:
        self._mark(key)
        return self.reader.mapping(self.data.get(key), self.key_path(key),
                                   f"{self.schema}.{key}" if self.schema else key)

    def secret(self, key: _Str, *, required: _Bool = False) -> _Str:
        """A secret given inline, as `KEY_env: VAR` or as `KEY_file: PATH`."""
        sources = [k for k in (key, f"{key}_env", f"{key}_file") if self.data.get(k)]
        for k in (key, f"{key}_env", f"{key}_file"):
            self._mark(k)
        if len(sources) > 1:
            self.error(key, f"give only one of {', '.join(sources)}")
        if not sources:
            if required:
                self.error(key, f"is required (inline, or {key}_env: VARIABLE, or "
                                f"{key}_file: PATH)")
            return ""
        chosen = sources[0]
        value = self.data[chosen]
        if not isinstance(value, str | int):
            self.error(chosen, "must be text")
            return ""
        value = str(value)
        if chosen == key:
            self.reader.warnings.append("inline-secret")
            return value
        if chosen.endswith("_env"):
            if value not in os.environ:
                self.error(chosen, f"environment variable {value} is not set")
                return ""
            return os.environ[value]
        secret_path = Path(value)
        if not secret_path.is_absolute():
            secret_path = self.reader.base_dir / secret_path
        try:
            secret = secret_path.read_text(encoding="utf-8").strip()
            self.reader.secret_files.append((self.key_path(chosen), secret_path))
            return secret
        except OSError as exc:
            self.error(chosen, f"cannot read {secret_path}: {exc.strerror}")
            return ""

    def done(self) -> None:
        """Report keys nobody read: they are typos or settings this version does not know."""
        for key in self.data:
            if str(key) not in self._seen:
                self.reader.error(self.key_path(str(key)),
                                  "unknown key (a typo? see config.example.yaml)")

    def _bounded(self, key: _Str, value: N, default: N, minimum: N | None,
                 maximum: N | None) -> N:
        if minimum is not None and value < minimum:
            self.error(key, f"{value} is below the minimum {minimum}")
            return default
        if maximum is not None and value > maximum:
            self.error(key, f"{value} is above the maximum {maximum}")
            return default
        return value


def _kind(value: Any) -> str:
    return {list: "a list", str: "text", int: "a number", float: "a number",
            bool: "true/false"}.get(type(value), type(value).__name__)


def _as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be text")
    return str(value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return float(value)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _as_str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise ValueError("must be a list of text values")
    return tuple(str(v) for v in value)


# --------------------------------------------------------------------------- sections

DEFAULT_INBOUND_CONTEXTS = ("from-trunk", "from-pstn")
DEFAULT_STORE_PATH = "/var/lib/mcdaemon/mcdaemon.db"

#: Outcomes a group texts when it names no `triggers`: every missed call where the caller got
#: nothing (a caller who left a voicemail or asked for a call-back has been served).
DEFAULT_TRIGGERS = (Outcome.QUEUE_ABANDON, Outcome.QUEUE_TIMEOUT, Outcome.IVR_ABANDON,
                    Outcome.RING_NO_ANSWER, Outcome.VOICEMAIL_NO_MESSAGE, Outcome.AFTER_HOURS)

#: Words a contact centre uses for a set of outcomes, accepted in `triggers`.
TRIGGER_WORDS: dict[str, tuple[Outcome, ...]] = {
    "abandon": (Outcome.QUEUE_ABANDON, Outcome.QUEUE_TIMEOUT, Outcome.IVR_ABANDON),
    "voicemail": (Outcome.VOICEMAIL_NO_MESSAGE, Outcome.VOICEMAIL_LEFT),
    "missed": tuple(sorted(MISSED_OUTCOMES)),
}

#: Template keys: one per missed outcome, plus `default` (any outcome without its own).
#: `after_hours` is also used for any triggered call that ends outside the group's hours.
TEMPLATE_KEYS = ("default", *sorted(str(outcome) for outcome in MISSED_OUTCOMES))

DEFAULT_GROUP = "default"
#: Ofcom's mobile range reserved for drama and testing (07700 900000-900999). phonenumbers
#: calls it invalid; no real subscriber has such a number, so taking it as a mobile costs
#: nothing in production and lets test calls (and the demo) behave like mobile callers.
TEST_MOBILE_RANGES = ("+447700900",)
#: the text of the implicit `default` group when the config names no groups
BUILTIN_TEMPLATE = ("Sorry we missed your call. We will call you back soon - or reply to "
                    "this text.")


@dataclass(frozen=True, slots=True)
class AmiConfig:
    """One PBX's manager interface."""

    name: str
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = ""
    secret: str = field(default="", repr=False)
    ping_interval: float = 5.0  # seconds between Pings
    ping_timeout: float = 3.0  # a Ping unanswered this long means the link is dead
    connect_timeout: float = 5.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    event_filter: bool = True  # ask Asterisk to send only what the tracker reads


@dataclass(frozen=True, slots=True)
class InboundConfig:
    """Which channels are inbound calls and which branches mean what."""

    contexts: tuple[str, ...] = DEFAULT_INBOUND_CONTEXTS
    after_hours_contexts: tuple[str, ...] = ()
    ignore_contexts: tuple[str, ...] = ()
    ignore_dids: tuple[str, ...] = ()  # digits only, as groups.*.dids
    voicemail_contexts: tuple[str, ...] = ()
    call_ttl: float = 4 * 3600.0  # calls with no Hangup after this are evicted


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str = DEFAULT_STORE_PATH


#: the longest SMPP 3.4 address (source_addr, destination_addr), in characters: a C-octet
#: string of at most 21 octets, its NUL included. Here rather than in smpp.py, which imports
#: this module.
MAX_ADDRESS = 20


@dataclass(frozen=True, slots=True)
class SmppConfig:
    """The bind to the carrier's SMSC."""

    host: str = "127.0.0.1"
    port: int = 2775
    system_id: str = ""
    password: str = field(default="", repr=False)
    system_type: str = ""
    bind_mode: str = "transceiver"  # or "transmitter_receiver" (two binds)
    source_addr: str = ""
    source_ton: int | None = None  # None: derived from source_addr (alphanumeric/international)
    source_npi: int | None = None
    window: int = 10  # submits outstanding at once
    throughput: float = 10.0  # submits per second at most
    enquire_link: float = 30.0
    response_timeout: float = 10.0  # a submit unanswered this long is retried
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    registered_delivery: bool = True
    receipt_timeout: float = 48 * 3600.0
    data_coding_gsm: int = 0  # data_coding sent with GSM-7 texts (0 = SMSC default alphabet)
    max_parts: int = 3  # a text longer than this many SMS is refused


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    max_age: float = 15 * 60.0  # texts not submitted this long after the call ended expire
    max_attempts: int = 8
    retry_min: float = 2.0
    retry_max: float = 120.0
    after_crash: str = "resend"  # what to do with a text found in `sending`: resend | drop


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus metrics over HTTP (`mcdaemon.adapters.metrics`); off unless `enabled`."""

    enabled: bool = False
    host: str = "127.0.0.1"  # the address to listen on (an IP address or a host name)
    port: int = 9464  # 0 (tests only, not accepted in a config file): any free port

    @property
    def listen(self) -> str:
        """`host:port` as written in the config (IPv6 addresses in brackets)."""
        return listen_text(self.host, self.port)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


@dataclass(frozen=True, slots=True)
class CapsConfig:
    """The fraud shield's counters (SMS pumping: bots calling to make us text premium ranges)."""

    per_prefix_hour: int = 20  # texts per hour to numbers sharing the first `prefix_digits`
    prefix_digits: int = 7  # digits of the E.164 number (country code included)
    per_hour: int = 200  # texts per hour, every destination
    per_day: int = 1000


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Rules shared by every group, and how template values are written."""

    enabled: bool = True  # the switch at load; `mcdaemon disable` overrides it at run time
    cooldown: float = 3600.0  # at most one text per caller per this long
    allowed_countries: tuple[str, ...] = ()  # ISO codes; empty means the `region` only
    fixed_line_or_mobile: str = "text"  # numbers that may be either (US, CA…): text | refuse
    treat_as_mobile: tuple[str, ...] = TEST_MOBILE_RANGES  # E.164 prefixes taken as mobiles
    caps: CapsConfig = field(default_factory=CapsConfig)
    max_parts: int = 1  # SMS per text; the worst case of every template must fit
    name_fallback: str = "there"  # {caller_name} when the call has no usable name
    caller_name_max: int = 20
    number_format: str = "national"  # {caller} and {did}: national | international
    date_format: str = "%d %b"
    time_format: str = "%H:%M"
    weekday_format: str = "%A"
    opt_out_confirmation: str = ""  # texted once to a number that opts out ("" = none)


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """A distribution group: which calls it takes, what it texts and when."""

    name: str
    display_name: str
    timezone: str
    enabled: bool = True
    queues: tuple[str, ...] = ()
    dids: tuple[str, ...] = ()  # digits only, as Asterisk shows DIDs (E.164 without '+')
    triggers: frozenset[Outcome] = frozenset(DEFAULT_TRIGGERS)
    templates: dict[str, str] = field(default_factory=dict)
    variants: dict[str, dict[str, str]] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    hours: BusinessHours | None = None
    outside_hours: str = "defer"  # defer | drop | send
    max_parts: int = 1
    notify_staff: tuple[str, ...] = ()  # E.164 numbers texted a note about each missed call
    followups: tuple[FollowupStep, ...] = ()  # texts after the first (mcdaemon.core.followups)
    callback: CallbackConfig | None = None  # call-back campaign (mcdaemon.outreach.campaigns)

    def template_key(self, outcome: Outcome, after_hours: bool) -> str | None:
        """Which template a call gets: after-hours, its outcome's, or the group default."""
        keys = ([str(Outcome.AFTER_HOURS)] if after_hours else []) + [str(outcome), "default"]
        return next((key for key in keys if key in self.templates or key in self.variants),
                    None)

    def texts(self, key: str) -> dict[str | None, str]:
        """Variant name -> text for a template key (one entry named None without variants)."""
        if key in self.variants:
            return {name: text for name, text in self.variants[key].items()}
        return {None: self.templates[key]}


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    region: str = "GB"
    timezone: str = "UTC"
    ami: tuple[AmiConfig, ...] = ()
    inbound: InboundConfig = field(default_factory=InboundConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    smpp: SmppConfig = field(default_factory=SmppConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    warnings: tuple[str, ...] = ()
    company: str = ""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    groups: tuple[GroupConfig, ...] = ()
    log_full_numbers: bool = False  # logs show phone numbers whole instead of ****123
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    webhooks: tuple[WebhookEndpoint, ...] = ()  # event receivers (mcdaemon.webhooks.delivery)
    contacts: ContactsConfig = field(default_factory=ContactsConfig)  # the name lookup
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)  # call-backs
    agi: AgiConfig = field(default_factory=AgiConfig)  # FastAGI hooks (mcdaemon.adapters.agi)

    def group(self, name: str) -> GroupConfig | None:
        return next((group for group in self.groups if group.name == name), None)

    @property
    def allowed_countries(self) -> tuple[str, ...]:
        return self.policy.allowed_countries or (self.region,)


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
        )
        for key in ("username", "secret"):
            value_text = getattr(pbx, key)
            if any(ch in value_text for ch in "\r\n"):
                section.error(key, "must not contain line breaks")
        section.done()
        pbxs.append(pbx)
    return tuple(pbxs)


def _read_inbound(section: Section) -> InboundConfig:
    inbound = InboundConfig(
        contexts=section.str_list("contexts", DEFAULT_INBOUND_CONTEXTS),
        after_hours_contexts=section.str_list("after_hours_contexts"),
        ignore_contexts=section.str_list("ignore_contexts"),
        ignore_dids=read_dids(section, "ignore_dids"),
        voicemail_contexts=section.str_list("voicemail_contexts"),
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
    if new.store.path != old.store.path:
        problems.append(f"{new.source}: store.path: changed from {old.store.path} to "
                        f"{new.store.path}; a new database needs a restart "
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
    inbound = _read_inbound(top.section("inbound"))
    store_section = top.section("store")
    store = StoreConfig(path=store_section.str("path", DEFAULT_STORE_PATH))
    store_section.done()
    smpp = _read_smpp(top.section("smpp"), region)
    outbox = _read_outbox(top.section("outbox"))
    company = top.str("company", "")
    log_full_numbers = top.bool("log_full_numbers", False)
    policy = _read_policy(top.section("policy"), smpp)
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
                    store=store, smpp=smpp, outbox=outbox,
                    raw=data if isinstance(data, dict) else {}, warnings=tuple(warnings),
                    company=company, policy=policy, groups=groups,
                    log_full_numbers=log_full_numbers, metrics=metrics, webhooks=webhooks,
                    contacts=contacts, agi=agi, callbacks=callbacks)
    return config, reader.known


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
