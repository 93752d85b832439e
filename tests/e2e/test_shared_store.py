"""Two daemons (processes of their own) watch the same PBX and share one PostgreSQL store and
one SMSC: the recorded storm is texted once to every mobile caller, whoever saw the call
first. With one of them killed (`kill -9`) mid-storm the other finishes the storm; only texts
the dead one had in flight may go twice, and those are marked `duplicate_risk`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mcdaemon.core.transcript import read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.store import PgStore

from e2e.harness import AMI_SECRET, SMPP_PASSWORD, wait_until, write_config
from recordings import recording_path

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WINDOW = 5


async def start_daemon(config: Path, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcdaemon", "--log-format", "json", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=log.open("ab"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def stored_messages(url: str) -> list[tuple[str, str, bool]]:
    store = await PgStore.open(url)
    try:
        return [(m.destination.lstrip("+"), m.state, m.duplicate_risk)
                for m in await store.messages()]
    finally:
        await store.close()


@pytest.mark.parametrize("kill_one", [False, True], ids=["both-live", "one-killed"])
async def test_two_daemons_sharing_one_store_text_each_caller_of_a_storm_once(
        tmp_path: Path, pg_url: str, kill_one: bool) -> None:
    storm = read_transcript(recording_path("busy_storm"))
    mobiles = {label["callerid"].lstrip("+") for label in storm.labels}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    async with TestSmsc(password=SMPP_PASSWORD, response_delay=0.05) as smsc, \
            AmiTestServer([storm], secret=AMI_SECRET, speed=0) as pbx_to_a, \
            AmiTestServer([storm], secret=AMI_SECRET, speed=0) as pbx_to_b:
        # one PBX, one manager connection per daemon: each daemon sees every event
        daemons = []
        for name, ami, log in (("a", pbx_to_a, logs[0]), ("b", pbx_to_b, logs[1])):
            folder = tmp_path / name
            folder.mkdir()
            config = write_config(folder, ami_port=ami.port, smsc_port=smsc.port,
                                  smpp={"throughput": 40, "window": WINDOW})
            shared = yaml.safe_load(config.read_text()) | {"store": {"url": pg_url}}
            config.write_text(yaml.safe_dump(shared))
            daemons.append(await start_daemon(config, log))
        try:
            if kill_one:
                await wait_until(lambda: len(smsc.submits) >= 10, 30, "the storm's first texts")
                daemons[0].send_signal(signal.SIGKILL)
                await daemons[0].wait()
            await wait_until(lambda: {s.destination for s in smsc.submits} >= mobiles, 90,
                             "a text to every caller of the storm")
            await asyncio.sleep(1.0)  # anything doubled would have gone out by now
        finally:
            for daemon in daemons:
                if daemon.returncode is None:
                    daemon.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(daemon.wait(), 20) for daemon in daemons]
    for code, log in zip(codes[1:] if kill_one else codes, logs[1:] if kill_one else logs,
                         strict=True):
        assert code == 0, log.read_text()[-3000:]
    sent = Counter(submit.destination for submit in smsc.submits)
    messages = await stored_messages(pg_url)
    doubled = {number for number, count in sent.items() if count > 1}
    at_risk = {number for number, _, risk in messages if risk}
    print(f"{'one killed' if kill_one else 'both live'}: {len(sent)} callers texted, "
          f"{sum(sent.values())} submits, doubled {len(doubled)}, marked {len(at_risk)}")

    assert set(sent) == mobiles  # nobody lost, nobody else texted
    assert len(messages) == len(mobiles)  # one decision and one text per call
    assert {state for _, state, _ in messages} <= {"submitted", "delivered"}
    if kill_one:
        assert doubled <= at_risk  # every duplicate is flagged
        assert sum(count - 1 for count in sent.values()) <= WINDOW  # only its texts in flight
    else:
        assert doubled == set() and at_risk == set()
