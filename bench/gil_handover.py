#!/usr/bin/env python3
"""How long a thread waits for the GIL while the event loop is busy, plain vs paced loop.

The SMPP thread sleeps in select(); the loop, busy as in a storm (slices of 0.5 ms of work,
then a yield, like the AMI consumer), wakes it with a byte, as `SmppSender.submit` does. We
measure from the byte to the thread running Python again, with the daemon's switch interval,
on asyncio's own loop and on the daemon's (`mcdaemon.eventloop`, polls paced).

    python bench/gil_handover.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import select
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from mcdaemon import eventloop
from mcdaemon.service import CONSUMER_SLICE, GIL_SWITCH_INTERVAL

BUSY_FOR = 0.02  # seconds of storm per round


def handover_waits(rounds: int, run: Callable[[Coroutine[Any, Any, list[float]]], list[float]]
                   ) -> list[float]:
    wake_read, wake_write = socket.socketpair()
    woken_at: list[float] = []
    stop = threading.Event()

    def thread() -> None:
        while not stop.is_set():
            if select.select([wake_read], [], [], 0.1)[0]:
                woken_at.append(time.perf_counter())  # the thread holds the GIL again
                wake_read.recv(64)

    async def storm() -> list[float]:
        waits = []
        for _ in range(rounds):
            sent = time.perf_counter()
            count = len(woken_at)
            wake_write.send(b"x")
            end = sent + BUSY_FOR
            while time.perf_counter() < end:  # the consumer: a slice of work, then a yield
                slice_end = time.perf_counter() + CONSUMER_SLICE
                while time.perf_counter() < slice_end:
                    sum(range(50))
                await asyncio.sleep(0)
            waits.append((woken_at[count] if len(woken_at) > count else end) - sent)
            await asyncio.sleep(0.002)  # idle between rounds: the thread catches up
        return waits

    runner = threading.Thread(target=thread, daemon=True)
    runner.start()
    try:
        return run(storm())
    finally:
        stop.set()
        runner.join()
        wake_read.close()
        wake_write.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    print(f"thread's wait for the GIL after its wake-up byte, loop busy for "
          f"{BUSY_FOR * 1000:g} ms in {CONSUMER_SLICE * 1000:g} ms slices, switch interval "
          f"{GIL_SWITCH_INTERVAL * 1000:g} ms ({BUSY_FOR * 1000:g} ms = never while busy):")
    for name, run in (("asyncio's loop", asyncio.run), ("paced loop", eventloop.run)):
        waits = sorted(wait * 1000 for wait in handover_waits(args.rounds, run))
        print(f"  {name:15s} p50 {statistics.median(waits):5.2f} ms   "
              f"p90 {waits[int(0.9 * len(waits))]:5.2f} ms   max {waits[-1]:5.2f} ms")


if __name__ == "__main__":
    main()
