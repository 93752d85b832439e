#!/usr/bin/env python3
"""Hangup-to-submit latency under a burst, and the submit rate with window 10 vs window 1.

1. The test AMI server replays N (default 200) copies of a real queue abandon (fresh ids and
   caller numbers each), holds back each call's ending (from the caller's HangupRequest on)
   and then releases all N endings at once (about 4,000 events, written within ~30 ms). For
   every call we measure from the moment its last Hangup frame is written to the socket to the
   moment the SMSC simulator reads its submit_sm. The daemon is `mcdaemon run` in a process
   of its own, store on disk; the SMSC (answering at once, receipts 50 ms later) runs in a
   process of its own too, so that its reads are not delayed by the fake PBX's writes.
2. The SMPP sender alone submits M texts to an SMSC answering each submit after 5 ms, with
   window 10 and with window 1: the sustained rate of each and the ratio.

    python bench/latency.py [--calls 200] [--window 10] [--runs 3] [--texts 300]
Targets: p99 <= 100 ms; windowed rate >= 5x window 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mcdaemon.adapters.ami import event_filter
from mcdaemon.adapters.smpp import SmppSender
from mcdaemon.config.model import SmppConfig
from mcdaemon.core.tracker import NEEDED_EVENTS, NEEDED_VARIABLES
from mcdaemon.core.transcript import Frame, FrameFields, Transcript, parse_frame, read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import Submit, TestSmsc

ROOT = Path(__file__).resolve().parent.parent
ABANDON = ROOT / "mcdaemon" / "sim" / "recordings" / "queue_abandon.ami"
#: MCD_BENCH_PROFILE=FILE runs the daemon under cProfile, its statistics written to FILE;
#: MCD_BENCH_LOG=FILE keeps the daemon's JSON log (default: thrown away)
PROFILE = (["-m", "cProfile", "-o", os.environ["MCD_BENCH_PROFILE"]]
           if os.environ.get("MCD_BENCH_PROFILE") else [])
#: every channel id of the recording (the caller's, 1795369867.N, and the agents' channels,
#: created seconds later, 1795369870.N): each copy of the call gets ids of its own
_IDS = re.compile(rb"(Uniqueid|Linkedid): 17953698(\d\d)\.(\d+)")


def burst(calls: int, release_at: float) -> tuple[Transcript, dict[str, str]]:
    """One transcript: every call up to its hangup, then all the hangups at `release_at`."""
    original = read_transcript(ABANDON)
    starts: list[Frame] = []
    endings: list[Frame] = []
    callers: dict[str, str] = {}
    wanted = re.compile(event_filter(NEEDED_EVENTS, NEEDED_VARIABLES).encode())
    for number in range(calls):
        caller = f"+447700900{number:03d}"
        callers[caller.lstrip("+")] = f"{number}"
        ending = False
        for frame in original.frames:
            raw = _IDS.sub(rb"\g<1>: \g<2>" + f"{number:04d}".encode() + rb".\g<3>", frame.raw)
            raw = raw.replace(b"+447700900123", caller.encode())
            if parse_frame(raw).get("Event") == "HangupRequest":
                ending = True
            if not wanted.search(raw):
                continue  # filtered by the PBX: see config_file
            (endings if ending else starts).append(Frame(0.0 if not ending else release_at,
                                                         raw))
    return Transcript(ABANDON, [], 0.0, starts + endings), callers


def config_file(folder: Path, ami_port: int, smsc_port: int, window: int) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({
        "region": "GB",
        # the PBX filters the events, as with the eventfilter line of asterisk-conf's
        # manager.conf: the transcript holds only what passes it (`burst`), so the fake PBX
        # spends no time on regular expressions while the daemon works
        "ami": [{"name": "bench", "port": ami_port, "username": "mcd", "secret": "s",
                 "event_filter": False}],
        "inbound": {"contexts": ["from-carrier"]},
        "store": {"path": str(folder / "bench.db")},
        "smpp": {"port": smsc_port, "system_id": "mcdaemon", "password": "secret",
                 "source_addr": "Acme", "throughput": 5000, "window": window},
        "policy": {"caps": {"per_prefix_hour": 100000, "per_hour": 100000,
                            "per_day": 100000}},
    }))
    path.chmod(0o600)
    return path


async def serve_smsc() -> None:
    """The SMSC of the latency run, in a process of its own (`--serve-smsc`): prints its
    port, then `number time` for each submit_sm as it reads it, until stdin closes."""
    lines: list[str] = []

    def flush() -> None:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        lines.clear()

    def on_submit(submit: Submit) -> None:  # stamped as read; written once per loop turn
        if not lines:
            asyncio.get_running_loop().call_soon(flush)
        lines.append(f"{submit.destination.lstrip('+')} {time.perf_counter()!r}\n")

    async with TestSmsc(password="secret", on_submit=on_submit) as smsc:
        print(smsc.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def hangup_to_submit(calls: int, window: int) -> list[float]:
    """The daemon runs as `mcdaemon run` in its own process, as in production, and so does
    the SMSC: a submit is stamped when the SMSC reads it, not when the fake PBX (busy writing
    the burst) lets it. time.perf_counter is the system's monotonic clock, the same in every
    process."""
    transcript, _ = burst(calls, release_at=4.0)
    hangup_sent: dict[str, float] = {}
    submit_read: dict[str, float] = {}
    linkedid_caller: dict[str, str] = {}

    def on_frame(frame: Frame) -> None:
        raw = frame.raw
        if raw.startswith(b"Event: Newchannel\r\n"):
            fields = FrameFields(raw)
            if fields.get("Uniqueid") == fields.get("Linkedid"):
                linkedid_caller[fields["Linkedid"]] = fields.get("CallerIDNum",
                                                                 "").lstrip("+")
        elif raw.startswith(b"Event: Hangup\r\n"):
            caller = linkedid_caller.get(FrameFields(raw).get("Linkedid", ""))
            if caller:
                hangup_sent[caller] = time.perf_counter()  # the last Hangup of the call wins

    async def read_submits(stdout: asyncio.StreamReader) -> None:
        async for line in stdout:
            number, _, at = line.decode().partition(" ")
            submit_read.setdefault(number, float(at))

    smsc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-smsc", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert smsc.stdout is not None and smsc.stdin is not None
    smsc_port = int(await smsc.stdout.readline())
    reader = asyncio.create_task(read_submits(smsc.stdout))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with AmiTestServer([transcript], secret="s", speed=1.0,
                                     on_frame=on_frame) as ami:
                path = config_file(Path(tmp), ami.port, smsc_port, window)
                with open(os.environ.get("MCD_BENCH_LOG", os.devnull), "wb") as log:
                    daemon = await asyncio.create_subprocess_exec(
                        sys.executable, *PROFILE, "-m", "mcdaemon", "--log-format", "json",
                        "run", "-c", str(path), stdout=asyncio.subprocess.DEVNULL,
                        stderr=log, cwd=tmp)
                    try:
                        await asyncio.wait_for(ami.finished(), 60)
                        deadline = time.monotonic() + 30
                        while len(submit_read) < calls and time.monotonic() < deadline:
                            await asyncio.sleep(0.05)
                    finally:
                        daemon.send_signal(signal.SIGTERM)
                        await asyncio.wait_for(daemon.wait(), 15)
    finally:
        smsc.stdin.close()
        await asyncio.wait_for(smsc.wait(), 10)
        reader.cancel()
    return [submit_read[caller] - hangup_sent[caller] for caller in submit_read
            if caller in hangup_sent]


async def submit_rate(texts: int, window: int) -> float:
    async with TestSmsc(password="secret", response_delay=0.005) as smsc:
        events: asyncio.Queue[object] = asyncio.Queue()
        sender = SmppSender(SmppConfig(port=smsc.port, system_id="mcdaemon", password="secret",
                                       source_addr="Acme", window=window, throughput=100000),
                            events)  # type: ignore[arg-type]
        await sender.start()
        while sender.state != "bound":
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        results = await asyncio.gather(*(
            sender.submit(f"+447700900{n % 1000:03d}", "rate test", reference=n % 256)
            for n in range(texts)))
        elapsed = time.perf_counter() - started
        await sender.stop()
    assert all(result.outcome == "submitted" for result in results)
    return texts / elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def main(calls: int, texts: int, window: int, runs: int) -> None:
    print(f"hangup -> submit_sm, {calls} simultaneous abandons, smpp.window {window}:")
    p99s = []
    for run in range(1, runs + 1):
        ms = [value * 1000 for value in await hangup_to_submit(calls, window)]
        p99s.append(percentile(ms, 0.99))
        print(f"  run {run}: {len(ms)} texts   p50 {statistics.median(ms):6.1f} ms   "
              f"p99 {p99s[-1]:6.1f} ms   max {max(ms):6.1f} ms")
    print(f"  median p99 of {runs} runs: {statistics.median(p99s):6.1f} ms   "
          "(target p99 <= 100 ms)")
    windowed = await submit_rate(texts, 10)
    single = await submit_rate(texts, 1)
    print(f"submit rate, SMSC answering after 5 ms, {texts} texts:")
    print(f"  window 10: {windowed:7.0f}/s   window 1: {single:7.0f}/s   ratio "
          f"{windowed / single:.1f}x   (target >= 5x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--window", type=int, default=10, help="smpp.window of the daemon")
    parser.add_argument("--runs", type=int, default=3, help="latency runs (the machine is "
                        "noisy: each is printed, then the median p99)")
    parser.add_argument("--serve-smsc", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    asyncio.run(serve_smsc() if arguments.serve_smsc else main(
        arguments.calls, arguments.texts, arguments.window, arguments.runs))
