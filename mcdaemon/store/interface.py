"""The store's interface: what the rest of mcdaemon may call, whatever the backend.

One `Protocol` per owner of tables (the methods of its query class in `store/<owner>.py`),
and `StoreInterface`, all of them together with the connection's own calls (`atomic`,
`close`, `checkpoint`, `tables`, `path`). Code outside `store/` annotates the store it is given
with these (the narrowest that has what it calls), never with the concrete `Store`; only the
code that opens a store names a backend (`Store.open`, `Store.open_readonly`).

`Store` (SQLite) satisfies `StoreInterface`: mypy checks it (`store/__init__.py`), and
`tests/store/test_interface.py` checks that every public name of `Store` is declared here
with the same parameters. A second backend (PostgreSQL) must give the same guarantees the
docstrings state; they are what the daemon relies on when several of them share one store.

Words used below: *one transaction* — all or nothing, and inside `atomic()` part of its
transaction; *idempotent on K* — writing the same K again creates nothing and returns
None/False/0 for it; *moves forward only* — an UPDATE names the states it may leave
(`schema.TRANSITIONS`), so a late or repeated call leaves a message where it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from mcdaemon.config.model import RetentionConfig
from mcdaemon.core.followups import PlannedText
from mcdaemon.core.outbox import SubmitOutcome
from mcdaemon.core.records import CallRecord, Decision, PolicyView
from mcdaemon.store.contacts import Contact
from mcdaemon.store.outbox import NewCall, OutboxMessage
from mcdaemon.store.outreach import Attempt, Campaign, FirstText, Stopped
from mcdaemon.store.receipts import AppliedReceipts, ReceiptIn
from mcdaemon.store.report import Booking, TextBatch
from mcdaemon.store.schema import CALLER_KINDS
from mcdaemon.store.webhooks import WebhookDelivery, WebhookIn, WebhookResult

# The bodies are `...`: a Protocol declares, the backends' query classes implement.


class OutboxStore(Protocol):
    """Calls and the outbox (`outbox.CallsAndOutbox`): a decided call and its first text,
    claiming due texts, the outcome of each submit, expiry, crash recovery, the policy's view."""

    async def record_call(self, record: CallRecord, decision: Decision, *, now: float,
                          destination: str | None) -> int | None:
        """The call and its first text in one transaction; idempotent on (pbx, call_id):
        the new message's id, or None (no text, or the call was recorded before)."""
        ...

    async def record_calls(self, calls: Sequence[NewCall], *, now: float,
                           destinations: Sequence[str | None]) -> list[int | None]:
        """`record_call` for many calls, one transaction for the batch."""
        ...

    async def record_calls_and_claim(
            self, calls: Sequence[NewCall], *, now: float, destinations: Sequence[str | None],
            claim: int) -> tuple[list[int | None], list[OutboxMessage]]:
        """`record_calls`, and up to `claim` of the new due texts born `sending` (claimed as
        `claim_due` would), in the same one transaction."""
        ...

    async def enqueue_message(self, *, pbx: str, call_id: str, kind: str, seq: int,
                              destination: str, body: str, now: float,
                              not_before: float | None, expires_at: float | None,
                              group: str | None = None, variant: str | None = None
                              ) -> int | None:
        """Queue a text that is not a call's first; idempotent on (pbx, call_id, kind, seq)."""
        ...

    async def claim_due(self, now: float, limit: int) -> list[OutboxMessage]:
        """queued -> sending for up to `limit` due texts: a claim is one UPDATE … RETURNING,
        so two claimers (tasks, processes, hosts) never get the same message."""
        ...

    async def mark_submitted(self, message_id: int, smsc_ids: Sequence[str],
                             now: float) -> bool:
        """sending -> submitted with one SMSC id per part (parts kept even if it had moved)."""
        ...

    async def mark_retry(self, message_id: int, *, not_before: float, error_code: int | None,
                         detail: str, now: float, duplicate_risk: bool = False) -> bool:
        """Back to queued until `not_before`; moves forward only (False if it could not)."""
        ...

    async def mark_failed(self, message_id: int, *, error_code: int | None, detail: str,
                          now: float) -> bool:
        """Final failure; moves forward only (False if the message was past that)."""
        ...

    async def record_submit_outcomes(self, outcomes: Sequence[SubmitOutcome],
                                     now: float) -> list[bool]:
        """Many submits' results in one transaction; for each, whether the message moved."""
        ...

    async def expire_due(self, now: float) -> list[int]:
        """Queued texts past `expires_at` become `expired` (one transaction); their ids."""
        ...

    async def renew_leases(self, now: float) -> int:
        """Extend this daemon's claims in flight to `now + claim_lease`; how many."""
        ...

    async def recover_in_flight(self, mode: str, now: float) -> list[int]:
        """Texts left `sending` by a daemon that is gone (lease expired, or a dead process of
        this host), never this daemon's own: `resend` (queued, `duplicate_risk`) or `drop`."""
        ...

    async def message(self, message_id: int) -> OutboxMessage:
        """One outbox row (KeyError if there is none)."""
        ...

    async def messages(self, *, state: str | None = None) -> list[OutboxMessage]:
        """The outbox's rows (of one state), by id."""
        ...

    async def messages_for_call(self, pbx: str, call_id: str) -> list[OutboxMessage]:
        """The texts of one call, by id."""
        ...

    async def call(self, pbx: str, call_id: str) -> dict[str, Any] | None:
        """The stored row of one call (columns by name), or None."""
        ...

    async def count_calls(self) -> int:
        """How many calls are stored."""
        ...

    async def recorded_calls(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (pbx, call id) are stored (a read, one query per 400 keys)."""
        ...

    async def recovered_calls(self, since: float) -> dict[str, int]:
        """Calls ended since `since` that were `adopted` or `backfilled`; bounded by time."""
        ...

    async def policy_view(self, e164: str | None, group: str | None, now: float,
                          prefix: str | None = None, prefix_len: int = 6) -> PolicyView:
        """What the policy needs to know about this caller and the recent traffic (a read)."""
        ...

    async def policy_views(self, callers: Sequence[tuple[str | None, str | None, str | None]],
                           now: float) -> list[PolicyView]:
        """`policy_view` for many (e164, group, prefix): a few queries, not a few per call."""
        ...

    async def messages_by_ids(self, ids: Sequence[int]) -> list[OutboxMessage]:
        """The outbox rows with these ids (unknown ids left out), by id."""
        ...

    async def latest_message_to(self, destination: str,
                                kinds: Sequence[str] = CALLER_KINDS) -> OutboxMessage | None:
        """The newest text of these kinds to `destination` (what a reply most likely answers)."""
        ...


class ReceiptsStore(Protocol):
    """Delivery receipts (`receipts.Receipts`), matched to the parts of submitted texts."""

    async def apply_receipt(self, receipted_id: str | None, state: str, error: str | None,
                            at: float, raw: dict[str, str] | None = None, *,
                            text_id: str | None = None) -> int | None:
        """Keep the receipt (matched or not) and settle its message, forward only, in one
        transaction; the message id it matched, or None (kept unmatched, matched later)."""
        ...

    async def apply_receipts(self, receipts: Sequence[ReceiptIn]) -> AppliedReceipts:
        """`apply_receipt` for many, in order, in one transaction."""
        ...

    async def give_up_receipts(self, now: float, timeout: float) -> list[int]:
        """Submitted texts without a receipt after `timeout` s become `unknown`."""
        ...

    async def unmatched_receipts(self, since: float, until: float | None = None,
                                 ) -> dict[str, int]:
        """Receipts of [since, until] still unmatched: `unmatched` and `ambiguous` counts."""
        ...


class RepliesStore(Protocol):
    """Texts from callers and opt-outs (`replies.RepliesAndOptOuts`)."""

    async def add_inbound(self, source: str, destination: str, text: str, at: float,
                          keyword: str | None = None) -> int:
        """Keep a text from a caller (MO); its id."""
        ...

    async def opt_out(self, e164: str, keyword: str, at: float) -> bool:
        """Opt the number out and fail its queued texts to callers, one transaction;
        idempotent on e164 (True only the first time)."""
        ...

    async def opt_in(self, e164: str, at: float) -> bool:
        """Delete the number's opt-out; True if there was one."""
        ...

    async def is_opted_out(self, e164: str) -> bool:
        """Whether the number is opted out."""
        ...


class WebhooksStore(Protocol):
    """The webhook delivery queue (`webhooks.WebhookQueue`)."""

    async def enqueue_webhooks(self, rows: Sequence[WebhookIn], now: float) -> int:
        """Queue deliveries in one transaction; idempotent on (endpoint, event_key); how many
        were new."""
        ...

    async def claim_due_webhooks(self, now: float, limit: int,
                                 busy: Sequence[int] = ()) -> list[WebhookDelivery]:
        """Up to `limit` pending deliveries due by `now`, oldest first, in order per
        (endpoint, order_key), leaving out `busy`. A read: one sender per queue."""
        ...

    async def next_webhook_at(self, after: float) -> float | None:
        """When the earliest pending delivery due after `after` is due (None: none)."""
        ...

    async def settle_webhooks(self, results: Sequence[WebhookResult], now: float) -> None:
        """Record attempts (delivered, dead, or pending again) in one transaction; a row no
        longer pending is left as it is."""
        ...

    async def mark_webhook_delivered(self, webhook_id: int, now: float) -> None:
        """`settle_webhooks` of one delivery that succeeded."""
        ...

    async def mark_webhook_retry(self, webhook_id: int, *, next_at: float, error: str,
                                 now: float) -> None:
        """`settle_webhooks` of one delivery to try again at `next_at`."""
        ...

    async def mark_webhook_dead(self, webhook_id: int, *, error: str, now: float) -> None:
        """`settle_webhooks` of one delivery given up."""
        ...

    async def webhooks(self, *, state: str | None = None) -> list[dict[str, Any]]:
        """The queue's rows (columns by name), oldest first: for tests and inspection."""
        ...


class ContactsStore(Protocol):
    """The contacts directory (`contacts.Contacts`)."""

    async def contacts_for(self, numbers: Sequence[str]) -> dict[str, Contact]:
        """The stored contacts among these E.164 numbers (a few queries whatever the count)."""
        ...

    async def merge_contacts(self, contacts: Sequence[Contact]) -> tuple[int, int]:
        """Add or update contacts (keyed by e164) in one transaction; (added, updated)."""
        ...

    async def list_contacts(self) -> list[Contact]:
        """Every contact, by number (none when the store predates the table)."""
        ...

    async def contact(self, e164: str) -> Contact | None:
        """One contact, or None (also when the store predates the table)."""
        ...


class ReportStore(Protocol):
    """What `mcdaemon report` reads, and bookings (`report.ReportQueries`)."""

    async def report_counts(self, since: float, until: float) -> dict[str, list[Any]]:
        """The window's aggregates by group key (calls, texts, bookings, missed calls per
        quarter hour, currencies, unattributed bookings, campaigns, unmatched receipts); a
        table the store does not have yet gives no rows. Reads only."""
        ...

    async def report_callers(self, since: float, until: float,
                             groups: Sequence[str | None] | None = None
                             ) -> dict[str, list[Any]]:
        """The window's texted callers per group and overall, the overall of the texts of
        `groups` only if given. Reads only."""
        ...

    async def report_booked(self, since: float) -> list[tuple[int, str]]:
        """The first texts (id, number) of the calls with a booking since `since`."""
        ...

    async def report_recent(self, since: float, until: float, limit: int,
                            offset: int = 0) -> list[dict[str, Any]]:
        """The window's missed calls, latest first, with their first text. Reads only."""
        ...

    def report_texts(self, since: float, until: float) -> AsyncIterator[TextBatch]:
        """The sent first texts of the window to the callers who texted us, opted out or
        booked since `since`, by number, a batch of whole callers at a time, with their
        replies and opt-outs: only a batch of rows is held at once. Reads only."""
        ...

    async def add_booking(self, e164: str, value: float, at: float, *,
                          currency: str | None = None, note: str | None = None,
                          window: float = 30 * 86400.0, now: float | None = None) -> Booking:
        """Record a booking, attributed to the latest texted missed call of `e164` within
        `window` (or kept unattributed); one transaction."""
        ...


class StatusStore(Protocol):
    """Switches (`enable`/`disable`), the daemon's status lines, outbox counts (`status.Status`)."""

    async def set_switch(self, name: str, enabled: bool, at: float) -> None:
        """`global` or `group:<name>`; a disabled switch also holds texts already queued."""
        ...

    async def switches(self) -> dict[str, bool]:
        """Every switch by name."""
        ...

    async def set_status(self, name: str, value: str, at: float | None = None) -> None:
        """Set one status line (an upsert)."""
        ...

    async def clear_status(self, name: str) -> None:
        """Delete one status line (a daemon's heartbeat at its clean stop); none: a no-op."""
        ...

    async def statuses(self) -> dict[str, tuple[str, float]]:
        """Every status line: (value, when it was set)."""
        ...

    async def outbox_stats(self, now: float) -> dict[str, Any]:
        """Counts by state, the oldest due queued text's age, deferred and at-risk counts."""
        ...


class OutreachStore(Protocol):
    """Follow-ups and call-back campaigns (`outreach.Outreach`). Every write is one
    transaction; every state change names the states it may leave."""

    async def record_stop(self, e164: str, kind: str, at: float,
                          detail: str = "", *, campaign_done: int | None = None) -> Stopped:
        """The caller was reached: remember it, cancel the number's queued follow-ups (and its
        open campaign for an answered or agent's call), one transaction."""
        ...

    async def close_campaign(self, campaign_id: int, state: str, reason: str,
                             at: float) -> bool:
        """Close an open campaign and cancel its scheduled attempts; False if not open."""
        ...

    async def stop_since(self, e164: str, since: float) -> str | None:
        """The kind of the number's first stop event at or after `since`, or None."""
        ...

    async def firsts_without_followups(self, since: float) -> list[FirstText]:
        """Submitted first texts since `since` whose follow-ups are not planned yet."""
        ...

    async def firsts_by_ids(self, ids: Sequence[int]) -> list[FirstText]:
        """These messages, when they are submitted first texts without follow-ups yet."""
        ...

    async def plan_followups(self, first: FirstText, planned: Sequence[PlannedText],
                             now: float) -> tuple[list[int], str | None]:
        """Queue the follow-ups, idempotent on (pbx, call_id, 'followup', seq), cancelled in
        the same transaction if the caller was reached; (new ids, stop kind)."""
        ...

    async def cancel_after_undeliverable(self, now: float) -> list[int]:
        """Fail queued follow-ups whose first text was undeliverable (one UPDATE … RETURNING)."""
        ...

    async def start_or_merge(self, *, pbx: str, call_id: str, e164: str, group: str,
                             campaign_pbx: str, first_due: float,
                             now: float) -> tuple[int, bool] | None:
        """Open a campaign or join the number's open one; idempotent on (pbx, call_id)
        (None: handled before); at most one open campaign per number."""
        ...

    async def due_attempts(self, now: float, limit: int = 100) -> list[Attempt]:
        """Scheduled attempts of open campaigns due by `now`, earliest first."""
        ...

    async def defer_attempt(self, attempt_id: int, due_at: float, detail: str) -> bool:
        """Move a scheduled attempt to `due_at`; False if it is not scheduled."""
        ...

    async def claim_attempt(self, attempt_id: int, action_id: str, now: float,
                            max_live: int) -> bool:
        """scheduled -> dialing, if fewer than `max_live` are live and none to the same
        number is; one transaction (check and claim together)."""
        ...

    async def live_count(self) -> int:
        """How many attempts are dialing or connected."""
        ...

    async def attempt_by_action(self, action_id: str) -> Attempt | None:
        """The attempt originated with this AMI ActionID, or None."""
        ...

    async def live_attempts(self) -> list[Attempt]:
        """Attempts dialing or connected, by id."""
        ...

    async def attempts(self, campaign_id: int | None = None) -> list[Attempt]:
        """Every attempt (of one campaign), by id."""
        ...

    async def campaigns(self) -> list[Campaign]:
        """Every campaign, by id."""
        ...

    async def mark_connected(self, attempt_id: int, uniqueid: str | None,
                             detail: str) -> bool:
        """dialing -> connected; False if the attempt was not dialing."""
        ...

    async def finish_attempt(self, attempt_id: int, result: str, now: float, detail: str,
                             next_due: float | None) -> str | None:
        """End a live attempt and schedule the next or close the campaign, one transaction:
        "done", "exhausted", "next", "closed", or None if the attempt was not live."""
        ...


class RetentionStore(Protocol):
    """Removing history past `store.retention` (`retention.Retention`)."""

    async def prune_step(self, retention: RetentionConfig, now: float,
                         limit: int = 500) -> dict[str, int]:
        """Up to `limit` rows of each kind past its retention, one short transaction per
        kind, never a pending row nor one still referenced; rows removed per table."""
        ...

    async def retention_due(self, retention: RetentionConfig, now: float) -> dict[str, int]:
        """Rows past their retention per table: what `prune_step` removes next."""
        ...

    async def history(self) -> dict[str, dict[str, Any]]:
        """Per table: `rows`, `oldest` and `newest` (epoch seconds or None); counts every row."""
        ...


class StoreInterface(OutboxStore, ReceiptsStore, RepliesStore, WebhooksStore, ContactsStore,
                     ReportStore, StatusStore, OutreachStore, RetentionStore, Protocol):
    """The whole store: every owner's queries, and the connection's own calls."""

    @property
    def path(self) -> str:
        """Where the store is (a file, or a database's address): for messages and logs."""
        ...

    #: this daemon (`PID@HOST`), as the texts it claims name it
    owner: str
    #: how long its claims hold without a renewal (seconds)
    claim_lease: float
    #: since when (time.monotonic()) a PostgreSQL store's server cannot be reached (its calls
    #: wait for it, up to store.outage_max); None while it can, and always for SQLite
    unreachable_since: float | None

    def atomic(self) -> contextlib.AbstractAsyncContextManager[None]:
        """One transaction for every store call the task makes inside the block: committed
        when it ends, rolled back if it raises; other tasks' calls wait for it."""
        ...

    async def close(self) -> None:
        """Close the connection (after the last call)."""
        ...

    async def checkpoint(self) -> None:
        """Housekeeping the daemon runs every second (SQLite: a passive WAL checkpoint; a
        backend without one does nothing)."""
        ...

    async def tables(self) -> set[str]:
        """The names of the store's tables (an older schema lacks the newer ones)."""
        ...

    async def schema_version(self) -> int | None:
        """The schema the database holds (None: it has none, not an mcdaemon store)."""
        ...

    async def release_space(self, most_bytes: int) -> int:
        """Give back to the file system up to `most_bytes` freed by deletions, in one short
        step; how many bytes (SQLite: `incremental_vacuum`; PostgreSQL: 0, its autovacuum
        makes the freed space reusable)."""
        ...

    async def compact(self) -> None:
        """Rewrite the store without its free space, and release space as it is freed from
        then on; needs the store to itself (SQLite: VACUUM; PostgreSQL: VACUUM of mcdaemon's
        tables, outside a transaction)."""
        ...

    async def space(self) -> dict[str, int | bool]:
        """`bytes` on disk, `free_bytes` freed but not released, `releases_space`."""
        ...
