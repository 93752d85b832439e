#!/usr/bin/env python3
"""Sustained submit rate of the SMPP sender with a window of 10 against a window of 1.

The SMSC simulator answers every submit_sm after 5 ms, as a nearby SMSC would: with one
submit outstanding at a time the rate is bound by that round trip; a window hides it.

    python bench/smpp_rate.py [--texts 300] [--delay 0.005]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from mcdaemon.adapters.smpp import SmppEvent, SmppSender
from mcdaemon.config.model import SmppConfig
from mcdaemon.sim.smsc import TestSmsc


async def sustained_rate(window: int, texts: int, response_delay: float) -> float:
    """Submits per second, from the first submit to the last answer."""
    async with TestSmsc(response_delay=response_delay, receipts=False) as smsc:
        config = SmppConfig(port=smsc.port, system_id="mcdaemon", password="secret",
                            source_addr="Acme", window=window, throughput=1e6,
                            registered_delivery=False)
        events: asyncio.Queue[SmppEvent] = asyncio.Queue()
        sender = SmppSender(config, events)
        await sender.start()
        try:
            while sender.state != "bound":
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            results = await asyncio.gather(*(
                sender.submit(f"+4915100{index:05d}", "Sorry we missed your call.",
                              reference=index & 0xFF)
                for index in range(texts)))
            elapsed = time.perf_counter() - started
        finally:
            await sender.stop()
    failed = [result for result in results if result.outcome != "submitted"]
    if failed:
        raise SystemExit(f"{len(failed)} submits failed, first: {failed[0]}")
    return texts / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--delay", type=float, default=0.005, help="SMSC response delay, s")
    args = parser.parse_args()
    windowed = await sustained_rate(10, args.texts, args.delay)
    single = await sustained_rate(1, args.texts, args.delay)
    print(f"SMSC response delay {args.delay * 1000:g} ms, {args.texts} texts")
    print(f"window 10: {windowed:8.1f} submits/s")
    print(f"window  1: {single:8.1f} submits/s")
    print(f"ratio:     {windowed / single:8.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
