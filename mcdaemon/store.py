"""The durable store: calls, decisions, the outbox, receipts, replies, opt-outs (SQLite).

All SQL lives here. What keeps a caller from getting two texts is the database, not process
memory: a call is `(pbx, call_id)` (the PRIMARY KEY of `calls`) and a message is
`(pbx, call_id, kind, seq)` (UNIQUE in `messages`), so a replayed event stream, an AMI
reconnect or a restart writes the same rows again and creates nothing new.

Message states move forward only. `TRANSITIONS` is the one table of allowed moves: every
UPDATE names the states it may leave (`_may_become`), so a late or repeated result never moves
a message back, and a trigger built from the same table makes the database itself refuse any
other move (a hand-written `UPDATE` included):

    queued ──claim──► sending ──► submitted ──► delivered | undeliverable
      ▲                 │  │
      └──── retry ──────┘  └──► failed          queued ──► expired | failed

"Claim the next messages to send" is one `UPDATE … RETURNING`, so several daemons could share
one outbox (PostgreSQL has the same statement).

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

import asyncio
import contextlib
import contextvars
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from mcdaemon.core.receipts import exact_receipt_id, normalised_id, other_base_readings
from mcdaemon.core.records import CallRecord, Decision, PolicyView

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: `UPDATE … RETURNING` (the one-statement claim) needs this SQLite library
MIN_SQLITE = (3, 35, 0)
BUSY_TIMEOUT_MS = 10_000

#: state -> the states it may move to. The only definition of the message life cycle.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"sending", "expired", "failed"}),
    "sending": frozenset({"submitted", "queued", "failed"}),
    "submitted": frozenset({"delivered", "undeliverable", "unknown"}),
    "delivered": frozenset(),
    "undeliverable": frozenset(),
    "unknown": frozenset({"delivered", "undeliverable"}),  # a receipt may still come late
    "failed": frozenset(),
    "expired": frozenset(),
}
FINAL_STATES = frozenset(state for state, nexts in TRANSITIONS.items() if not nexts)
#: receipt states (short `stat:` words, long names and `message_state` TLV numbers) per outcome
_DELIVERED_RECEIPTS = frozenset({"DELIVRD", "DELIVERED", "2"})
_BAD_RECEIPTS = frozenset({"UNDELIV", "UNDELIVERABLE", "EXPIRED", "REJECTD", "REJECTED",
                           "DELETED", "UNKNOWN", "3", "4", "5", "7", "8"})
#: message kinds that are texts to callers: they count for cooldowns and the fraud shield,
#: and an opt-out or a `disable` switch holds them back even once queued
CALLER_KINDS = ("first", "followup")
#: an unmatched receipt this much older than a message's claim is not replayed onto it
_RECEIPT_REPLAY_SLACK = 60.0


def _may_become(target: str) -> str:
    """The SQL guard `state IN (…)` listing the states that may move to `target`."""
    sources = sorted(state for state, nexts in TRANSITIONS.items() if target in nexts)
    if not sources:
        raise ValueError(f"no state may become {target!r}")
    return "state IN (" + ", ".join(f"'{state}'" for state in sources) + ")"


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def _statements(script: str) -> tuple[str, ...]:
    return tuple(part for part in script.split(";") if part.strip())


_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the first schema
    _statements("""
    CREATE TABLE calls (
        pbx TEXT NOT NULL, call_id TEXT NOT NULL,
        caller TEXT, caller_e164 TEXT, caller_name TEXT, did TEXT, grp TEXT,
        outcome TEXT NOT NULL, started REAL, ended REAL, wait_seconds REAL,
        partial INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL,
        textable INTEGER NOT NULL, reason TEXT NOT NULL, detail TEXT, decision_group TEXT,
        template TEXT, variant TEXT, decided_at REAL NOT NULL,
        PRIMARY KEY (pbx, call_id)
    );
    CREATE INDEX calls_ended ON calls (ended);
    CREATE INDEX calls_caller ON calls (caller_e164, ended);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        pbx TEXT NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL,
        destination TEXT NOT NULL, body TEXT NOT NULL, grp TEXT, variant TEXT,
        state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
        parts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL, expires_at REAL,
        call_ended_at REAL, created_at REAL NOT NULL, sending_at REAL, submitted_at REAL,
        final_at REAL, error_code INTEGER, error_detail TEXT,
        duplicate_risk INTEGER NOT NULL DEFAULT 0,
        UNIQUE (pbx, call_id, kind, seq)
    );
    CREATE INDEX messages_due ON messages (state, not_before);
    CREATE INDEX messages_destination ON messages (destination, created_at);
    CREATE INDEX messages_created ON messages (created_at);
    CREATE TABLE message_parts (
        message_id INTEGER NOT NULL REFERENCES messages (id),
        part_no INTEGER NOT NULL, smsc_id TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'submitted', error TEXT, receipt_at REAL,
        PRIMARY KEY (message_id, part_no)
    );
    CREATE INDEX parts_smsc_id ON message_parts (smsc_id);
    CREATE TABLE receipts (
        id INTEGER PRIMARY KEY, smsc_id TEXT NOT NULL, state TEXT NOT NULL, error TEXT,
        at REAL NOT NULL, message_id INTEGER, raw TEXT NOT NULL
    );
    CREATE TABLE inbound (
        id INTEGER PRIMARY KEY, source TEXT NOT NULL, destination TEXT, text TEXT NOT NULL,
        at REAL NOT NULL, keyword TEXT
    );
    CREATE INDEX inbound_source ON inbound (source, at);
    CREATE TABLE opt_outs (e164 TEXT PRIMARY KEY, at REAL NOT NULL, keyword TEXT);
    CREATE TABLE switches (name TEXT PRIMARY KEY, enabled INTEGER NOT NULL, at REAL NOT NULL);
    CREATE TABLE status (name TEXT PRIMARY KEY, value TEXT NOT NULL, at REAL NOT NULL)
    """),
    # 2: the SMSC's ids on the message, every candidate id of a receipt (so a receipt that
    # overtakes its submit_sm_resp is matched later), and forward-only states in the database
    (
        "ALTER TABLE messages ADD COLUMN smsc_ids TEXT NOT NULL DEFAULT '[]'",
        "UPDATE messages SET smsc_ids = (SELECT json_group_array(smsc_id) FROM"
        " (SELECT smsc_id FROM message_parts WHERE message_id = messages.id ORDER BY part_no))"
        " WHERE parts > 0",
        "ALTER TABLE receipts ADD COLUMN candidates TEXT NOT NULL DEFAULT '[]'",
        "UPDATE receipts SET candidates = json_array(smsc_id) WHERE smsc_id <> ''",
        "CREATE INDEX receipts_unmatched ON receipts (at) WHERE message_id IS NULL",
        "CREATE TABLE message_transitions (from_state TEXT NOT NULL, to_state TEXT NOT NULL,"
        " PRIMARY KEY (from_state, to_state))",
        "INSERT INTO message_transitions (from_state, to_state) VALUES "
        + ", ".join(f"('{source}', '{target}')" for source, targets in TRANSITIONS.items()
                    for target in sorted(targets)),
        "CREATE TRIGGER messages_forward_only BEFORE UPDATE OF state ON messages"
        " WHEN NEW.state <> OLD.state AND NOT EXISTS (SELECT 1 FROM message_transitions"
        " WHERE from_state = OLD.state AND to_state = NEW.state)"
        " BEGIN SELECT RAISE(ABORT, 'a message state may only move forward'); END",
    ),
    # 3: bookings (`mcdaemon record-booking`), each attributed to the texted missed call it
    # follows (pbx, call_id) or to none
    (
        "CREATE TABLE bookings (id INTEGER PRIMARY KEY, e164 TEXT NOT NULL,"
        " value REAL NOT NULL, currency TEXT, note TEXT, at REAL NOT NULL, pbx TEXT,"
        " call_id TEXT, created_at REAL NOT NULL)",
        "CREATE INDEX bookings_at ON bookings (at)",
        "CREATE INDEX bookings_call ON bookings (pbx, call_id)",
    ),
    # 4: `unknown`: submitted, and no receipt within smpp.receipt_timeout (a late receipt
    # still settles it). Written from TRANSITIONS so the trigger knows every move.
    (
        "INSERT OR IGNORE INTO message_transitions (from_state, to_state) VALUES "
        + ", ".join(f"('{source}', '{target}')" for source, targets in TRANSITIONS.items()
                    for target in sorted(targets)),
        "CREATE INDEX messages_submitted ON messages (submitted_at) WHERE state = 'submitted'",
    ),
    # 5: the webhook queue (mcdaemon.webhooks.delivery): one row per event and endpoint, delivered
    # at least once; `event_key` makes enqueueing idempotent (a replayed call adds nothing)
    # and `order_key` keeps one call's events in order per endpoint
    (
        "CREATE TABLE webhooks (id INTEGER PRIMARY KEY, delivery_id TEXT NOT NULL UNIQUE,"
        " endpoint TEXT NOT NULL, event TEXT NOT NULL, event_key TEXT NOT NULL,"
        " order_key TEXT NOT NULL, body TEXT NOT NULL,"
        " state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,"
        " next_at REAL NOT NULL, last_error TEXT, created_at REAL NOT NULL, final_at REAL,"
        " UNIQUE (endpoint, event_key))",
        "CREATE INDEX webhooks_due ON webhooks (next_at) WHERE state = 'pending'",
        "CREATE INDEX webhooks_order ON webhooks (endpoint, order_key, id)"
        " WHERE state = 'pending'",
        "CREATE INDEX webhooks_final ON webhooks (final_at) WHERE state <> 'pending'",
    ),
    # 6: contacts (`mcdaemon contacts import`): names for {caller_name}, tags a JSON array
    (
        "CREATE TABLE contacts (e164 TEXT PRIMARY KEY, name TEXT,"
        " tags TEXT NOT NULL DEFAULT '[]', source TEXT NOT NULL, updated_at REAL NOT NULL)",
    ),
    # 7: follow-ups and call-backs (mcdaemon.outreach_store): call-back campaigns (one open
    # campaign per number: the partial unique index) and their attempts; the calls that
    # started or joined a campaign (a replayed call starts nothing); `contact_events`, every
    # time a caller was reached or answered (reply, answered call, call-back, agent call),
    # which stops follow-ups and campaigns
    (
        "CREATE TABLE campaigns (id INTEGER PRIMARY KEY, e164 TEXT NOT NULL,"
        " grp TEXT NOT NULL, pbx TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'open',"
        " reason TEXT, source_pbx TEXT, source_call_id TEXT,"
        " contacts INTEGER NOT NULL DEFAULT 1, created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL, closed_at REAL)",
        "CREATE UNIQUE INDEX campaigns_open_number ON campaigns (e164) WHERE state = 'open'",
        "CREATE TABLE campaign_attempts (id INTEGER PRIMARY KEY,"
        " campaign_id INTEGER NOT NULL REFERENCES campaigns (id), seq INTEGER NOT NULL,"
        " state TEXT NOT NULL DEFAULT 'scheduled', due_at REAL NOT NULL, action_id TEXT,"
        " uniqueid TEXT, started_at REAL, ended_at REAL, result TEXT, detail TEXT,"
        " UNIQUE (campaign_id, seq))",
        "CREATE INDEX campaign_attempts_due ON campaign_attempts (state, due_at)",
        "CREATE INDEX campaign_attempts_action ON campaign_attempts (action_id)",
        "CREATE TABLE campaign_calls (pbx TEXT NOT NULL, call_id TEXT NOT NULL,"
        " campaign_id INTEGER NOT NULL, PRIMARY KEY (pbx, call_id))",
        "CREATE TABLE contact_events (id INTEGER PRIMARY KEY, e164 TEXT NOT NULL,"
        " kind TEXT NOT NULL, at REAL NOT NULL, detail TEXT)",
        "CREATE INDEX contact_events_number ON contact_events (e164, at)",
        "CREATE INDEX messages_first_submitted ON messages (submitted_at) WHERE kind = 'first'",
    ),
    # 8: a receipt's two ids kept apart (the receipted_message_id TLV and the `id:` of its
    # text) and how it was matched: the TLV id, the text id, another base, or `ambiguous`
    # (kept unmatched: it named more than one text)
    (
        "ALTER TABLE receipts ADD COLUMN receipted_id TEXT",
        "ALTER TABLE receipts ADD COLUMN text_id TEXT",
        "ALTER TABLE receipts ADD COLUMN matched_by TEXT",
    ),
)
#: the schema this version writes: one migration per step, appended to `_MIGRATIONS`
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreError(Exception):
    """The store cannot be used; the message says what to fix."""


def _means_unusable(exc: sqlite3.Error) -> bool:
    """Disk full, I/O error, read-only, locked for too long, corrupt: the file cannot keep
    what the daemon would acknowledge. (A constraint or a programming error is a bug, not
    the store's state: it stays what it is.)"""
    return isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError) or (
        type(exc) is sqlite3.DatabaseError)


