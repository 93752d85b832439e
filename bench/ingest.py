#!/usr/bin/env python3
"""Ingest speed: panoramisk's bare parsing vs mcdaemon's AMI adapter + call tracker.

The busy storm recording (50 callers abandoning a queue within 3 s, 3482 frames) is repeated
with fresh Linkedids/Uniqueids until about --events events, cut into 64 kB chunks as a TCP
socket would deliver them, and fed in-process (no network) to
  (a) panoramisk 1.4's AMIProtocol.data_received (decode, split, Message.from_line; events
      dispatched to a no-op), and
  (b) mcdaemon: the adapter's read path, in-process (its panoramisk-based FramedProtocol:
      byte framing, the AmiConnection's event selection by first line, FrameFields reading
      the fields the tracker asks for) into the event queue, drained into CallTracker.feed
      after every chunk.
      In-process rather than over loopback TCP, so both sides measure parsing and nothing
      else: over TCP the kernel and the test server's pacing would dominate.
The stream is unfiltered (as if Asterisk sent everything), the worst case for both.
Prints events/s of both, the ratio b/a (target >= 0.7), and RSS before/after (target flat).

    python bench/ingest.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import resource
import time
from collections.abc import Iterator
from pathlib import Path

from panoramisk.ami_protocol import AMIProtocol

from mcdaemon.adapters.ami import AmiConnection, AmiEvents, AmiItem, FramedProtocol
from mcdaemon.config.model import AmiConfig, InboundConfig
from mcdaemon.core.tracker import NEEDED_EVENTS, NEEDED_VARIABLES, CallTracker
from mcdaemon.core.transcript import read_transcript

STORM = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "busy_storm.ami"
CHUNK = 65536
_IDS = re.compile(rb"(Uniqueid|Linkedid|DestUniqueid|DestLinkedid): 17953(\d+)\.(\d+)")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def storm_repeats(repeats: int) -> Iterator[bytes]:
    """The storm's bytes once per repeat, call ids made unique per repeat."""
    body = b"".join(frame.raw for frame in read_transcript(STORM).frames)
    for number in range(repeats):
        replacement = rb"\1: " + str(number).encode() + rb"9\2.\3"
        yield _IDS.sub(replacement, body)


def chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start:start + CHUNK]


class _Factory:
    def __init__(self) -> None:
        self.events = 0

    def dispatch(self, message: object) -> None:
        self.events += 1


def bench_panoramisk(repeats: int) -> tuple[int, float]:
    protocol = AMIProtocol()
    protocol.connection_made(transport=None)
    factory = _Factory()
    protocol.factory = factory
    protocol.encoding = "utf-8"
    protocol.version = "11.0.0"
    elapsed = 0.0
    for data in storm_repeats(repeats):
        started = time.perf_counter()
        for chunk in chunks(data):
            protocol.data_received(chunk)
        elapsed += time.perf_counter() - started
    return factory.events, elapsed


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def bench_mcdaemon(repeats: int) -> tuple[int, float, int, int]:
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    connection = AmiConnection(AmiConfig(name="bench", username="u", secret="s"), queue,
                               event_names=NEEDED_EVENTS, variables=NEEDED_VARIABLES)
    protocol = FramedProtocol(connection._on_frames)
    protocol.connection_made(_NullTransport())
    protocol.data_received(b"Asterisk Call Manager/11.0.0\r\n")
    tracker = CallTracker("bench", InboundConfig(contexts=("from-carrier",)), "GB")
    frames = records = 0
    elapsed = 0.0
    for data in storm_repeats(repeats):
        frames += data.count(b"\r\n\r\n")
        started = time.perf_counter()
        for chunk in chunks(data):
            protocol.data_received(chunk)
            while not queue.empty():
                item = queue.get_nowait()
                if isinstance(item, AmiEvents):
                    for event in item:
                        records += len(tracker.feed(event.fields, event.at))
        elapsed += time.perf_counter() - started
    return frames, elapsed, records, tracker.active_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    per_repeat = len(read_transcript(STORM).frames)
    repeats = max(1, round(args.events / per_repeat))
    print(f"stream: busy_storm x {repeats} = {repeats * per_repeat:,} events "
          f"({repeats * 50:,} calls), {CHUNK // 1024} kB chunks, unfiltered")
    gc.collect()
    rss_start = rss_mb()
    events_a, seconds_a = bench_panoramisk(repeats)
    gc.collect()
    rss_mid = rss_mb()
    events_b, seconds_b, records, active = asyncio.run(bench_mcdaemon(repeats))
    gc.collect()
    rss_end = rss_mb()
    rate_a, rate_b = events_a / seconds_a, events_b / seconds_b
    print(f"(a) panoramisk bare parsing:     {events_a:>9,} events in {seconds_a:6.2f} s = "
          f"{rate_a:>9,.0f} events/s")
    print("(b) mcdaemon adapter + tracker:")
    print(f"                                 {events_b:>9,} events in {seconds_b:6.2f} s = "
          f"{rate_b:>9,.0f} events/s  ({records:,} call records, {active} calls left open)")
    print(f"ratio b/a: {rate_b / rate_a:.2f}  (target >= 0.7)")
    print(f"RSS: {rss_start:.1f} MB at start, {rss_mid:.1f} MB after (a), {rss_end:.1f} MB "
          f"after (b)  (target: flat)")


if __name__ == "__main__":
    main()
