"""In a storm the decisions go first: bookkeeping (submit results, receipts, housekeeping)
waits until no call has ended for a moment, and never longer than BOOKKEEPING_DEFERRAL."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mcdaemon import service
from mcdaemon.config import config_from_dict
from mcdaemon.records import CallRecord, Decision, Outcome
from mcdaemon.service import Service
from mcdaemon.smpp import SubmitResult
from mcdaemon.store import NewCall


def quiet_service() -> Service:
    config = config_from_dict({"region": "GB", "inbound": {"contexts": ["from-carrier"]},
                               "ami": [{"name": "pbx", "username": "u", "secret": "s"}]})
    return Service(config, install_signal_handlers=False)


def ended_call(call_id: str) -> CallRecord:
    return CallRecord(pbx="pbx", call_id=call_id, caller="+447700900123", caller_name=None,
                      caller_e164="+447700900123", did=None, group=None,
                      outcome=Outcome.QUEUE_ABANDON, stages=(), started=0.0, ended=1.0,
                      wait_seconds=1.0)


async def timed(awaitable: object) -> float:
    started = time.monotonic()
    await awaitable  # type: ignore[misc]
    return time.monotonic() - started


async def test_with_no_storm_bookkeeping_goes_at_once() -> None:
    assert await timed(quiet_service()._decisions_first()) < 0.005


async def test_bookkeeping_waits_until_no_call_has_ended_for_a_moment() -> None:
    daemon = quiet_service()
    daemon._hand_to_decider([ended_call("1.1")])
    daemon._ended.clear()  # decided already; the storm may go on

    waited = await timed(daemon._decisions_first())

    assert service.STORM_QUIET * 0.9 <= waited < service.BOOKKEEPING_DEFERRAL


async def test_bookkeeping_waits_a_moment_for_the_last_batchs_texts_to_be_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bookkeeping on the loop would make each of their window's round trips wait for the
    GIL; but only for a moment: results kept in memory are texts a `kill -9` would double."""
    monkeypatch.setattr(service, "TEXTS_OUT_GRACE", 0.3)  # long: a loaded machine's sleeps
    loop = asyncio.get_running_loop()
    daemon = quiet_service()
    out_soon: asyncio.Future[SubmitResult] = loop.create_future()
    daemon._in_flight.add(out_soon)
    daemon._last_batch_sent = loop.time()
    loop.call_later(0.05, daemon._in_flight.discard, out_soon)
    waited_for_the_texts = await timed(daemon._decisions_first())

    stuck: asyncio.Future[SubmitResult] = loop.create_future()  # a slow SMSC's
    daemon._in_flight.add(stuck)
    daemon._last_batch_sent = loop.time()
    waited_for_a_slow_smsc = await timed(daemon._decisions_first())

    assert 0.045 <= waited_for_the_texts < 0.2
    assert 0.27 <= waited_for_a_slow_smsc < service.BOOKKEEPING_DEFERRAL


async def test_bookkeeping_waits_no_longer_than_the_deferral_however_long_the_storm() -> None:
    daemon = quiet_service()

    async def endless_storm() -> None:
        number = 0
        while True:
            number += 1
            daemon._hand_to_decider([ended_call(f"1.{number}")])  # never decided
            await asyncio.sleep(service.STORM_QUIET / 4)

    daemon._hand_to_decider([ended_call("1.0")])  # the storm has begun
    storm = asyncio.create_task(endless_storm())
    try:
        waited = await timed(daemon._decisions_first())
    finally:
        storm.cancel()

    assert service.BOOKKEEPING_DEFERRAL * 0.9 <= waited < service.BOOKKEEPING_DEFERRAL + 0.2


async def test_while_the_daemon_runs_the_interpreter_is_tuned_for_short_pauses(
        tmp_path: Path) -> None:
    """The switch interval is the longest the SMPP thread waits for the GIL the busy event
    loop holds; what exists at the start is frozen, so that a full garbage collection does
    not walk it in the middle of a storm. Both are the daemon's while it runs, and given back
    when it stops."""
    config = config_from_dict({"region": "GB", "inbound": {"contexts": ["from-carrier"]},
                               "store": {"path": str(tmp_path / "store.db")},
                               "smpp": {"port": 1, "system_id": "u", "password": "p",
                                        "source_addr": "Acme"}})
    daemon = Service(config, install_signal_handlers=False)
    before = sys.getswitchinterval()
    running = asyncio.create_task(daemon.run())
    while daemon._store is None:
        await asyncio.sleep(0.01)
    during = sys.getswitchinterval()
    frozen = gc.get_freeze_count()
    daemon.request_stop()
    assert await asyncio.wait_for(running, 15) == 0

    assert during == pytest.approx(service.GIL_SWITCH_INTERVAL, abs=1e-6) and during < before
    assert sys.getswitchinterval() == before
    assert frozen > 10000  # the modules, the config, the phone number metadata...
    assert gc.get_freeze_count() == 0


async def test_decisions_are_logged_once_the_storm_is_over_and_at_once_at_a_stop() -> None:
    """A decision's log line and metrics are bookkeeping: during a storm they wait with the
    rest, so the next calls' events are read first; nothing is lost at a stop."""
    daemon = quiet_service()
    decided = NewCall(ended_call("1.1"), Decision(False, "not_mobile", group="default"))
    daemon._hand_to_decider([ended_call("1.2")])  # a storm is going on
    daemon._ended.clear()
    books = asyncio.create_task(daemon._keep_the_books())
    try:
        with capture_logs() as logged:
            daemon._unreported.append((decided, None))
            daemon._bookkeeping_due.set()
            await asyncio.sleep(service.STORM_QUIET / 4)
            during_the_storm = [line for line in logged if line["event"] == "call decided"]
            await asyncio.sleep(service.STORM_QUIET * 2)
            after_it = [line for line in logged if line["event"] == "call decided"]
    finally:
        books.cancel()

    assert during_the_storm == []
    assert [(line["call_id"], line["reason"]) for line in after_it] == [("1.1", "not_mobile")]

    daemon._unreported.append((NewCall(ended_call("1.3"), Decision(False, "cooldown")), None))
    with capture_logs() as logged:
        daemon._report_decided()  # as the stop does
    assert [line["call_id"] for line in logged if line["event"] == "call decided"] == ["1.3"]
