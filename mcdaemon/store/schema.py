"""The store's schema: the message life cycle (`TRANSITIONS`) and the migrations, one list for
both databases: portable SQL where the engines agree, a `Dialects` pair where they do not
(the transition trigger, JSON functions), and column types written once in SQLite's words
that `migration_steps` turns into PostgreSQL's (`REAL` is 4 bytes there, too short for epoch
seconds; `INTEGER PRIMARY KEY` is SQLite's auto-numbered id).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import structlog

log = structlog.get_logger("mcdaemon.store")


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


#: message kinds that are texts to callers: they count for cooldowns and the fraud shield,
#: and an opt-out or a `disable` switch holds them back even once queued
CALLER_KINDS = ("first", "followup")
#: the texts the caps count (`Store.policy_views`): to callers, not failed or expired
COUNTED_TEXTS = (f"kind IN ({', '.join(repr(kind) for kind in CALLER_KINDS)})"
                 " AND state NOT IN ('failed', 'expired')")


#: `call_counts`' quarter hours: every time zone's midnight falls on one
CALL_BUCKET = 900
#: what the report counts a sent first text by besides its group, template, variant and
#: state: the milliseconds from its call's end to its submit, and the quarter hour it was
#: sent (each whole: `CAST(… AS INTEGER)` in SQLite), as `text_waits` and `text_counts`
#: keep them (their triggers write the same of NEW and OLD)
SENT_WAIT_MS = "(submitted_at - call_ended_at) * 1000"
SENT_QUARTER = f"submitted_at / {CALL_BUCKET}"
#: the sent first texts: the report's indexes of them hold no other
_SENT_FIRST = "kind = 'first' AND submitted_at IS NOT NULL"
#: states of a first text the SMSC took ("sent")
SENT_STATES = frozenset({"submitted", "delivered", "undeliverable", "unknown"})
#: … of a text that never will be (`messages_unsent`: a few in a hundred, kept apart from
#: the history's millions)
NEVER_SENT_STATES = FINAL_STATES - SENT_STATES
#: `text_counts`' and `text_waits`' days (UTC, of the call's end): the report reads the
#: whole days of its window from them and the texts of its two partial days one by one
TEXT_DAY = 86400
_TEXT_COUNT_COLUMNS = (
    "day INTEGER NOT NULL, quarter INTEGER NOT NULL, grp TEXT NOT NULL,"
    " texts INTEGER NOT NULL, PRIMARY KEY (day, quarter, grp)")
#: by wait first: the report sums each group's waits over its days in this order, unsorted
_TEXT_WAIT_COLUMNS = (
    "grp TEXT NOT NULL, wait_ms INTEGER NOT NULL, day INTEGER NOT NULL,"
    " texts INTEGER NOT NULL, PRIMARY KEY (grp, wait_ms, day)")
#: what `call_counts` counts calls by; a call's NULL there is '' (a key column may not be
#: NULL: two NULLs would be two keys), which the report takes as it takes NULL
_CALL_COUNT_KEY = ("decision_group", "did", "grp", "outcome", "reason", "textable")
_CALL_COUNT_COLUMNS = (
    "bucket INTEGER NOT NULL, decision_group TEXT NOT NULL, did TEXT NOT NULL,"
    " grp TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL,"
    " textable INTEGER NOT NULL, calls INTEGER NOT NULL, numbered INTEGER NOT NULL,"
    " PRIMARY KEY (bucket, decision_group, did, grp, outcome, reason, textable)")


def _whole(expression: str, dialect: Dialect) -> str:
    """`expression` truncated to an integer, as the report's `_WHOLE` writes it."""
    return (f"CAST({expression} AS INTEGER)" if dialect == "sqlite"
            else f"CAST(trunc({expression}) AS BIGINT)")


def _call_count_key(row: str, dialect: Dialect) -> list[str]:
    """`call_counts`' key of the call `row` (a table, NEW or OLD): its quarter hour, then
    `_CALL_COUNT_KEY` with NULL as ''."""
    bucket = _whole(f"{row}.ended / {CALL_BUCKET}", dialect)
    return [bucket, *(f"COALESCE({row}.{column}, '')" for column in _CALL_COUNT_KEY[:-1]),
            f"{row}.textable"]


