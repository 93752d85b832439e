"""Follow-ups and call-backs end to end: the real service between the test AMI server (which
answers Originate with OriginateResponse) and the test SMSC, state in SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mcdaemon.core.transcript import Transcript, read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.store import Store

from e2e.harness import (
    AMI_SECRET,
    SMPP_PASSWORD,
    run_service,
    stop,
    wait_until,
    write_config,
)
from e2e.webhook_receiver import Receiver
from recordings import recording_path

CALLBACK = {"attempts": ["0s", "1s", "1s"], "caller_id": "Acme <+442071230000>"}


def group(**extra: Any) -> dict[str, Any]:
    return {"default": {"triggers": ["missed"],
                        "templates": {"default": "Sorry we missed your call."}, **extra}}


def transcript(name: str) -> Transcript:
    return read_transcript(recording_path(name))


def originates(ami: AmiTestServer) -> list[dict[str, str]]:
    return [action for action in ami.actions if action.get("Action") == "Originate"]


async def campaign_states(path: Path) -> tuple[list[str], list[str]]:
    store = await Store.open(str(path))
    try:
        return ([c.state for c in await store.campaigns()],
                [a.state for a in await store.attempts()])
    finally:
        await store.close()


async def test_a_call_back_request_is_called_back_until_it_is_answered(tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([transcript("ivr_callback_fastagi")], secret=AMI_SECRET,
                          speed=0) as ami:
        ami.originate_results = ["no_answer", "busy", "success"]
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              groups=group(callback=CALLBACK))
        service, task = await run_service(config)
        await asyncio.wait_for(ami.finished(), 10)
        await wait_until(lambda: len(originates(ami)) == 3, 10, "three Originates")
        await asyncio.sleep(0.5)
        assert await stop(service, task) == 0
    actions = originates(ami)
    assert {action["Channel"] for action in actions} == {"Local/+447700900444@mcd-callback"}
    assert all(action["Async"] == "true" and action["ActionID"].startswith("mcdaemon-lab-")
               for action in actions)
    assert actions[0]["CallerID"] == "Acme <+442071230000>"
    assert len({action["ActionID"] for action in actions}) == 3
    campaigns, attempts = await campaign_states(tmp_path / "mcdaemon.db")
    assert campaigns == ["done"]
    assert attempts == ["no_answer", "busy", "answered"]


async def test_a_restart_in_the_middle_of_a_campaign_resumes_it(tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([transcript("ivr_callback_fastagi")], secret=AMI_SECRET,
                          speed=0) as ami:
        ami.originate_results = ["silent"]  # queued, and its result never comes
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              groups=group(callback=CALLBACK))
        service, task = await run_service(config)
        await wait_until(lambda: len(originates(ami)) == 1, 10, "the first Originate")
        await asyncio.sleep(0.3)
        assert await stop(service, task) == 0
        # same store, a new daemon: the attempt in flight is unknown, the next one goes out
        service, task = await run_service(config)
        await wait_until(lambda: len(originates(ami)) == 2, 10, "the next Originate")
        await asyncio.sleep(0.5)
        assert await stop(service, task) == 0
    campaigns, attempts = await campaign_states(tmp_path / "mcdaemon.db")
    assert (campaigns, attempts) == (["done"], ["unknown", "answered"])


async def test_a_follow_up_text_goes_out_after_the_first(tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([transcript("queue_abandon")], secret=AMI_SECRET, speed=0) as ami:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              groups=group(followups=[
                                  {"after": "1s", "template": "Still want to talk?"}]))
        service, task = await run_service(config)
        await smsc.wait_for_submits(2, 10)
        assert [submit.destination for submit in smsc.submits] == ["447700900123"] * 2
        assert await stop(service, task) == 0
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        assert [(m.kind, m.seq) for m in await store.messages()] == [("first", 0),
                                                                    ("followup", 1)]
    finally:
        await store.close()


async def test_an_answered_call_from_the_caller_stops_the_follow_ups(tmp_path: Path) -> None:
    answered = transcript("answered")  # Bob's answered call, renamed to our caller
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, \
            AmiTestServer([transcript("queue_abandon")], secret=AMI_SECRET, speed=0) as ami:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              groups=group(followups=[
                                  {"after": "3s", "template": "Still want to talk?"}]))
        service, task = await run_service(config)
        await smsc.wait_for_submits(1, 10)
        for frame in answered.frames:
            await ami.push(frame.raw.replace(b"+447700900777", b"+447700900123"))
        await asyncio.sleep(4.0)
        assert len(smsc.submits) == 1
        assert await stop(service, task) == 0
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        followup = [m for m in await store.messages() if m.kind == "followup"]
        assert [(m.state, m.error_detail) for m in followup] == [
            ("failed", "cancelled: the caller called again and was answered")]
    finally:
        await store.close()


async def test_each_call_back_attempt_and_its_result_reach_the_webhooks(
        tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc, Receiver("cb-secret") as crm, \
            AmiTestServer([transcript("ivr_callback_fastagi")], secret=AMI_SECRET,
                          speed=0) as ami:
        ami.originate_results = ["no_answer", "success"]
        config = write_config(
            tmp_path, ami_port=ami.port, smsc_port=smsc.port,
            groups=group(callback={**CALLBACK, "attempts": ["0s", "1s"]}),
            webhooks=[{"name": "crm", "url": crm.url, "secret": "cb-secret",
                       "events": ["callback_attempt", "callback_result"]}])
        service, task = await run_service(config)
        received = await crm.wait_for(4, 15)
        assert await stop(service, task) == 0
    events = [(item.event, item.json["data"]) for item in received]
    assert all(item.signed for item in received)
    assert [name for name, _ in events] == ["callback_attempt", "callback_result",
                                            "callback_attempt", "callback_result"]
    results = [data for name, data in events if name == "callback_result"]
    assert [(data["attempt"], data["result"], data["campaign_state"]) for data in results] == [
        (1, "no_answer", "next"), (2, "answered", "done")]
    assert all(data["number"] == "+447700900444" for _, data in events)
