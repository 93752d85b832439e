"""`mcdaemon store info|compact`: what the store holds and how big it is, and giving the space
that retention freed back to the file system (SQLite) or making it reusable now (PostgreSQL,
whose autovacuum otherwise does it)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from mcdaemon.commands.control import daemons_running
from mcdaemon.config.model import Config
from mcdaemon.pipeline.retention import RELEASE_BYTES
from mcdaemon.store import PAGE_SIZE, StoreInterface, open_store, open_store_readonly

DAY = 86400.0


async def gather_info(config: Config, now: float) -> dict[str, Any]:
    """What `store info` shows; read through a read-only connection."""
    store: StoreInterface = await open_store_readonly(config.store)
    try:
        space = await store.space()
        history = await store.history()
        due = await store.retention_due(config.store.retention, now)
    finally:
        await store.close()
    retention = config.store.retention
    return {
        "path": config.store.address, **space,
        "retention_days": {kind: getattr(retention, kind) / DAY
                           for kind in ("calls", "receipts", "replies", "webhooks", "outreach")},
        "tables": {table: {**facts, "past_retention": due.get(table)}
                   for table, facts in history.items()},
    }


def _pages(space: dict[str, Any]) -> str:
    """A SQLite store's page size, and how to give an older store a new one's."""
    if int(space["page_bytes"]) >= PAGE_SIZE:
        return f"{int(space['page_bytes']) // 1024} KB"
    return (f"{int(space['page_bytes']) // 1024} KB (a new store's are {PAGE_SIZE // 1024} KB, "
            "which a report reads from disk in a quarter of the reads: `mcdaemon store "
            "compact`, with the daemon stopped, converts it)")


def _when(epoch: Any, zone: ZoneInfo) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(float(epoch), zone).strftime("%Y-%m-%d %H:%M")


async def show_info(config: Config, out: TextIO, *, as_json: bool) -> int:
    info = await gather_info(config, time.time())
    if as_json:
        print(json.dumps(info, indent=2), file=out)
        return 0
    released = ("PostgreSQL's autovacuum makes freed space reusable" if config.store.url
                else "freed space is given back as retention removes history" if
                info["releases_space"] else "freed space is NOT given back: run `mcdaemon "
                "store compact` once, with the daemon stopped")
    print(f"store:     {info['path']}", file=out)
    print(f"size:      {info['bytes'] / 1e6:,.1f} MB on disk, {info['free_bytes'] / 1e6:,.1f} "
          f"MB of it free ({released})", file=out)
    if "page_bytes" in info:
        print(f"pages:     {_pages(info)}", file=out)
    print("retention: " + ", ".join(f"{kind} {days:g} d" for kind, days
                                    in info["retention_days"].items())
          + " (opt-outs and contacts are kept)", file=out)
    zone = ZoneInfo(config.timezone)
    rows = [("table", "rows", "oldest", "newest", "past retention")]
    rows += [(table, f"{facts['rows']:,}", _when(facts["oldest"], zone),
              _when(facts["newest"], zone),
              "-" if facts["past_retention"] is None else f"{facts['past_retention']:,}")
             for table, facts in info["tables"].items()]
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) if index == 0 else cell.rjust(width)
                        for index, (cell, width) in enumerate(zip(row, widths, strict=True))),
              file=out)
    print(f"(times in {config.timezone}; 'past retention': what the running daemon removes "
          "next, a few thousand rows a second)", file=out)
    return 0


async def compact(config: Config, out: TextIO) -> int:
    """Give the free space back. SQLite: with the daemon stopped by rewriting the file once
    (which also lays each index out in order: a report of a year read cold took 12 s
    from a rewritten store against 27 s from one written a row at a time over the year;
    and gives an older store a new one's pages when nothing else has it open);
    beside the running daemon in steps, when the store releases space as it goes.
    PostgreSQL: a VACUUM of mcdaemon's tables beside the running daemons."""
    store: StoreInterface = await open_store(config.store)
    try:
        space = await store.space()
        running = False if config.store.url else bool(
            daemons_running(await store.statuses(), time.time())[0])
        if config.store.url or (running and space["releases_space"]):
            while await store.release_space(RELEASE_BYTES) > 0:
                pass
            if config.store.url:
                await store.compact()
        elif running:
            print(f"mcdaemon store compact: the daemon is running on {config.store.path}; "
                  "compacting rewrites the whole file once and would make it wait: stop "
                  "it first (systemctl stop mcdaemon), then run this again",
                  file=sys.stderr)
            return 1
        else:
            print(f"rewriting {config.store.path} ({int(space['bytes']) / 1e6:,.1f} MB; "
                  "it needs as much free disk space while it runs)…", file=out)
            await store.compact()
        after = await store.space()
    finally:
        await store.close()
    reused = ("PostgreSQL's autovacuum makes freed space reusable" if config.store.url else
              "from now on freed space is given back as retention removes history")
    print(f"store compacted: {int(space['bytes']) / 1e6:,.1f} MB -> "
          f"{int(after['bytes']) / 1e6:,.1f} MB; {reused}", file=out)
    if "page_bytes" in after and int(after["page_bytes"]) < PAGE_SIZE:
        print(f"its pages stay {int(after['page_bytes']) // 1024} KB (a new store's are "
              f"{PAGE_SIZE // 1024} KB): another process had it open; stop it and run "
              "this again to convert them", file=out)
    return 0