def _numbered(row: str) -> str:
    """1 if the call `row` had the caller's number, else 0."""
    return f"CASE WHEN {row}.caller_e164 IS NOT NULL AND {row}.caller_e164 <> '' THEN 1 ELSE 0 END"


def _call_count_triggers() -> tuple[Dialects, ...]:
    """The triggers that keep `call_counts`: a call recorded adds itself to its key, a call
    removed takes itself off (a key left with no call goes), a call changed (by hand:
    mcdaemon never changes a recorded call) does both. A call with no end is not counted."""
    columns = "bucket, " + ", ".join(_CALL_COUNT_KEY)

    def add(row: str, dialect: Dialect) -> str:
        # `SELECT … WHERE`: SQLite's upsert after a SELECT needs its WHERE
        return (f"INSERT INTO call_counts ({columns}, calls, numbered)"
                f" SELECT {', '.join(_call_count_key(row, dialect))}, 1, {_numbered(row)}"
                f" WHERE {row}.ended IS NOT NULL"
                f" ON CONFLICT ({columns}) DO UPDATE SET calls = call_counts.calls + 1,"
                " numbered = call_counts.numbered + excluded.numbered")

    def take(row: str, dialect: Dialect) -> str:
        key = _call_count_key(row, dialect)
        where = " AND ".join([f"{row}.ended IS NOT NULL", *(
            f"{column} = {value}" for column, value in
            zip(("bucket", *_CALL_COUNT_KEY), key, strict=True))])
        return (f"UPDATE call_counts SET calls = calls - 1,"
                f" numbered = numbered - {_numbered(row)} WHERE {where};"
                f" DELETE FROM call_counts WHERE {where} AND calls <= 0")

    watched = "ended, caller_e164, " + ", ".join(_CALL_COUNT_KEY)
    return (
        Dialects(
            f"CREATE TRIGGER calls_counted AFTER INSERT ON calls BEGIN {add('NEW', 'sqlite')};"
            " END",
            "CREATE FUNCTION calls_counted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF TG_OP <> 'INSERT' THEN {take('OLD', 'postgresql')}; END IF;"
            f" IF TG_OP <> 'DELETE' THEN {add('NEW', 'postgresql')}; END IF;"
            " RETURN NULL; END $$;"
            " CREATE TRIGGER calls_counted AFTER INSERT OR DELETE OR UPDATE OF"
            f" {watched} ON calls FOR EACH ROW EXECUTE FUNCTION calls_counted()"),
        Dialects(
            f"CREATE TRIGGER calls_uncounted AFTER DELETE ON calls BEGIN"
            f" {take('OLD', 'sqlite')}; END",
            ""),  # PostgreSQL's one trigger above does all three
        Dialects(
            f"CREATE TRIGGER calls_recounted AFTER UPDATE OF {watched} ON calls BEGIN"
            f" {take('OLD', 'sqlite')}; {add('NEW', 'sqlite')}; END",
            ""),
    )


def _sent_first(row: str) -> str:
    """True if the message `row` (a table, NEW or OLD) is a sent first text of a call with
    an end: what `text_counts` and `text_waits` count."""
    return (f"{row}.kind = 'first' AND {row}.submitted_at IS NOT NULL"
            f" AND {row}.call_ended_at IS NOT NULL"
            f" AND {row}.state IN ({_quoted(sorted(SENT_STATES))})")


def _text_count_keys(row: str, dialect: Dialect) -> dict[str, list[tuple[str, str]]]:
    """Per table, the key (column, value) of the sent first text `row`: for `text_counts`
    the day its call ended, the quarter hour it was sent and its group (NULL as '', as in
    `call_counts`); for `text_waits` its group, the whole milliseconds from its call's end
    to its submit (`SENT_WAIT_MS`) and the day."""
    day = ("day", _whole(f"{row}.call_ended_at / {TEXT_DAY}", dialect))
    group = ("grp", f"COALESCE({row}.grp, '')")
    return {
        "text_counts": [day, ("quarter", _whole(f"{row}.submitted_at / {CALL_BUCKET}",
                                                dialect)), group],
        "text_waits": [group, ("wait_ms", _whole(
            f"({row}.submitted_at - {row}.call_ended_at) * 1000", dialect)), day]}


