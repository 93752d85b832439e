"""The store's schema: the message life cycle (`TRANSITIONS`) and the migrations, in
portable SQL where the engines agree (a second backend replays the same steps).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    # 9: retention (mcdaemon.store.retention) and bounded periodic reads: what retention
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
)


#: the schema this version writes: one migration per step, appended to `_MIGRATIONS`
SCHEMA_VERSION = len(_MIGRATIONS)
