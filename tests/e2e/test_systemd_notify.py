"""`mcdaemon run` under a pretend systemd: a real $NOTIFY_SOCKET, the daemon as a subprocess.

Ready means the config is valid, the store open and the workers started: a PBX that is down
does not keep `systemctl start` waiting (it is reported through STATUS= and retried). The
daemon keeps pinging the watchdog, and says STOPPING=1 on SIGTERM before exiting 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc

from e2e.harness import AMI_SECRET, SMPP_PASSWORD, free_port, write_config


class NotifySocket:
    """The AF_UNIX datagram socket systemd would listen on; collects every message."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[str] = []  # one KEY=VALUE line each, in order

    def drain(self) -> None:
        while True:
            try:
                datagram = self.sock.recv(4096)
            except BlockingIOError:
                return
            self.messages += [line for line in datagram.decode().split("\n") if line]

    def lines(self) -> list[str]:
        self.drain()
        return list(self.messages)

    async def wait_for(self, line: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if line in self.lines():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {line} within {timeout} s; got {self.lines()}")


@pytest.mark.slow
async def test_ready_without_the_pbx_link_status_tells_it_watchdog_throughout_stopping(
        tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mcd-") as short:  # AF_UNIX paths: 107 bytes
        notify = NotifySocket(str(Path(short) / "notify"))
        ami_port = free_port()  # nobody listens there yet: the PBX is "down"
        log = tmp_path / "daemon.log"
        async with TestSmsc(password=SMPP_PASSWORD) as smsc:
            config = write_config(tmp_path, ami_port=ami_port, smsc_port=smsc.port)
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mcdaemon", "--log-format", "json", "run", "-c",
                str(config), stdout=asyncio.subprocess.DEVNULL, stderr=log.open("ab"),
                env={**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": notify.address})
            try:
                # ready with its PBX down: systemd's start does not wait for the PBX
                await notify.wait_for("READY=1", 20)
                await notify.wait_for("STATUS=watching 0 of 1 PBX(s); not connected: lab", 5)
                assert (tmp_path / "mcdaemon.db").exists()  # the store is open
                await notify.wait_for("WATCHDOG=1", 5)
                assert notify.lines().count(  # said once, not at every connect attempt
                    "STATUS=watching 0 of 1 PBX(s); not connected: lab") == 1
                async with AmiTestServer([], secret=AMI_SECRET, port=ami_port) as ami:
                    await notify.wait_for("STATUS=watching 1 of 1 PBX(s)", 15)
                    assert ami.connections >= 1
                    assert any(action.get("Action", "").lower() == "login"
                               for action in ami.actions)
                    await asyncio.sleep(2.5)
                    lines = notify.lines()
                    after_ready = lines[lines.index("READY=1"):]
                    assert after_ready.count("WATCHDOG=1") >= 2, lines  # every second
                    assert lines.count("READY=1") == 1
                    daemon.send_signal(signal.SIGTERM)
                    assert await asyncio.wait_for(daemon.wait(), 15) == 0, \
                        log.read_text()[-3000:]
                await notify.wait_for("STOPPING=1", 2)
                assert "STOPPING=1" not in notify.lines()[:notify.lines().index("READY=1")]
            finally:
                if daemon.returncode is None:
                    daemon.kill()
                    await daemon.wait()
                notify.sock.close()