def _text_count_triggers() -> tuple[Dialects, ...]:
    """The triggers that keep `text_counts` and `text_waits`: a sent first text adds
    itself to its keys, a text removed takes itself off (a key left with no text goes), a
    text changed (sent; its group by hand) takes its old self off and adds its new self,
    as `call_counts`' triggers do for calls. A receipt changes none of the keys: it does
    not fire them."""
    def add(row: str, dialect: Dialect) -> str:
        statements = []
        for table, key in _text_count_keys(row, dialect).items():
            columns = ", ".join(column for column, _ in key)
            # `SELECT … WHERE`: SQLite's upsert after a SELECT needs its WHERE
            statements.append(
                f"INSERT INTO {table} ({columns}, texts)"
                f" SELECT {', '.join(value for _, value in key)}, 1"
                f" WHERE {_sent_first(row)} ON CONFLICT ({columns})"
                f" DO UPDATE SET texts = {table}.texts + 1")
        return "; ".join(statements)

    def take(row: str, dialect: Dialect) -> str:
        statements = []
        for table, key in _text_count_keys(row, dialect).items():
            where = " AND ".join([_sent_first(row), *(f"{c} = {v}" for c, v in key)])
            statements += [f"UPDATE {table} SET texts = texts - 1 WHERE {where}",
                           f"DELETE FROM {table} WHERE {where} AND texts <= 0"]
        return "; ".join(statements)

    watched = "kind, state, submitted_at, call_ended_at, grp"

    def changed(differs: str) -> str:  # whether counted, or a key column, differs
        return " OR ".join([f"({_sent_first('OLD')}) {differs} ({_sent_first('NEW')})", *(
            f"OLD.{column} {differs} NEW.{column}"
            for column in ("grp", "submitted_at", "call_ended_at"))])

    return (
        Dialects(
            f"CREATE TRIGGER texts_counted AFTER INSERT ON messages WHEN {_sent_first('NEW')}"
            f" BEGIN {add('NEW', 'sqlite')}; END",
            "CREATE FUNCTION texts_counted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF TG_OP = 'UPDATE' AND NOT ({changed('IS DISTINCT FROM')}) THEN RETURN NULL;"
            " END IF;"
            f" IF TG_OP <> 'INSERT' THEN {take('OLD', 'postgresql')}; END IF;"
            f" IF TG_OP <> 'DELETE' THEN {add('NEW', 'postgresql')}; END IF;"
            " RETURN NULL; END $$;"
            " CREATE TRIGGER texts_counted AFTER INSERT OR DELETE OR UPDATE OF"
            f" {watched} ON messages FOR EACH ROW EXECUTE FUNCTION texts_counted()"),
        Dialects(
            f"CREATE TRIGGER texts_uncounted AFTER DELETE ON messages WHEN {_sent_first('OLD')}"
            f" BEGIN {take('OLD', 'sqlite')}; END",
            ""),  # PostgreSQL's one trigger above does all three
        Dialects(
            f"CREATE TRIGGER texts_recounted AFTER UPDATE OF {watched} ON messages"
            f" WHEN {changed('IS NOT')} BEGIN {take('OLD', 'sqlite')}; {add('NEW', 'sqlite')};"
            " END",
            ""),
    )


def _text_count_backfill(dialect: Dialect) -> Iterator[str]:
    """The statements that count the sent first texts already stored into `text_counts`
    and `text_waits`."""
    for table, key in _text_count_keys("messages", dialect).items():
        yield (f"INSERT INTO {table} ({', '.join(c for c, _ in key)}, texts)"
               f" SELECT {', '.join(v for _, v in key)}, COUNT(*) FROM messages"
               f" WHERE {_sent_first('messages')}"
               f" GROUP BY {', '.join(str(n) for n in range(1, len(key) + 1))}")


