#!/usr/bin/env python3
"""Many PBXs on one daemon: each replays a recorded storm at real speed; ingest and memory.

The storm of a PBX is `tests/fixtures/busy_storm.ami` (Asterisk 22: 50 mobiles abandoning a
queue within 3 s) four times in a row, each copy with call ids of its own: 200 callers over
about 87 s (`--copies`). `--pbxs` AMI servers (the tests' `AmiTestServer`, all in one process
of their own, with the SMSC simulator) serve it, each to its own connection of one `mcdaemon
run` (a process of its own, store on disk, `--log-format json`). The servers send what the
daemon's event filter lets through (the frames are filtered once, in advance, and the daemon
runs with `event_filter: false`: the same bytes reach it as from an Asterisk applying the
filter, without 200 regex matches per frame in the fake PBXs' process).

Printed per run: calls decided / expected (its "call decided" log lines); events/s per PBX,
the frames one PBX sends divided by the time from the first replay's start to the last call
decided (at real speed a daemon that keeps up takes the recording's own time, whatever the
number of PBXs: the ratio to one PBX alone shows how far it falls behind); the daemon's peak
RSS (VmHWM) and CPU seconds. Targets (issue 22): 200 PBXs, peak RSS <= 256 MB, per-PBX
ingest >= 0.5 x one PBX's.

    python bench/many_pbx.py [--pbxs 1,200] [--copies 4] [--speed 1] [--unfiltered]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from mcdaemon.adapters.ami import event_filter
from mcdaemon.core.tracker import NEEDED_EVENTS, NEEDED_VARIABLES
from mcdaemon.core.transcript import Transcript, read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import TestSmsc
from mcdaemon.sim.variants import with_call_ids

ROOT = Path(__file__).resolve().parent.parent
STORM = ROOT / "tests" / "fixtures" / "busy_storm.ami"
TICK = os.sysconf("SC_CLK_TCK")
#: how long after the last frame the last decisions may take
SETTLE_TIMEOUT = 60.0


def storm(copies: int, unfiltered: bool = False) -> list[Transcript]:
    """The storm `copies` times, call ids unique per copy, filtered as Asterisk would (unless
    `unfiltered`: every event, as from a PBX refusing the daemon's Filter action)."""
    recording = read_transcript(STORM)
    wanted = re.compile(event_filter(NEEDED_EVENTS, NEEDED_VARIABLES))
    if not unfiltered:
        recording.frames = [frame for frame in recording.frames
                            if wanted.search(frame.raw.decode("utf-8", errors="replace"))]
    return [with_call_ids(recording, copy) for copy in range(copies)]


async def serve(pbxs: int, copies: int, speed: float, unfiltered: bool) -> None:
    """`--serve`: the fake PBXs and the SMSC, in a process of their own. Prints one JSON line
    with their ports, then `start TIME` at the first login and `end TIME` once every frame
    was sent; stops when stdin closes."""
    transcripts = storm(copies, unfiltered)
    servers = [AmiTestServer(transcripts, secret="s", speed=speed) for _ in range(pbxs)]
    async with TestSmsc(password="secret") as smsc, contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
        print(json.dumps({"smsc": smsc.port, "ami": [server.port for server in servers]}),
              flush=True)
        while not any(server.connections for server in servers):
            await asyncio.sleep(0.01)
        print(f"start {time.time()!r}", flush=True)
        await asyncio.gather(*(server.finished() for server in servers))
        print(f"end {time.time()!r}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def config_file(folder: Path, ami_ports: list[int], smsc_port: int) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({
        "region": "GB",
        "ami": [{"name": f"pbx{number:03d}", "host": "127.0.0.1", "port": port,
                 "username": "mcd", "secret": "s", "event_filter": False}
                for number, port in enumerate(ami_ports)],
        "inbound": {"contexts": ["from-carrier"]},
        "store": {"path": str(folder / "bench.db")},
        "smpp": {"host": "127.0.0.1", "port": smsc_port, "system_id": "mcdaemon",
                 "password": "secret", "source_addr": "Acme", "throughput": 200},
        "policy": {"caps": {"per_prefix_hour": 10**6, "per_hour": 10**6, "per_day": 10**6}},
    }))
    path.chmod(0o600)
    return path


