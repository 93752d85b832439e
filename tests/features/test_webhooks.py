"""Webhooks: payloads and signing (pure), the durable queue, and the worker against a real
HTTP receiver over TCP (retries, dead letters, outages, restarts, Slack, filters, logs)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mcdaemon.config.load import config_from_dict
from mcdaemon.config.model import Config
from mcdaemon.config.reader import ConfigError
from mcdaemon.config.webhooks import EVENTS, WebhookEndpoint
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import CALLER_KINDS, NewCall, Store, WebhookIn
from mcdaemon.webhooks import delivery as webhooks
from mcdaemon.webhooks.notify import Notifier

from e2e.harness import free_port
from e2e.webhook_receiver import Receiver

SECRET = "s3cret-webhook-key-0123456789"
CALLER = "+447700900123"
T0 = 1_794_000_000.0  # 2026-11-05 ~ 21:20 UTC


def record(call_id: str = "1794000000.1", caller: str = CALLER, **changes: Any) -> CallRecord:
    values: dict[str, Any] = dict(
        pbx="lab", call_id=call_id, caller=caller.lstrip("+"), caller_name="ALICE SMITH",
        caller_e164=caller, did="442071230001", group="support",
        outcome=Outcome.QUEUE_ABANDON, stages=("queue:support:abandon",), started=T0,
        ended=T0 + 42, wait_seconds=40.4)
    values.update(changes)
    return CallRecord(**values)


def decision(**changes: Any) -> Decision:
    values: dict[str, Any] = dict(text=True, reason="text", group="support", body="Sorry",
                                  template="default", destination=CALLER)
    values.update(changes)
    return Decision(**values)


def make_config(*endpoints: dict[str, Any], notify_staff: list[str] | None = None) -> Config:
    support: dict[str, Any] = {"display_name": "Support", "queues": ["support"],
                               "templates": {"default": "Sorry we missed you"}}
    if notify_staff is not None:
        support["notify_staff"] = notify_staff
    return config_from_dict({"timezone": "Europe/London", "groups": {
        "support": support, "sales": {"templates": {"default": "Hi"}}},
        "webhooks": list(endpoints)})


def endpoint(url: str = "http://127.0.0.1:9/hooks/crm", **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"name": "crm", "url": url, "secret": SECRET,
                              "retry_min": "0.05s", "retry_max": "0.2s", "timeout": "2s"}
    values.update(changes)
    return values


# --------------------------------------------------------------------------- pure parts


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"event":"missed_call"}'
    expected = hmac.new(SECRET.encode(), b"1794000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.signature(SECRET, 1794000000, body) == f"sha256={expected}"
    assert webhooks.verify(SECRET, "1794000000", body, f"sha256={expected}", now=T0 + 10)
    assert not webhooks.verify(SECRET, "1794000000", body + b" ", f"sha256={expected}",
                               now=T0)
    assert not webhooks.verify(SECRET, "1794000000", body, f"sha256={expected}",
                               now=T0 + 3600), "a stale timestamp is a replay"
    assert not webhooks.verify("other", "1794000000", body, f"sha256={expected}", now=T0)


def test_answers_are_judged_2xx_delivered_408_429_5xx_retried_other_dead() -> None:
    assert [webhooks.judge(code) for code in (200, 204, 301, 400, 401, 404, 408, 410, 429,
                                              500, 502, 503)] == [
        "delivered", "delivered", "dead", "dead", "dead", "dead", "retry", "dead", "retry",
        "retry", "retry", "retry"]


def test_missed_call_payload_has_the_call_the_decision_and_a_lead() -> None:
    config = make_config(endpoint())
    event = webhooks.missed_call(record(), decision(), 7, config)
    assert event is not None
    body = json.loads(webhooks.body(event, config.webhooks[0]))
    assert body["event"] == "missed_call" and body["schema"] == 1
    assert body["occurred_at"] == webhooks.iso(T0 + 42)
    data = body["data"]
    assert data["call"]["call_id"] == "1794000000.1"
    assert data["call"]["caller_e164"] == CALLER and data["call"]["outcome"] == "queue_abandon"
    assert data["decision"]["text"] is True and data["decision"]["reason"] == "text"
    assert data["message_id"] == 7 and data["group"] == "support"
    assert data["lead"] == {"phone": CALLER, "name": "Alice Smith", "tag": "missed-call",
                            "called_at": webhooks.iso(T0), "wait_seconds": 40.4,
                            "outcome": "queue_abandon"}
    assert webhooks.missed_call(record(outcome=Outcome.ANSWERED), decision(), None,
                                config) is None
    assert webhooks.missed_call(record(partial=True), decision(), None, config) is None


def test_the_slack_text_reads_like_a_sentence() -> None:
    config = make_config(endpoint(format="slack", secret=None))
    event = webhooks.missed_call(record(), decision(), 7, config)
    assert event is not None
    local = time.strftime("%H:%M", time.gmtime(T0))  # Europe/London is UTC in November
    assert json.loads(webhooks.body(event, config.webhooks[0])) == {
        "text": f"Missed call from Alice Smith +447700900123 to Support at {local}, text sent"}
    refused = webhooks.missed_call(record(), decision(text=False, reason="cooldown"), None,
                                   config)
    assert refused is not None and refused.summary.endswith("no text (cooldown)")


def test_routing_follows_each_endpoints_events_and_groups() -> None:
    config = make_config(endpoint(name="all"),
                         endpoint(name="sales-only", groups=["sales"]),
                         endpoint(name="texts", events=["text_delivered"]))
    event = webhooks.missed_call(record(), decision(), 7, config)
    rows = webhooks.route([event, None], config.webhooks)
    assert [row.endpoint for row in rows] == ["all"]
    assert rows[0].event_key == "missed_call:lab/1794000000.1"
    assert rows[0].order_key == "call:lab/1794000000.1"
    again = webhooks.route([event], config.webhooks)
    assert again[0].delivery_id == rows[0].delivery_id, "stable across retries and replays"


def test_retries_back_off_exponentially_with_jitter_then_die() -> None:
    ep = WebhookEndpoint("crm", "http://x", retry_min=1.0, retry_max=8.0, max_attempts=5,
                         max_age=100.0)
    delays = [webhooks.retry_delay(n, ep, lambda a, b: 1.0) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low, high = webhooks.retry_delay(3, ep, lambda a, b: a), webhooks.retry_delay(
        3, ep, lambda a, b: b)
    assert (low, high) == (pytest.approx(3.2), pytest.approx(4.8))
    item = webhooks.WebhookDelivery(1, "d", "crm", "missed_call", "{}", 0, T0)
    retry = webhooks.after_failure(item, ep, "HTTP 500", T0 + 1, jitter=lambda a, b: 1.0)
    assert (retry.state, retry.next_at) == ("pending", T0 + 2)
    tired = webhooks.after_failure(webhooks.WebhookDelivery(1, "d", "crm", "x", "{}", 4, T0),
                                   ep, "HTTP 500", T0 + 1)
    assert tired.state == "dead" and "5 attempts" in (tired.error or "")
    old = webhooks.after_failure(item, ep, "HTTP 500", T0 + 100)
    assert old.state == "dead" and "max_age" in (old.error or "")
    near = webhooks.after_failure(item, ep, "HTTP 500", T0 + 99.5, jitter=lambda a, b: 1.0)
    assert near.next_at == T0 + 100, "one last try at the deadline"


def test_the_schema_names_callback_events_for_later() -> None:
    assert {"callback_attempt", "callback_result"} <= set(EVENTS)


# --------------------------------------------------------------------------- config


def test_config_problems_are_reported_with_their_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"name": "a", "url": "ftp://x/y", "secret": "k"},
                    {"name": "b", "url": "https://crm.example.com/h"},
                    {"name": "c", "url": "https://x.example.com", "secret": "k",
                     "events": ["missed_cal"], "groups": ["nope"], "format": "xml",
                     "retries": 3})
    problems = "\n".join(caught.value.problems)
    for fragment in ("webhooks[0].url: must be an http:// or https:// URL",
                     "webhooks[1].secret: is required for format json",
                     "webhooks[2].events: 'missed_cal' is not one of",
                     "webhooks[2].groups: 'nope' is not a group",
                     "webhooks[2].format: 'xml' is not one of json, slack",
                     "webhooks[2].retries: unknown key"):
        assert fragment in problems, problems


def test_secret_from_the_environment_and_a_warning_for_plain_http(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    config = make_config({"url": "http://crm.example.com/h", "secret_env": "HOOK_SECRET"},
                         notify_staff=["07700 900456"])
    assert config.webhooks[0].secret == SECRET and config.webhooks[0].name == "webhook1"
    assert SECRET not in repr(config.webhooks[0])
    assert any("plain http" in warning for warning in config.warnings)
    support = config.group("support")
    assert support is not None and support.notify_staff == ("+447700900456",)


# --------------------------------------------------------------------------- the queue


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    opened = await Store.open(str(tmp_path / "mcdaemon.db"))
    yield opened
    await opened.close()


def row(key: str, order: str = "call:a", endpoint: str = "crm") -> WebhookIn:
    return WebhookIn(f"d-{endpoint}-{key}", endpoint, "missed_call", key, order, "{}")


async def test_enqueueing_is_idempotent_and_one_calls_events_stay_in_order(
        store: Store) -> None:
    assert await store.enqueue_webhooks([row("1"), row("2"), row("3", "call:b")], T0) == 3
    assert await store.enqueue_webhooks([row("1")], T0) == 0
    due = await store.claim_due_webhooks(T0, 10)
    assert [item.delivery_id for item in due] == ["d-crm-1", "d-crm-3"]  # 2 waits for 1
    assert await store.claim_due_webhooks(T0, 10, busy=[due[0].id, due[1].id]) == []
    await store.mark_webhook_retry(due[0].id, next_at=T0 + 5, error="HTTP 500", now=T0)
    assert [item.delivery_id for item in await store.claim_due_webhooks(T0, 10)] == [
        "d-crm-3"]
    assert await store.next_webhook_at(after=T0) == T0 + 5
    await store.mark_webhook_delivered(due[0].id, T0 + 5)
    await store.mark_webhook_dead(due[1].id, error="HTTP 400", now=T0 + 5)
    assert [item.delivery_id for item in await store.claim_due_webhooks(T0 + 5, 10)] == [
        "d-crm-2"]
    rows = {item["delivery_id"]: item for item in await store.webhooks()}
    assert rows["d-crm-1"]["state"] == "delivered" and rows["d-crm-1"]["attempts"] == 2
    assert rows["d-crm-3"]["state"] == "dead" and rows["d-crm-3"]["last_error"] == "HTTP 400"


async def test_staff_notes_do_not_count_against_callers_and_ignore_opt_outs(
        store: Store) -> None:
    assert "staff_note" not in CALLER_KINDS
    config = make_config(notify_staff=["+447700900456"])
    queued: list[int] = []
    worker = webhooks.WebhookWorker(lambda: config.webhooks)
    notifier = Notifier(lambda: store, lambda: config, worker, lambda: T0 + 50, queued.append)
    await store.opt_out("+447700900456", "STOP", T0)  # the staff phone once sent STOP
    calls = [NewCall(record(), decision())]
    ids = await store.record_calls(calls, now=T0 + 50, destinations=[CALLER])
    await notifier.calls_decided(calls, ids)
    await notifier.calls_decided(calls, ids)  # a replay queues no second note
    assert queued == [1]
    notes = [m for m in await store.messages() if m.kind == "staff_note"]
    assert len(notes) == 1 and notes[0].destination == "+447700900456"
    assert notes[0].body.startswith("Missed call from Alice Smith +447700900123 to Support")
    view = await store.policy_view("+447700900456", "support", T0 + 60)
    assert view.last_text_at is None and view.texts_last_hour == 1  # the caller's text only
    await store.opt_out(CALLER, "STOP", T0 + 55)  # the caller opts out: the note still goes
    claimed = await store.claim_due(T0 + 60, 10)
    assert [m.kind for m in claimed] == ["staff_note"]


# --------------------------------------------------------------------------- the worker


async def run_worker(store: Store, config: Config) -> tuple[webhooks.WebhookWorker,
                                                            asyncio.Task[None]]:
    worker = webhooks.WebhookWorker(lambda: config.webhooks)
    return worker, asyncio.create_task(worker.run(store))


async def stop_worker(worker: webhooks.WebhookWorker, task: asyncio.Task[None]) -> None:
    await worker.stop(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def queue_call(store: Store, config: Config, call_id: str = "1794000000.1") -> None:
    event = webhooks.missed_call(record(call_id), decision(), 1, config)
    await store.enqueue_webhooks(webhooks.route([event], config.webhooks), time.time())


async def test_a_signed_delivery_reaches_the_receiver_with_its_headers(store: Store) -> None:
    async with Receiver(SECRET) as receiver:
        config = make_config(endpoint(receiver.url))
        worker, task = await run_worker(store, config)
        await queue_call(store, config)
        worker.wake()
        [got] = await receiver.wait_for(1, 5)
        await stop_worker(worker, task)
    assert got.signed, got.headers
    assert abs(int(got.headers["X-Mcdaemon-Timestamp"]) - time.time()) < 5
    assert got.headers["X-Mcdaemon-Signature"].startswith("sha256=")
    assert got.event == "missed_call" and got.json["event"] == "missed_call"
    assert got.headers["Content-Type"] == "application/json"
    [stored] = await store.webhooks()
    assert stored["state"] == "delivered" and got.delivery == stored["delivery_id"]


async def test_a_500_is_retried_and_the_event_delivered_once(store: Store) -> None:
    async with Receiver(SECRET, answers=[500]) as receiver:
        config = make_config(endpoint(receiver.url))
        worker, task = await run_worker(store, config)
        await queue_call(store, config)
        worker.wake()
        await receiver.wait_for(1, 5)
        await asyncio.sleep(0.4)  # no further request may follow
        await stop_worker(worker, task)
    assert [item.status for item in receiver.received] == [500, 200]
    assert len({item.delivery for item in receiver.received}) == 1, "same delivery id"
    [stored] = await store.webhooks()
    assert (stored["state"], stored["attempts"]) == ("delivered", 2)


async def test_a_400_is_dead_at_once_and_logged_with_its_status(store: Store) -> None:
    async with Receiver(SECRET, answers=[400]) as receiver:
        config = make_config(endpoint(receiver.url))
        with capture_logs() as logs:
            worker, task = await run_worker(store, config)
            await queue_call(store, config)
            worker.wake()
            await asyncio.sleep(0.6)
            await stop_worker(worker, task)
    assert [item.status for item in receiver.received] == [400]
    [stored] = await store.webhooks()
    assert (stored["state"], stored["last_error"]) == ("dead", "HTTP 400")
    [dead] = [entry for entry in logs if entry["event"].startswith("webhook dead")]
    assert dead["log_level"] == "warning" and dead["status"] == 400


async def test_nothing_is_lost_while_the_receiver_is_down_not_even_across_a_restart(
        tmp_path: Path) -> None:
    port = free_port()
    path = str(tmp_path / "queue.db")
    config = make_config(endpoint(f"http://127.0.0.1:{port}/hooks/crm"))
    store = await Store.open(path)
    worker, task = await run_worker(store, config)
    for n in range(3):
        await queue_call(store, config, f"1794000000.{n}")
    worker.wake()
    await asyncio.sleep(0.5)  # connection refused, retried a few times
    await stop_worker(worker, task)
    pending = await store.webhooks(state="pending")
    assert len(pending) == 3 and all(item["attempts"] >= 1 for item in pending)
    assert "Connect" in (pending[0]["last_error"] or "")
    await store.close()
    async with Receiver(SECRET, port=port) as receiver:
        store = await Store.open(path)  # a new process on the same store
        worker, task = await run_worker(store, config)
        got = await receiver.wait_for(3, 5)
        await asyncio.sleep(0.2)
        await stop_worker(worker, task)
        assert sorted(item.json["data"]["call"]["call_id"] for item in got) == [
            f"1794000000.{n}" for n in range(3)]  # three calls: no order between them
        assert len(receiver.received) == 3 and all(item.signed for item in got)
        assert {item["state"] for item in await store.webhooks()} == {"delivered"}
        await store.close()


async def test_slack_format_and_the_events_filter(store: Store) -> None:
    async with Receiver() as slack, Receiver(SECRET) as crm:
        config = make_config(endpoint(slack.url, name="team", format="slack", secret=None,
                                      events=["missed_call"]),
                             endpoint(crm.url, name="crm", events=["opt_out"]))
        worker, task = await run_worker(store, config)
        await queue_call(store, config)
        worker.wake()
        [got] = await slack.wait_for(1, 5)
        await asyncio.sleep(0.2)
        await stop_worker(worker, task)
    assert set(got.json) == {"text"} and got.json["text"].startswith(
        "Missed call from Alice Smith +447700900123 to Support at ")
    assert "X-Mcdaemon-Signature" not in got.headers
    assert crm.received == [], "the crm endpoint takes opt_out only"


async def test_no_secret_and_no_full_number_in_the_logs(store: Store) -> None:
    token_url_path = "/services/T000/B000/XXXXTOKENXXXX"
    async with Receiver(SECRET, answers=[503, 401]) as receiver:
        config = make_config(endpoint(receiver.url), endpoint(
            f"http://127.0.0.1:{free_port()}{token_url_path}", name="down"))
        with capture_logs() as logs:
            worker, task = await run_worker(store, config)
            await queue_call(store, config)
            worker.wake()
            await asyncio.sleep(0.6)
            await stop_worker(worker, task)
    text = repr(logs)
    assert "webhook will be retried" in text and "webhook dead" in text
    for secret in (SECRET, "XXXXTOKENXXXX", CALLER, CALLER.lstrip("+"), "7700900123"):
        assert secret not in text, secret
