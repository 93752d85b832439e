#!/usr/bin/env python3
"""Hangup-to-submit latency of a recorded storm, replayed at the pace the PBX produced it.

`tests/fixtures/busy_storm.ami` is a real Asterisk 22 recording: 50 UK mobiles called a queue
within 3 s and abandoned it after 3 to 16 s (their hangups spread over 7.4 to 20.9 s of the
recording). The tests' AMI server replays it over TCP at the recorded pace (`--speeds 1`) and
five times faster (`5`) to `mcdaemon run`, a process of its own (store on disk,
`smpp.throughput` 100, the default window, `--log-format json`), which texts the SMSC
simulator, a process of its own too (this interpreter), so that its reads are not delayed by
the fake PBX's writes. For each call:

    latency    from the moment the call's last Hangup frame is written to the socket to the
               moment the SMSC reads its submit_sm (matched by caller number; one clock:
               time.perf_counter is the system's monotonic clock, the same in every process)
    decided    from that moment to the daemon's "call decided" log line (the decision is on
               disk then; wall clock); what comes after it is claiming, the rate and the write
    rate wait  how long a token bucket of smpp.throughput (holding 50 ms worth, as the
               sender's) would hold the text back if the daemon took no time at all: the part
               of the latency that is the carrier's rate, not the daemon

and for the daemon process: CPU seconds (user+sys, /proc/PID/stat) from the first frame of the
replay until its texts are out and stored, per 1,000 calls; and its start-up CPU.

`--daemon-python PATH` runs the daemon under another interpreter (its own mcdaemon);
`--compare PATH` runs that one too ("before") and this one ("after"), interleaved, and prints
one table of both.

    python bench/latency.py [--runs 3] [--speeds 1,5] [--compare /tmp/mcd-before/.venv/bin/python]
Target: p99 <= 100 ms at real speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from mcdaemon.core.transcript import Frame, FrameFields, Transcript, read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import Submit, TestSmsc

ROOT = Path(__file__).resolve().parent.parent
STORM = ROOT / "tests" / "fixtures" / "busy_storm.ami"
TICK = os.sysconf("SC_CLK_TCK")
#: how long after the replay's last frame the texts may take to reach the SMSC
SETTLE_TIMEOUT = 20.0
#: after the last submit, time for the daemon to store the results and the receipts: their
#: CPU is part of the calls' cost
AFTER_LAST_SUBMIT = 1.0


@dataclass
class Run:
    daemon: str
    speed: float
    expected: int
    latency: dict[str, float] = field(default_factory=dict)  # caller -> s, hangup->submit_sm
    decided: dict[str, float] = field(default_factory=dict)  # caller -> s, hangup->decided
    rate_wait: dict[str, float] = field(default_factory=dict)  # caller -> s, the rate's part
    cpu_storm: float = 0.0  # daemon CPU seconds from the first frame to the end
    cpu_start: float = 0.0  # daemon CPU seconds before the first frame (start-up)
    calls: int = 0


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime: fields 14 and 15


def expected_texts(transcript: Transcript) -> int:
    """The labelled calls that should be texted: missed, from a number that can be."""
    return sum(1 for label in transcript.labels
               if label.get("expected") not in ("answered", "dead_end", "callback_requested")
               and label.get("callerid", "").startswith("+447"))


def config_file(folder: Path, ami_port: int, smsc_port: int, throughput: float,
                store: Path | None = None) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({
        "region": "GB",
        "log_full_numbers": True,  # the log's lines are matched to the calls by number
        "ami": [{"name": "bench", "host": "127.0.0.1", "port": ami_port, "username": "mcd",
                 "secret": "s"}],
        "inbound": {"contexts": ["from-carrier"]},
        "store": {"path": str(store or folder / "bench.db")},
        "smpp": {"host": "127.0.0.1", "port": smsc_port, "system_id": "mcdaemon",
                 "password": "secret", "source_addr": "Acme", "throughput": throughput},
        # the recording's 50 callers share one number prefix: the fraud shield's per-prefix
        # cap (20 an hour) would refuse most of them
        "policy": {"caps": {"per_prefix_hour": 100000, "per_hour": 100000,
                            "per_day": 100000}},
    }))
    path.chmod(0o600)
    return path


async def serve_smsc() -> None:
    """The SMSC of a run, in a process of its own (`--serve-smsc`): prints its port, then
    `number time` for each submit_sm as it reads it, until stdin closes."""
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


def rate_waits(hangups: dict[str, float], throughput: float) -> dict[str, float]:
    """What the sender's token bucket alone would hold each text back, texts leaving at
    their hangups: a bucket of max(1, throughput / 20) tokens, refilled at `throughput`/s."""
    capacity = max(1.0, throughput / 20)
    tokens, last = capacity, None
    waits: dict[str, float] = {}
    for caller, at in sorted(hangups.items(), key=lambda item: item[1]):
        now = at if last is None else max(at, last)
        if last is not None:
            tokens = min(capacity, tokens + (now - last) * throughput)
        if tokens < 1.0:
            now += (1.0 - tokens) / throughput
            tokens = 1.0
        tokens -= 1.0
        waits[caller] = now - at
        last = now
    return waits


def read_log(path: Path) -> dict[str, float]:
    """caller -> wall-clock time of its "call decided" line (decision: text)."""
    decided: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "call decided" and entry.get("decision") == "text":
                at = datetime.fromisoformat(entry["timestamp"]).timestamp()
                decided.setdefault(str(entry.get("caller", "")).lstrip("+"), at)
    return decided


async def replay(daemon_python: str, label: str, speed: float, throughput: float,
                 keep_log: Path | None, store_dir: str | None,
                 profile: Path | None = None, store: Path | None = None) -> Run:
    """One replay of the storm to a daemon of its own; `store`: an existing store file to
    run it on (bench/history.py's year of history), else a new one in a temporary folder."""
    transcript = read_transcript(STORM)
    run = Run(label, speed, expected_texts(transcript), calls=len(transcript.labels))
    hangup_perf: dict[str, float] = {}
    hangup_wall: dict[str, float] = {}
    submit_read: dict[str, float] = {}
    linkedid_caller: dict[str, str] = {}
    daemon_pid: list[int] = []
    cpu_at_first: list[float] = []

    def on_frame(frame: Frame) -> None:
        raw = frame.raw
        if not cpu_at_first and daemon_pid:
            cpu_at_first.append(cpu_seconds(daemon_pid[0]))
        if raw.startswith(b"Event: Newchannel\r\n"):
            fields = FrameFields(raw)
            if fields.get("Uniqueid") == fields.get("Linkedid"):
                linkedid_caller[fields["Linkedid"]] = fields.get("CallerIDNum",
                                                                 "").lstrip("+")
        elif raw.startswith(b"Event: Hangup\r\n"):
            caller = linkedid_caller.get(FrameFields(raw).get("Linkedid", ""))
            if caller:  # the last Hangup of the call wins
                hangup_perf[caller] = time.perf_counter()
                hangup_wall[caller] = time.time()

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
        with tempfile.TemporaryDirectory(dir=store_dir) as tmp:
            log_path = Path(tmp) / "daemon.log"
            async with AmiTestServer([transcript], secret="s", speed=speed,
                                     on_frame=on_frame) as ami:
                path = config_file(Path(tmp), ami.port, smsc_port, throughput, store)
                with open(log_path, "wb") as log:
                    profiling = ["-m", "cProfile", "-o", str(profile)] if profile else []
                    daemon = await asyncio.create_subprocess_exec(
                        daemon_python, *profiling, "-m", "mcdaemon", "--log-format", "json",
                        "run", "-c", str(path), stdout=asyncio.subprocess.DEVNULL, stderr=log,
                        cwd=tmp)
                    daemon_pid.append(daemon.pid)
                    try:
                        await asyncio.wait_for(ami.finished(), 120 / speed + 30)
                        deadline = time.monotonic() + SETTLE_TIMEOUT
                        while (len(submit_read) < run.expected
                               and time.monotonic() < deadline):
                            await asyncio.sleep(0.05)
                        await asyncio.sleep(AFTER_LAST_SUBMIT)
                        run.cpu_storm = cpu_seconds(daemon.pid) - cpu_at_first[0]
                        run.cpu_start = cpu_at_first[0]
                    finally:
                        if daemon.returncode is None:
                            daemon.send_signal(signal.SIGTERM)
                        await asyncio.wait_for(daemon.wait(), 15)
                        if keep_log is not None:
                            keep_log.write_bytes(log_path.read_bytes())
            if daemon.returncode not in (0, -signal.SIGTERM):
                tail = log_path.read_text(errors="replace").splitlines()[-5:]
                raise SystemExit(f"the daemon ({daemon_python}) stopped with "
                                 f"{daemon.returncode}:\n" + "\n".join(tail))
            decided_wall = read_log(log_path)
    finally:
        smsc.stdin.close()
        await asyncio.wait_for(smsc.wait(), 10)
        reader.cancel()
    run.latency = {caller: at - hangup_perf[caller] for caller, at in submit_read.items()
                   if caller in hangup_perf}
    run.decided = {caller: at - hangup_wall[caller] for caller, at in decided_wall.items()
                   if caller in hangup_wall}
    run.rate_wait = rate_waits({caller: hangup_perf[caller] for caller in run.latency},
                               throughput)
    return run


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def ms(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:7.1f}" if values else "      -"


def describe(daemon_python: str) -> str:
    """Where the daemon's mcdaemon is, and whether its hot path is compiled."""
    probe = ("import importlib.util as u, mcdaemon; s = u.find_spec('mcdaemon.core.tracker')"
             " or u.find_spec('mcdaemon.tracker'); t = s.origin if s else '';"
             " print(mcdaemon.__file__.rsplit('/', 2)[0], 'compiled (mypyc)' "
             "if t.endswith('.so') else 'plain Python')")
    result = subprocess.run([daemon_python, "-c", probe], capture_output=True, text=True,
                            check=True, cwd="/")  # not this checkout's mcdaemon
    return result.stdout.strip()


def print_run(run: Run) -> None:
    latency = list(run.latency.values())
    print(f"  {run.daemon:6} {run.speed:g}x: {len(latency)}/{run.expected} texted   p50 "
          f"{ms(latency, 0.5)}  p99 {ms(latency, 0.99)}  max {ms(latency, 1.0)} ms   "
          f"decided p99 {ms(list(run.decided.values()), 0.99)} ms   "
          f"CPU {run.cpu_storm:.2f} s (+{run.cpu_start:.2f} s start-up)", flush=True)


def print_table(runs: list[Run], labels: list[str], speeds: list[float]) -> None:
    print("\nall runs pooled (latency: last Hangup written -> submit_sm read; decided: -> "
          "'call decided' logged; rate wait: the part that is smpp.throughput's)")
    print("| daemon | speed | texted/expected | p50 ms | p99 ms | max ms | decided p99 ms "
          "| rate wait max ms | CPU s / 1,000 calls |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in labels:
        for speed in speeds:
            chosen = [run for run in runs if run.daemon == label and run.speed == speed]
            latency = [value for run in chosen for value in run.latency.values()]
            decided = [value for run in chosen for value in run.decided.values()]
            waits = [value for run in chosen for value in run.rate_wait.values()]
            cpu = statistics.median(run.cpu_storm / run.calls * 1000 for run in chosen)
            print(f"| {label} | {speed:g}x | {len(latency)}/{sum(r.expected for r in chosen)} "
                  f"| {ms(latency, 0.5).strip()} | {ms(latency, 0.99).strip()} "
                  f"| {ms(latency, 1.0).strip()} | {ms(decided, 0.99).strip()} "
                  f"| {ms(waits, 1.0).strip()} | {cpu:.1f} |")


async def main(arguments: argparse.Namespace) -> None:
    # absolute (the daemon runs in a folder of its own), symbolic links kept (a venv's)
    daemons = [("after", os.path.abspath(arguments.daemon_python))]
    if arguments.compare:
        daemons.insert(0, ("before", os.path.abspath(arguments.compare)))
    speeds = [float(speed) for speed in arguments.speeds.split(",")]
    transcript = read_transcript(STORM)
    print(f"{STORM.name}: {len(transcript.labels)} calls, {len(transcript.frames)} frames over "
          f"{transcript.frames[-1].offset:.1f} s; smpp.throughput {arguments.throughput:g}/s, "
          f"default window; {arguments.runs} run(s) at {', '.join(f'{s:g}x' for s in speeds)}")
    for label, python in daemons:
        print(f"  {label}: {python} -> {describe(python)}")
    runs: list[Run] = []
    for number in range(arguments.runs):
        print(f"run {number + 1}:")
        order = daemons if number % 2 == 0 else daemons[::-1]  # interleaved, in turns
        for speed in speeds:
            for label, python in order:
                keep = (Path(arguments.keep_logs) / f"{label}-{speed:g}x-{number + 1}.log"
                        if arguments.keep_logs else None)
                profile = (Path(arguments.profile) / f"{label}-{speed:g}x-{number + 1}.prof"
                           if arguments.profile else None)
                run = await replay(python, label, speed, arguments.throughput, keep,
                                   arguments.store_dir, profile)
                runs.append(run)
                print_run(run)
    print_table(runs, [label for label, _ in daemons], speeds)
    print("target: p99 <= 100 ms at 1x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="replays per daemon and speed "
                        "(the machine is noisy: each is printed, then all pooled)")
    parser.add_argument("--speeds", default="1,5", help="replay speeds, comma-separated")
    parser.add_argument("--throughput", type=float, default=100.0, help="smpp.throughput")
    parser.add_argument("--daemon-python", default=sys.executable, metavar="PATH",
                        help="the interpreter that runs the daemon (default: this one)")
    parser.add_argument("--compare", metavar="PATH", help="also run the daemon of this "
                        "interpreter ('before'), interleaved with --daemon-python's ('after')")
    parser.add_argument("--store-dir", metavar="DIR", help="where the daemon's store goes "
                        "(default: a temporary folder in $TMPDIR; /dev/shm takes the disk's "
                        "fsyncs out of the figures)")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep each daemon's JSON log here")
    parser.add_argument("--profile", metavar="DIR", help="run each daemon under cProfile "
                        "(its event loop's thread), statistics written here (a diagnosis: "
                        "the figures are then not comparable)")
    parser.add_argument("--serve-smsc", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    asyncio.run(serve_smsc() if arguments.serve_smsc else main(arguments))