def proc_status(pid: int, key: str) -> float:
    """A /proc/PID/status figure in MB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class Run:
    pbxs: int
    expected: int
    frames_per_pbx: int
    decided: int = 0
    seconds: float = 0.0  # first replay start -> last call decided
    replay_seconds: float = 0.0  # first replay start -> last frame sent
    peak_rss: float = 0.0
    cpu: float = 0.0

    @property
    def events_per_pbx(self) -> float:
        return self.frames_per_pbx / self.seconds if self.seconds else 0.0


def decisions(log: Path, offset: int) -> tuple[int, float, int]:
    """The "call decided" lines after `offset`: their count, the last one's time, the new
    offset (only whole lines are read)."""
    count, last = 0, 0.0
    with open(log, "rb") as file:
        file.seek(offset)
        data = file.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        if b'"call decided"' in line:
            with contextlib.suppress(ValueError, KeyError):
                last = datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
                count += 1
    return count, last, offset + end


async def run(pbxs: int, copies: int, speed: float, unfiltered: bool,
              keep_log: Path | None) -> Run:
    transcripts = storm(copies, unfiltered)
    result = Run(pbxs, expected=pbxs * sum(len(t.labels) for t in transcripts),
                 frames_per_pbx=sum(len(t.frames) for t in transcripts))
    fakes = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(pbxs), "--copies", str(copies),
        "--speed", str(speed), *(["--unfiltered"] if unfiltered else []),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert fakes.stdout is not None and fakes.stdin is not None
    ports = json.loads(await fakes.stdout.readline())
    times: dict[str, float] = {}

    async def read_times(stdout: asyncio.StreamReader) -> None:
        async for line in stdout:
            what, _, at = line.decode().partition(" ")
            times[what] = float(at)

    reader = asyncio.create_task(read_times(fakes.stdout))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            log_path = Path(tmp) / "daemon.log"
            path = config_file(Path(tmp), ports["ami"], ports["smsc"])
            with open(log_path, "wb") as log:
                daemon = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mcdaemon", "--log-format", "json", "run", "-c",
                    str(path), stdout=asyncio.subprocess.DEVNULL, stderr=log, cwd=tmp)
                offset, last = 0, 0.0
                try:
                    deadline = None
                    while result.decided < result.expected:
                        await asyncio.sleep(0.5)
                        count, at, offset = decisions(log_path, offset)
                        result.decided += count
                        last = max(last, at)
                        result.peak_rss = proc_status(daemon.pid, "VmHWM")
                        if daemon.returncode is not None:
                            break
                        if "end" in times and deadline is None:
                            deadline = time.monotonic() + SETTLE_TIMEOUT
                        if deadline is not None and time.monotonic() > deadline:
                            break
                    result.cpu = cpu_seconds(daemon.pid)
                    result.seconds = last - times.get("start", last)
                    result.replay_seconds = times.get("end", 0.0) - times.get("start", 0.0)
                finally:
                    if daemon.returncode is None:
                        daemon.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(daemon.wait(), 60)
                    if keep_log is not None:
                        keep_log.mkdir(parents=True, exist_ok=True)
                        (keep_log / f"daemon-{pbxs}.log").write_bytes(log_path.read_bytes())
            if daemon.returncode not in (0, -signal.SIGTERM):
                tail = log_path.read_text(errors="replace").splitlines()[-5:]
                raise SystemExit(f"the daemon stopped with {daemon.returncode}:\n"
                                 + "\n".join(tail))
    finally:
        fakes.stdin.close()
        await asyncio.wait_for(fakes.wait(), 30)
        reader.cancel()
    return result


async def main(arguments: argparse.Namespace) -> None:
    runs = []
    for pbxs in (int(number) for number in arguments.pbxs.split(",")):
        result = await run(pbxs, arguments.copies, arguments.speed, arguments.unfiltered,
                           Path(arguments.keep_log) if arguments.keep_log else None)
        runs.append(result)
        print(f"{pbxs:4d} PBX(s): decided {result.decided}/{result.expected}, "
              f"{result.frames_per_pbx} events per PBX in {result.seconds:.1f} s (replay "
              f"{result.replay_seconds:.1f} s): {result.events_per_pbx:.1f} events/s per PBX; "
              f"peak RSS {result.peak_rss:.0f} MB; CPU {result.cpu:.1f} s", flush=True)
    if len(runs) > 1 and runs[0].events_per_pbx:
        for result in runs[1:]:
            print(f"{result.pbxs} PBXs: per-PBX ingest "
                  f"{result.events_per_pbx / runs[0].events_per_pbx:.2f} x one PBX's "
                  f"(target >= 0.5); peak RSS {result.peak_rss:.0f} MB (target <= 256)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pbxs", default="1,200", help="PBX counts to run, in turn")
    parser.add_argument("--copies", type=int, default=4, help="storms per PBX (50 calls each)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (1: real)")
    parser.add_argument("--unfiltered", action="store_true",
                        help="every event, as from a PBX that refuses the event filter")
    parser.add_argument("--keep-log", metavar="DIR", help="keep the daemons' JSON logs here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve is not None:
        asyncio.run(serve(arguments.serve, arguments.copies, arguments.speed,
                          arguments.unfiltered))
    else:
        asyncio.run(main(arguments))
