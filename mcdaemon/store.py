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

Concurrency inside one process: the daemon's tasks share one connection, so every
transaction holds an asyncio lock (two tasks must not interleave `BEGIN`s on it) and runs
shielded from cancellation: a cancelled caller never leaves the connection inside a
half-done transaction.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from .records import CallRecord, Decision, PolicyView

log = structlog.get_logger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 2
#: `UPDATE … RETURNING` (the one-statement claim) needs this SQLite library
MIN_SQLITE = (3, 35, 0)
BUSY_TIMEOUT_MS = 10_000

#: state -> the states it may move to. The only definition of the message life cycle.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"sending", "expired", "failed"}),
    "sending": frozenset({"submitted", "queued", "failed"}),
    "submitted": frozenset({"delivered", "undeliverable"}),
    "delivered": frozenset(),
    "undeliverable": frozenset(),
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
)


class StoreError(Exception):
    """The store cannot be used; the message says what to fix."""


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


def _normalise_ids(candidates: Sequence[str]) -> list[str]:
    """SMSC ids compare case-insensitively (hex may come back in either case)."""
    ids: list[str] = []
    for candidate in candidates:
        value = candidate.strip().lower()
        if value and value not in ids:
            ids.append(value)
    return ids


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
            db = await aiosqlite.connect(path, isolation_level=None)
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
            log.info("store migrated", path=self.path, schema=number + 1)

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    # ------------------------------------------------------------------ plumbing

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _change(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, int | None]:
        """Run one statement; its rowcount and lastrowid."""
        async with self._db.execute(sql, params) as cursor:
            return cursor.rowcount, cursor.lastrowid

    async def _read(self, work: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            return await work()

    async def _transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` in one IMMEDIATE transaction, whole or not at all."""
        return await asyncio.shield(self._locked_transaction(work))

    async def _locked_transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                result = await work()
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
            return result

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
        if len(calls) != len(destinations):
            raise ValueError("record_calls needs one destination per call")
        resolved = [destination or call.decision.destination
                    for call, destination in zip(calls, destinations, strict=True)]
        for call, destination in zip(calls, resolved, strict=True):
            if call.decision.text and not (destination and call.decision.body):
                raise ValueError(f"call {call.record.pbx}/{call.record.call_id}: a decision to "
                                 "text needs a destination and a body")

        async def work() -> list[int | None]:
            return [await self._insert_call(call.record, call.decision, now, destination)
                    for call, destination in zip(calls, resolved, strict=True)]

        return await self._transaction(work)

    async def _insert_call(self, record: CallRecord, decision: Decision, now: float,
                           destination: str | None) -> int | None:
        inserted, _ = await self._change(
            "INSERT OR IGNORE INTO calls (pbx, call_id, caller, caller_e164, caller_name, did,"
            " grp, outcome, started, ended, wait_seconds, partial, record, textable, reason,"
            " detail, decision_group, template, variant, decided_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (record.pbx, record.call_id, record.caller, record.caller_e164, record.caller_name,
             record.did, record.group, str(record.outcome), record.started, record.ended,
             record.wait_seconds, int(record.partial),
             json.dumps(record.as_dict(), ensure_ascii=False), int(decision.text),
             decision.reason, decision.detail, decision.group, decision.template,
             decision.variant, now))
        if inserted != 1 or not decision.text or not destination or not decision.body:
            return None
        return await self._insert_message(
            pbx=record.pbx, call_id=record.call_id, kind="first", seq=0,
            destination=destination, body=decision.body, group=decision.group,
            variant=decision.variant, now=now,
            not_before=decision.send_after if decision.send_after is not None else now,
            expires_at=decision.expires_at, call_ended_at=record.ended)

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
        ids = [smsc_id.strip().lower() for smsc_id in smsc_ids]

        async def work() -> bool:
            moved, _ = await self._change(
                "UPDATE messages SET state = 'submitted', submitted_at = ?, parts = ?,"
                f" smsc_ids = ?, error_code = NULL WHERE id = ? AND {_may_become('submitted')}",
                (now, len(ids), json.dumps(ids), message_id))
            for number, smsc_id in enumerate(ids, start=1):
                await self._change("INSERT OR IGNORE INTO message_parts (message_id, part_no,"
                                   " smsc_id) VALUES (?, ?, ?)", (message_id, number, smsc_id))
            await self._replay_early_receipts(message_id, set(ids))
            return moved == 1

        moved = await self._transaction(work)
        if not moved:
            log.warning("submitted text had already left 'sending'", message_id=message_id)
        return moved

    async def _replay_early_receipts(self, message_id: int, ids: set[str]) -> None:
        """Apply receipts that arrived before their submit_sm_resp was recorded."""
        rows = await self._rows(
            "SELECT r.id, r.state, r.error, r.at, r.candidates FROM receipts AS r, messages AS m"
            " WHERE m.id = ? AND r.message_id IS NULL"
            " AND r.at >= COALESCE(m.sending_at, m.created_at) - ? ORDER BY r.id",
            (message_id, _RECEIPT_REPLAY_SLACK))
        for receipt_id, state, error, at, candidates in rows:
            matched = [smsc_id for smsc_id in json.loads(candidates) if smsc_id in ids]
            if matched:
                await self._apply_to_part(matched, state, error, at)
                await self._change("UPDATE receipts SET message_id = ? WHERE id = ?",
                                   (message_id, receipt_id))

    async def mark_retry(self, message_id: int, *, not_before: float, error_code: int | None,
                         detail: str, now: float, duplicate_risk: bool = False) -> bool:
        """A temporary failure: back to `queued` until `not_before`. `duplicate_risk` when the
        SMSC may have taken it anyway (a submit that timed out)."""
        return await self._move(
            "UPDATE messages SET state = 'queued', not_before = ?, error_code = ?,"
            " error_detail = ?, duplicate_risk = MAX(duplicate_risk, ?)"
            f" WHERE id = ? AND {_may_become('queued')}",
            (not_before, error_code, detail, int(duplicate_risk), message_id))

    async def mark_failed(self, message_id: int, *, error_code: int | None, detail: str,
                          now: float) -> bool:
        """A permanent failure (or giving up): final. False if the message was past that."""
        return await self._move(
            "UPDATE messages SET state = 'failed', final_at = ?, error_code = ?,"
            f" error_detail = ? WHERE id = ? AND {_may_become('failed')}",
            (now, error_code, detail, message_id))

    async def _move(self, sql: str, params: Sequence[Any]) -> bool:
        async def work() -> int:
            return (await self._change(sql, params))[0]

        return await self._transaction(work) == 1

    async def _ids_of(self, sql: str, params: Sequence[Any]) -> list[int]:
        async def work() -> list[Any]:
            return await self._rows(sql, params)

        return sorted(int(row[0]) for row in await self._transaction(work))

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

    async def apply_receipt(self, candidates: Sequence[str], state: str, error: str | None,
                            at: float, raw: dict[str, str]) -> int | None:
        """Match a delivery receipt to a part by any candidate id; settle the message.

        A message is delivered when every part is, undeliverable when any part fails; a
        final message stays as it is. Every receipt is kept (raw), matched or not; an
        unmatched one is matched again when its submit is recorded.
        """
        ids = _normalise_ids(candidates)

        async def work() -> int | None:
            message_id = await self._apply_to_part(ids, state, error, at) if ids else None
            await self._change(
                "INSERT INTO receipts (smsc_id, candidates, state, error, at, message_id, raw)"
                " VALUES (?,?,?,?,?,?,?)",
                (ids[0] if ids else "", json.dumps(ids), state, error, at, message_id,
                 json.dumps(raw, ensure_ascii=False)))
            return message_id

        return await self._transaction(work)

    async def _apply_to_part(self, ids: Sequence[str], state: str, error: str | None,
                             at: float) -> int | None:
        marks = ",".join("?" * len(ids))
        # an SMSC that restarts its counter reuses ids: the newest message is the one meant
        rows = await self._rows(
            f"SELECT message_id, part_no FROM message_parts WHERE smsc_id IN ({marks})"
            " ORDER BY message_id DESC LIMIT 1", list(ids))
        if not rows:
            return None
        message_id, part_no = int(rows[0][0]), int(rows[0][1])
        part_state = _part_state(state)
        if part_state != "submitted":
            await self._change(
                "UPDATE message_parts SET state = ?, error = ?, receipt_at = ?"
                " WHERE message_id = ? AND part_no = ? AND state = 'submitted'",
                (part_state, error, at, message_id, part_no))
            await self._settle(message_id, at)
        return message_id

    async def _settle(self, message_id: int, at: float) -> None:
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
            return
        await self._change(
            "UPDATE messages SET state = ?, final_at = ?,"
            " error_detail = COALESCE(?, error_detail)"
            f" WHERE id = ? AND {_may_become(final)}", (final, at, detail, message_id))

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
            row = (await self._rows(
                f"SELECT SUM(created_at > ?), COUNT(*) FROM messages WHERE {counted}"
                " AND created_at > ?", (hour, day)))[0]
            opted: set[str] = set()
            last: dict[str, float] = {}
            for start in range(0, len(numbers), 500):
                chunk = numbers[start:start + 500]
                marks = ",".join("?" * len(chunk))
                opted |= {e164 for e164, in await self._rows(
                    f"SELECT e164 FROM opt_outs WHERE e164 IN ({marks})", chunk)}
                last.update(dict(await self._rows(
                    f"SELECT destination, MAX(created_at) FROM messages WHERE destination IN"
                    f" ({marks}) AND {counted} GROUP BY destination", chunk)))
            by_prefix: dict[str, int] = {}
            for length in {len(prefix) for prefix in prefixes}:
                by_prefix.update(dict(await self._rows(
                    f"SELECT substr(destination, 1, ?), COUNT(*) FROM messages WHERE {counted}"
                    " AND created_at > ? GROUP BY 1", (length, hour))))
            off = {name for name, in await self._rows(
                "SELECT name FROM switches WHERE enabled = 0")}
            return [PolicyView(
                opted_out=bool(e164 and e164 in opted),
                last_text_at=last.get(e164) if e164 else None,
                texts_last_hour=int(row[0] or 0), texts_last_day=int(row[1] or 0),
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
