"""Webhooks: JSON events to CRMs and team channels, from a durable queue in the store.

    service ──► events (pure: built from records, decisions, outbox rows)
                  │ route: one row per endpoint that wants it
                  ▼
            store `webhooks` table (pending) ──► WebhookWorker ──► HTTP POST (signed)
                                                      │
                        delivered | pending again (backoff + jitter) | dead ◄──┘

Everything above the worker is sans-IO: building an event, rendering its body for an
endpoint (`json` envelope or `slack` text), signing and judging an answer are pure functions.
The service queues rows right after the store transaction that made the event true (a call
decided, a text submitted, a receipt settled, a reply stored), and never waits on HTTP: the
worker is its own task, with at most `CONCURRENCY` requests in flight.

Delivery is at least once. A receiver dedupes on `X-Mcdaemon-Delivery` (stable across
retries and restarts). One endpoint gets one call's events in order (`order_key`): a row
waits while an older one of the same call is still pending for that endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

# aiohttp: a maintained asyncio HTTP client, so a webhook request is a coroutine on the
# daemon's loop (timeouts, cancellation, connection pooling) and never a thread per request
import aiohttp
import structlog

from mcdaemon import __version__
from mcdaemon.config.model import Config
from mcdaemon.config.webhooks import EVENTS, WebhookEndpoint
from mcdaemon.core import templates
from mcdaemon.core.records import CallRecord, Decision
from mcdaemon.store import (
    OutboxMessage,
    WebhookDelivery,
    WebhookIn,
    WebhookResult,
    WebhooksStore,
)

log = structlog.get_logger("mcdaemon.webhooks")

#: requests in flight at once, over every endpoint
CONCURRENCY = 4
#: the longest the worker sleeps when nothing wakes it
IDLE = 5.0
#: the version of the JSON envelope (`schema` in every body)
SCHEMA = 1
#: outbox kinds whose texts make text_* events (a staff note is not the caller's text)
TEXT_EVENT_KINDS = frozenset({"first", "followup", "optout_confirm"})
#: `failed` states of the outbox that make `text_failed`
FAILED_STATES = frozenset({"failed", "undeliverable", "expired"})
STAFF_NOTE_KIND = "staff_note"
_NAMESPACE = uuid.UUID("5b0d0b7e-4f0e-4b7c-9a53-6d6364616501")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, before it is routed to endpoints."""

    name: str  # one of EVENTS
    key: str  # unique per event: queueing it twice queues nothing new
    order_key: str  # events of one key reach an endpoint in order (a call, a number)
    group: str | None  # for endpoints' `groups` filter
    occurred_at: float
    data: dict[str, Any]
    summary: str  # one line for people (Slack, staff texts)

    @property
    def event_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, self.key))


# --------------------------------------------------------------------------- building events


