"""The durable store: calls, decisions, the outbox, receipts, replies, opt-outs: SQLite
(`Store`, one host) or PostgreSQL (`PgStore`, several daemons on several hosts).

All SQL lives in this package: `plumbing` (what the queries run through), `connection` (the
SQLite file, its transactions, `atomic()`), `pg_connection` (the same over asyncpg),
`schema` (the life cycle and the migrations, for both), then one module per owner of tables,
each a class of queries that `Store` and `PgStore` compose; `transfer` moves a store from one
to the other. Everything outside the package calls `Store`'s
methods, never SQL; `store/interface.py` declares them (`StoreInterface`, one Protocol per
owner), and code outside the package annotates the store it is given with those Protocols.

What keeps a caller from getting two texts is the database, not process memory: a call is
`(pbx, call_id)` (the PRIMARY KEY of `calls`) and a message is
`(pbx, call_id, kind, seq)` (UNIQUE in `messages`), so a replayed event stream, an AMI
reconnect or a restart writes the same rows again and creates nothing new.

Message states move forward only. `TRANSITIONS` is the one table of allowed moves: every
UPDATE names the states it may leave (`_may_become`), so a late or repeated result never moves
a message back, and a trigger built from the same table makes the database itself refuse any
other move (a hand-written `UPDATE` included):

    queued ──claim──► sending ──► submitted ──► delivered | undeliverable
      ▲                 │  │
      └──── retry ──────┘  └──► failed          queued ──► expired | failed

"Claim the next messages to send" is one `UPDATE … RETURNING`, so several daemons share one
outbox without taking a text twice; each claim is leased to its daemon (`owner`,
`lease_until`), which renews it every second, and a daemon takes over only the texts of one
that is gone (`recover_in_flight`).

Durability: WAL with `synchronous=FULL`. NORMAL would be enough against a daemon crash, but
after a power cut it may lose the last commits, and the last commit is often a claim: the text
went to the SMSC, the disk forgets the `sending` state, and the restart would send it again
without the `duplicate_risk` mark (or forget a decided call whose AMI events are gone for
good). FULL costs one fsync of the WAL per commit, which a call centre's rate of calls never
notices. WAL lets the CLI's `status` and `report` read while the daemon writes.

Concurrency inside one process: the daemon's tasks share one connection (aiosqlite runs
it in a thread of its own), so every transaction holds an asyncio lock (two tasks must not
interleave `BEGIN`s on it) and runs shielded from cancellation: a cancelled caller never leaves
the connection inside a half-done transaction.

`atomic()` makes one transaction of several store calls: a state change and what follows from
it (a decided call, its webhook events and follow-ups; a receipt and its webhook event) are
committed together or not at all. Inside it, the task's store calls join the open transaction
instead of starting their own.

A write that fails (disk full, I/O error, a read-only or corrupt file) raises `StoreError`
naming the file and the cause: the daemon stops on it rather than acknowledge what it could
not keep.
"""

from __future__ import annotations

from typing import cast

from mcdaemon.config.model import StoreConfig
from mcdaemon.core.outbox import SubmitOutcome
from mcdaemon.store.connection import PAGE_SIZE, Connection
from mcdaemon.store.contacts import Contact, Contacts
from mcdaemon.store.interface import (
    ContactsStore,
    OutboxStore,
    OutreachStore,
    ReceiptsStore,
    RepliesStore,
    ReportStore,
    RetentionStore,
    StatusStore,
    StoreInterface,
    WebhooksStore,
)
from mcdaemon.store.outbox import CallsAndOutbox, NewCall, OutboxMessage
from mcdaemon.store.outreach import Attempt, Campaign, FirstText, Outreach, Stopped
from mcdaemon.store.pg_connection import PgConnection, SslMode
from mcdaemon.store.plumbing import StoreError, StoreUnreachable
from mcdaemon.store.receipts import AMBIGUOUS, AppliedReceipts, ReceiptIn
from mcdaemon.store.replies import RepliesAndOptOuts
from mcdaemon.store.report import Booking, ReportQueries, SentText, TextBatch
from mcdaemon.store.retention import Retention
from mcdaemon.store.schema import (
    _MIGRATIONS,
    CALLER_KINDS,
    FINAL_STATES,
    MIGRATION_SECONDS_PER_GB,
    MIN_SQLITE,
    SCHEMA_VERSION,
    TRANSITIONS,
    migration_steps,
)
from mcdaemon.store.status import LIVE_STATES, SETTLED_WINDOW, Status
from mcdaemon.store.webhooks import WebhookDelivery, WebhookIn, WebhookQueue, WebhookResult


