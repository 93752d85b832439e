"""The daemon backfills by itself: at each connect, the queue calls that finished while no AMI
link watched the PBX (since the store's `watched:<pbx>`) are read from the queue_log and
decided; a restart or an AMI gap costs no queue caller, and none is texted twice."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from mcdaemon.config.load import load_config
from mcdaemon.core.policy import decide
from mcdaemon.core.records import CallRecord, Outcome, PolicyView
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.store import NewCall, Store

from e2e.harness import AMI_SECRET, SMPP_PASSWORD, run_service, stop, wait_until, write_config

CALLER = "+447700900123"
OTHER = "+447700900456"
STAFF = "+447700900999"


def abandon(callid: str, caller: str, ended: float) -> str:
    return (f"{int(ended) - 10}|{callid}|support|NONE|ENTERQUEUE||{caller}|1\n"
            f"{int(ended)}|{callid}|support|NONE|ABANDON|1|1|10\n")


async def seed(tmp_path: Path, config_path: Path, watched: float,
               recorded: Sequence[CallRecord] = (), pbxs: Sequence[str] = ("lab",)) -> None:
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        for pbx in pbxs:
            await store.set_status(f"watched:{pbx}", "up", watched)
        if recorded:
            config = load_config(config_path)
            calls = [NewCall(record, decide(record, config, PolicyView(), record.ended))
                     for record in recorded]
            await store.record_calls(calls, now=time.time(), destinations=[
                call.decision.destination for call in calls])
    finally:
        await store.close()


async def run_once(config_path: Path, smsc: TestSmsc | None = None,
                   texts: int = 0, pbxs: int = 1) -> list[dict[str, Any]]:
    """Start the daemon, wait for its backfill of `pbxs` PBXs (and for `texts` texts at the
    SMSC), stop it; its log lines."""
    with capture_logs() as logged:
        service, task = await run_service(config_path)
        if smsc is not None:
            await smsc.wait_for_submits(texts, 15)
        await wait_until(lambda: sum(entry["event"] == "queue_log backfilled"
                                     for entry in logged) >= pbxs, 15, "the backfill")
        assert await stop(service, task) == 0
    return logged


async def test_a_restart_texts_the_queue_caller_missed_while_down_once(tmp_path: Path) -> None:
    now = time.time()
    queue_log = tmp_path / "queue_log"
    queue_log.write_text(abandon("1700000000.7", CALLER, now - 30))
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([], secret=AMI_SECRET) as ami:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              inbound={"queue_log": str(queue_log)})
        await seed(tmp_path, config, watched=now - 60)
        logged = await run_once(config, smsc, texts=1)
        assert [submit.destination for submit in smsc.submits] == ["447700900123"]
        [line] = [entry for entry in logged if entry["event"] == "queue_log backfilled"]
        assert (line["calls"], line["decided"], line["texted"]) == (1, 1, 1)
        [decided] = [entry for entry in logged if entry["event"] == "call decided"]
        assert decided["backfilled"] is True and decided["decision"] == "text"
        again = await run_once(config)
        [line] = [entry for entry in again if entry["event"] == "queue_log backfilled"]
        assert (line["decided"], line["texted"]) == (0, 0)
        assert len(smsc.submits) == 1
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        row = await store.call("lab", "1700000000.7")
        watched = (await store.statuses())["watched:lab"][1]
    finally:
        await store.close()
    assert row is not None and row["outcome"] == "queue_abandon"
    assert watched > now


async def test_a_call_the_store_has_is_not_texted_again(tmp_path: Path) -> None:
    now = time.time()
    queue_log = tmp_path / "queue_log"
    queue_log.write_text(abandon("1700000000.1", OTHER, now - 40)
                         + abandon("1700000000.2", CALLER, now - 30))
    known = CallRecord(pbx="lab", call_id="1700000000.1", caller=OTHER, caller_name=None,
                       caller_e164=OTHER, did=None, group="support",
                       outcome=Outcome.ANSWERED, stages=(), started=now - 50, ended=now - 40,
                       wait_seconds=10.0)
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([], secret=AMI_SECRET) as ami:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              inbound={"queue_log": str(queue_log)})
        await seed(tmp_path, config, watched=now - 60, recorded=[known])
        logged = await run_once(config, smsc, texts=1)
        assert [submit.destination for submit in smsc.submits] == ["447700900123"]
        [line] = [entry for entry in logged if entry["event"] == "queue_log backfilled"]
        assert (line["calls"], line["decided"], line["texted"]) == (2, 1, 1)
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        row = await store.call("lab", "1700000000.1")
    finally:
        await store.close()
    assert row is not None and row["outcome"] == "answered"


async def test_an_unreadable_queue_log_is_one_warning(tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([], secret=AMI_SECRET) as ami:
        missing = tmp_path / "nowhere" / "queue_log"
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              inbound={"queue_log": str(missing)})
        await seed(tmp_path, config, watched=time.time() - 60)
        with capture_logs() as logged:
            service, task = await run_service(config)
            await wait_until(lambda: any(entry["event"].startswith("queue_log not backfilled")
                                         for entry in logged), 15, "the warning")
            assert await stop(service, task) == 0
    [warning] = [entry for entry in logged if entry["event"].startswith("queue_log not")]
    assert warning["log_level"] == "warning" and warning["path"] == str(missing)
    assert warning["group"] == "asterisk"


async def test_each_pbx_is_backfilled_from_its_own_queue_log_as_live_calls_are_decided(
        tmp_path: Path) -> None:
    """Two PBXs, a queue_log each (the same call id in both: calls are keyed by PBX), and a
    group whose staff are told of each missed call: a backfilled call is decided as a live
    one, staff note included."""
    now = time.time()
    logs = {"lab": tmp_path / "lab.queue_log", "branch": tmp_path / "branch.queue_log"}
    logs["lab"].write_text(abandon("1700000000.5", CALLER, now - 30))
    logs["branch"].write_text(abandon("1700000000.5", OTHER, now - 20))
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([], secret=AMI_SECRET) as lab, \
            AmiTestServer([], secret=AMI_SECRET) as branch:
        entries = [{"name": name, "host": "127.0.0.1", "port": server.port, "username": "mcd",
                    "secret": AMI_SECRET, "reconnect_min": "0.1s", "reconnect_max": "0.5s",
                    "queue_log": str(logs[name])}
                   for name, server in (("lab", lab), ("branch", branch))]
        config = write_config(tmp_path, ami_port=lab.port, smsc_port=smsc.port, ami=entries,
                              groups={"default": {"triggers": ["missed"],
                                                  "notify_staff": [STAFF],
                                                  "templates": {"default": "Sorry!"}}})
        await seed(tmp_path, config, watched=now - 60, pbxs=["lab", "branch"])
        logged = await run_once(config, smsc, texts=4, pbxs=2)
    assert sorted(submit.destination for submit in smsc.submits) == sorted(
        ["447700900123", "447700900456", STAFF.lstrip("+"), STAFF.lstrip("+")])
    lines = {entry["pbx"]: entry for entry in logged if entry["event"] == "queue_log backfilled"}
    assert {pbx: (line["calls"], line["texted"]) for pbx, line in lines.items()} == {
        "lab": (1, 1), "branch": (1, 1)}
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        rows = [await store.call(pbx, "1700000000.5") for pbx in ("lab", "branch")]
        last = json.loads((await store.statuses())["backfill:branch"][0])
    finally:
        await store.close()
    assert [row["caller_e164"] for row in rows if row] == [CALLER, OTHER]
    assert (last["calls"], last["decided"], last["texted"]) == (1, 1, 1)
