"""Prometheus metrics: counters and gauges the service updates, served on GET /metrics.

The service calls one typed method per event (each method's docstring names its call site);
`Metrics` keeps its own `CollectorRegistry`, so several services in one process (the tests)
never share a number, and nothing is registered globally.

Labels hold only bounded values: the names of PBXs and groups from the config, outcomes,
reason codes, states and receipt statuses. Anything else becomes `(unknown)` — a caller's
number, a caller ID name or a value an SMSC made up never becomes a label, so the exposition
holds no phone number and its size does not grow with traffic.

The HTTP endpoint is a small asyncio server (no thread): `await start()` listens on
`metrics.listen` (loopback by default; there is no authentication) when `metrics.enabled` is
true, `await stop()` closes it. GET /metrics answers with the text exposition format.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mcdaemon import __version__
from mcdaemon.config.model import Config, MetricsConfig
from mcdaemon.core.listen import server_address
from mcdaemon.core.policy import DEFERRED, FRAUD_SHIELD_TRIPS, REASONS, TEXT
from mcdaemon.core.records import CallRecord, Decision, Outcome

#: transitions counted by `mcdaemon_texts_total` (`retry`: back to queued after a failed try)
TextState = Literal["queued", "submitted", "delivered", "undeliverable", "unknown", "failed",
                    "expired", "retry"]
TEXT_STATES: tuple[TextState, ...] = ("queued", "submitted", "delivered", "undeliverable",
                                      "unknown", "failed", "expired", "retry")
#: the outbox's states (`store.TRANSITIONS`), the keys of `outbox_stats()["by_state"]`
OUTBOX_STATES = ("queued", "sending", "submitted", "delivered", "undeliverable", "unknown",
                 "failed", "expired")
#: `DeliveryReceipt.state`: the SMPP receipt words (smpp.py maps every receipt to one of them)
RECEIPT_STATUSES = ("DELIVRD", "UNDELIV", "EXPIRED", "DELETED", "REJECTD", "ACCEPTD",
                    "ENROUTE", "UNKNOWN")
#: `BindState.state` of the SMPP sender, and `AmiStatus.state` of an AMI connection
SMPP_STATES = ("down", "binding", "bound", "auth_failed")
AMI_STATES = ("connecting", "connected", "disconnected", "auth_failed")
#: seconds from hangup to submit: a text normally goes out well within a second
HANGUP_TO_SUBMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: how often the service should read `store.outbox_stats()` for `observe_outbox` (seconds)
OUTBOX_SNAPSHOT_INTERVAL = 10.0

#: label for a call no group takes (reason no_group); for a value outside the bounded set.
#: Neither can be a PBX or group name (those allow only letters, digits, _ . -).
NO_GROUP = "(none)"
UNKNOWN = "(unknown)"
OTHER_STATE = "other"

#: the classic text format, which every Prometheus version reads (and generate_latest writes)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_OUTCOMES = frozenset(str(outcome) for outcome in Outcome)
_REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request head
_MAX_REQUEST_HEAD = 16 * 1024


class MetricsError(Exception):
    """The metrics endpoint cannot start (e.g. its port is taken); the message says what to do."""


class Metrics:
    """The daemon's metrics, in a registry of their own, and the HTTP endpoint serving them.

    Build it with `Metrics.from_config(config)` whether or not metrics are enabled: the
    methods only count in memory, so the service calls them unconditionally, and `start()`
    opens a port only when `metrics.enabled` is true.
    """

    def __init__(self, config: MetricsConfig, *, pbxs: Iterable[str] = (),
                 groups: Iterable[str] = ()) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self._pbxs = frozenset(pbxs)
        self._groups = frozenset(groups)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        r = self.registry
        Info("mcdaemon_build", "The running mcdaemon's version.", registry=r).info(
            {"version": __version__})
        self._calls = Counter(
            "mcdaemon_calls", "Inbound calls finished, by PBX, group and outcome.",
            ("pbx", "group", "outcome"), registry=r)
        self._decisions = Counter(
            "mcdaemon_decisions", "Policy decisions: decision text|no_text and its reason code.",
            ("decision", "reason"), registry=r)
        self._fraud_trips = Counter(
            "mcdaemon_fraud_shield_trips",
            "Calls refused by the fraud shield (policy.caps), by reason.", ("reason",),
            registry=r)
        self._texts = Counter(
            "mcdaemon_texts", "Texts moving into a state (retry: back to queued after a "
            "failed try).", ("state",), registry=r)
        self._latency = Histogram(
            "mcdaemon_hangup_to_submit_seconds",
            "Seconds from the caller's hangup to the SMSC accepting the text.",
            buckets=HANGUP_TO_SUBMIT_BUCKETS, registry=r)
        self._receipts = Counter(
            "mcdaemon_delivery_receipts", "Delivery receipts received, by status.",
            ("status",), registry=r)
        self._bind = Gauge(
            "mcdaemon_smpp_bind_state", "1 for the SMSC bind's current state, 0 for the others.",
            ("state",), registry=r)
        self._window = Gauge(
            "mcdaemon_smpp_window_in_use", "Submits awaiting the SMSC's answer.", registry=r)
        self._window_size = Gauge(
            "mcdaemon_smpp_window_size", "Submits allowed in flight at once (smpp.window).",
            registry=r)
        self._ami = Gauge(
            "mcdaemon_ami_connection_state",
            "1 for each PBX's current AMI connection state, 0 for the others.",
            ("pbx", "state"), registry=r)
        self._outbox = Gauge(
            "mcdaemon_outbox_messages", "Messages in the outbox, by state.", ("state",),
            registry=r)
        self._oldest = Gauge(
            "mcdaemon_outbox_oldest_queued_age_seconds",
            "Age of the oldest queued text that is due (0 when none is waiting).", registry=r)
        self._deferred = Gauge(
            "mcdaemon_outbox_deferred_messages",
            "Queued texts waiting for a later time (opening hours, a retry).", registry=r)
        self._at_risk = Gauge(
            "mcdaemon_outbox_duplicate_risk_messages",
            "Texts that may have reached the SMSC twice (resent after a crash or a timeout).",
            registry=r)
        # every bounded series exists from the start, at 0, so rates and alerts see it
        for reason in REASONS:
            self._decisions.labels(_decision_label(reason), reason)
        for reason in sorted(FRAUD_SHIELD_TRIPS):
            self._fraud_trips.labels(reason)
        for text_state in TEXT_STATES:
            self._texts.labels(text_state)
        for status in RECEIPT_STATUSES:
            self._receipts.labels(status)
        for outbox_state in OUTBOX_STATES:
            self._outbox.labels(outbox_state)
        self.smpp_bind_state("down")
        for pbx in sorted(self._pbxs):
            for ami_state in (*AMI_STATES, OTHER_STATE):
                self._ami.labels(pbx, ami_state)

    @classmethod
    def from_config(cls, config: Config) -> Metrics:
        """Metrics for a loaded config: `config.metrics`, its PBX and group names as labels.

        Call site: `Service.__init__`, stored as `self._metrics`.
        """
        metrics = cls(config.metrics, pbxs=(pbx.name for pbx in config.ami),
                      groups=(group.name for group in config.groups))
        metrics.smpp_window(0, config.smpp.window)
        return metrics

    def update_names(self, config: Config) -> None:
        """Take the PBX and group names of a reloaded config (series of old names stay).

        Call site: `Service.reload`, after `self.config = new`. A change of the `metrics`
        section itself (enabled, listen) needs a restart.
        """
        self._pbxs = frozenset(pbx.name for pbx in config.ami)
        self._groups = frozenset(group.name for group in config.groups)

    # ------------------------------------------------------------------ what the service calls

    def call_decided(self, record: CallRecord, decision: Decision) -> None:
        """One finished call and its decision: `mcdaemon_calls_total`,
        `mcdaemon_decisions_total` and, for a cap reason, `mcdaemon_fraud_shield_trips_total`.

        Call site: `Decider._decide_and_store`, for each call after `store.record_calls` (the
        loop that logs "call decided"). Reads only the PBX, the group, the outcome and the
        reason: never the caller.
        """
        outcome = str(record.outcome) if str(record.outcome) in _OUTCOMES else UNKNOWN
        self._calls.labels(self._pbx(record.pbx), self._group(decision.group), outcome).inc()
        reason = decision.reason if decision.reason in REASONS else UNKNOWN
        self._decisions.labels("text" if decision.text else "no_text", reason).inc()
        if reason in FRAUD_SHIELD_TRIPS:
            self._fraud_trips.labels(reason).inc()

    def text_transition(self, state: TextState, count: int = 1) -> None:
        """`count` texts moved into `state` (`mcdaemon_texts_total{state}`).

        Call sites: `queued` in `Decider._decide_and_store` (each message id `record_calls`
        returned) and `Receiver._handle_reply` (an opt-out confirmation `enqueue_message`
        created); `retry` / `failed` in `Dispatcher._count_outcome`, for the submit results
        `Dispatcher.store_results` stored; `expired` in `Housekeeping.run` with
        `len(expire_due(now))`; `delivered` / `undeliverable` in `Receiver._apply_receipts` when
        a receipt settled a message. For `submitted` call `text_submitted`, which also times
        the text.
        """
        if state not in TEXT_STATES:
            raise ValueError(f"{state!r} is not one of {', '.join(TEXT_STATES)}")
        if count > 0:
            self._texts.labels(state).inc(count)

    def text_submitted(self, after_hangup: float | None) -> None:
        """The SMSC accepted a text: `mcdaemon_texts_total{state="submitted"}`, and its
        `after_hangup` seconds into `mcdaemon_hangup_to_submit_seconds`.

        Call site: `Dispatcher._count_outcome`, once the store recorded the submit, with
        `now - message.call_ended_at`; None for a text that waited on purpose (deferred to
        opening hours) or has no call (an opt-out confirmation): it is counted, not timed.
        """
        self._texts.labels("submitted").inc()
        if after_hangup is not None:
            self._latency.observe(max(0.0, after_hangup))

    def delivery_receipt(self, status: str) -> None:
        """A delivery receipt arrived (`mcdaemon_delivery_receipts_total{status}`), matched
        to a text or not.

        Call site: `Receiver._apply_receipts`, for each `DeliveryReceipt`, with `item.state`
        (DELIVRD, UNDELIV, …); any other word is counted as `(unknown)`.
        """
        status = status.upper()
        self._receipts.labels(status if status in RECEIPT_STATUSES else UNKNOWN).inc()

    def smpp_bind_state(self, state: str) -> None:
        """The SMSC bind's state: 1 on `mcdaemon_smpp_bind_state{state}`, 0 on the others.

        Call site: `Receiver.consume`, for each `BindState`, with `item.state`.
        """
        current = state if state in SMPP_STATES else OTHER_STATE
        for name in (*SMPP_STATES, OTHER_STATE):
            self._bind.labels(name).set(1 if name == current else 0)

    def smpp_window(self, in_use: int, size: int) -> None:
        """Submits in flight and the window they share (`mcdaemon_smpp_window_in_use`,
        `mcdaemon_smpp_window_size`).

        Call sites: `Dispatcher.start_sending`, and `Dispatcher._send_finished`,
        with `len(self._in_flight)` and `self.config.smpp.window`.
        """
        self._window.set(in_use)
        self._window_size.set(size)

    def ami_connection_state(self, pbx: str, state: str) -> None:
        """A PBX's AMI connection state: 1 on `mcdaemon_ami_connection_state{pbx,state}`, 0
        on its other states.

        Call site: `Intake._take`, for each `AmiStatus`, with `item.pbx` and
        `item.state`.
        """
        name = self._pbx(pbx)
        current = state if state in AMI_STATES else OTHER_STATE
        for each in (*AMI_STATES, OTHER_STATE):
            self._ami.labels(name, each).set(1 if each == current else 0)

    def observe_outbox(self, stats: Mapping[str, Any]) -> None:
        """The outbox as `Store.outbox_stats(now)` returns it: `by_state` counts,
        `oldest_queued_age` (seconds or None), `deferred` and `duplicate_risk` counts.

        Call site: `Housekeeping.run`, every `OUTBOX_SNAPSHOT_INTERVAL` seconds:
        `metrics.observe_outbox(await self.store.outbox_stats(now))` (one cheap query; no
        need to run it every tick).
        """
        by_state = stats.get("by_state") or {}
        for state in OUTBOX_STATES:
            self._outbox.labels(state).set(int(by_state.get(state, 0)))
        oldest = stats.get("oldest_queued_age")
        self._oldest.set(0.0 if oldest is None else float(oldest))
        self._deferred.set(int(stats.get("deferred") or 0))
        self._at_risk.set(int(stats.get("duplicate_risk") or 0))

    # ------------------------------------------------------------------ exposition

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format, as GET /metrics serves them."""
        return generate_latest(_WithoutCreated(self.registry))

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) the endpoint listens on (the real port when configured as 0)."""
        return server_address(self._server)

    async def start(self) -> None:
        """Listen on `metrics.listen` if `metrics.enabled`; MetricsError if it cannot.

        Call site: `Service.run`, after the store is open and before the workers start, so a
        taken port stops the daemon at once with the message (exit 1) instead of mid-run.
        """
        if not self.config.enabled or self._server is not None:
            return
        listen = self.config.listen
        try:
            self._server = await asyncio.start_server(
                self._serve, self.config.host, self.config.port, limit=_MAX_REQUEST_HEAD)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "address already in use; change metrics.listen or disable metrics"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "no such address on this host; change metrics.listen"
            elif exc.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need privileges); change " \
                      "metrics.listen"
            else:
                why = f"cannot listen: {exc.strerror or exc}; change metrics.listen or " \
                      "disable metrics"
            raise MetricsError(f"metrics.listen {listen}: {why}") from exc

    async def stop(self) -> None:
        """Close the endpoint and any scrape in progress. Safe to call twice, or unstarted.

        Call site: `Service._shutdown`, next to the store's close.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            try:
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ConnectionError):
                return
            status, headers, body = self._respond(head)
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()),
                     f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1"))
            if not head.startswith(b"HEAD "):
                writer.write(body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._clients.discard(task)

    def _respond(self, head: bytes) -> tuple[str, dict[str, str], bytes]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        text = {"Content-Type": "text/plain; charset=utf-8"}
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "400 Bad Request", text, b"bad request\n"
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", {**text, "Allow": "GET, HEAD"}, \
                b"only GET and HEAD\n"
        if target.split("?", 1)[0] != "/metrics":
            return "404 Not Found", text, b"mcdaemon serves its metrics on /metrics\n"
        return "200 OK", {"Content-Type": CONTENT_TYPE}, self.exposition()

    # ------------------------------------------------------------------ labels

    def _pbx(self, name: str) -> str:
        return name if name in self._pbxs else UNKNOWN

    def _group(self, name: str | None) -> str:
        if name is None:
            return NO_GROUP
        return name if name in self._groups else UNKNOWN


class _WithoutCreated(Collector):
    """The registry without the `*_created` series prometheus_client adds to each counter and
    histogram: the text format has no use for them (Prometheus stores them as plain gauges),
    and switching them off in prometheus_client is a process-wide setting."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():  # fresh objects on every collection
            created = f"{metric.name}_created"
            metric.samples = [sample for sample in metric.samples if sample.name != created]
            yield metric


def _decision_label(reason: str) -> str:
    return "text" if reason in (TEXT, DEFERRED) else "no_text"
