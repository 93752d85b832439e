"""`mcdaemon send-test`: one text through the configured bind, to check credentials and routing.

It uses the same sender as the daemon but not the outbox: an administrator's test text is
not a call and must not count in the KPIs or the fraud-shield counters.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import TextIO

from mcdaemon.adapters.smpp import BindState, MobileOriginated, SmppSender
from mcdaemon.config.model import Config
from mcdaemon.core.phone import to_e164
from mcdaemon.core.receipts import DeliveryReceipt, matches_submitted

DEFAULT_TEXT = "mcdaemon test message: your SMSC bind works."


async def send_test(config: Config, number: str, text: str | None, timeout: float,
                    out: TextIO = sys.stdout) -> int:
    destination = to_e164(number, config.region)
    if destination is None:
        print(f"{number!r} is not a valid phone number for region {config.region}; give it in "
              "international form, e.g. +447700900123", file=sys.stderr)
        return 2
    events: asyncio.Queue[DeliveryReceipt | MobileOriginated | BindState] = asyncio.Queue()
    sender = SmppSender(config.smpp, events)
    await sender.start()
    try:
        deadline = time.monotonic() + timeout
        while sender.state != "bound":
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"no bind to {config.smpp.host}:{config.smpp.port} within {timeout:g} s "
                      f"(state: {sender.state})", file=sys.stderr)
                return 1
            try:
                event = await asyncio.wait_for(events.get(), left)
            except TimeoutError:
                continue
            if isinstance(event, BindState) and event.state == "auth_failed":
                print(f"bind refused: {event.detail}", file=sys.stderr)
                return 1
        print(f"bound to {config.smpp.host}:{config.smpp.port} as {config.smpp.system_id}",
              file=out)
        result = await asyncio.wait_for(
            sender.submit(destination, text or DEFAULT_TEXT, reference=random.randrange(256)),
            timeout)
        print(f"submit to {destination}: {result.outcome}"
              + (f" ids={','.join(result.smsc_ids)}" if result.smsc_ids else "")
              + (f" status={result.status} {result.detail}" if result.status else ""), file=out)
        if result.outcome != "submitted":
            return 1
        if not config.smpp.registered_delivery:
            return 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"no delivery receipt within {timeout:g} s (it may still come; the "
                      "daemon would wait for it)", file=out)
                return 0
            try:
                event = await asyncio.wait_for(events.get(), left)
            except TimeoutError:
                continue
            # the exact id; another base only for a receipt without the TLV id (this bind
            # may also get the receipts of the daemon's own texts)
            if not isinstance(event, DeliveryReceipt):
                continue
            how = matches_submitted(event, result.smsc_ids)
            if how == "exact" or (how == "other_base" and event.receipted_id is None):
                # answered: nothing to store. Other receipts and replies stay unanswered, so
                # the SMSC delivers them again to the daemon, which stores them.
                event.acknowledge()
                print(f"delivery receipt: {event.state}"
                      + (f" err={event.error}" if event.error else "")
                      + (f" (its id {event.smsc_id} read in another base)"
                         if how == "other_base" else ""), file=out)
                return 0 if event.state == "DELIVRD" else 1
    finally:
        await sender.stop()
