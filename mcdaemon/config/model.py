"""The loaded configuration: frozen dataclasses and their defaults.

The `Config` is the only global state the daemon has; it is passed down explicitly. Reading
and checking it is `config.load`'s job; the sections that own a feature's settings
(`config.agi`, `config.contacts`, `config.outreach`, `config.webhooks`) give their types here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mcdaemon.config.agi import AgiConfig
from mcdaemon.config.contacts import ContactsConfig
from mcdaemon.config.outreach import (
    CallbackConfig,
    CallbacksConfig,
    FollowupStep,
)
from mcdaemon.config.webhooks import WebhookEndpoint
from mcdaemon.core.hours import BusinessHours
from mcdaemon.core.listen import is_loopback, listen_text
from mcdaemon.core.records import MISSED_OUTCOMES, Outcome

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
    #: this PBX's Asterisk queue_log: its blind windows are backfilled from it (None: off)
    queue_log: str | None = None


@dataclass(frozen=True, slots=True)
class InboundConfig:
    """Which channels are inbound calls and which branches mean what."""

    contexts: tuple[str, ...] = DEFAULT_INBOUND_CONTEXTS
    after_hours_contexts: tuple[str, ...] = ()
    ignore_contexts: tuple[str, ...] = ()
    ignore_dids: tuple[str, ...] = ()  # digits only, as groups.*.dids
    voicemail_contexts: tuple[str, ...] = ()
    #: channel name prefixes of the inbound trunks (PJSIP/carrier): a call in progress at an
    #: AMI connect is adopted when its first channel is on one, wherever its dialplan now is
    trunks: tuple[str, ...] = ()
    call_ttl: float = 4 * 3600.0  # calls with no Hangup after this are evicted


#: how long history is kept by default (store.retention): a year and a month, so a report
#: can compare a month with the same month a year before
DEFAULT_RETENTION = 400 * 86400.0


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """How long each kind of history is kept (seconds), oldest removed first. Opt-outs are
    kept for ever; nothing still pending (a queued text, an undelivered webhook, an open
    call-back campaign) is removed."""

    calls: float = DEFAULT_RETENTION  # calls, their texts (parts, receipts), bookings
    receipts: float = DEFAULT_RETENTION  # delivery receipts, matched or not
    replies: float = DEFAULT_RETENTION  # texts from callers (not opt-outs: kept for ever)
    webhooks: float = 7 * 86400.0  # webhook deliveries made (dead ones: at least 30 days)
    outreach: float = DEFAULT_RETENTION  # follow-up stops, closed call-back campaigns


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """SQLite (`path`, the default) or PostgreSQL (`url`, shared by several daemons)."""

    path: str = DEFAULT_STORE_PATH
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    url: str = ""  # postgresql://user@host:5432/db, without its password
    password: str = field(default="", repr=False)
    sslmode: str = ""  # libpq's sslmode for asyncpg's `ssl`; empty: asyncpg's default
    #: how long a PostgreSQL server may stay unreachable before the daemon gives up (exit 1)
    outage_max: float = 300.0

    @property
    def address(self) -> str:
        """Where the store is, for messages and logs (a URL never holds a password here)."""
        return self.url or self.path


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """This daemon among those sharing a store."""

    #: its name in `status` and its heartbeat row; None: its process, `PID@HOST`
    name: str | None = None


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
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
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