#: the call's columns a booking carries a copy of (as `call_<column>`, of their type): what
#: the report counts bookings by, as `call_counts` counts calls
_BOOKED_FROM = (("ended", "REAL"), ("outcome", "TEXT"), ("decision_group", "TEXT"),
                ("did", "TEXT"), ("grp", "TEXT"))
BOOKED_CALL_COLUMNS = tuple((f"call_{column}", kind) for column, kind in _BOOKED_FROM)
BOOKED_CALL = ", ".join(column for column, _ in BOOKED_CALL_COLUMNS)
#: … as a call's (`c`) columns, in that order
BOOKED_FROM_CALL = ", ".join(f"c.{column}" for column, _ in _BOOKED_FROM)


def _booked_call_trigger() -> Dialects:
    """The trigger that copies a call's changed columns to its bookings."""
    watched = ", ".join(column for column, _ in _BOOKED_FROM)
    new = ", ".join(f"NEW.{column}" for column, _ in _BOOKED_FROM)
    copy = (f"UPDATE bookings SET ({BOOKED_CALL}) = ({new})"
            " WHERE pbx = NEW.pbx AND call_id = NEW.call_id")
    return Dialects(
        f"CREATE TRIGGER calls_booked AFTER UPDATE OF {watched} ON calls BEGIN {copy}; END",
        "CREATE FUNCTION calls_booked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" {copy}; RETURN NULL; END $$;"
        f" CREATE TRIGGER calls_booked AFTER UPDATE OF {watched} ON calls"
        " FOR EACH ROW EXECUTE FUNCTION calls_booked()")


def _may_become(target: str) -> str:
    """The SQL guard `state IN (…)` listing the states that may move to `target`."""
    sources = sorted(state for state, nexts in TRANSITIONS.items() if target in nexts)
    if not sources:
        raise ValueError(f"no state may become {target!r}")
    return "state IN (" + ", ".join(f"'{state}'" for state in sources) + ")"


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


Dialect = Literal["sqlite", "postgresql"]


class Dialects(NamedTuple):
    """One migration statement that each database writes its own way."""

    sqlite: str
    postgresql: str