def iso(at: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (`2026-11-05T14:02:03.120Z`)."""
    if at is None:
        return None
    stamp = dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _zone(config: Config, group: str | None) -> ZoneInfo:
    found = config.group(group) if group else None
    return ZoneInfo(found.timezone if found else config.timezone)


def _display(config: Config, group: str | None) -> str:
    found = config.group(group) if group else None
    return found.display_name if found else (group or "the team")


def call_group(record: CallRecord, decision: Decision, config: Config) -> str | None:
    """The group of a call: the decision's, else the one its queue, DID or default gives."""
    if decision.group:
        return decision.group
    from mcdaemon.core.policy import match_group  # the policy imports nothing from here; kept local

    group = match_group(record, config)
    return group.name if group else None


def _local_time(at: float, zone: ZoneInfo, fmt: str = "%H:%M") -> str:
    return dt.datetime.fromtimestamp(at, zone).strftime(fmt)


def missed_call_summary(record: CallRecord, decision: Decision, config: Config) -> str:
    """`Missed call from Alice +447700900123 to Support at 14:02, text sent`."""
    group = call_group(record, decision, config)
    zone = _zone(config, group)
    name = templates.clean_caller_name(record.caller_name, 30)
    number = record.caller_e164 or record.caller or ""
    who = " ".join(part for part in (name, number) if part) or "a withheld number"
    if decision.text and decision.send_after is not None:
        status = f"text at {_local_time(decision.send_after, zone, '%a %H:%M')}"
    elif decision.text:
        status = "text sent"
    else:
        status = f"no text ({decision.reason})"
    return (f"Missed call from {who} to {_display(config, group)} at "
            f"{_local_time(record.started, zone)}, {status}")


def missed_call(record: CallRecord, decision: Decision, message_id: int | None,
                config: Config) -> Event | None:
    """`missed_call` for a missed call seen whole (None for answered, dead-end, partial)."""
    if not record.missed or record.partial or record.evicted:
        return None
    group = call_group(record, decision, config)
    call = record.as_dict()
    call.pop("extra", None)
    call.pop("channel", None)
    call["started"], call["ended"] = iso(record.started), iso(record.ended)
    data = {
        "call": call,
        "group": group,
        "group_name": _display(config, group),
        "decision": {"text": decision.text, "reason": decision.reason,
                     "detail": decision.detail or None, "template": decision.template,
                     "variant": decision.variant, "send_after": iso(decision.send_after)},
        "message_id": message_id,
        "lead": {"phone": record.caller_e164, "name": templates.clean_caller_name(
                     record.caller_name, 60), "tag": "missed-call",
                 "called_at": iso(record.started), "wait_seconds": record.wait_seconds,
                 "outcome": str(record.outcome)},
    }
    return Event("missed_call", f"missed_call:{record.pbx}/{record.call_id}",
                 f"call:{record.pbx}/{record.call_id}", group, record.ended, data,
                 missed_call_summary(record, decision, config))


def callback_attempt(campaign: int, attempt: int, number: str, group: str, pbx: str,
                     at: float) -> Event:
    """`callback_attempt`: the PBX took an Originate to call the customer back."""
    data = {"campaign": campaign, "attempt": attempt, "number": number, "group": group,
            "pbx": pbx, "at": iso(at)}
    return Event("callback_attempt", f"callback_attempt:{campaign}:{attempt}",
                 f"number:{number}", group, at, data,
                 f"Calling {number} back (attempt {attempt})")


def callback_result(campaign: int, attempt: int, number: str, group: str, result: str,
                    campaign_state: str, detail: str, at: float) -> Event:
    """`callback_result`: how an attempt ended (`answered`, `no_answer`, `busy`, `failed`,
    `unknown`…) and where that leaves the campaign (`next`, `done`, `exhausted`…)."""
    data = {"campaign": campaign, "attempt": attempt, "number": number, "group": group,
            "result": result, "campaign_state": campaign_state, "detail": detail or None,
            "at": iso(at)}
    return Event("callback_result", f"callback_result:{campaign}:{attempt}",
                 f"number:{number}", group, at, data,
                 f"Call-back to {number} (attempt {attempt}): {result}")


def text_event(message: OutboxMessage, state: str, at: float) -> Event | None:
    """`text_sent` (submitted), `text_delivered`, or `text_failed` (failed, undeliverable,
    expired) for a text to a caller; None for other states and for staff notes."""
    if message.kind not in TEXT_EVENT_KINDS:
        return None
    if state == "submitted":
        name = "text_sent"
    elif state == "delivered":
        name = "text_delivered"
    elif state in FAILED_STATES:
        name = "text_failed"
    else:
        return None
    data = {"message_id": message.id, "kind": message.kind, "pbx": message.pbx,
            "call_id": message.call_id, "to": message.destination, "group": message.group,
            "variant": message.variant, "state": state, "at": iso(at),
            "attempts": message.attempts, "duplicate_risk": message.duplicate_risk,
            "error_code": message.error_code if name == "text_failed" else None,
            "detail": message.error_detail if name == "text_failed" else None}
    words = {"text_sent": "sent", "text_delivered": "delivered",
             "text_failed": f"not delivered ({state})"}[name]
    return Event(name, f"{name}:{message.id}", f"call:{message.pbx}/{message.call_id}",
                 message.group, at, data, f"Text to {message.destination} {words}")


def _in_reply_to(message: OutboxMessage | None) -> dict[str, Any] | None:
    if message is None:
        return None
    return {"message_id": message.id, "pbx": message.pbx, "call_id": message.call_id,
            "group": message.group}


def reply(sender: str, destination: str, text: str, at: float, inbound_id: int,
          keyword: str | None, last: OutboxMessage | None) -> Event:
    """`reply`: a text from a caller (MO), with the text of ours it most likely answers."""
    data = {"from": sender, "to": destination, "text": text, "at": iso(at),
            "inbound_id": inbound_id, "keyword": keyword, "in_reply_to": _in_reply_to(last)}
    group = last.group if last else None
    return Event("reply", f"reply:{inbound_id}", f"number:{sender}", group, at, data,
                 f"Reply from {sender}: {text}")


def opt_out(sender: str, keyword: str, at: float, new: bool,
            last: OutboxMessage | None) -> Event:
    data = {"number": sender, "keyword": keyword, "at": iso(at), "new": new,
            "in_reply_to": _in_reply_to(last)}
    group = last.group if last else None
    return Event("opt_out", f"opt_out:{sender}:{at:.3f}", f"number:{sender}", group, at,
                 data, f"{sender} opted out ({keyword})")


def staff_note(event: Event) -> str:
    """The text a staff member gets for a missed call: the summary, in one GSM-7 SMS."""
    text = templates.fold_to_gsm7(event.summary)
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------- routing, bodies


def body(event: Event, endpoint: WebhookEndpoint) -> str:
    """The request body for one endpoint: the JSON envelope, or Slack's `{"text": …}`."""
    if endpoint.format == "slack":
        return json.dumps({"text": event.summary}, ensure_ascii=False)
    return json.dumps({"event": event.name, "event_id": event.event_id, "schema": SCHEMA,
                       "occurred_at": iso(event.occurred_at), "data": event.data},
                      ensure_ascii=False, separators=(",", ":"))


def delivery_id(event: Event, endpoint: WebhookEndpoint) -> str:
    """Stable per event and endpoint: retries and restarts send the same id."""
    return str(uuid.uuid5(_NAMESPACE, f"{endpoint.name}\x00{event.key}"))


def route(events: Iterable[Event | None], endpoints: Sequence[WebhookEndpoint]
          ) -> list[WebhookIn]:
    """One queue row per event and endpoint that wants it (its `events` and `groups`)."""
    rows = []
    for event in events:
        if event is None:
            continue
        for endpoint in endpoints:
            if endpoint.wants(event.name, event.group):
                rows.append(WebhookIn(delivery_id(event, endpoint), endpoint.name, event.name,
                                      event.key, event.order_key, body(event, endpoint)))
    return rows


def wants_any(endpoints: Sequence[WebhookEndpoint], names: Iterable[str]) -> bool:
    """Whether some endpoint takes one of these events (else there is nothing to build)."""
    wanted = set(names)
    return any(wanted & endpoint.events for endpoint in endpoints)


# --------------------------------------------------------------------------- signing, answers


def signature(secret: str, timestamp: int | str, payload: bytes) -> str:
    """`sha256=` and the HMAC-SHA256 hex of `timestamp + "." + body`, keyed by the secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, payload: bytes, given: str, *, now: float,
           tolerance: float = 300.0) -> bool:
    """What a receiver checks: the signature, and a timestamp within `tolerance` s."""
    try:
        fresh = abs(now - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(signature(secret, timestamp, payload), given)


def headers(endpoint: WebhookEndpoint, delivery: WebhookDelivery, timestamp: int,
            payload: bytes) -> dict[str, str]:
    out = {"Content-Type": "application/json", "User-Agent": f"mcdaemon/{__version__}",
           "X-Mcdaemon-Event": delivery.event, "X-Mcdaemon-Delivery": delivery.delivery_id,
           "X-Mcdaemon-Timestamp": str(timestamp)}
    if endpoint.secret:
        out["X-Mcdaemon-Signature"] = signature(endpoint.secret, timestamp, payload)
    return out


def judge(status: int) -> str:
    """`delivered` (2xx), `retry` (408, 429, 5xx) or `dead` (any other: the receiver refuses
    it and would refuse it again — a wrong URL, secret or format; redirects included)."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "dead"


def retry_delay(attempts: int, endpoint: WebhookEndpoint,
                jitter: Callable[[float, float], float] = random.uniform) -> float:
    """Exponential backoff after `attempts` failed tries, with ±20 % jitter (no herd)."""
    delay = min(endpoint.retry_max, endpoint.retry_min * 2.0 ** max(0, attempts - 1))
    return delay * jitter(0.8, 1.2)


def after_failure(delivery: WebhookDelivery, endpoint: WebhookEndpoint, error: str,
                  now: float, retry_after: float | None = None,
                  jitter: Callable[[float, float], float] = random.uniform) -> WebhookResult:
    """A retryable failure: pending again after the backoff, or dead past the limits."""
    attempts = delivery.attempts + 1
    deadline = delivery.created_at + endpoint.max_age
    if attempts >= endpoint.max_attempts:
        return WebhookResult(delivery.id, "dead", None,
                             f"gave up after {attempts} attempts: {error}")
    if now >= deadline:
        return WebhookResult(delivery.id, "dead", None,
                             f"gave up after max_age ({endpoint.max_age:.0f} s): {error}")
    delay = retry_delay(attempts, endpoint, jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, endpoint.retry_max))
    # one last try at the deadline rather than none
    return WebhookResult(delivery.id, "pending", min(now + delay, deadline), error)


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _describe(exc: BaseException, endpoint: WebhookEndpoint) -> str:
    """An exception in words, without the URL's path or query (they may hold a token)."""
    text = str(exc).replace(endpoint.url, endpoint.where)
    parts = urlsplit(endpoint.url)
    for secret_part in (parts.path, parts.query, parts.password):
        if secret_part and len(secret_part) > 1:
            text = text.replace(secret_part, "…")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- the worker


