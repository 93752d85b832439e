#!/usr/bin/env python3
"""Hangup-to-submit latency and CPU of the recorded storm with each store: SQLite, PostgreSQL
with one daemon, PostgreSQL with two daemons watching the same PBX (issue #22's benchmark,
the store part; the 200-PBX part is not here).

The storm, the SMSC (a process of its own) and the latency's definition are bench/latency.py's:
from the moment the call's last Hangup frame is written to the socket to the moment the SMSC
reads its submit_sm. With two daemons each has its own manager connection to a replay of the
same recording (one PBX), started together; the hangup is stamped on the first's. CPU is the
daemons' user+sys from the first frame to the end, summed, per 1,000 calls.

PostgreSQL: a throwaway server on this machine, started as the tests start theirs
(tests/pg_server.py: Debian's postgresql package) but with fsync on, as SQLite's FULL sync;
each run gets an empty database of its own.

    python bench/shared_store.py [--runs 3] [--speed 1]
Targets: PostgreSQL p99 <= 2 x SQLite's and <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcdaemon.core.transcript import Frame, FrameFields, read_transcript
from mcdaemon.sim.amiserver import AmiTestServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import latency  # bench/latency.py: the storm, the SMSC, the measures

CASES = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2))


@dataclass
class Run:
    case: str
    expected: int
    calls: int
    latency: dict[str, float] = field(default_factory=dict)
    cpu: float = 0.0


def config(folder: Path, ami_port: int, smsc_port: int, store: dict[str, str]) -> Path:
    path = latency.config_file(folder, ami_port, smsc_port, 100.0)
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["store"] = store
    path.write_text(yaml.safe_dump(data))
    return path


async def replay(kind: str, daemons: int, speed: float, url: str | None) -> Run:
    transcript = read_transcript(latency.STORM)
    run = Run(f"{kind} x{daemons}", latency.expected_texts(transcript), len(transcript.labels))
    hangups: dict[str, float] = {}
    submits: dict[str, float] = {}
    callers: dict[str, str] = {}
    pids: list[int] = []
    cpu_at_first: list[float] = []

    def on_frame(frame: Frame) -> None:
        raw = frame.raw
        if not cpu_at_first and len(pids) == daemons:
            cpu_at_first.append(sum(latency.cpu_seconds(pid) for pid in pids))
        if raw.startswith(b"Event: Newchannel\r\n"):
            fields = FrameFields(raw)
            if fields.get("Uniqueid") == fields.get("Linkedid"):
                callers[fields["Linkedid"]] = fields.get("CallerIDNum", "").lstrip("+")
        elif raw.startswith(b"Event: Hangup\r\n"):
            caller = callers.get(FrameFields(raw).get("Linkedid", ""))
            if caller:
                hangups[caller] = time.perf_counter()

    async def read_submits(stdout: asyncio.StreamReader) -> None:
        async for line in stdout:
            number, _, at = line.decode().partition(" ")
            submits.setdefault(number, float(at))

    smsc = await asyncio.create_subprocess_exec(
        sys.executable, latency.__file__, "--serve-smsc", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert smsc.stdout is not None and smsc.stdin is not None
    smsc_port = int(await smsc.stdout.readline())
    reader = asyncio.create_task(read_submits(smsc.stdout))
    processes: list[asyncio.subprocess.Process] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as logs:
            async with contextlib.AsyncExitStack() as servers:
                pbxs = [await servers.enter_async_context(AmiTestServer(
                    [transcript], secret="s", speed=speed,
                    on_frame=on_frame if index == 0 else None)) for index in range(daemons)]
                for index, pbx in enumerate(pbxs):
                    folder = Path(tmp) / f"daemon-{index}"
                    folder.mkdir()
                    store = ({"url": url} if kind == "postgresql" and url
                             else {"path": str(Path(tmp) / "bench.db")})
                    path = config(folder, pbx.port, smsc_port, store)
                    log = logs.enter_context(open(folder / "daemon.log", "wb"))
                    processes.append(await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "mcdaemon", "--log-format", "json", "run",
                        "-c", str(path), stdout=asyncio.subprocess.DEVNULL, stderr=log,
                        cwd=folder))
                pids.extend(process.pid for process in processes)
                try:
                    await asyncio.wait_for(asyncio.gather(*(pbx.finished() for pbx in pbxs)),
                                           120 / speed + 30)
                    deadline = time.monotonic() + latency.SETTLE_TIMEOUT
                    while len(submits) < run.expected and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(latency.AFTER_LAST_SUBMIT)
                    run.cpu = sum(latency.cpu_seconds(pid) for pid in pids) - cpu_at_first[0]
                finally:
                    for process in processes:
                        if process.returncode is None:
                            process.send_signal(signal.SIGTERM)
                    for process in processes:
                        await asyncio.wait_for(process.wait(), 15)
    finally:
        smsc.stdin.close()
        await asyncio.wait_for(smsc.wait(), 10)
        reader.cancel()
    run.latency = {caller: at - hangups[caller] for caller, at in submits.items()
                   if caller in hangups}
    return run


@contextlib.contextmanager
def throwaway_server() -> Iterator[Any]:
    from pg_server import running_server

    with running_server(durable=True) as server:
        yield server


async def main(arguments: argparse.Namespace) -> None:
    runs: list[Run] = []
    with throwaway_server() as server:
        for number in range(arguments.runs):
            for kind, daemons in CASES:
                # a fresh database for every run: the same calls again would text nobody
                url = server.database() if kind == "postgresql" else None
                run = await replay(kind, daemons, arguments.speed, url)
                runs.append(run)
                values = list(run.latency.values())
                print(f"run {number + 1} {run.case:14} {len(values)}/{run.expected} texted  "
                      f"p50 {latency.ms(values, 0.5)}  p99 {latency.ms(values, 0.99)} ms  "
                      f"CPU {run.cpu:.2f} s", flush=True)
    print(f"\n{latency.STORM.name} at {arguments.speed:g}x, {arguments.runs} run(s) pooled "
          "(latency: last Hangup written -> submit_sm read)")
    print("| store | texted/expected | p50 ms | p99 ms | max ms | CPU s / 1,000 calls |")
    print("|---|---|---|---|---|---|")
    for kind, daemons in CASES:
        chosen = [run for run in runs if run.case == f"{kind} x{daemons}"]
        values = [value for run in chosen for value in run.latency.values()]
        cpu = statistics.median(run.cpu / run.calls * 1000 for run in chosen)
        print(f"| {kind}, {daemons} daemon(s) | {len(values)}/"
              f"{sum(run.expected for run in chosen)} | {latency.ms(values, 0.5).strip()} | "
              f"{latency.ms(values, 0.99).strip()} | {latency.ms(values, 1.0).strip()} | "
              f"{cpu:.1f} |")
    print("targets: PostgreSQL p99 <= 2 x SQLite's and <= 100 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (1: real)")
    asyncio.run(main(parser.parse_args()))