def _for_postgresql(statement: str) -> str:
    """A table's columns in PostgreSQL's types: ids as identities (given explicitly by
    `store migrate`, which then moves the sequences on), integers as BIGINT, REAL as DOUBLE."""
    if not statement.lstrip().startswith(("CREATE TABLE", "ALTER TABLE")):
        return statement
    statement = statement.replace("INTEGER PRIMARY KEY",
                                  "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    statement = re.sub(r"\bINTEGER\b", "BIGINT", statement)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)


def migration_steps(number: int, dialect: Dialect) -> Iterator[str]:
    """The statements of migration `number` (0-based: it brings schema `number` to
    `number + 1`) for one database (a `Dialects` side left empty: none for it)."""
    for statement in _MIGRATIONS[number]:
        if isinstance(statement, Dialects):
            written = statement.sqlite if dialect == "sqlite" else statement.postgresql
            if written:
                yield written
        else:
            yield statement if dialect == "sqlite" else _for_postgresql(statement)


def _transition_rows() -> str:
    return ", ".join(f"('{source}', '{target}')" for source, targets in TRANSITIONS.items()
                     for target in sorted(targets))


def _statements(script: str) -> tuple[str, ...]:
    return tuple(part for part in script.split(";") if part.strip())


_MIGRATIONS: tuple[tuple[str | Dialects, ...], ...] = (
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
        Dialects(
            "UPDATE messages SET smsc_ids = (SELECT json_group_array(smsc_id) FROM"
            " (SELECT smsc_id FROM message_parts WHERE message_id = messages.id"
            " ORDER BY part_no)) WHERE parts > 0",
            "UPDATE messages SET smsc_ids = (SELECT json_agg(smsc_id ORDER BY part_no)::text"
            " FROM message_parts WHERE message_id = messages.id) WHERE parts > 0"),
        "ALTER TABLE receipts ADD COLUMN candidates TEXT NOT NULL DEFAULT '[]'",
        Dialects("UPDATE receipts SET candidates = json_array(smsc_id) WHERE smsc_id <> ''",
                 "UPDATE receipts SET candidates = json_build_array(smsc_id)::text"
                 " WHERE smsc_id <> ''"),
        "CREATE INDEX receipts_unmatched ON receipts (at) WHERE message_id IS NULL",
        "CREATE TABLE message_transitions (from_state TEXT NOT NULL, to_state TEXT NOT NULL,"
        " PRIMARY KEY (from_state, to_state))",
        f"INSERT INTO message_transitions (from_state, to_state) VALUES {_transition_rows()}",
        # the database itself refuses a move TRANSITIONS does not list (a hand-written
        # UPDATE included)
        Dialects(
            "CREATE TRIGGER messages_forward_only BEFORE UPDATE OF state ON messages"
            " WHEN NEW.state <> OLD.state AND NOT EXISTS (SELECT 1 FROM message_transitions"
            " WHERE from_state = OLD.state AND to_state = NEW.state)"
            " BEGIN SELECT RAISE(ABORT, 'a message state may only move forward'); END",
            "CREATE FUNCTION messages_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NEW.state <> OLD.state AND NOT EXISTS (SELECT 1 FROM"
            " message_transitions WHERE from_state = OLD.state AND to_state = NEW.state)"
            " THEN RAISE EXCEPTION 'a message state may only move forward'"
            " USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$;"
            " CREATE TRIGGER messages_forward_only BEFORE UPDATE OF state ON messages"
            " FOR EACH ROW EXECUTE FUNCTION messages_forward_only()"),
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
        f"INSERT INTO message_transitions (from_state, to_state) VALUES {_transition_rows()}"
        " ON CONFLICT DO NOTHING",
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
    # 7: follow-ups and call-backs (mcdaemon.store.outreach): call-back campaigns (one open
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
    # 9: claims with leases: the daemon (`PID@HOST`) that claimed a text in `sending`, and
    # until when another daemon sharing the store leaves it alone
    (
        "ALTER TABLE messages ADD COLUMN owner TEXT",
        "ALTER TABLE messages ADD COLUMN lease_until REAL",
    ),
    # 10: retention (mcdaemon.store.retention) and bounded periodic reads: what retention
    # removes oldest first is found through an index on its time; a receipt by its text
    # (removed with it); the settled texts of the last day (`outbox_stats`) by `final_at`;
    # the few texts at risk of a duplicate by a partial index. And the report's reads of a
    # year of calls from indexes that hold what it counts, not from the calls' rows (each
    # carries its whole record): by time (missed calls per quarter hour, retention), in the
    # order of its counts' groups (no sort of every call), by call (its texts' join), first
    # texts by number (the texted callers one at a time, without a sort)
    (
        "DROP INDEX calls_ended",
        "CREATE INDEX calls_ended ON calls (ended, outcome, decision_group, did, grp)",
        "CREATE INDEX calls_groups ON calls (decision_group, did, grp, outcome, reason,"
        " textable, ended, caller_e164)",
        "CREATE INDEX calls_texts ON calls (pbx, call_id, ended, decision_group, did, grp,"
        " template)",
        "CREATE INDEX messages_callers ON messages (destination, submitted_at, state, pbx,"
        " call_id, variant, kind) WHERE kind = 'first'",
        "CREATE INDEX receipts_at ON receipts (at)",
        "CREATE INDEX receipts_message ON receipts (message_id) WHERE message_id IS NOT NULL",
        "CREATE INDEX inbound_at ON inbound (at)",
        "CREATE INDEX messages_final ON messages (final_at) WHERE final_at IS NOT NULL",
        "CREATE INDEX messages_duplicate_risk ON messages (created_at) WHERE duplicate_risk = 1",
        "CREATE INDEX contact_events_at ON contact_events (at)",
        "CREATE INDEX campaigns_closed ON campaigns (closed_at) WHERE state <> 'open'",
        "CREATE INDEX campaign_calls_campaign ON campaign_calls (campaign_id)",
    ),
    # 11: the report's texted callers without a join to their calls: a first text carries
    # its call's template (its group, variant and call end it had already), and
    # `messages_callers` holds, by number, all the report reads of it; the calls' index for
    # that join goes (one index less to keep up on every call recorded). And what every
    # decision counts (the caps: the texts of the last hour and day, and of the hour by
    # prefix) is a range of an index that holds only those texts, and the gauges every 10 s
    # (the day's settled texts by state) come from their index alone: a busy day is
    # thousands of texts, no longer read row by row
    (
        "ALTER TABLE messages ADD COLUMN template TEXT",
        "UPDATE messages SET template = (SELECT c.template FROM calls AS c"
        " WHERE c.pbx = messages.pbx AND c.call_id = messages.call_id) WHERE kind = 'first'",
        "DROP INDEX messages_callers",
        "CREATE INDEX messages_callers ON messages (destination, submitted_at, state,"
        " call_ended_at, grp, template, variant, pbx, call_id, kind) WHERE kind = 'first'",
        "DROP INDEX calls_texts",
        "CREATE INDEX messages_counted ON messages (created_at, destination, kind, state)"
        f" WHERE {COUNTED_TEXTS}",
        "DROP INDEX messages_final",
        "CREATE INDEX messages_final ON messages (final_at, state) WHERE final_at IS NOT NULL",
    ),
    # 12: the report's counts of calls kept as calls are recorded and removed: `call_counts`
    # holds, per quarter hour of their end (CALL_BUCKET) and what the report counts them by,
    # how many calls and how many of them had a number. The database keeps it (triggers on
    # `calls`), in the transaction that records or removes a call, whatever writes it
    # (a decision, the queue_log's backfill, retention, `store migrate`'s copy); a year is
    # ~200,000 rows, not 3.6 million calls read twice. The calls' index for the old read goes.
    (
        Dialects(f"CREATE TABLE call_counts ({_CALL_COUNT_COLUMNS}) WITHOUT ROWID",
                 _for_postgresql(f"CREATE TABLE call_counts ({_CALL_COUNT_COLUMNS})")),
        Dialects(*(f"INSERT INTO call_counts SELECT {', '.join(_call_count_key('calls', dialect))},"
                   f" COUNT(*), SUM({_numbered('calls')}) FROM calls WHERE ended IS NOT NULL"
                   f" GROUP BY {', '.join(str(n) for n in range(1, 8))}"
                   for dialect in ("sqlite", "postgresql"))),
        *_call_count_triggers(),
        "DROP INDEX calls_groups",
    ),
    # 13: the report's sent texts counted from indexes in the order it counts them, not by
    # sorts of every text (a busy year: 1.4 million): by number, group, template and
    # variant (`messages_callers`: its callers per group are distinct runs of it, and the
    # texts of those who answered are found by number); SQLite's by group, template and
    # variant (`messages_sent_arms`: the texts and the callers of an A/B arm are runs of
    # it), and by group and wait and by quarter hour sent, as indexes of those expressions
    # (PostgreSQL counts by hashing, unsorted); and the call-back campaigns opened in the
    # report's window by time, not by a scan of them all
    (
        "CREATE INDEX campaigns_created ON campaigns (created_at)",
        "DROP INDEX messages_callers",
        "CREATE INDEX messages_callers ON messages (destination, grp, template, variant,"
        f" submitted_at, state, call_ended_at, kind) WHERE {_SENT_FIRST}",
        Dialects("CREATE INDEX messages_sent_arms ON messages (grp, template, variant,"
                 " destination, state, call_ended_at, submitted_at, kind)"
                 f" WHERE {_SENT_FIRST}", ""),
        Dialects(f"CREATE INDEX messages_sent_waits ON messages (grp, CAST({SENT_WAIT_MS} AS"
                 f" INTEGER), state, call_ended_at, submitted_at, kind) WHERE {_SENT_FIRST}",
                 ""),
        Dialects(f"CREATE INDEX messages_sent_quarters ON messages (CAST({SENT_QUARTER} AS"
                 f" INTEGER), grp, state, call_ended_at, submitted_at, kind) WHERE {_SENT_FIRST}",
                 ""),
    ),
    # 14: the report's sent texts counted as they are sent, as the calls are by migration
    # 12: `text_counts` holds, per day of the call's end (TEXT_DAY), quarter hour sent and
    # group, how many first texts were sent; `text_waits`, per group, whole milliseconds
    # from the call's end to the submit and day, how many waited that long. A busy year is
    # ~30,000 and ~750,000 small rows, not 1.4 million texts read twice through two indexes
    # of 80 MB, which go; the texts of the window's two partial days are found by their
    # call's end (`messages_first_ended`). The texts per A/B arm, and their callers, are
    # still counted from `messages_sent_arms`: distinct callers cannot be summed by day.
    (
        Dialects(f"CREATE TABLE text_counts ({_TEXT_COUNT_COLUMNS}) WITHOUT ROWID",
                 _for_postgresql(f"CREATE TABLE text_counts ({_TEXT_COUNT_COLUMNS})")),
        Dialects(f"CREATE TABLE text_waits ({_TEXT_WAIT_COLUMNS}) WITHOUT ROWID",
                 _for_postgresql(f"CREATE TABLE text_waits ({_TEXT_WAIT_COLUMNS})")),
        *(Dialects(*pair) for pair in zip(_text_count_backfill("sqlite"),
                                          _text_count_backfill("postgresql"), strict=True)),
        *_text_count_triggers(),
        f"CREATE INDEX messages_first_ended ON messages (call_ended_at) WHERE {_SENT_FIRST}",
        Dialects("DROP INDEX messages_sent_waits", ""),
        Dialects("DROP INDEX messages_sent_quarters", ""),
    ),
    # 15: what a year's report read cold looked up one row at a time, scattered over the
    # history's pages. A booking carries what the report reads of the call it is
    # attributed to (its end, outcome and group key) and that call's first text's id,
    # written when it is recorded: the report reads a year's bookings from their own small
    # table, not by tens of thousands of lookups of calls' and texts' rows. The database
    # keeps the copy when a call is changed (by hand: mcdaemon never changes a recorded
    # call), as it keeps `call_counts`. And the first texts that will never be sent are
    # counted from an index of their own (a few in a hundred texts), not row by row.
    (
        "CREATE INDEX messages_unsent ON messages (state, call_ended_at, grp, kind)"
        f" WHERE kind = 'first' AND state IN ({_quoted(sorted(NEVER_SENT_STATES))})",
        *(f"ALTER TABLE bookings ADD COLUMN {column} {kind}"
          for column, kind in BOOKED_CALL_COLUMNS),
        "ALTER TABLE bookings ADD COLUMN text_id INTEGER",
        f"UPDATE bookings SET ({BOOKED_CALL}) = (SELECT {BOOKED_FROM_CALL} FROM calls AS c"
        " WHERE c.pbx = bookings.pbx AND c.call_id = bookings.call_id)"
        " WHERE call_id IS NOT NULL",
        "UPDATE bookings SET text_id = (SELECT m.id FROM messages AS m"
        " WHERE m.pbx = bookings.pbx AND m.call_id = bookings.call_id AND m.kind = 'first'"
        " AND m.seq = 0) WHERE call_id IS NOT NULL",
        _booked_call_trigger(),
    ),
)


#: the schema this version writes: one migration per step, appended to `_MIGRATIONS`
SCHEMA_VERSION = len(_MIGRATIONS)
#: what each migration takes per GB of store, for the start-up's `expected_seconds`: from
#: 10 on, twice what each took on the benchmark's year on a fast day of a shared 2-core
#: machine (bench/history.py --migration, the log's `schema_seconds`; a slow day took the
#: whole twice as long); before 10 (stores that predate retention) not measured: what a
#: migration that indexes every table takes
MIGRATION_SECONDS_PER_GB: tuple[float, ...] = (15.0,) * 9 + (12.0, 22.0, 5.0, 6.0, 4.0, 2.0)
