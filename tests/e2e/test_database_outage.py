"""The daemon (a process of its own) rides out its PostgreSQL server going away mid-storm: the
AMI intake goes on, the calls that end meanwhile are held, nothing is sent that is not
committed, and once the server is back every call is decided and texted once. A server that
stays away longer than `store.outage_max` (or a stop asked for meanwhile) makes the daemon say
what it held and exit 1.
Against a server of the module's own, shut down as its administrator would (`pg_ctl stop -m
fast`), never the session's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcdaemon.core.transcript import read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc

from e2e.harness import AMI_SECRET, SMPP_PASSWORD, wait_until, write_config
from pg_server import PgServer
from recordings import recording_path

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WINDOW = 5
THROUGHPUT = 40
#: what the dispatcher may hold claimed at once (`Dispatcher._claim_limit`): the most that can
#: go out after the server went away (claimed, so committed, before it)
CLAIMED_AT_MOST = WINDOW + max(WINDOW, THROUGHPUT // 4)


@pytest.fixture
def own_url(own_pg_server: PgServer) -> Iterator[str]:
    url = own_pg_server.database()
    yield url
    own_pg_server.drop(url)


async def start_daemon(tmp_path: Path, url: str, ami_port: int, smsc_port: int,
                       outage_max: str) -> tuple[asyncio.subprocess.Process, Path]:
    config = write_config(tmp_path, ami_port=ami_port, smsc_port=smsc_port,
                          smpp={"throughput": THROUGHPUT, "window": WINDOW})
    data = yaml.safe_load(config.read_text())
    data["store"] = {"url": url, "outage_max": outage_max}
    config.write_text(yaml.safe_dump(data))
    log = tmp_path / "daemon.log"
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcdaemon", "--log-format", "json", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=log.open("ab"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return daemon, log


def log_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def said(log: Path, words: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(log) if words in str(line.get("event", ""))]


async def test_the_server_back_within_outage_max_every_call_is_decided_and_texted_once(
        tmp_path: Path, own_pg_server: PgServer, own_url: str) -> None:
    storm = read_transcript(recording_path("busy_storm"))
    mobiles = {label["callerid"].lstrip("+") for label in storm.labels}
    async with TestSmsc(password=SMPP_PASSWORD, response_delay=0.05) as smsc, \
            AmiTestServer([storm], secret=AMI_SECRET, speed=1.0) as pbx:  # the hangups: 7-21 s
        daemon, log = await start_daemon(tmp_path, own_url, pbx.port, smsc.port, "2m")
        try:
            await wait_until(lambda: len(smsc.submits) >= 3, 60, "the storm's first texts")
            own_pg_server.halt()
            sent_before = len(smsc.submits)
            try:
                await wait_until(lambda: bool(said(log, "cannot be reached")), 30,
                                 "the daemon's warning that the database is away")
                await asyncio.sleep(3.0)  # calls go on ending: held, not texted
                sent_while_down = len(smsc.submits) - sent_before
            finally:
                own_pg_server.resume()
            await wait_until(lambda: {s.destination for s in smsc.submits} >= mobiles, 90,
                             "a text to every caller of the storm")
            await asyncio.sleep(1.0)  # anything doubled would have gone out by now
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(daemon.wait(), 30)
    assert code == 0, log.read_text()[-3000:]
    warning = said(log, "cannot be reached")
    assert len(warning) == 1 and warning[0]["level"] == "error"
    assert "gives_up_in" in warning[0] and "caller" not in warning[0]
    back = said(log, "is back: the calls held are decided now")
    assert len(back) == 1 and back[0]["held_most"] > 0
    assert sent_while_down <= CLAIMED_AT_MOST  # only texts claimed before it went away
    sent = Counter(submit.destination for submit in smsc.submits)
    assert set(sent) == mobiles and max(sent.values()) == 1  # every caller once, nobody twice
    assert not [line for line in log_lines(log) if line.get("event") == "call decided"
                and line.get("reason") == "too_old"]


async def test_the_server_away_longer_than_outage_max_stops_the_daemon_saying_what_it_held(
        tmp_path: Path, own_pg_server: PgServer, own_url: str) -> None:
    storm = read_transcript(recording_path("busy_storm"))
    async with TestSmsc(password=SMPP_PASSWORD, response_delay=0.05) as smsc, \
            AmiTestServer([storm], secret=AMI_SECRET, speed=1.0) as pbx:
        daemon, log = await start_daemon(tmp_path, own_url, pbx.port, smsc.port, "4s")
        try:
            await wait_until(lambda: len(smsc.submits) >= 3, 60, "the storm's first texts")
            own_pg_server.halt()
            try:
                code = await asyncio.wait_for(daemon.wait(), 60)
            finally:
                own_pg_server.resume()
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGKILL)
                await daemon.wait()
    assert code == 1, log.read_text()[-3000:]
    assert said(log, "cannot be reached")
    stop = said(log, "longer than store.outage_max (4 s)")
    assert stop and stop[0]["level"] == "error" and stop[0]["event"].startswith("stopping:")
    held = said(log, "calls that ended were not decided")
    assert held and held[0]["count"] > 0  # counts, not numbers
    assert not any("+44" in str(line) or "07" + "700" in str(line) for line in held)


async def test_asked_to_stop_while_the_server_is_away_the_daemon_stops_at_once(
        tmp_path: Path, own_pg_server: PgServer, own_url: str) -> None:
    storm = read_transcript(recording_path("busy_storm"))
    async with TestSmsc(password=SMPP_PASSWORD, response_delay=0.05) as smsc, \
            AmiTestServer([storm], secret=AMI_SECRET, speed=1.0) as pbx:
        daemon, log = await start_daemon(tmp_path, own_url, pbx.port, smsc.port, "5m")
        try:
            await wait_until(lambda: len(smsc.submits) >= 3, 60, "the storm's first texts")
            own_pg_server.halt()
            try:
                await wait_until(lambda: bool(said(log, "cannot be reached")), 30,
                                 "the daemon's warning that the database is away")
                await asyncio.sleep(2.0)  # calls end meanwhile: held
                daemon.send_signal(signal.SIGTERM)  # not waiting out the 5 minutes
                code = await asyncio.wait_for(daemon.wait(), 30)
            finally:
                own_pg_server.resume()
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGKILL)
                await daemon.wait()
    assert code == 1, log.read_text()[-3000:]
    assert said(log, "stopping while the store cannot be reached")
    assert said(log, "calls that ended were not decided")
