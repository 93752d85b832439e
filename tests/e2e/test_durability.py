"""Durable before acknowledged, end to end, with the daemon as a real process.

- A STOP reply the SMSC saw answered (`deliver_sm_resp`) is in the store, however soon after
  the answer the daemon is killed with `kill -9`: the answer is only written once the
  opt-out is committed.
- A store that cannot be written (here: its file may not grow, `RLIMIT_FSIZE`, so the kernel
  refuses SQLite's writes as a full disk would) stops the daemon with one clear line and a
  non-zero exit, within seconds; the restart sends again only what may have been in flight
  at the failure, marked `duplicate_risk`.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sqlite3
import sys
from collections import Counter
from pathlib import Path
from unittest.mock import patch

import pytest

from mcdaemon.config.load import load_config
from mcdaemon.core.transcript import read_transcript
from mcdaemon.service import Service
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.store import Store, StoreError

from e2e.harness import AMI_SECRET, SMPP_PASSWORD, free_port, wait_until, write_config
from recordings import recording_path

STOPPERS = [f"+4477009{number:05d}" for number in range(90001, 90006)]  # not in the storm
WINDOW = 5


async def start_daemon(config: Path, log: Path, *,
                       file_size_limit: int | None = None) -> asyncio.subprocess.Process:
    def limit_file_size() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    # stderr into a pipe read here: the file size limit must not cut the daemon's own log
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcdaemon", "--log-format", "json", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=limit_file_size)
    assert daemon.stderr is not None
    stderr = daemon.stderr

    async def copy_log() -> None:
        with log.open("ab") as out:
            while line := await stderr.readline():
                out.write(line)
                out.flush()

    asyncio.get_running_loop().create_task(copy_log())
    return daemon


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [0.0, 0.05, 0.2])
async def test_stop_replies_answered_to_the_smsc_survive_a_kill_9(tmp_path: Path,
                                                                  kill_after: float) -> None:
    storm = read_transcript(recording_path("busy_storm"))
    log = tmp_path / "daemon.log"
    # receipts off: every deliver_sm the SMSC sends is one of the STOP replies
    async with TestSmsc(password=SMPP_PASSWORD, response_delay=0.05, receipts=False,
                        redeliver=True) as smsc, \
            AmiTestServer([storm], secret=AMI_SECRET, speed=0) as ami:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              smpp={"throughput": 30, "window": WINDOW})
        daemon = await start_daemon(config, log)
        try:
            await smsc.wait_for_submits(WINDOW, 30)  # the storm's texts are going out
            for number in STOPPERS:
                await smsc.send_mo(number, "STOP")
            await smsc.wait_until(lambda: len(smsc.deliver_sm_responses) >= len(STOPPERS), 15)
            await asyncio.sleep(kill_after)
        finally:
            daemon.send_signal(signal.SIGKILL)
            await daemon.wait()
        answered = [sequence for sequence, status in smsc.deliver_sm_responses if status == 0]
        assert len(answered) == len(STOPPERS)
        daemon = await start_daemon(config, log)
        try:
            await wait_until(lambda: log.read_text().count('"mcdaemon started"') == 2, 30,
                             "the restarted daemon")
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 20) == 0, log.read_text()[-3000:]
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        assert [number for number in STOPPERS if not await store.is_opted_out(number)] == []
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "mcdaemon.db") as db:  # each reply stored once
        assert db.execute("SELECT COUNT(*) FROM inbound").fetchone()[0] == len(STOPPERS)


@pytest.mark.slow
async def test_a_store_that_cannot_grow_stops_the_daemon_and_the_restart_doubles_nothing_recorded(
        tmp_path: Path) -> None:
    storm = read_transcript(recording_path("busy_storm"))
    mobiles = {label["callerid"].lstrip("+") for label in storm.labels}
    log = tmp_path / "daemon.log"
    async with TestSmsc(password=SMPP_PASSWORD, response_delay=0.02) as smsc, \
            AmiTestServer([storm], secret=AMI_SECRET, speed=1.0) as ami:
        config = write_config(tmp_path, ami_port=ami.port, smsc_port=smsc.port,
                              smpp={"throughput": 50, "window": WINDOW})
        # the store's files may not grow past this (an empty store is ~1.1 MB; creating it
        # writes ~1.8 MB of log; failing from 2.2 to 3.2 MB did): the storm's writes fail
        # part-way
        daemon = await start_daemon(config, log, file_size_limit=2_600_000)
        try:
            code = await asyncio.wait_for(daemon.wait(), 90)
        finally:
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()
        assert code == 1, log.read_text()[-3000:]
        text = log.read_text()
        assert '"stopping: the store ' in text and "cannot be used" in text
        assert "Traceback" not in text  # one clear line, not a traceback
        sent_before = Counter(submit.destination for submit in smsc.submits)
        assert 0 < len(sent_before) < len(mobiles), "the failure came mid-storm"
        # the restart, with room on the disk, finishes the storm (replayed to it)
        ami.replay_each_connection = True
        daemon = await start_daemon(config, log)
        try:
            await wait_until(lambda: {s.destination for s in smsc.submits} >= mobiles, 90,
                             "a text to every caller of the storm")
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 20) == 0, log.read_text()[-3000:]
    sent = Counter(submit.destination for submit in smsc.submits)
    doubled = {number for number, count in sent.items() if count > 1}
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        messages = await store.messages()
        at_risk = {message.destination.lstrip("+") for message in messages
                   if message.duplicate_risk}
    finally:
        await store.close()
    assert set(sent) == mobiles
    assert doubled <= at_risk  # only texts in flight at the failure, and marked
    assert len(doubled) <= WINDOW


async def test_a_store_that_cannot_be_written_at_start_up_ends_the_run_not_hangs_it(
        tmp_path: Path) -> None:
    """The first writes (texts in flight recovered, the heartbeat) fail: `run` raises the
    store's error with the store closed, so the process exits 1 (`mcdaemon run: …`) instead
    of waiting for ever on the database's open thread."""
    config = write_config(tmp_path, ami_port=free_port(), smsc_port=free_port())
    service = Service(load_config(config), config_path=config, install_signal_handlers=False)
    store = await Store.open(str(tmp_path / "mcdaemon.db"))

    async def cannot_write(*_: object) -> list[int]:
        raise StoreError("the store cannot be used: disk I/O error")

    async def opened() -> Store:
        return store

    with patch.object(store, "recover_in_flight", cannot_write), \
            patch.object(service, "_open_store", opened), \
            pytest.raises(StoreError, match="disk I/O error"):
        await asyncio.wait_for(service.run(), 10)

    with pytest.raises(ValueError):  # closed: aiosqlite's thread has ended
        await store.count_calls()