class Store(CallsAndOutbox, RepliesAndOptOuts, WebhookQueue, Contacts, ReportQueries, Status,
            Outreach, Retention, Connection):
    """The SQLite store: one connection (`Connection`), the queries of every owner of tables.

    It satisfies `StoreInterface` (`store/interface.py`), which is what code outside this
    package is given; `PgStore` is the same queries over PostgreSQL."""


class PgStore(CallsAndOutbox, RepliesAndOptOuts, WebhookQueue, Contacts, ReportQueries, Status,
              Outreach, Retention, PgConnection):
    """The PostgreSQL store (`store.url`): the same owners' queries over one asyncpg
    connection (`PgConnection`), shared by any number of daemons on any number of hosts."""


#: mypy checks here that each backend has every method of the interface, with compatible
#: signatures (a backend that lacks one, or differs, fails `mypy mcdaemon`)
_SQLITE_BACKEND: type[StoreInterface] = Store
_POSTGRESQL_BACKEND: type[StoreInterface] = PgStore


def _ssl(config: StoreConfig) -> SslMode | None:
    return cast(SslMode, config.sslmode) if config.sslmode else None


async def open_store(config: StoreConfig) -> StoreInterface:
    """Open (creating and migrating) the store the config names: PostgreSQL when `store.url`
    is set, else the SQLite file `store.path`. The one place that chooses the backend."""
    if config.url:  # a server that goes away is waited for (store.outage_max)
        return await PgStore.open(config.url, password=config.password or None,
                                  ssl=_ssl(config), outage_max=config.outage_max)
    return await Store.open(config.path)


async def check_postgresql(config: StoreConfig) -> str:
    """`check-config`'s look at the PostgreSQL store: it connects and reads the schema
    version, changing nothing. A line to show; StoreError if it cannot connect or a newer
    mcdaemon wrote it."""
    store = await PgStore._connect(config.url, config.password or None, _ssl(config))
    try:
        version = await store.schema_version()
    finally:
        await store.close()
    if version is None:
        return (f"store {store.path}: connected; no schema yet (the daemon creates schema "
                f"{SCHEMA_VERSION} at its first start)")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{store.path} was written by a newer mcdaemon (schema {version}, "
                         f"this version knows {SCHEMA_VERSION}): upgrade mcdaemon")
    if version < SCHEMA_VERSION:
        return (f"store {store.path}: connected; schema {version} (the daemon migrates it to "
                f"{SCHEMA_VERSION} when it starts)")
    return f"store {store.path}: connected; schema {version} (current)"


async def open_store_readonly(config: StoreConfig) -> StoreInterface:
    """Open the store the config names for reading only (`report`, `status`, the AGI
    script): nothing is created or migrated."""
    if config.url:
        return await PgStore.open_readonly(config.url, password=config.password or None,
                                           ssl=_ssl(config))
    return await Store.open_readonly(config.path)


__all__ = [
    "AMBIGUOUS", "CALLER_KINDS", "FINAL_STATES", "LIVE_STATES", "MIGRATION_SECONDS_PER_GB",
    "MIN_SQLITE", "PAGE_SIZE", "SCHEMA_VERSION",
    "SETTLED_WINDOW", "TRANSITIONS", "_MIGRATIONS", "AppliedReceipts", "Attempt", "Booking",
    "Campaign", "Connection", "Contact", "ContactsStore", "FirstText",
    "NewCall", "OutboxMessage", "OutboxStore", "OutreachStore", "PgConnection", "PgStore",
    "ReceiptIn", "ReceiptsStore", "RepliesStore", "ReportStore", "RetentionStore", "SentText",
    "StatusStore", "Stopped",
    "Store", "StoreError", "StoreInterface", "StoreUnreachable", "SubmitOutcome", "TextBatch",
    "WebhookDelivery", "WebhookIn",
    "WebhookResult", "WebhooksStore", "check_postgresql", "migration_steps", "open_store",
    "open_store_readonly",
]
