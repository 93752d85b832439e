"""`mcdaemon enable|disable|status`: the run-time switches and a look at a running daemon.

Both work through the store, not by signalling the daemon: the daemon reads the switches for
every call (so a switch takes effect within a second) and writes its heartbeat there once a
second, with its connection states (`core.daemons`): `status` lists every daemon alive on the
store and the PBXs each watches.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from mcdaemon.config.model import Config
from mcdaemon.core.daemons import DaemonBeat, alive, gone_pid, read_beats
from mcdaemon.pipeline.backfill import LAST_BACKFILL
from mcdaemon.store import LIVE_STATES, StoreInterface, open_store, open_store_readonly

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


def daemons_running(statuses: dict[str, tuple[str, float]],
                    now: float) -> tuple[list[DaemonBeat], list[int]]:
    """The daemons running on the store (a fresh heartbeat, `core.daemons`; its status
    rows: `statuses()`), and the pids of those this host knows are gone (killed by SIGKILL
    or the OOM killer since their last beat)."""
    daemons: list[DaemonBeat] = []
    gone: list[int] = []
    for beat in alive(read_beats(statuses), now):
        pid = gone_pid(beat.process)
        if pid is None:
            daemons.append(beat)
        else:
            gone.append(pid)
    return daemons, gone


def _best(states: list[str], up: str) -> str:
    """A link several daemons report: up if one has it up, else what the first says."""
    return up if up in states else (states[0] if states else "unknown")


def local_time(at: float, timezone: str) -> str:
    return dt.datetime.fromtimestamp(at, ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S")


async def gather_status(config: Config, now: float) -> dict[str, Any]:
    """What `status` shows; read through a read-only connection (no write access needed).
    The daemons alive are those whose heartbeat (`core.daemons`) is fresh, less those this
    host knows are gone (killed since their last beat)."""
    store: StoreInterface = await open_store_readonly(config.store)
    try:
        switches = await store.switches()
        statuses = await store.statuses()
        outbox = await store.outbox_stats(now)
        receipts = await store.unmatched_receipts(now - RECENT_WINDOW)
        recovered = await store.recovered_calls(now - RECENT_WINDOW)
    finally:
        await store.close()
    daemons, gone = daemons_running(statuses, now)
    running = bool(daemons)
    return {
        "daemon": "running" if running else "not running",
        "daemon_detail": f"pid {gone[0]} is gone" if gone and not running else "",
        "daemons": [{"name": beat.id, "process": beat.process,
                     "seen_ago": round(max(0.0, now - beat.seen), 1), "smsc": beat.smsc,
                     "pbxs": dict(beat.pbxs)} for beat in daemons],
        "texting": {
            "global": config.policy.enabled and switches.get("global", True),
            **{group.name: group.enabled and switches.get(f"group:{group.name}", True)
               for group in config.groups}},
        "smsc": _best([beat.smsc for beat in daemons], "bound") if running else "down",
        "ami": {pbx.name: _best([beat.pbxs[pbx.name] for beat in daemons
                                 if pbx.name in beat.pbxs], "connected") if running
                else "disconnected" for pbx in config.ami},
        "outbox": outbox,
        "receipts_last_24h": receipts,
        "recovered_last_24h": recovered,
        "last_backfill": {pbx.name: {"at": statuses[LAST_BACKFILL + pbx.name][1],
                                     **json.loads(statuses[LAST_BACKFILL + pbx.name][0])}
                          for pbx in config.ami if LAST_BACKFILL + pbx.name in statuses},
    }


def _daemon_line(daemon: dict[str, Any]) -> str:
    """One daemon alive: its name, its SMSC bind, the PBXs it watches (those down by name)."""
    pbxs: dict[str, str] = daemon["pbxs"]
    down = [f"{name} {state}" for name, state in pbxs.items() if state != "connected"]
    name = daemon["name"]
    who = name if name == daemon["process"] else f"{name} ({daemon['process']})"
    line = (f"{who}: smsc {daemon['smsc']}; watching {len(pbxs)} PBX(s), "
            f"{len(pbxs) - len(down)} connected")
    if down:
        line += "; not connected: " + ", ".join(down[:10]) + (", ..." if len(down) > 10 else "")
    return line


async def show_status(config: Config, out: TextIO, *, as_json: bool, health: bool) -> int:
    status = await gather_status(config, time.time())
    if as_json:
        print(json.dumps(status, indent=2), file=out)
    else:
        detail = f" ({status['daemon_detail']})" if status["daemon_detail"] else ""
        print(f"daemon:   {status['daemon']}{detail}", file=out)
        for daemon in status["daemons"]:
            print(f"  {_daemon_line(daemon)}", file=out)
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
        by_state = outbox["by_state"]
        live = ", ".join(f"{state} {by_state[state]}" for state in LIVE_STATES)
        settled = ", ".join(f"{state} {count}" for state, count in by_state.items()
                            if state not in LIVE_STATES)
        print(f"outbox:   {live}; deferred {outbox['deferred']}", file=out)
        print(f"          settled in the last 24 h: {settled}", file=out)
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