#: the store whose transaction the current task has open (`Store.atomic`)
_open_transaction: contextvars.ContextVar[Store | None] = contextvars.ContextVar(
    "mcdaemon_store_transaction", default=None)


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What became of one submit: `submitted` (with the SMSC's id per part), `queued` again
    (a temporary failure, retried at `not_before`) or `failed` for good."""

    message_id: int
    state: str
    smsc_ids: tuple[str, ...] = ()
    not_before: float | None = None
    error_code: int | None = None
    detail: str = ""
    duplicate_risk: bool = False
    #: the text never went out (handed back unsent): its claim does not count as an attempt
    refund_attempt: bool = False


@dataclass(frozen=True, slots=True)
class AppliedReceipts:
    matched: list[int | None]  # per receipt, the message it matched
    settled: dict[str, int]  # final state -> messages the batch moved there
    #: message id -> the final state this batch moved it to (for the webhooks)
    finals: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReceiptIn:
    """A delivery receipt as received: its two ids apart (the `receipted_message_id` TLV,
    the `id:` of its text; either may be None), its state and error, when it arrived."""

    receipted_id: str | None
    text_id: str | None
    state: str
    error: str | None
    at: float
    raw: dict[str, str] = field(default_factory=dict)


#: how a receipt was matched (`receipts.matched_by`); NULL: no part (yet)
MATCHED_BY_TLV, MATCHED_BY_TEXT, MATCHED_BY_OTHER_BASE = "receipted_id", "text_id", "other_base"
#: the receipt named more than one text: kept unmatched, counted, never replayed
AMBIGUOUS = "ambiguous"


@dataclass(slots=True)
class _Part:
    """A part a receipt may name: `pending` while no final receipt has come for it."""

    message_id: int
    part_no: int
    smsc_id: str
    pending: bool
    claimed_at: float  # when its text was claimed for sending: before its submit_sm left


@dataclass(frozen=True, slots=True)
class _ReceiptMatch:
    part: _Part | None
    matched_by: str | None  # MATCHED_BY_* or AMBIGUOUS; None: unmatched
    candidates: tuple[_Part, ...] = ()  # the parts an ambiguous receipt named


def _match_receipt(receipt: ReceiptIn, parts: dict[str, list[_Part]],
                   in_flight: Sequence[float]) -> _ReceiptMatch:
    """The part a receipt belongs to, by the rules of docs/receipts.md.

    Only a part claimed before the receipt arrived can be meant. The exact id (the TLV's,
    else the text's) decides alone when it names a part; a pending part is preferred over a
    settled one (an SMSC that restarted its counter reuses ids). Another base is read only
    when the exact id names nothing and no text is in flight whose id is not known yet (the
    receipt may be its); and then only one pending part may fit. Otherwise: unmatched.
    """
    exact = exact_receipt_id(receipt.receipted_id, receipt.text_id)
    exact_by = MATCHED_BY_TLV if normalised_id(receipt.receipted_id) else MATCHED_BY_TEXT
    waiting_for_ids = any(claimed <= receipt.at for claimed in in_flight)
    hits = [part for part in parts.get(exact, ()) if part.claimed_at <= receipt.at] \
        if exact is not None else []
    pending = [part for part in hits if part.pending]
    if len(pending) == 1:
        return _ReceiptMatch(pending[0], exact_by)
    if len(pending) > 1:
        return _ReceiptMatch(None, AMBIGUOUS, tuple(pending))
    if hits:  # only settled parts: a repeated receipt, unless a text in flight reuses the id
        if waiting_for_ids:
            return _ReceiptMatch(None, None)
        if len(hits) == 1:
            return _ReceiptMatch(hits[0], exact_by)
        return _ReceiptMatch(None, AMBIGUOUS, tuple(hits))
    if waiting_for_ids:  # the exact id may be that of a text whose submit is not recorded
        return _ReceiptMatch(None, None)
    fits = [part for reading in other_base_readings(receipt.receipted_id, receipt.text_id)
            for part in parts.get(reading, ())
            if part.pending and part.claimed_at <= receipt.at]
    if len(fits) == 1:
        return _ReceiptMatch(fits[0], MATCHED_BY_OTHER_BASE)
    if len(fits) > 1:
        return _ReceiptMatch(None, AMBIGUOUS, tuple(fits))
    return _ReceiptMatch(None, None)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One row of the outbox, as read; change it only through the Store's methods."""

    id: int
    pbx: str
    call_id: str
    kind: str
    seq: int
    destination: str
    body: str
    group: str | None
    variant: str | None
    state: str
    attempts: int
    parts: int
    not_before: float
    expires_at: float | None
    call_ended_at: float | None
    created_at: float
    sending_at: float | None
    submitted_at: float | None
    final_at: float | None
    error_code: int | None
    error_detail: str | None
    duplicate_risk: bool
    smsc_ids: tuple[str, ...] = ()


_MESSAGE_COLUMNS = ("id, pbx, call_id, kind, seq, destination, body, grp, variant, state, "
                    "attempts, parts, not_before, expires_at, call_ended_at, created_at, "
                    "sending_at, submitted_at, final_at, error_code, error_detail, "
                    "duplicate_risk, smsc_ids")


def _message(row: Sequence[Any]) -> OutboxMessage:
    values = list(row)
    values[-2] = bool(values[-2])
    values[-1] = tuple(json.loads(values[-1] or "[]"))
    return OutboxMessage(*values)


def _part_state(receipt_state: str) -> str:
    state = receipt_state.strip().upper()
    if state in _DELIVERED_RECEIPTS:
        return "delivered"
    if state in _BAD_RECEIPTS:
        return "undeliverable"
    return "submitted"  # ACCEPTD, ENROUTE…: not final yet


@dataclass(frozen=True, slots=True)
class NewCall:
    """One call to record: the tracker's record and the policy's decision."""

    record: CallRecord
    decision: Decision


_INSERT_CALL = (
    "INSERT OR IGNORE INTO calls (pbx, call_id, caller, caller_e164, caller_name, did, grp,"
    " outcome, started, ended, wait_seconds, partial, record, textable, reason, detail,"
    " decision_group, template, variant, decided_at)")
_INSERT_FIRST_TEXT = (
    "INSERT OR IGNORE INTO messages (pbx, call_id, kind, seq, destination, body, grp, variant,"
    " not_before, expires_at, call_ended_at, created_at, state, attempts, sending_at)")


def _call_row(call: NewCall, now: float) -> tuple[Any, ...]:
    record, decision = call.record, call.decision
    return (record.pbx, record.call_id, record.caller, record.caller_e164, record.caller_name,
            record.did, record.group, str(record.outcome), record.started, record.ended,
            record.wait_seconds, int(record.partial),
            json.dumps(record.as_dict(), ensure_ascii=False), int(decision.text),
            decision.reason, decision.detail, decision.group, decision.template,
            decision.variant, now)


def _first_text(call: NewCall, destination: str, now: float) -> tuple[tuple[Any, ...], bool]:
    """A call's first text as `_INSERT_FIRST_TEXT`'s first 12 columns, and whether it is
    due now (it may then be born claimed)."""
    record, decision = call.record, call.decision
    due = (decision.send_after is None or decision.send_after <= now) and (
        decision.expires_at is None or decision.expires_at > now)
    return (record.pbx, record.call_id, "first", 0, destination, decision.body,
            decision.group, decision.variant,
            decision.send_after if decision.send_after is not None else now,
            decision.expires_at, record.ended, now), due


class Store:
    """One SQLite file; every write is one short transaction."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: str) -> Store:
        """Open (creating the file and its directory) and migrate the store at `path`."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old for the store (it "
                             "needs 3.35 or newer for UPDATE … RETURNING); use a newer Python "
                             "or operating system")
        file = Path(path)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of the store {path}: {exc} (check "
                             "store.path and the daemon user's rights)") from exc
        if file.exists() and not os.access(file, os.R_OK | os.W_OK):
            raise StoreError(f"the store {path} is not readable and writable by this user "
                             "(check its owner and mode)")
        if not os.access(file.parent, os.W_OK | os.X_OK):
            raise StoreError(f"the directory {file.parent} of the store is not writable by "
                             "this user; SQLite needs to create its -wal and -shm files there")
        try:
            # Calls, numbers and texts are personal data: a new store is created for its owner
            # only (0600; SQLite gives the -wal and -shm files the mode of the database).
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            # check_same_thread: the loop's thread uses it too, never at the same time
            db = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {path}: {exc} (check store.path and that "
                             "the daemon's user may write its directory)") from exc
        store = cls(db, path)
        try:
            await store._prepare()
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise StoreError(f"cannot use the store {path}: {exc} (is it an mcdaemon "
                             "database? is the disk full or read-only?)") from exc
        except BaseException:
            await db.close()
            raise
        return store

    async def _prepare(self) -> None:
        db = self._db
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # a newer mcdaemon's file is refused before anything (even the journal mode) changes
        version = int(await self._scalar("PRAGMA user_version"))
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer mcdaemon (schema {version}, "
                             f"this version knows {SCHEMA_VERSION}): upgrade mcdaemon or use "
                             "another store.path")
        mode = await self._scalar("PRAGMA journal_mode = WAL")
        if str(mode).lower() != "wal":
            log.warning("the store is not in WAL mode; readers may block the daemon",
                        path=self.path, journal_mode=mode)
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        for number in range(version, SCHEMA_VERSION):
            await db.execute("BEGIN IMMEDIATE")
            try:
                # another process may have migrated while this one waited for the lock
                if int(await self._scalar("PRAGMA user_version")) == number:
                    for statement in _MIGRATIONS[number]:
                        await db.execute(statement)
                    await db.execute(f"PRAGMA user_version = {number + 1}")
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        if version < SCHEMA_VERSION:  # one line, not one per step
            log.info("store created" if version == 0 else f"store migrated from schema "
                     f"{version} to {SCHEMA_VERSION}", path=self.path)

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    # ------------------------------------------------------------------ plumbing

    # Each of these is one trip to aiosqlite's thread (a cursor's execute, fetch and close
    # would be three): under a storm the trips, not SQLite, set the pace.

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._db.execute_fetchall(sql, params)
        return next(iter(rows))[0] if rows else None

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, params))

    async def _change(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, int | None]:
        """Run one statement; the rows it changed and the id it inserted (None if none).

        `total_changes` is read from the connection between trips, under the store's lock;
        no trigger of the schema writes rows, so the difference is this statement's."""
        before = self._db.total_changes
        row = await self._db.execute_insert(sql, params)
        changed = self._db.total_changes - before
        return changed, int(row[0]) if row is not None and changed else None

    async def _read(self, work: Callable[[], Awaitable[T]]) -> T:
        if _open_transaction.get() is self:  # inside this task's atomic(): the lock is ours
            return await work()

        async def locked() -> T:
            async with self._lock:
                return await work()

        # shielded like a transaction: a cancelled reader must not leave a statement running
        # on the connection after the lock is released
        return await asyncio.shield(self._failing_loudly(locked()))

    async def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: readers are not waited for): the daemon
        calls it every second, so the WAL stays small and a commit seldom checkpoints."""
        await self._read(lambda: self._scalar("PRAGMA wal_checkpoint(PASSIVE)"))

    async def _transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` in one IMMEDIATE transaction, whole or not at all; inside `atomic()`,
        as part of its transaction."""
        if _open_transaction.get() is self:
            return await work()
        return await asyncio.shield(self._failing_loudly(self._locked_transaction(work)))

    async def _locked_transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            token = _open_transaction.set(self)
            try:
                result = await work()
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await self._db.execute("ROLLBACK")
                raise
            finally:
                _open_transaction.reset(token)
            return result

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        """One transaction for every store call the task makes inside the block: committed
        when the block ends, rolled back if it raises. Not re-entrant across tasks: another
        task's store calls wait for the commit."""
        if _open_transaction.get() is self:
            yield
            return
        async with self._lock:
            token = None
            try:
                # a cancellation may come while BEGIN runs in aiosqlite's thread: the ROLLBACK
                # below is queued after it, so the connection is never left in a transaction
                await self._failing_loudly(self._db.execute("BEGIN IMMEDIATE"))
                token = _open_transaction.set(self)
                yield
                await asyncio.shield(self._commit())
            except BaseException:
                with contextlib.suppress(sqlite3.Error, asyncio.CancelledError):
                    await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            finally:
                if token is not None:
                    _open_transaction.reset(token)

    async def _commit(self) -> None:
        await self._failing_loudly(self._db.execute("COMMIT"))

    async def _failing_loudly(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except sqlite3.Error as exc:
            if _means_unusable(exc):
                raise self._failure(exc) from exc
            raise

    def _failure(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"the store {self.path} cannot be used: {exc} (check the disk's free "
                          "space, the file's owner and mode, and the system log for I/O "
                          "errors)")

    # ------------------------------------------------------------------ calls and the outbox

    async def record_call(self, record: CallRecord, decision: Decision, *, now: float,
                          destination: str | None) -> int | None:
        """Store the call and, if it is new and to be texted, its first message (one transaction).

        Returns the new message's id, or None (no text, or the call was already recorded:
        replaying a call never creates a second message).
        """
        return (await self.record_calls([NewCall(record, decision)], now=now,
                                        destinations=[destination]))[0]

    async def record_calls(self, calls: Sequence[NewCall], *, now: float,
                           destinations: Sequence[str | None]) -> list[int | None]:
        """`record_call` for many calls in one transaction (a storm of hangups, one commit)."""
        ids, _ = await self.record_calls_and_claim(calls, now=now, destinations=destinations,
                                                   claim=0)
        return ids

    async def record_calls_and_claim(
            self, calls: Sequence[NewCall], *, now: float, destinations: Sequence[str | None],
            claim: int) -> tuple[list[int | None], list[OutboxMessage]]:
        """`record_calls`, and up to `claim` of the new texts that are due now are born
        claimed (`sending`, as `claim_due` would leave them) in the same transaction: the
        sender gets them without another commit. Returns the message ids and those claimed.

        One transaction whatever the batch's size: a storm of hangups costs one commit."""
        if len(calls) != len(destinations):
            raise ValueError("record_calls needs one destination per call")
        resolved = [destination or call.decision.destination
                    for call, destination in zip(calls, destinations, strict=True)]
        for call, destination in zip(calls, resolved, strict=True):
            if call.decision.text and not (destination and call.decision.body):
                raise ValueError(f"call {call.record.pbx}/{call.record.call_id}: a decision to "
                                 "text needs a destination and a body")
        if not calls:
            return [], []
        keys = [(call.record.pbx, call.record.call_id) for call in calls]
        call_rows = [_call_row(call, now) for call in calls]
        texts = [(index, _first_text(call, destination, now))
                 for index, (call, destination) in enumerate(zip(calls, resolved, strict=True))
                 if call.decision.text and destination and call.decision.body]

        async def work() -> tuple[list[int | None], list[OutboxMessage]]:
            stored: set[tuple[str, str]] = set()
            for start in range(0, len(keys), 400):
                chunk = keys[start:start + 400]
                stored.update((str(pbx), str(call_id)) for pbx, call_id in await self._rows(
                    "SELECT pbx, call_id FROM calls WHERE (pbx, call_id) IN"
                    f" (VALUES {','.join('(?,?)' for _ in chunk)})",
                    [value for key in chunk for value in key]))
            fresh = set(keys) - stored
            await self._db.executemany(
                f"{_INSERT_CALL} VALUES ({','.join('?' * len(call_rows[0]))})",
                [row for key, row in zip(keys, call_rows, strict=True) if key in fresh])
            result: list[int | None] = [None] * len(calls)
            claimed: list[OutboxMessage] = []
            left = max(0, claim)
            for index, (row, due) in texts:
                if keys[index] not in fresh:
                    continue
                fresh.discard(keys[index])  # a call twice in the batch: its first decision
                born_claimed = due and left > 0  # stands
                left -= born_claimed
                inserted = await self._rows(
                    f"{_INSERT_FIRST_TEXT} VALUES ({','.join('?' * (len(row) + 3))})"
                    f" RETURNING {_MESSAGE_COLUMNS}",
                    (*row, "sending" if born_claimed else "queued", int(born_claimed),
                     now if born_claimed else None))
                if inserted:
                    message = _message(inserted[0])
                    result[index] = message.id
                    if born_claimed:
                        claimed.append(message)
            return result, claimed

        return await self._transaction(work)

    async def _insert_message(self, *, pbx: str, call_id: str, kind: str, seq: int,
                              destination: str, body: str, group: str | None,
                              variant: str | None, now: float, not_before: float,
                              expires_at: float | None,
                              call_ended_at: float | None) -> int | None:
        inserted, row_id = await self._change(
            "INSERT OR IGNORE INTO messages (pbx, call_id, kind, seq, destination, body, grp,"
            " variant, not_before, expires_at, call_ended_at, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (pbx, call_id, kind, seq, destination, body, group, variant, not_before,
             expires_at, call_ended_at, now))
        return row_id if inserted == 1 else None

    async def enqueue_message(self, *, pbx: str, call_id: str, kind: str, seq: int,
                              destination: str, body: str, now: float,
                              not_before: float | None, expires_at: float | None,
                              group: str | None = None, variant: str | None = None
                              ) -> int | None:
        """Queue a text that is not a call's first one (opt-out confirmation, test, follow-up).

        Idempotent on (pbx, call_id, kind, seq): returns the new id, or None if it exists.
        """
        async def work() -> int | None:
            return await self._insert_message(
                pbx=pbx, call_id=call_id, kind=kind, seq=seq, destination=destination,
                body=body, group=group, variant=variant, now=now,
                not_before=now if not_before is None else not_before, expires_at=expires_at,
                call_ended_at=None)

        return await self._transaction(work)

    async def claim_due(self, now: float, limit: int) -> list[OutboxMessage]:
        """Move up to `limit` due messages from queued to sending, atomically, and return them.

        One statement: two claimers (tasks, processes, later hosts) never get the same
        message. Texts to callers are held while `disable` is in force for all or their group.
        """
        if limit <= 0:
            return []
        sql = (
            "UPDATE messages SET state = 'sending', attempts = attempts + 1, sending_at = ?"
            f" WHERE {_may_become('sending')} AND id IN (SELECT id FROM messages AS due"
            f"  WHERE due.{_may_become('sending')} AND due.not_before <= ?"
            "  AND (due.expires_at IS NULL OR due.expires_at > ?)"
            f"  AND (due.kind NOT IN ({_quoted(CALLER_KINDS)}) OR NOT EXISTS (SELECT 1 FROM"
            "   switches WHERE enabled = 0 AND (name = 'global' OR name = 'group:' || due.grp)))"
            "  ORDER BY due.not_before, due.id LIMIT ?)"
            f" RETURNING {_MESSAGE_COLUMNS}")

        async def work() -> list[Any]:
            return await self._rows(sql, (now, now, now, limit))

        rows = await self._transaction(work)
        return sorted((_message(row) for row in rows), key=lambda m: (m.not_before, m.id))

    async def mark_submitted(self, message_id: int, smsc_ids: Sequence[str],
                             now: float) -> bool:
        """The SMSC took the text: record one id per part. False if the message had left
        `sending` meanwhile (its parts are still recorded: the text did go out)."""
        return (await self.record_submit_outcomes(
            [SubmitOutcome(message_id, "submitted", smsc_ids=tuple(smsc_ids))], now))[0]

    async def mark_retry(self, message_id: int, *, not_before: float, error_code: int | None,
                         detail: str, now: float, duplicate_risk: bool = False) -> bool:
        """A temporary failure: back to `queued` until `not_before`. `duplicate_risk` when the
        SMSC may have taken it anyway (a submit that timed out)."""
        return (await self.record_submit_outcomes([SubmitOutcome(
            message_id, "queued", not_before=not_before, error_code=error_code, detail=detail,
            duplicate_risk=duplicate_risk)], now))[0]

    async def mark_failed(self, message_id: int, *, error_code: int | None, detail: str,
                          now: float) -> bool:
        """A permanent failure (or giving up): final. False if the message was past that."""
        return (await self.record_submit_outcomes([SubmitOutcome(
            message_id, "failed", error_code=error_code, detail=detail)], now))[0]

    async def record_submit_outcomes(self, outcomes: Sequence[SubmitOutcome],
                                     now: float) -> list[bool]:
        """Record the results of many submits in one transaction (one commit, not one per
        text: under a storm the commits, not the SMSC, would set the pace). For each, whether
        the message moved; a message already past that state stays as it is."""
        async def work() -> list[bool]:
            return await self._record_outcomes(outcomes, now)

        moved = await self._transaction(work) if outcomes else []
        for outcome, ok in zip(outcomes, moved, strict=True):
            if not ok:
                log.warning("a submit result came for a text that had left 'sending'",
                            message_id=outcome.message_id, result=outcome.state)
        return moved

    async def _record_outcomes(self, outcomes: Sequence[SubmitOutcome],
                               now: float) -> list[bool]:
        """A few statements whatever the batch size: read the states, decide each move by
        TRANSITIONS (in order: a message twice in the batch sees its first move), write."""
        for outcome in outcomes:
            if outcome.state not in ("submitted", "queued", "failed"):
                raise ValueError(f"a submit outcome is submitted, queued or failed, not "
                                 f"{outcome.state!r}")
        wanted = sorted({outcome.message_id for outcome in outcomes})
        states: dict[int, str] = {}
        claimed_at: dict[int, float] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            for message_id, state, since in await self._rows(
                    "SELECT id, state, COALESCE(sending_at, created_at) FROM messages"
                    f" WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                states[int(message_id)] = str(state)
                claimed_at[int(message_id)] = float(since)
        moved: list[bool] = []
        submitted: list[tuple[Any, ...]] = []
        parts: list[tuple[Any, ...]] = []
        queued: list[tuple[Any, ...]] = []
        failed: list[tuple[Any, ...]] = []
        sent_ids: dict[int, set[str]] = {}
        for outcome in outcomes:
            message_id = outcome.message_id
            state = states.get(message_id)
            ok = state is not None and outcome.state in TRANSITIONS[state]
            if ok:
                states[message_id] = outcome.state
            moved.append(ok)
            if outcome.state == "submitted":
                ids = [smsc_id.strip().lower() for smsc_id in outcome.smsc_ids]
                if state is not None:  # even when not moved: the text did go out
                    parts += [(message_id, number, smsc_id)
                              for number, smsc_id in enumerate(ids, start=1)]
                    sent_ids.setdefault(message_id, set()).update(ids)
                if ok:
                    submitted.append((now, len(ids), json.dumps(ids), message_id))
            elif ok and outcome.state == "queued":
                queued.append((outcome.not_before if outcome.not_before is not None else now,
                               outcome.error_code, outcome.detail,
                               int(outcome.duplicate_risk), int(outcome.refund_attempt),
                               message_id))
            elif ok:
                failed.append((now, outcome.error_code, outcome.detail, message_id))
        # the guards repeat what was decided above; the trigger would refuse anything else
        await self._db.executemany(
            "UPDATE messages SET state = 'submitted', submitted_at = ?, parts = ?,"
            f" smsc_ids = ?, error_code = NULL WHERE id = ? AND {_may_become('submitted')}",
            submitted)
        await self._db.executemany(
            "INSERT OR IGNORE INTO message_parts (message_id, part_no, smsc_id)"
            " VALUES (?, ?, ?)", parts)
        await self._db.executemany(
            "UPDATE messages SET state = 'queued', not_before = ?, error_code = ?,"
            " error_detail = ?, duplicate_risk = MAX(duplicate_risk, ?),"
            f" attempts = MAX(0, attempts - ?) WHERE id = ? AND {_may_become('queued')}",
            queued)
        await self._db.executemany(
            "UPDATE messages SET state = 'failed', final_at = ?, error_code = ?,"
            f" error_detail = ? WHERE id = ? AND {_may_become('failed')}", failed)
        if sent_ids:
            await self._replay_early_receipts(
                {message_id: (ids, claimed_at[message_id]) for message_id, ids in
                 sent_ids.items()})
        return moved

    async def _replay_early_receipts(self, sent: dict[int, tuple[set[str], float]]) -> None:
        """Match again, by the same rules, the receipts kept unmatched that may be for texts
        just recorded: one that overtook its submit_sm_resp, or one that waited for texts in
        flight. `sent` maps each message just submitted to its SMSC ids and its claim time.
        An ambiguous receipt stays as it is: more texts cannot make it less ambiguous."""
        since = min(at for _, at in sent.values()) - _RECEIPT_REPLAY_SLACK
        rows = await self._rows(
            "SELECT id, receipted_id, text_id, smsc_id, state, error, at FROM receipts"
            " WHERE message_id IS NULL AND at >= ?"
            f" AND COALESCE(matched_by, '') <> '{AMBIGUOUS}' ORDER BY id", (since,))
        if not rows:
            return
        # a receipt stored before its ids were kept apart: its first id as the exact one
        receipts = [ReceiptIn(receipted_id if receipted_id or text_id else smsc_id or None,
                              text_id, state, error, at)
                    for _, receipted_id, text_id, smsc_id, state, error, at in rows]
        matches = await self._apply_to_parts(receipts)
        await self._db.executemany(
            "UPDATE receipts SET message_id = ?, matched_by = ? WHERE id = ?",
            [(match.part.message_id if match.part else None, match.matched_by, row[0])
             for row, match in zip(rows, matches, strict=True) if match.matched_by])

    async def _move(self, sql: str, params: Sequence[Any]) -> bool:
        async def work() -> int:
            return (await self._change(sql, params))[0]

        return await self._transaction(work) == 1

    async def _ids_of(self, sql: str, params: Sequence[Any]) -> list[int]:
        async def work() -> list[Any]:
            return await self._rows(sql, params)

        return sorted(int(row[0]) for row in await self._transaction(work))

    async def give_up_receipts(self, now: float, timeout: float) -> list[int]:
        """Submitted texts with no receipt after `timeout` s become `unknown`: the KPIs stop
        counting them as pending. A receipt that still comes settles them."""
        return await self._ids_of(
            "UPDATE messages SET state = 'unknown', final_at = ?,"
            " error_detail = COALESCE(error_detail || '; ', '') ||"
            " 'no delivery receipt within smpp.receipt_timeout'"
            f" WHERE {_may_become('unknown')} AND submitted_at <= ? RETURNING id",
            (now, now - timeout))

    async def expire_due(self, now: float) -> list[int]:
        """Queued texts past their `expires_at` become `expired`: late is worse than never."""
        return await self._ids_of(
            "UPDATE messages SET state = 'expired', final_at = ?,"
            " error_detail = COALESCE(error_detail || '; ', '') ||"
            " 'expired: not sent before expires_at (outbox.max_age after the call)'"
            f" WHERE {_may_become('expired')} AND expires_at IS NOT NULL AND expires_at <= ?"
            " RETURNING id", (now, now))

    async def recover_in_flight(self, mode: str, now: float) -> list[int]:
        """At start-up, before anything is claimed: texts left in `sending` by an unclean stop
        may or may not have reached the SMSC.

        `resend`: queue them again, marked `duplicate_risk`; `drop`: fail them (`crash_drop`).
        """
        if mode == "drop":
            return await self._ids_of(
                "UPDATE messages SET state = 'failed', final_at = ?, error_detail ="
                " 'crash_drop: interrupted mid-submit; not resent (outbox.after_crash)'"
                " WHERE state = 'sending' RETURNING id", (now,))
        if mode == "resend":
            return await self._ids_of(
                "UPDATE messages SET state = 'queued', duplicate_risk = 1, not_before = ?,"
                " error_detail = 'resent after an unclean stop: may arrive twice'"
                " WHERE state = 'sending' RETURNING id", (now,))
        raise ValueError(f"recover_in_flight: mode must be 'resend' or 'drop', not {mode!r}")

    async def message(self, message_id: int) -> OutboxMessage:
        rows = await self._read(lambda: self._rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)))
        if not rows:
            raise KeyError(message_id)
        return _message(rows[0])

    async def messages(self, *, state: str | None = None) -> list[OutboxMessage]:
        params: tuple[str, ...] = ()
        if state is None:
            sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages ORDER BY id"
        else:
            sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE state = ? ORDER BY id"
            params = (state,)
        return [_message(row) for row in await self._read(lambda: self._rows(sql, params))]

    async def messages_for_call(self, pbx: str, call_id: str) -> list[OutboxMessage]:
        rows = await self._read(lambda: self._rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE pbx = ? AND call_id = ?"
            " ORDER BY id", (pbx, call_id)))
        return [_message(row) for row in rows]

    async def call(self, pbx: str, call_id: str) -> dict[str, Any] | None:
        """The stored row of one call (columns by name), or None."""
        async def work() -> dict[str, Any] | None:
            async with self._db.execute("SELECT * FROM calls WHERE pbx = ? AND call_id = ?",
                                        (pbx, call_id)) as cursor:
                row = await cursor.fetchone()
                names = [column[0] for column in cursor.description]
            return dict(zip(names, row, strict=True)) if row else None

        return await self._read(work)

    async def count_calls(self) -> int:
        return int(await self._read(lambda: self._scalar("SELECT COUNT(*) FROM calls")))

    # ------------------------------------------------------------------ receipts and replies

    async def apply_receipt(self, receipted_id: str | None, state: str, error: str | None,
                            at: float, raw: dict[str, str] | None = None, *,
                            text_id: str | None = None) -> int | None:
        """Match a delivery receipt to its part (docs/receipts.md); settle the message.

        A message is delivered when every part is, undeliverable when any part fails; a
        final message stays as it is. Every receipt is kept (raw), matched or not; an
        unmatched one is matched again, by the same rules, when a submit is recorded.
        """
        return (await self.apply_receipts([ReceiptIn(receipted_id, text_id, state, error, at,
                                                     raw or {})])).matched[0]

    async def apply_receipts(self, receipts: Sequence[ReceiptIn]) -> AppliedReceipts:
        """`apply_receipt` for many receipts, in order, in one transaction: the message id
        each matched (None: kept unmatched) and how many messages each settled as."""
        settled: dict[str, int] = {}
        finals: dict[int, str] = {}

        async def work() -> list[int | None]:
            return await self._apply_receipts(receipts, settled, finals)

        matched = await self._transaction(work) if receipts else []
        return AppliedReceipts(matched, settled, finals)

    async def _apply_receipts(self, receipts: Sequence[ReceiptIn], settled: dict[str, int],
                              finals: dict[int, str] | None = None) -> list[int | None]:
        """A few statements whatever the batch size (a carrier sends receipts in bursts)."""
        matches = await self._apply_to_parts(receipts, settled, finals)
        rows = []
        for receipt, match in zip(receipts, matches, strict=True):
            exact = exact_receipt_id(receipt.receipted_id, receipt.text_id)
            readings = [exact] if exact else []
            readings += other_base_readings(receipt.receipted_id, receipt.text_id)
            rows.append((exact or "", json.dumps(readings), receipt.receipted_id,
                         receipt.text_id, receipt.state, receipt.error, receipt.at,
                         match.part.message_id if match.part else None, match.matched_by,
                         json.dumps(receipt.raw, ensure_ascii=False)))
        await self._db.executemany(
            "INSERT INTO receipts (smsc_id, candidates, receipted_id, text_id, state, error,"
            " at, message_id, matched_by, raw) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        return [match.part.message_id if match.part else None for match in matches]

    async def _apply_to_parts(self, receipts: Sequence[ReceiptIn],
                              settled: dict[str, int] | None = None,
                              finals: dict[int, str] | None = None) -> list[_ReceiptMatch]:
        """Match receipts, in order, to the parts they name (`_match_receipt`), apply them
        and settle their messages; what each matched. An ambiguous one is logged."""
        every_id = sorted({reading for receipt in receipts for reading in (
            exact_receipt_id(receipt.receipted_id, receipt.text_id),
            *other_base_readings(receipt.receipted_id, receipt.text_id)) if reading})
        parts: dict[str, list[_Part]] = {}
        for start in range(0, len(every_id), 500):
            chunk = every_id[start:start + 500]
            for smsc_id, message_id, part_no, state, claimed in await self._rows(
                    "SELECT p.smsc_id, p.message_id, p.part_no, p.state,"
                    " COALESCE(m.sending_at, m.submitted_at, m.created_at)"
                    " FROM message_parts AS p JOIN messages AS m ON m.id = p.message_id"
                    f" WHERE p.smsc_id IN ({','.join('?' * len(chunk))})"
                    " ORDER BY p.message_id, p.part_no", chunk):
                parts.setdefault(str(smsc_id), []).append(_Part(
                    int(message_id), int(part_no), str(smsc_id), state == "submitted",
                    float(claimed)))
        # texts claimed whose submit_sm_resp is not recorded: their ids are not known yet
        in_flight = [float(claimed) for claimed, in await self._rows(
            "SELECT COALESCE(sending_at, created_at) FROM messages WHERE state = 'sending'")]
        matches: list[_ReceiptMatch] = []
        part_updates: list[tuple[Any, ...]] = []
        settle_at: dict[int, float] = {}
        for receipt in receipts:
            match = _match_receipt(receipt, parts, in_flight)
            matches.append(match)
            if match.matched_by == AMBIGUOUS:
                log.warning(
                    "delivery receipt names more than one text: kept unmatched, applied to "
                    "none (check that the SMSC's message ids are unique, and which base it "
                    "writes them in)", receipted_id=receipt.receipted_id,
                    text_id=receipt.text_id, state=receipt.state,
                    candidates=[f"message {part.message_id} part {part.part_no} id "
                                f"{part.smsc_id}" for part in match.candidates])
            part = match.part
            if part is None:
                continue
            part_state = _part_state(receipt.state)
            if part_state != "submitted":  # ACCEPTD, ENROUTE…: nothing final yet
                if part.pending:
                    part_updates.append((part_state, receipt.error, receipt.at,
                                         part.message_id, part.part_no))
                part.pending = False
                settle_at[part.message_id] = receipt.at
        await self._db.executemany(
            "UPDATE message_parts SET state = ?, error = ?, receipt_at = ?"
            " WHERE message_id = ? AND part_no = ? AND state = 'submitted'", part_updates)
        for message_id, at in settle_at.items():
            final = await self._settle(message_id, at)
            if final is not None:
                if settled is not None:
                    settled[final] = settled.get(final, 0) + 1
                if finals is not None:
                    finals[message_id] = final
        return matches

    async def _settle(self, message_id: int, at: float) -> str | None:
        """Move the message to its final state once its parts say so; that state, if moved."""
        rows = await self._rows(
            "SELECT m.parts, COUNT(p.part_no), SUM(p.state = 'delivered'),"
            " SUM(p.state = 'undeliverable'), MAX(CASE WHEN p.state = 'undeliverable'"
            " THEN p.error END) FROM messages AS m LEFT JOIN message_parts AS p"
            " ON p.message_id = m.id WHERE m.id = ? GROUP BY m.id", (message_id,))
        parts, recorded, delivered, bad, error = rows[0]
        if bad:
            final, detail = "undeliverable", f"receipt error {error}" if error else "undeliverable"
        elif delivered and delivered == recorded and recorded >= parts:
            final, detail = "delivered", None
        else:
            return None
        moved, _ = await self._change(
            "UPDATE messages SET state = ?, final_at = ?,"
            " error_detail = COALESCE(?, error_detail)"
            f" WHERE id = ? AND {_may_become(final)}", (final, at, detail, message_id))
        return final if moved else None

    async def add_inbound(self, source: str, destination: str, text: str, at: float,
                          keyword: str | None = None) -> int:
        """Keep a text from a caller (MO); returns its id."""
        async def work() -> int:
            _, row_id = await self._change(
                "INSERT INTO inbound (source, destination, text, at, keyword)"
                " VALUES (?,?,?,?,?)", (source, destination, text, at, keyword))
            return int(row_id or 0)

        return await self._transaction(work)

    async def opt_out(self, e164: str, keyword: str, at: float) -> bool:
        """True if the number was not opted out before. Its queued texts to callers fail
        (`opted_out`) in the same transaction: a deferred text never follows a STOP."""
        async def work() -> bool:
            inserted, _ = await self._change(
                "INSERT OR IGNORE INTO opt_outs (e164, at, keyword) VALUES (?,?,?)",
                (e164, at, keyword))
            await self._change(
                "UPDATE messages SET state = 'failed', final_at = ?,"
                " error_detail = 'opted_out: the caller replied ' || ? || ' before it was sent'"
                f" WHERE destination = ? AND kind IN ({_quoted(CALLER_KINDS)})"
                f" AND state = 'queued' AND {_may_become('failed')}", (at, keyword, e164))
            return inserted == 1

        return await self._transaction(work)

    async def opt_in(self, e164: str, at: float) -> bool:
        """True if the number was opted out (the opt-out is deleted; `inbound` keeps history)."""
        async def work() -> bool:
            return (await self._change("DELETE FROM opt_outs WHERE e164 = ?", (e164,)))[0] == 1

        return await self._transaction(work)

    async def is_opted_out(self, e164: str) -> bool:
        return bool(await self._read(lambda: self._scalar(
            "SELECT 1 FROM opt_outs WHERE e164 = ?", (e164,))))

    # ------------------------------------------------------------------ what the policy reads

    async def policy_view(self, e164: str | None, group: str | None, now: float,
                          prefix: str | None = None, prefix_len: int = 6) -> PolicyView:
        """What the policy needs to know about this caller and the recent traffic.

        Counts are texts to callers (`CALLER_KINDS`) created in the window that did not fail
        or expire. The prefix range is `prefix` if given, else '+' and the first `prefix_len`
        digits of `e164`.
        """
        if prefix is None and e164:
            prefix = "+" + e164.lstrip("+")[:prefix_len]
        counted = f"kind IN ({_quoted(CALLER_KINDS)}) AND state NOT IN ('failed', 'expired')"
        hour, day = now - 3600, now - 86400

        async def work() -> PolicyView:
            row = (await self._rows(
                f"SELECT SUM(created_at > ?), COUNT(*) FROM messages WHERE {counted}"
                " AND created_at > ?", (hour, day)))[0]
            opted_out, last_text, prefix_hour = False, None, 0
            if e164:
                opted_out = bool(await self._scalar("SELECT 1 FROM opt_outs WHERE e164 = ?",
                                                    (e164,)))
                last_text = await self._scalar(
                    f"SELECT MAX(created_at) FROM messages WHERE destination = ? AND {counted}",
                    (e164,))
            if prefix:
                prefix_hour = int(await self._scalar(
                    f"SELECT COUNT(*) FROM messages WHERE {counted} AND created_at > ?"
                    " AND substr(destination, 1, ?) = ?", (hour, len(prefix), prefix)) or 0)
            off = {name for name, in await self._rows(
                "SELECT name FROM switches WHERE enabled = 0")}
            return PolicyView(
                opted_out=opted_out, last_text_at=last_text, texts_last_hour=int(row[0] or 0),
                texts_last_day=int(row[1] or 0), prefix_texts_last_hour=prefix_hour,
                global_enabled="global" not in off,
                group_enabled=f"group:{group}" not in off if group else True)

        return await self._read(work)

    async def policy_views(self, callers: Sequence[tuple[str | None, str | None, str | None]],
                           now: float) -> list[PolicyView]:
        """`policy_view` for many (e164, group, prefix) at once: a storm of hangups costs a
        handful of queries, not a handful per call."""
        counted = f"kind IN ({_quoted(CALLER_KINDS)}) AND state NOT IN ('failed', 'expired')"
        hour, day = now - 3600, now - 86400
        numbers = sorted({e164 for e164, _, _ in callers if e164})
        prefixes = {prefix for _, _, prefix in callers if prefix}

        async def work() -> list[PolicyView]:
            # one statement for the whole batch
            parts = [f"SELECT 'total', SUM(created_at > ?), COUNT(*) FROM messages WHERE"
                     f" {counted} AND created_at > ?",
                     "SELECT 'off', name, NULL FROM switches WHERE enabled = 0"]
            params: list[Any] = [hour, day]
            for length in sorted({len(prefix) for prefix in prefixes}):
                parts.append(f"SELECT 'prefix', substr(destination, 1, ?), COUNT(*) FROM"
                             f" messages WHERE {counted} AND created_at > ? GROUP BY 2")
                params += [length, hour]
            statements = []
            for start in range(0, len(numbers), 10000):  # SQLite allows 32766 parameters
                chunk = numbers[start:start + 10000]
                marks = ",".join("?" * len(chunk))
                parts.append(f"SELECT 'opted', e164, NULL FROM opt_outs WHERE e164 IN ({marks})")
                parts.append(f"SELECT 'last', destination, MAX(created_at) FROM messages"
                             f" WHERE destination IN ({marks}) AND {counted} GROUP BY 2")
                statements.append((" UNION ALL ".join(parts), [*params, *chunk, *chunk]))
                parts, params = [], []
            if parts:
                statements.append((" UNION ALL ".join(parts), params))
            rows = [row for sql, values in statements for row in await self._rows(sql, values)]
            texts_hour = texts_day = 0
            opted: set[str] = set()
            last: dict[str, float] = {}
            by_prefix: dict[str, int] = {}
            off: set[str] = set()
            for kind, key, value in rows:
                if kind == "total":
                    texts_hour, texts_day = int(key or 0), int(value or 0)
                elif kind == "off":
                    off.add(key)
                elif kind == "prefix":
                    by_prefix[key] = int(value)
                elif kind == "opted":
                    opted.add(key)
                else:
                    last[key] = value
            return [PolicyView(
                opted_out=bool(e164 and e164 in opted),
                last_text_at=last.get(e164) if e164 else None,
                texts_last_hour=texts_hour, texts_last_day=texts_day,
                prefix_texts_last_hour=by_prefix.get(prefix, 0) if prefix else 0,
                global_enabled="global" not in off,
                group_enabled=f"group:{group}" not in off if group else True)
                for e164, group, prefix in callers]

        return await self._read(work)

    async def set_switch(self, name: str, enabled: bool, at: float) -> None:
        """`global` or `group:<name>`; a disabled switch also holds texts already queued."""
        async def work() -> None:
            await self._change("INSERT INTO switches (name, enabled, at) VALUES (?,?,?)"
                               " ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled,"
                               " at = excluded.at", (name, int(enabled), at))

        await self._transaction(work)

    async def switches(self) -> dict[str, bool]:
        rows = await self._read(lambda: self._rows("SELECT name, enabled FROM switches"))
        return {name: bool(enabled) for name, enabled in rows}

    # ------------------------------------------------------------------ status for the CLI

    async def set_status(self, name: str, value: str, at: float | None = None) -> None:
        stamp = time.time() if at is None else at

        async def work() -> None:
            await self._change("INSERT INTO status (name, value, at) VALUES (?,?,?)"
                               " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                               " at = excluded.at", (name, value, stamp))

        await self._transaction(work)

    async def statuses(self) -> dict[str, tuple[str, float]]:
        rows = await self._read(lambda: self._rows("SELECT name, value, at FROM status"))
        return {name: (value, at) for name, value, at in rows}

    async def outbox_stats(self, now: float) -> dict[str, Any]:
        """Counts by state, the age of the oldest due queued text, deferred and at-risk counts."""
        async def work() -> dict[str, Any]:
            rows = await self._rows("SELECT state, COUNT(*) FROM messages GROUP BY state")
            by_state = {state: 0 for state in TRANSITIONS}
            by_state.update({state: count for state, count in rows})
            oldest = await self._scalar("SELECT MIN(created_at) FROM messages WHERE state ="
                                        " 'queued' AND not_before <= ?", (now,))
            deferred = await self._scalar("SELECT COUNT(*) FROM messages WHERE state ="
                                          " 'queued' AND not_before > ?", (now,))
            at_risk = await self._scalar("SELECT COUNT(*) FROM messages WHERE"
                                         " duplicate_risk = 1")
            return {"by_state": by_state,
                    "oldest_queued_age": None if oldest is None else max(0.0, now - oldest),
                    "deferred": int(deferred or 0),
                    "duplicate_risk": int(at_risk or 0)}

        return await self._read(work)

    async def unmatched_receipts(self, since: float, until: float | None = None,
                                 ) -> dict[str, int]:
        """Receipts that arrived in [since, until] and are still unmatched: `unmatched`, and
        of those `ambiguous` (they named more than one text). Read through the partial index
        `receipts_unmatched`: bounded by the unmatched receipts of the period, not history."""
        async def work() -> dict[str, int]:
            columns = {str(row[1]) for row in await self._rows("PRAGMA table_info(receipts)")}
            ambiguous = (f"SUM(matched_by = '{AMBIGUOUS}')" if "matched_by" in columns
                         else "0")
            row = (await self._rows(
                f"SELECT COUNT(*), {ambiguous} FROM receipts"
                " WHERE message_id IS NULL AND at >= ? AND at <= ?",
                (since, float("inf") if until is None else until)))[0]
            return {"unmatched": int(row[0] or 0), "ambiguous": int(row[1] or 0)}

        return await self._read(work)

    # ------------------------------------------------------------------ read-only: report, status

    @classmethod
    async def open_readonly(cls, path: str) -> Store:
        """Open an existing store for reading only (`mcdaemon report` and `status`).

        Nothing is created, migrated or changed, so no write access is needed: it reads beside
        the running daemon (WAL) and from a read-only file in a read-only directory. A store of
        an older schema is read as it is (what it lacks reads as empty); one written by a newer
        mcdaemon is refused. Writing through it fails.
        """
        file = Path(path)
        if not file.is_file():
            raise StoreError(f"there is no store at {path} (check store.path; the daemon "
                             "creates it when it first runs)")
        if not os.access(file, os.R_OK):
            raise StoreError(f"the store {path} is not readable by this user (check its owner "
                             "and mode, or run as the daemon's user)")
        uri = file.resolve().as_uri()
        # While the daemon has the store open there is a -wal file, and reading goes through
        # its -shm index. Without one nobody has the file open: it is read as it is
        # (immutable), creating nothing beside it; a -wal/-shm made by another user here
        # could keep the daemon from opening its store at the next start.
        live = Path(path + "-wal").exists()
        try:
            return await cls._connect_readonly(f"{uri}?{'mode=ro' if live else 'immutable=1'}",
                                               path)
        except sqlite3.Error as exc:
            hint = (" (its -wal and -shm files must be readable by this user while the daemon "
                    "runs)" if live else "")
            raise StoreError(f"cannot read the store {path}: {exc}{hint}") from exc

    @classmethod
    async def _connect_readonly(cls, uri: str, path: str) -> Store:
        try:
            db = await aiosqlite.connect(uri, uri=True, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        store = cls(db, path)
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            version = int(await store._scalar("PRAGMA user_version"))
            tables = {name for name, in await store._rows(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.OperationalError:
            await db.close()
            raise
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise StoreError(f"cannot use the store {path}: {exc} (is it an mcdaemon "
                             "database?)") from exc
        except BaseException:
            await db.close()
            raise
        if version > SCHEMA_VERSION or version < 1 or "calls" not in tables:
            await db.close()
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer mcdaemon (schema {version}, "
                                 f"this version knows {SCHEMA_VERSION}): upgrade mcdaemon")
            raise StoreError(f"{path} is not an mcdaemon store (no schema; check store.path)")
        return store

    async def tables(self) -> set[str]:
        """The names of the store's tables (a store of an older schema lacks the newer ones)."""
        return {name for name, in await self._read(lambda: self._rows(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))}

    async def report_rows(self, since: float, until: float) -> dict[str, list[dict[str, Any]]]:
        """What `mcdaemon report` computes from, as rows (dicts by column name).

        `calls`: calls that ended in [since, until]; `texts`: their first texts (kind
        `first`); `inbound`, `opt_outs`, `bookings`: from `since` on (a reply, an opt-out or a
        booking follows its call); `receipts_unmatched`: one row, `unmatched_receipts` of the
        period. A table the store does not have yet gives no rows.
        """
        tables = await self.tables()
        queries = {
            "calls": ("SELECT pbx, call_id, caller, caller_e164, caller_name, did, grp, outcome,"
                      " ended, partial, textable, reason, decision_group, template, variant"
                      " FROM calls WHERE ended >= ? AND ended <= ? ORDER BY ended, pbx, call_id",
                      (since, until)),
            "texts": ("SELECT m.id, m.pbx, m.call_id, m.destination, m.grp, m.variant, m.state,"
                      " m.created_at, m.submitted_at, m.final_at FROM messages AS m JOIN calls"
                      " AS c ON c.pbx = m.pbx AND c.call_id = m.call_id WHERE m.kind = 'first'"
                      " AND c.ended >= ? AND c.ended <= ? ORDER BY m.id", (since, until)),
            "inbound": ("SELECT source, text, at FROM inbound WHERE at >= ? ORDER BY at, id",
                        (since,)),
            "opt_outs": ("SELECT e164, at, keyword FROM opt_outs WHERE at >= ? ORDER BY at",
                         (since,)),
        }
        if "bookings" in tables:
            queries["bookings"] = ("SELECT id, e164, value, currency, note, at, pbx, call_id"
                                   " FROM bookings WHERE at >= ? ORDER BY at, id", (since,))
        if "campaigns" in tables:
            queries["campaigns"] = ("SELECT id, e164, grp, state, reason, created_at, closed_at"
                                    " FROM campaigns WHERE created_at >= ? AND created_at <= ?"
                                    " ORDER BY id", (since, until))

        async def work() -> dict[str, list[dict[str, Any]]]:
            result: dict[str, list[dict[str, Any]]] = {"bookings": []}
            for name, (sql, params) in queries.items():
                async with self._db.execute(sql, params) as cursor:
                    names = [column[0] for column in cursor.description]
                    result[name] = [dict(zip(names, row, strict=True))
                                    for row in await cursor.fetchall()]
            return result

        rows = await self._read(work)
        # one row: the receipts of the period still unmatched, and of those the ambiguous
        rows["receipts_unmatched"] = [await self.unmatched_receipts(since, until)]
        return rows

    # ------------------------------------------------------------------ contacts

    async def contacts_for(self, numbers: Sequence[str]) -> dict[str, Contact]:
        """The stored contacts among these E.164 numbers (a few queries whatever the count)."""
        wanted = sorted(set(numbers))

        async def work() -> dict[str, Contact]:
            found: dict[str, Contact] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                for row in await self._rows(
                        "SELECT e164, name, tags, source, updated_at FROM contacts"
                        f" WHERE e164 IN ({','.join('?' * len(chunk))})", chunk):
                    found[str(row[0])] = _contact(row)
            return found

        return await self._read(work) if wanted else {}

    async def merge_contacts(self, contacts: Sequence[Contact]) -> tuple[int, int]:
        """Add or update contacts in one transaction: a non-empty name replaces the stored
        one, tags are added to the stored ones. Returns (added, updated)."""
        async def work() -> tuple[int, int]:
            known: dict[str, Contact] = {}
            numbers = sorted({contact.e164 for contact in contacts})
            for start in range(0, len(numbers), 500):
                chunk = numbers[start:start + 500]
                for row in await self._rows(
                        "SELECT e164, name, tags, source, updated_at FROM contacts"
                        f" WHERE e164 IN ({','.join('?' * len(chunk))})", chunk):
                    known[str(row[0])] = _contact(row)
            added = sum(1 for number in numbers if number not in known)
            merged = [known[contact.e164].merged(contact) if contact.e164 in known else contact
                      for contact in contacts]
            await self._db.executemany(
                "INSERT INTO contacts (e164, name, tags, source, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT (e164) DO UPDATE SET name = excluded.name, tags = excluded.tags,"
                " source = excluded.source, updated_at = excluded.updated_at",
                [(c.e164, c.name, json.dumps(list(c.tags), ensure_ascii=False), c.source,
                  c.updated_at) for c in merged])
            return added, len(numbers) - added

        return await self._transaction(work) if contacts else (0, 0)

    async def list_contacts(self) -> list[Contact]:
        """Every contact, by number (none when the store predates the contacts table)."""
        if "contacts" not in await self.tables():
            return []
        rows = await self._read(lambda: self._rows(
            "SELECT e164, name, tags, source, updated_at FROM contacts ORDER BY e164"))
        return [_contact(row) for row in rows]

    async def contact(self, e164: str) -> Contact | None:
        if "contacts" not in await self.tables():
            return None
        return (await self.contacts_for([e164])).get(e164)

    # ------------------------------------------------------------------ bookings

    async def add_booking(self, e164: str, value: float, at: float, *,
                          currency: str | None = None, note: str | None = None,
                          window: float = 30 * 86400.0, now: float | None = None) -> Booking:
        """Record a booking (a sale, an appointment) from `e164` worth `value`.

        It is attributed to the most recent texted missed call from that number: the call
        ended at most `window` seconds before `at` and its first text was submitted (or got
        further) by `at`. None found: it is kept unattributed.
        """
        recorded = time.time() if now is None else now
        sent = _quoted(("submitted", "delivered", "undeliverable", "unknown"))

        async def work() -> Booking:
            rows = await self._rows(
                "SELECT c.pbx, c.call_id FROM messages AS m JOIN calls AS c"
                " ON c.pbx = m.pbx AND c.call_id = m.call_id WHERE m.destination = ?"
                f" AND m.kind = 'first' AND m.state IN ({sent}) AND m.submitted_at <= ?"
                " AND c.ended <= ? AND c.ended >= ? ORDER BY c.ended DESC, m.id DESC LIMIT 1",
                (e164, at, at, at - window))
            pbx, call_id = (str(rows[0][0]), str(rows[0][1])) if rows else (None, None)
            _, row_id = await self._change(
                "INSERT INTO bookings (e164, value, currency, note, at, pbx, call_id,"
                " created_at) VALUES (?,?,?,?,?,?,?,?)",
                (e164, value, currency, note, at, pbx, call_id, recorded))
            return Booking(int(row_id or 0), e164, value, currency, note, at, pbx, call_id)

        return await self._transaction(work)

    # ------------------------------------------------------------------ webhook queue

    # Rows of `webhooks` go pending -> delivered | dead. Claiming reads only (no commit): the
    # worker keeps what it is sending in memory, and a crash mid-request sends it again
    # (receivers dedupe on delivery_id). One endpoint gets one call's events in order: a row
    # waits while an older pending row of the same endpoint and order_key exists.

    async def enqueue_webhooks(self, rows: Sequence[WebhookIn], now: float) -> int:
        """Queue deliveries (one transaction); a row whose (endpoint, event_key) is already
        queued is skipped. Returns how many were new."""
        if not rows:
            return 0

        async def work() -> int:
            before = self._db.total_changes
            await self._db.executemany(
                "INSERT OR IGNORE INTO webhooks (delivery_id, endpoint, event, event_key,"
                " order_key, body, next_at, created_at) VALUES (?,?,?,?,?,?,?,?)",
                [(row.delivery_id, row.endpoint, row.event, row.event_key, row.order_key,
                  row.body, now, now) for row in rows])
            return self._db.total_changes - before

        return await self._transaction(work)

    async def claim_due_webhooks(self, now: float, limit: int,
                                 busy: Sequence[int] = ()) -> list[WebhookDelivery]:
        """Up to `limit` pending deliveries due by `now`, oldest first, leaving out `busy`
        (in flight) and any row behind an older pending one of its endpoint and order_key."""
        if limit <= 0:
            return []
        busy_ids = sorted(set(busy))
        marks = ",".join("?" * len(busy_ids))
        sql = ("SELECT id, delivery_id, endpoint, event, body, attempts, created_at"
               " FROM webhooks AS w WHERE state = 'pending' AND next_at <= ?"
               + (f" AND id NOT IN ({marks})" if busy_ids else "")
               + " AND NOT EXISTS (SELECT 1 FROM webhooks AS e WHERE e.state = 'pending'"
               "  AND e.endpoint = w.endpoint AND e.order_key = w.order_key AND e.id < w.id)"
               " ORDER BY id LIMIT ?")
        rows = await self._read(lambda: self._rows(sql, [now, *busy_ids, limit]))
        return [WebhookDelivery(int(row[0]), str(row[1]), str(row[2]), str(row[3]),
                                str(row[4]), int(row[5]), float(row[6])) for row in rows]

    async def next_webhook_at(self, after: float) -> float | None:
        """When the earliest pending delivery due later than `after` is due (None: none)."""
        value = await self._read(lambda: self._scalar(
            "SELECT MIN(next_at) FROM webhooks WHERE state = 'pending' AND next_at > ?",
            (after,)))
        return None if value is None else float(value)

    async def settle_webhooks(self, results: Sequence[WebhookResult], now: float) -> None:
        """Record attempts in one transaction: `delivered`, `dead`, or `pending` again at
        `next_at` (a retry). Each counts one attempt; a row no longer pending is left."""
        async def work() -> None:
            await self._db.executemany(
                "UPDATE webhooks SET state = ?, attempts = attempts + 1,"
                " next_at = COALESCE(?, next_at), last_error = ?,"
                " final_at = CASE WHEN ? = 'pending' THEN NULL ELSE ? END"
                " WHERE id = ? AND state = 'pending'",
                [(result.state, result.next_at, result.error, result.state, now, result.id)
                 for result in results])

        if results:
            await self._transaction(work)

    async def mark_webhook_delivered(self, webhook_id: int, now: float) -> None:
        await self.settle_webhooks([WebhookResult(webhook_id, "delivered")], now)

    async def mark_webhook_retry(self, webhook_id: int, *, next_at: float, error: str,
                                 now: float) -> None:
        await self.settle_webhooks([WebhookResult(webhook_id, "pending", next_at, error)], now)

    async def mark_webhook_dead(self, webhook_id: int, *, error: str, now: float) -> None:
        await self.settle_webhooks([WebhookResult(webhook_id, "dead", None, error)], now)

    async def prune_webhooks(self, *, delivered_before: float, dead_before: float) -> int:
        """Forget delivered rows settled before `delivered_before`, dead ones before
        `dead_before`; returns how many were deleted."""
        async def work() -> int:
            return (await self._change(
                "DELETE FROM webhooks WHERE (state = 'delivered' AND final_at < ?)"
                " OR (state = 'dead' AND final_at < ?)", (delivered_before, dead_before)))[0]

        return await self._transaction(work)

    async def webhooks(self, *, state: str | None = None) -> list[dict[str, Any]]:
        """The queue's rows (columns by name), oldest first: for tests and inspection."""
        where = "" if state is None else " WHERE state = ?"

        async def work() -> list[dict[str, Any]]:
            async with self._db.execute(f"SELECT * FROM webhooks{where} ORDER BY id",
                                        () if state is None else (state,)) as cursor:
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True))
                        for row in await cursor.fetchall()]

        return await self._read(work)

    async def messages_by_ids(self, ids: Sequence[int]) -> list[OutboxMessage]:
        """The outbox rows with these ids (unknown ids are left out), by id."""
        wanted = sorted(set(ids))

        async def work() -> list[OutboxMessage]:
            found: list[OutboxMessage] = []
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                found += [_message(row) for row in await self._rows(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id IN"
                    f" ({','.join('?' * len(chunk))}) ORDER BY id", chunk)]
            return found

        return await self._read(work) if wanted else []

    async def latest_message_to(self, destination: str,
                                kinds: Sequence[str] = CALLER_KINDS) -> OutboxMessage | None:
        """The newest text of these kinds to `destination` (what a reply most likely answers)."""
        rows = await self._read(lambda: self._rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE destination = ?"
            f" AND kind IN ({_quoted(kinds)}) ORDER BY id DESC LIMIT 1", (destination,)))
        return _message(rows[0]) if rows else None


@dataclass(frozen=True, slots=True)
class Contact:
    """A row of `contacts`: a caller's name and tags, from an import (`source`)."""

    e164: str
    name: str | None
    tags: tuple[str, ...] = ()
    source: str = ""
    updated_at: float = 0.0

    def merged(self, newer: Contact) -> Contact:
        """`newer` over this one: its name if it has one, the tags of both."""
        tags = tuple(dict.fromkeys([*self.tags, *newer.tags]))
        return Contact(self.e164, newer.name or self.name, tags, newer.source or self.source,
                       max(self.updated_at, newer.updated_at))


def _contact(row: Sequence[Any]) -> Contact:
    try:
        tags = tuple(str(tag) for tag in json.loads(row[2] or "[]"))
    except (ValueError, TypeError):
        tags = ()
    return Contact(str(row[0]), row[1], tags, str(row[3] or ""), float(row[4] or 0.0))


@dataclass(frozen=True, slots=True)
class Booking:
    """A recorded booking and the call it is attributed to (pbx, call_id), if any."""

    id: int
    e164: str
    value: float
    currency: str | None
    note: str | None
    at: float
    pbx: str | None
    call_id: str | None


@dataclass(frozen=True, slots=True)
class WebhookIn:
    """One delivery to queue: an event's body for one endpoint."""

    delivery_id: str  # X-Mcdaemon-Delivery: receivers dedupe on it
    endpoint: str
    event: str
    event_key: str  # what makes the event unique (a replay queues nothing new)
    order_key: str  # one endpoint gets the events of one key in order
    body: str


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """A pending delivery, as claimed by the worker."""

    id: int
    delivery_id: str
    endpoint: str
    event: str
    body: str
    attempts: int  # made so far
    created_at: float


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What became of one attempt: `delivered`, `dead`, or `pending` again at `next_at`."""

    id: int
    state: str
    next_at: float | None = None
    error: str | None = None
