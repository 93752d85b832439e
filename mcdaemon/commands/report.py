"""`mcdaemon report` and `mcdaemon record-booking`: the store's aggregates and texted callers
through `report.kpis.ReportBuilder`, printed as a table, CSV or JSON, and drawn by
`report.html`."""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from mcdaemon.config.model import Config
from mcdaemon.core.phone import to_e164
from mcdaemon.report.html import render
from mcdaemon.report.kpis import (
    BOOKING_WINDOW,
    DAY,
    Report,
    ReportBuilder,
    Since,
    as_csv,
    as_json,
    as_table,
    local_iso,
    parse_moment,
)
from mcdaemon.store import (
    ReportStore,
    StoreError,
    StoreInterface,
    open_store,
    open_store_readonly,
)

#: missed calls the HTML page lists
RECENT_CALLS = 25


async def read_report(store: ReportStore, config: Config, *, since: float, until: float,
                      group: str | None = None, recent: int = RECENT_CALLS,
                      aggregates: Sequence[ReportStore] = ()) -> Report:
    """The report of calls that ended in [since, until]: the store's texted callers a batch
    at a time and its aggregates, through `ReportBuilder` (memory: counts, not rows).

    The aggregates are read from the start on `aggregates`, other connections to the same
    store (the counts on the first, the texted callers on the second, or also on the
    first), while the booked texts, the recent calls and the texts of the callers who
    answered are read on `store`: the database counts while Python follows them, and a
    store not in the page cache is read in several places at once. Without `aggregates`
    all is read on `store`, in turns."""
    builder = ReportBuilder(config, since=since, until=until, group=group)
    readers = [*aggregates[:2]] or [store]
    counting = [asyncio.ensure_future(readers[0].report_counts(since, until)),
                asyncio.ensure_future(readers[-1].report_callers(since, until,
                                                                 builder.text_groups()))]
    try:
        builder.add_booked(await store.report_booked(since))
        offset = 0
        while True:
            page = await store.report_recent(since, until, 200, offset)
            if not builder.add_recent(page, recent) or len(page) < 200:
                break
            offset += len(page)
        async for batch in store.report_texts(since, until):
            builder.add_texts(batch)
        counts, callers = await asyncio.gather(*counting)
        builder.add_counts(counts | callers)
    except BaseException:
        for task in counting:
            task.cancel()
        raise
    return builder.report()


async def run_report(config: Config, out: TextIO, *, since: Since, now: float,
                     group: str | None, output: str, html: str | None) -> int:
    """`mcdaemon report`: 0, 1 if the store cannot be read, 2 for a bad argument."""
    try:
        start = since.start(now, config.timezone)
    except ValueError as exc:
        print(f"mcdaemon report: {exc}", file=sys.stderr)
        return 2
    # one connection for the texts of the callers who answered, one for the counts, one
    # for the texted callers
    connections: list[StoreInterface] = []
    try:
        for _ in range(3):
            connections.append(await open_store_readonly(config.store))
    except StoreError as exc:
        for opened in connections:
            await opened.close()
        print(f"mcdaemon report: {exc}", file=sys.stderr)
        return 1
    store, *aggregates = connections
    try:
        if group is not None and config.group(group) is None:
            everything = ReportBuilder(config, since=start, until=now)
            # the calls' groups are all it needs
            everything.add_counts(await store.report_counts(start, now))
            if group not in everything.groups_seen():
                names = ", ".join(g.name for g in config.groups) or "none"
                print(f"mcdaemon report: no group {group!r} in {config.source} or in the "
                      f"store (groups: {names})", file=sys.stderr)
                return 2
        report = await read_report(store, config, since=start, until=now, group=group,
                                   aggregates=aggregates)
    finally:
        for opened in connections:
            await opened.close()
    {"json": as_json, "csv": as_csv, "table": as_table}[output](report, out)
    if html is not None:
        try:
            # per-call rows hold callers' numbers: readable by the owner only (0600)
            descriptor = os.open(html, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(descriptor, "w", encoding="utf-8") as page:
                page.write(render(report))
        except OSError as exc:
            print(f"mcdaemon report: cannot write {html}: {exc}", file=sys.stderr)
            return 1
        print(f"HTML report written to {html}", file=sys.stderr)
    return 0


async def record_booking(config: Config, out: TextIO, *, number: str, value: float,
                         at: str | None, now: float, currency: str | None,
                         note: str | None) -> int:
    """`mcdaemon record-booking`: 0, 1 if the store cannot be written, 2 for a bad argument."""
    e164 = to_e164(number, config.region)
    if e164 is None:
        print(f"mcdaemon record-booking: {number!r} is not a phone number (give it as "
              f"+447700900123, or national for region {config.region})", file=sys.stderr)
        return 2
    if not math.isfinite(value) or value < 0:
        print(f"mcdaemon record-booking: --value {value}: must be a number, 0 or more",
              file=sys.stderr)
        return 2
    try:
        when = now if at is None else parse_moment(at, config.timezone)
    except ValueError as exc:
        print(f"mcdaemon record-booking: --at: {exc}", file=sys.stderr)
        return 2
    try:
        store: StoreInterface = await open_store(config.store)
    except StoreError as exc:
        print(f"mcdaemon record-booking: {exc}", file=sys.stderr)
        return 1
    try:
        booking = await store.add_booking(e164, value, when, currency=currency, note=note,
                                          window=BOOKING_WINDOW, now=now)
    finally:
        await store.close()
    shown = f"{value:,.2f}" + (f" {currency}" if currency else "")
    print(f"booking {booking.id}: {e164}, {shown}, at {local_iso(when, config.timezone)}", file=out)
    if booking.call_id is None:
        print(f"not attributed: no texted missed call from {e164} in the "
              f"{BOOKING_WINDOW / DAY:g} days before it", file=out)
    else:
        print(f"attributed to the texted missed call {booking.pbx}/{booking.call_id}",
              file=out)
    return 0
