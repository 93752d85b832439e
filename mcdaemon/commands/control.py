"""`mcdaemon enable|disable|status`: the run-time switches and a look at a running daemon.

Both work through the store, not by signalling the daemon: the daemon reads the switches for
every call (so a switch takes effect within a second) and writes its connection states and a
heartbeat there once a second.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import time
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from mcdaemon.config.model import Config
from mcdaemon.pipeline.backfill import LAST_BACKFILL
from mcdaemon.store import StoreInterface, open_store, open_store_readonly

#: a heartbeat older than this means the daemon is not running (it writes one every second)
HEARTBEAT_STALE = 10.0
#: `status` counts the delivery receipts left unmatched, and the calls adopted or backfilled,
#: in this last stretch (s)
RECENT_WINDOW = 86_400.0


async def set_switch(config: Config, group: str | None, enabled: bool, out: TextIO) -> int:
    if group is not None and config.group(group) is None:
        names = ", ".join(g.name for g in config.groups) or "none"
        print(f"{config.source}: no group {group!r} (groups: {names})", file=sys.stderr)
        return 1
    store: StoreInterface = await open_store(config.store)
    try:
        name = "global" if group is None else f"group:{group}"
        await store.set_switch(name, enabled, time.time())
    finally:
        await store.close()
    what = "texting" if group is None else f"texting for group {group}"
    print(f"{what} {'enabled' if enabled else 'disabled'} (the running daemon applies it to "
          "the next call)", file=out)
    return 0




def gone_pid(heartbeat: str) -> int | None:
    """The heartbeat's pid (`pipeline.housekeeping.heartbeat_value`) when it was written on
    this host and that process is gone."""
    pid_text, _, host = heartbeat.partition("@")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None  # another host or PID namespace, or an older daemon: the age decides
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return int(pid_text)
    except PermissionError:
        pass  # alive, as another user (the daemon's)
    return None


def local_time(at: float, timezone: str) -> str:
    return dt.datetime.fromtimestamp(at, ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S")


async def gather_status(config: Config, now: float) -> dict[str, Any]:
    """What `status` shows; read through a read-only connection (no write access needed)."""
    store: StoreInterface = await open_store_readonly(config.store)
    try:
        switches = await store.switches()
        statuses = await store.statuses()
        outbox = await store.outbox_stats(now)
        receipts = await store.unmatched_receipts(now - RECENT_WINDOW)
        recovered = await store.recovered_calls(now - RECENT_WINDOW)
    finally:
        await store.close()
    heartbeat = statuses.get("heartbeat")
    running = (statuses.get("daemon", ("stopped", 0))[0] == "running" and heartbeat is not None
               and now - heartbeat[1] < HEARTBEAT_STALE)
    gone = gone_pid(heartbeat[0]) if running and heartbeat is not None else None
    if gone is not None:  # killed (SIGKILL, OOM) since its last heartbeat
        running = False
    return {
        "daemon": "running" if running else "not running",
        "daemon_detail": f"pid {gone} is gone" if gone is not None else "",
        "texting": {
            "global": config.policy.enabled and switches.get("global", True),
            **{group.name: group.enabled and switches.get(f"group:{group.name}", True)
               for group in config.groups}},
        "smsc": statuses.get("smpp", ("unknown", 0))[0] if running else "down",
        "ami": {pbx.name: statuses.get(f"ami:{pbx.name}", ("unknown", 0))[0] if running
                else "disconnected" for pbx in config.ami},
        "outbox": outbox,
        "receipts_last_24h": receipts,
        "recovered_last_24h": recovered,
        "last_backfill": {pbx.name: {"at": statuses[LAST_BACKFILL + pbx.name][1],
                                     **json.loads(statuses[LAST_BACKFILL + pbx.name][0])}
                          for pbx in config.ami if LAST_BACKFILL + pbx.name in statuses},
    }


async def show_status(config: Config, out: TextIO, *, as_json: bool, health: bool) -> int:
    status = await gather_status(config, time.time())
    if as_json:
        print(json.dumps(status, indent=2), file=out)
    else:
        detail = f" ({status['daemon_detail']})" if status["daemon_detail"] else ""
        print(f"daemon:   {status['daemon']}{detail}", file=out)
        switches = status["texting"]
        print("texting:  " + ", ".join(f"{name} {'on' if on else 'off'}"
                                       for name, on in switches.items()), file=out)
        print(f"smsc:     {status['smsc']}", file=out)
        for name, state in status["ami"].items():
            print(f"ami {name}: {state}", file=out)
            last = status["last_backfill"].get(name)
            if last is not None:
                print(f"          last backfill {local_time(last['at'], config.timezone)}: "
                      f"{last['window_seconds']:g} s window, {last['calls']} queue call(s), "
                      f"{last['decided']} decided, {last['texted']} texted", file=out)
        outbox = status["outbox"]
        counts = ", ".join(f"{state} {count}" for state, count in outbox["by_state"].items())
        print(f"outbox:   {counts}; deferred {outbox['deferred']}", file=out)
        age = outbox["oldest_queued_age"]
        if age is not None:
            print(f"          oldest queued text waits for {age:.0f} s", file=out)
        recovered = status["recovered_last_24h"]
        print(f"recovered: {recovered['adopted']} call(s) adopted at a connect, "
              f"{recovered['backfilled']} backfilled from the queue_log in the last 24 h",
              file=out)
        receipts = status["receipts_last_24h"]
        print(f"receipts: {receipts['unmatched']} unmatched in the last 24 h"
              + (f" ({receipts['ambiguous']} named more than one text: see docs/receipts.md)"
                 if receipts["ambiguous"] else ""), file=out)
    if health:  # running, every link up: a link down is retried, but someone should know
        healthy = status["daemon"] == "running" and status["smsc"] == "bound" and all(
            state == "connected" for state in status["ami"].values())
        return 0 if healthy else 1
    return 0