class WebhookWorker:
    """Sends the store's pending deliveries; `run()` is one of the service's tasks."""

    def __init__(self, endpoints: Callable[[], Sequence[WebhookEndpoint]], *,
                 clock: Callable[[], float] = time.time, concurrency: int = CONCURRENCY,
                 jitter: Callable[[float, float], float] = random.uniform) -> None:
        self._endpoints = endpoints
        self._clock = clock
        self._concurrency = concurrency
        self._jitter = jitter
        self._wake = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._results: list[WebhookResult] = []
        self._stopping = False
        self._store: WebhooksStore | None = None
        self._session: aiohttp.ClientSession | None = None

    def wake(self) -> None:
        """New rows are queued: look now rather than at the next timer."""
        self._wake.set()

    async def run(self, store: WebhooksStore) -> None:
        self._store = store
        connector = aiohttp.TCPConnector(limit=self._concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            self._session = session
            while True:
                await self._flush()
                now = self._clock()
                self._wake.clear()
                free = self._concurrency - len(self._in_flight)
                timeout = IDLE
                if free > 0 and not self._stopping:
                    # a finished request whose result is not written yet is still busy
                    busy = [*self._in_flight, *(result.id for result in self._results)]
                    due = await store.claim_due_webhooks(now, free, busy=busy)
                    for delivery in due:
                        if not self._stopping:
                            self._start(delivery)
                    if len(due) == free:
                        continue  # there may be more: look again once a slot frees
                    upcoming = await store.next_webhook_at(after=now)
                    if upcoming is not None:
                        timeout = min(IDLE, max(0.01, upcoming - now))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()

    async def stop(self, timeout: float = 2.0) -> None:
        """Start nothing more; give requests in flight `timeout` s, record what they got.
        A request cut off stays pending and is sent again at the next start."""
        self._stopping = True
        tasks = list(self._in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self._flush()

    def _start(self, delivery: WebhookDelivery) -> None:
        task = asyncio.create_task(self._deliver(delivery), name=f"webhook:{delivery.id}")
        self._in_flight[delivery.id] = task

        def finished(done: asyncio.Task[None]) -> None:
            self._in_flight.pop(delivery.id, None)
            if not done.cancelled() and done.exception() is not None:
                log.error("webhook delivery failed unexpectedly", delivery=delivery.delivery_id,
                          error=repr(done.exception()))
            self._wake.set()

        task.add_done_callback(finished)

    async def _flush(self) -> None:
        batch, self._results = self._results, []
        if batch and self._store is not None:
            await self._store.settle_webhooks(batch, self._clock())

    def _endpoint(self, name: str) -> WebhookEndpoint | None:
        return next((item for item in self._endpoints() if item.name == name), None)

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        endpoint = self._endpoint(delivery.endpoint)
        fields: dict[str, Any] = dict(endpoint=delivery.endpoint, webhook=delivery.event,
                                      delivery=delivery.delivery_id)
        if endpoint is None:
            log.warning("webhook dead: its endpoint is no longer in the config", **fields,
                        hint=f"the webhook {delivery.endpoint!r} was removed from the config "
                             "or renamed while deliveries to it were pending")
            self._record(WebhookResult(delivery.id, "dead", None,
                                       "the endpoint is no longer in the config"))
            return
        fields["to"] = endpoint.where
        payload = delivery.body.encode()
        stamp = int(self._clock())
        assert self._session is not None
        status: int | None = None
        retry_after: float | None = None
        try:
            async with self._session.post(
                    endpoint.url, data=payload, allow_redirects=False,
                    headers=headers(endpoint, delivery, stamp, payload),
                    timeout=aiohttp.ClientTimeout(total=endpoint.timeout)) as response:
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
                await response.content.read(65536)  # drain a little; the rest is dropped
            error = f"HTTP {status}"
        except TimeoutError:
            error = f"no answer within {endpoint.timeout:g} s"
        except aiohttp.ClientError as exc:
            error = _describe(exc, endpoint)
        now = self._clock()
        verdict = judge(status) if status is not None else "retry"
        if verdict == "delivered":
            log.info("webhook delivered", status=status, attempt=delivery.attempts + 1,
                     **fields)
            self._record(WebhookResult(delivery.id, "delivered"))
        elif verdict == "dead":
            log.warning("webhook dead: the receiver refused it (check its url, secret and "
                        "format); not retried", status=status, **fields)
            self._record(WebhookResult(delivery.id, "dead", None, error))
        else:
            result = after_failure(delivery, endpoint, error, now, retry_after, self._jitter)
            if result.state == "dead":
                log.warning("webhook dead: retries exhausted", error=result.error, **fields,
                            hint=f"check that the receiver at {endpoint.where} is up and "
                                 f"reachable, and the url of webhook {delivery.endpoint!r}")
            else:
                log.info("webhook will be retried", error=error,
                         attempt=delivery.attempts + 1,
                         retry_in=round((result.next_at or now) - now, 1), **fields)
            self._record(result)

    def _record(self, result: WebhookResult) -> None:
        self._results.append(result)
        self._wake.set()


__all__ = ["EVENTS", "Event", "WebhookWorker", "body", "missed_call", "opt_out", "reply",
           "route", "signature", "staff_note", "text_event", "verify"]
