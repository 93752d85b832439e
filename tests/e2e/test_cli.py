"""The administrator's commands against live peers: send-test, enable/disable/status."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mcdaemon.sim.smsc import TestSmsc

from e2e.harness import SMPP_PASSWORD, free_port, write_config


async def mcdaemon(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcdaemon", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_send_test_reports_the_submit_and_the_delivery_receipt(tmp_path: Path) -> None:
    async with TestSmsc(password=SMPP_PASSWORD) as smsc:
        config = write_config(tmp_path, ami_port=free_port(), smsc_port=smsc.port)
        code, out, err = await mcdaemon("send-test", "-c", str(config), "07700 900123",
                                        "Hello from the test", "--timeout", "10")
        assert code == 0, err
        assert "submit to +447700900123: submitted" in out
        assert "delivery receipt: DELIVRD" in out
        assert smsc.messages() == [("447700900123", "Hello from the test")]


async def test_send_test_with_a_wrong_password_says_so_and_fails(tmp_path: Path) -> None:
    async with TestSmsc(password="other") as smsc:
        config = write_config(tmp_path, ami_port=free_port(), smsc_port=smsc.port)
        code, _out, err = await mcdaemon("send-test", "-c", str(config), "+447700900123",
                                         "--timeout", "5")
        assert code == 1
        assert "smpp.system_id / smpp.password" in err and SMPP_PASSWORD not in err


async def test_disable_and_enable_are_shown_by_status(tmp_path: Path) -> None:
    config = write_config(tmp_path, ami_port=free_port(), smsc_port=free_port())
    assert (await mcdaemon("disable", "-c", str(config)))[0] == 0
    code, out, _ = await mcdaemon("status", "-c", str(config))
    assert code == 0 and "global off" in out and "daemon:   not running" in out
    assert (await mcdaemon("enable", "-c", str(config)))[0] == 0
    assert "global on" in (await mcdaemon("status", "-c", str(config)))[1]
    assert (await mcdaemon("status", "-c", str(config), "--health"))[0] == 1


async def test_a_national_sender_number_reaches_the_smsc_as_an_international_one(
        tmp_path: Path) -> None:
    """`07700 900000` in region GB: the SMSC gets 447700900000 with TON 1 NPI 1, so callers
    can reply (before, the national digits went out flagged international)."""
    async with TestSmsc(password=SMPP_PASSWORD) as smsc:
        config = write_config(tmp_path, ami_port=free_port(), smsc_port=smsc.port,
                              smpp={"source_addr": "07700 900000"})
        code, _out, err = await mcdaemon("send-test", "-c", str(config), "+447700900123",
                                         "Hello", "--timeout", "10")
        assert code == 0, err
        (submit,) = smsc.submits
        assert (submit.source, submit.source_ton, submit.source_npi) == ("447700900000", 1, 1)
