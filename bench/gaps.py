#!/usr/bin/env python3
"""Missed callers texted across an AMI gap and across restarts, in a 200-caller storm.

`tests/fixtures/busy_storm.ami` (a real Asterisk 22 recording: 50 UK mobiles call the
`support` queue within 3 s and all abandon it after 3 to 16 s) is played four times, each
copy with its own call ids, channel names and caller numbers and starting STAGGER seconds
after the one before: 200 missed callers over ~40 s. The tests' AMI server plays it at the
recorded pace to `mcdaemon run`, a process of its own (store on disk, smpp.throughput 100),
which texts the SMSC simulator. The fake PBX goes on while no client listens, as a real one
does: it writes its queue_log alongside (`sim.queue_log`) and `CoreShowChannels` lists what
is still alive when a client comes back. Scenarios, each FAULT_AT seconds into the storm:

    ami-gap    the AMI link drops and connections are refused for 10 s; the daemon stays up
               and reconnects by itself (its default back-off: 0.5 s doubling to 30 s)
    sigterm    `systemctl restart`: SIGTERM, the daemon stops cleanly, started again 3 s later
    kill-9     SIGKILL, started again 1.5 s later

each with the sources of issue #18 on (`ami[].queue_log`, `inbound.trunks` for adoption) and
off (the daemon sees only its live AMI stream). Prints, per run: texted (callers with at least
one text) / expected, doubled (callers with more than one), and how the texted calls were
decided (live, adopted at a connect, from the queue_log), and `blind s`: from the fault to the
daemon's next AMI login. No assertions: figures.

    python bench/gaps.py [--scenarios ami-gap,sigterm,kill-9] [--sources on,off]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import yaml

from mcdaemon.core.transcript import Frame, Transcript, read_transcript
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.queue_log import QueueLogWriter
from mcdaemon.sim.smsc import TestSmsc

ROOT = Path(__file__).resolve().parent.parent
STORM = ROOT / "tests" / "fixtures" / "busy_storm.ami"
COPIES = 4
STAGGER = 6.0  # seconds between the copies' starts
FAULT_AT = 15.0  # seconds into the storm
DOWN_FOR = {"ami-gap": 10.0, "sigterm": 3.0, "kill-9": 1.5}
SETTLE = 30.0  # after the storm's last frame, at most this long for the texts
_IDS = re.compile(rb"\b17953(\d{5}\.\d+)")
_NUMBERS = re.compile(rb"\+4477009002(\d\d)")
_CHANNELS = re.compile(rb"-0000([0-9a-f]{4})\b")


def copy_of(raw: bytes, number: int) -> bytes:
    """A frame of copy `number`: its own call ids, channel names and caller numbers."""
    raw = _IDS.sub(rb"%d7953\1" % (number + 1), raw)
    raw = _NUMBERS.sub(rb"+447700900%d\1" % (number + 2), raw)  # 900200…900549
    return _CHANNELS.sub(rb"-000%d\1" % number, raw)


def storm() -> tuple[Transcript, set[str]]:
    """The four copies merged in time order, and the callers (as the SMSC sees them)."""
    recording = read_transcript(STORM)
    frames = sorted((Frame(number * STAGGER + frame.offset, copy_of(frame.raw, number))
                     for number in range(COPIES) for frame in recording.frames),
                    key=lambda frame: frame.offset)
    callers = {copy_of(label["callerid"].encode(), number).decode().lstrip("+")
               for number in range(COPIES) for label in recording.labels}
    return Transcript(path=STORM, frames=frames), callers


def config_file(folder: Path, ami_port: int, smsc_port: int, sources: bool) -> Path:
    pbx: dict[str, object] = {"name": "bench", "host": "127.0.0.1", "port": ami_port,
                              "username": "mcd", "secret": "s"}
    inbound: dict[str, object] = {"contexts": ["from-carrier"]}
    if sources:
        pbx["queue_log"] = str(folder / "queue_log")
        inbound["trunks"] = ["PJSIP/carrier"]
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({
        "region": "GB", "log_full_numbers": True, "ami": [pbx], "inbound": inbound,
        "store": {"path": str(folder / "bench.db")},
        "smpp": {"host": "127.0.0.1", "port": smsc_port, "system_id": "mcdaemon",
                 "password": "secret", "source_addr": "Acme", "throughput": 100},
        "policy": {"caps": {"per_prefix_hour": 100000, "per_hour": 100000,
                            "per_day": 100000}},
    }))
    path.chmod(0o600)
    return path


async def start_daemon(config: Path, log: Path) -> asyncio.subprocess.Process:
    with open(log, "ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mcdaemon", "--log-format", "json", "run", "-c", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=out, cwd=config.parent)


def read_log(log: Path, fault: float) -> tuple[Counter[str], float | None]:
    """How the calls texted were decided (the daemon's "call decided" lines), and how long
    after the fault the AMI link was up again."""
    how: Counter[str] = Counter()
    back: float | None = None
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "call decided" and entry.get("decision") == "text":
                how["adopted" if entry.get("adopted") else
                    "queue_log" if entry.get("backfilled") else "live"] += 1
            elif entry.get("event") == "AMI connected" and back is None:
                at = datetime.fromisoformat(entry["timestamp"]).timestamp()
                back = at - fault if at > fault else None
    return how, back


async def run(scenario: str, sources: bool) -> None:
    transcript, expected = storm()
    played: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        writer = QueueLogWriter(folder / "queue_log")

        def on_frame(frame: Frame) -> None:
            writer.feed(frame)
            played.append(frame.offset)

        async with TestSmsc(password="secret") as smsc, \
                AmiTestServer([transcript], secret="s", on_frame=on_frame) as ami:
            ami.goes_on = True
            if scenario == "ami-gap":
                ami.drop_after_frames = next(index for index, frame in enumerate(ami.frames)
                                             if frame.offset >= FAULT_AT)
                ami.down_for = DOWN_FOR[scenario]
            config = config_file(folder, ami.port, smsc.port, sources)
            log = folder / "daemon.log"
            daemon = await start_daemon(config, log)
            try:
                while not played or played[-1] < FAULT_AT:
                    await asyncio.sleep(0.02)
                fault = time.time()
                if scenario != "ami-gap":
                    daemon.send_signal(signal.SIGTERM if scenario == "sigterm"
                                       else signal.SIGKILL)
                    await asyncio.wait_for(daemon.wait(), 30)
                    await asyncio.sleep(DOWN_FOR[scenario])
                    daemon = await start_daemon(config, log)
                await asyncio.wait_for(ami.finished(), 300)
                deadline = time.monotonic() + SETTLE
                while (len({s.destination for s in smsc.submits} & expected) < len(expected)
                       and time.monotonic() < deadline):
                    await asyncio.sleep(0.1)
                await asyncio.sleep(2.0)  # a second text would come now
            finally:
                if daemon.returncode is None:
                    daemon.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(daemon.wait(), 30)
            texts = Counter(submit.destination for submit in smsc.submits)
            how, back = read_log(log, fault)
    texted = len(set(texts) & expected)
    doubled = sum(1 for number in expected if texts[number] > 1)
    blind = f"{back:.1f}" if back is not None else "-"
    print(f"| {scenario} | {'on' if sources else 'off'} | {blind} | {texted}/{len(expected)} | "
          f"{doubled} | {how['live']} | {how['adopted']} | {how['queue_log']} |", flush=True)


async def main(arguments: argparse.Namespace) -> None:
    transcript, expected = storm()
    print(f"{COPIES} copies of {STORM.name} {STAGGER:g} s apart: {len(expected)} missed "
          f"callers, {len(transcript.frames)} frames over {transcript.frames[-1].offset:.1f} s"
          f" at the recorded pace; the fault {FAULT_AT:g} s in")
    print("| scenario | queue_log + adoption | blind s | texted/expected | doubled | live "
          "| adopted | from queue_log |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario in arguments.scenarios.split(","):
        for sources in arguments.sources.split(","):
            await run(scenario, sources == "on")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="ami-gap,sigterm,kill-9")
    parser.add_argument("--sources", default="on,off",
                        help="the queue_log and adoption on, off, or both (on,off)")
    asyncio.run(main(parser.parse_args()))
