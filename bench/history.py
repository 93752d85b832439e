#!/usr/bin/env python3
"""A year of history at the same speed: the daemon, `report` and `status` on a store seeded
with N days of a busy PBX, against the same on an empty store.

The seeder writes through the store's schema (a store `Store.open` made, filled with bulk
inserts in chronological order): per day `--calls-per-day` calls (default 10,000) between
08:00 and 20:00, 40 % missed and texted, from callers who repeat as real callers do (a pool
of numbers drawn with a heavy head: a few call often, most once or twice); each text with its
parts (one in ten has two), the SMSC's ids, receipts (92 % delivered, 4 % undeliverable, 3 %
never receipted and `unknown`, 1 % failed), one in ten answered by a reply (one in two
hundred a STOP, with its opt-out), a booking for one in a hundred, A/B variants, and the
webhook deliveries of the last 7 days (what retention keeps of them). The history ends now.

Then, in one run:

    storm       bench/latency.py's replay of the recorded storm (50 calls, real speed) to
                `mcdaemon run` on an empty store and on the seeded one, in turns, `--runs`
                times each (the storm's rows are removed from the seeded store after each
                run): hangup -> submit_sm p50 / p99 over all runs
    report      `mcdaemon report --since 365d` (and `--html`) as a process of its own: wall
                time and peak RSS (getrusage of a process whose only child it is)
    status      `mcdaemon status`: the store's part in-process (`gather_status`) and the
                whole command as a process (an interpreter's start included)
    retention   the store's size, then every kind's retention set to `--retain` days and
                `prune_step` run at the daemon's batch size until nothing is past it, the
                space released: the size after, and how long it took
    migration   (--migration) the seeded store taken back to schema 9 (migrations 10 to
                15's indexes, tables and triggers dropped, the texts' template column and the
                bookings' copies of their calls too) and opened: how long the migrations
                take per million rows

    python bench/history.py [--days 365] [--runs 4] [--dir /tmp/mcd-history] [--reuse]
    python bench/history.py --reuse --only storm [--compare OTHER/.venv/bin/python]

`--only storm` measures the storms alone, on the empty store and the seeded one in turns
(and, with `--compare`, another checkout's daemon in turns with this one's).

Targets: p99 with a year <= 1.5 x the empty store's and <= 100 ms; report <= 15 s within
512 MB; status <= 0.2 s; the size bounded by the retention window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import latency  # bench/latency.py: the storm's replay, reused as it is

from mcdaemon.commands.control import gather_status
from mcdaemon.config.load import load_config
from mcdaemon.pipeline.retention import PRUNE_BATCH, RELEASE_BYTES
from mcdaemon.store import Store

DAY = 86400.0
#: UK mobiles the storm's callers (+4477009002xx) never use
POOL_PREFIX = "+4479"
BODY = ("Hi {name}, sorry we missed your call to Acme Sales. Reply here or call us back on "
        "020 7123 0000; we are open 8am-8pm. Reply STOP to opt out.")
NAMES = ("Zoë", "Amir", "Siobhan", "Wei", "Oluwaseun", "Marta", "Tom", "Priya", None)
MISSED = (("queue_abandon", 0.55), ("queue_timeout", 0.1), ("ring_no_answer", 0.15),
          ("voicemail_left", 0.1), ("ivr_abandon", 0.1))
GROUPS = ("sales", "support")


def since_schema_9() -> list[str]:
    """Migrations 10 to 15 (retention's and the report's indexes, the texts' template, the
    calls' counts, the sent texts' indexes, the sent texts' counts, the bookings' calls), as
    SQLite runs them."""
    from mcdaemon.store import migration_steps

    return [statement for number in (9, 10, 11, 12, 13, 14)
            for statement in migration_steps(number, "sqlite")]


# ---------------------------------------------------------------------- seeding

def seed(path: Path, days: int, per_day: int, end: float, rng: random.Random) -> dict[str, int]:
    """Fill the store at `path` (made by Store.open) with `days` days of history ending at
    `end`; the rows written per table."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -200000")
    counts = dict.fromkeys(("calls", "messages", "message_parts", "receipts", "inbound",
                            "opt_outs", "bookings", "contact_events", "webhooks"), 0)
    pool = max(1000, days * per_day // 6)
    message_id = 0
    receipt_id = 0
    db.execute("BEGIN")
    for day in range(days):
        start = end - (days - day) * DAY
        rows: dict[str, list[tuple[object, ...]]] = {table: [] for table in counts}
        times = sorted(start + 8 * 3600 + rng.random() * 12 * 3600 for _ in range(per_day))
        for number, ended in enumerate(times):
            if ended > end - 60:
                continue
            index = int(pool * rng.random() ** 2.5)  # a heavy head: some call again and again
            caller = f"{POOL_PREFIX}{index:08d}"
            group = GROUPS[index % 2]
            call_id = f"{ended:.3f}.{number}"
            name = NAMES[index % len(NAMES)]
            missed = rng.random() < 0.4
            outcome = rng.choices([o for o, _ in MISSED], [w for _, w in MISSED])[0] \
                if missed else "answered"
            record = json.dumps({
                "pbx": "lab", "call_id": call_id, "caller": caller.lstrip("+"),
                "caller_name": name, "caller_e164": caller, "did": "442071230000",
                "group": group, "outcome": outcome, "stages": ["ivr", "queue"],
                "started": ended - 60, "ended": ended, "wait_seconds": 42.0,
                "partial": False, "evicted": False, "channel": None, "adopted": False,
                "extra": {}}, ensure_ascii=False)
            variant = ("control", "short")[index % 3 == 0] if missed else None
            rows["calls"].append((
                "lab", call_id, caller.lstrip("+"), caller, name, "442071230000", group,
                outcome, ended - 60, ended, 42.0, 0, record, int(missed),
                "text" if missed else "not_missed", None, group if missed else None,
                outcome if missed else None, variant, ended + 0.2))
            if not missed:
                continue
            message_id += 1
            parts = 2 if rng.random() < 0.1 else 1
            fate = rng.random()
            state = ("delivered" if fate < 0.92 else "undeliverable" if fate < 0.96 else
                     "unknown" if fate < 0.99 else "failed")
            # most within a second or two of the hangup, a few held up by the SMSC
            submitted = None if state == "failed" else ended + 0.3 + rng.expovariate(1.5)
            final = ended + (3600 * 6 if state == "unknown" else 30.0)
            ids = [f"{message_id:08x}{part}" for part in range(1, parts + 1)] \
                if submitted else []
            rows["messages"].append((
                message_id, "lab", call_id, "first", 0, caller,
                BODY.format(name=name or "there"), group, variant, outcome, state, 1,
                len(ids), ended + 0.3, ended + 900, ended, ended + 0.3, ended + 0.4,
                submitted, final, 11 if state == "failed" else None,
                "invalid destination" if state == "failed" else None, 0, json.dumps(ids)))
            for part, smsc_id in enumerate(ids, start=1):
                part_state = {"delivered": "delivered", "undeliverable": "undeliverable"}.get(
                    state, "submitted")
                rows["message_parts"].append((message_id, part, smsc_id, part_state,
                                              None, final if part_state != "submitted"
                                              else None))
                if part_state != "submitted":
                    receipt_id += 1
                    stat = "DELIVRD" if part_state == "delivered" else "UNDELIV"
                    rows["receipts"].append((
                        receipt_id, smsc_id, stat, None, final, message_id,
                        json.dumps({"id": smsc_id, "stat": stat, "err": "000",
                                    "submit date": "2501061200", "done date": "2501061201",
                                    "text": ""}),
                        json.dumps([smsc_id]), smsc_id, smsc_id, "receipted_id"))
            if submitted and rng.random() < 0.1:
                at = submitted + rng.expovariate(1 / 3600)
                stop = rng.random() < 0.05
                rows["inbound"].append((caller, "447700900000",
                                        "STOP" if stop else "Yes please call me back", at,
                                        "opt_out" if stop else None))
                rows["contact_events"].append((caller, "reply", at, None))
                if stop:
                    rows["opt_outs"].append((caller, at, "STOP"))
            if submitted and submitted + DAY < end and rng.random() < 0.01:
                rows["bookings"].append((caller, float(rng.randint(40, 400)), "GBP", None,
                                         submitted + 86400, "lab", call_id, submitted + 86400,
                                         ended, outcome, group, "442071230000", group,
                                         message_id))
            if ended > end - 7 * DAY:
                for event in ("missed_call", "text_delivered"):
                    key = f"{event}:{call_id}"
                    rows["webhooks"].append((
                        f"d-{key}", "crm", event, key, f"call:{call_id}",
                        json.dumps({"schema": 1, "event": event, "call_id": call_id,
                                    "caller": caller, "group": group}),
                        "delivered", 1, ended + 1, None, ended + 1, ended + 2))
        insert(db, rows)
        for table, new in rows.items():
            counts[table] += len(new)
        if day % 10 == 9:
            db.execute("COMMIT")
            db.execute("BEGIN")
            print(f"\r  seeded {day + 1}/{days} days", end="", flush=True)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print()
    return counts


INSERTS = {
    "calls": "INSERT INTO calls (pbx, call_id, caller, caller_e164, caller_name, did, grp,"
             " outcome, started, ended, wait_seconds, partial, record, textable, reason,"
             " detail, decision_group, template, variant, decided_at)"
             " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "messages": "INSERT INTO messages (id, pbx, call_id, kind, seq, destination, body, grp,"
                " variant, template, state, attempts, parts, not_before, expires_at,"
                " call_ended_at, created_at, sending_at, submitted_at, final_at, error_code,"
                " error_detail, duplicate_risk, smsc_ids)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "message_parts": "INSERT INTO message_parts (message_id, part_no, smsc_id, state, error,"
                     " receipt_at) VALUES (?,?,?,?,?,?)",
    "receipts": "INSERT INTO receipts (id, smsc_id, state, error, at, message_id, raw,"
                " candidates, receipted_id, text_id, matched_by) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "inbound": "INSERT INTO inbound (source, destination, text, at, keyword) VALUES (?,?,?,?,?)",
    "contact_events": "INSERT INTO contact_events (e164, kind, at, detail) VALUES (?,?,?,?)",
    "opt_outs": "INSERT OR IGNORE INTO opt_outs (e164, at, keyword) VALUES (?,?,?)",
    "bookings": "INSERT INTO bookings (e164, value, currency, note, at, pbx, call_id,"
                " created_at, call_ended, call_outcome, call_decision_group, call_did,"
                " call_grp, text_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "webhooks": "INSERT INTO webhooks (delivery_id, endpoint, event, event_key, order_key,"
                " body, state, attempts, next_at, last_error, created_at, final_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
}


def insert(db: sqlite3.Connection, rows: dict[str, list[tuple[object, ...]]]) -> None:
    for table, sql in INSERTS.items():
        if rows[table]:
            db.executemany(sql, rows[table])


def make_store(path: Path, days: int, per_day: int, reuse: bool) -> None:
    if reuse and path.exists():
        print(f"reusing {path} ({path.stat().st_size / 1e9:.2f} GB)")
        return
    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    asyncio.run(close_new_store(path))
    started = time.monotonic()
    counts = seed(path, days, per_day, time.time(), random.Random(19))
    print(f"seeded {days} days in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{table} {count:,}" for table, count in counts.items())
          + f"; {path.stat().st_size / 1e9:.2f} GB")


async def close_new_store(path: Path) -> None:
    store = await Store.open(str(path))
    await store.close()


def remove_storm(path: Path) -> None:
    """The storm's calls and texts (pbx `bench`), so the next run's callers are new again."""
    db = sqlite3.connect(path)
    mine = "SELECT id FROM messages WHERE pbx = 'bench'"
    for sql in (f"DELETE FROM message_parts WHERE message_id IN ({mine})",
                f"DELETE FROM receipts WHERE message_id IN ({mine})",
                "DELETE FROM messages WHERE pbx = 'bench'", "DELETE FROM calls WHERE pbx = 'bench'",
                "DELETE FROM webhooks WHERE order_key LIKE 'call:bench%'"):
        db.execute(sql)
    db.commit()
    db.close()


# ---------------------------------------------------------------------- measuring

async def storm(store: Path | None, runs: int, label: str,
                daemon_python: str = sys.executable) -> list[float]:
    latencies: list[float] = []
    for _ in range(runs):
        run = await latency.replay(daemon_python, label, 1.0, 100.0, None, None, store=store)
        latency.print_run(run)
        latencies += run.latency.values()
        if store is not None:
            remove_storm(store)
    return latencies


def storms(year: Path, runs: int, daemons: list[tuple[str, str]]) -> dict[str, list[float]]:
    """`--only storm`: each daemon's storms on an empty store and on `year`, one run of each
    at a time, the daemons (and the stores) in turns: a before and an after compared in the
    same minutes of a noisy machine. Each run is printed; the latencies pooled per row."""
    pooled: dict[str, list[float]] = {}
    for number in range(runs):
        order = daemons if number % 2 == 0 else daemons[::-1]
        for label, python in order:
            for name, store in (("empty", None), ("year", year)):
                row = f"{label} {name}" if len(daemons) > 1 else name
                pooled.setdefault(row, []).extend(
                    asyncio.run(storm(store, 1, row, python)))
    return pooled


def child(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and exit status of a command run by a process of its own
    (so that the peak is that command's, not the benchmark's other children's)."""
    probe = ("import resource, subprocess, sys, time; s = time.monotonic(); "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
             "print(time.monotonic() - s, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r)")
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def config_for(folder: Path, store: Path) -> Path:
    path = folder / f"{store.stem}.yaml"
    path.write_text(f"region: GB\ntimezone: Europe/London\ninbound: {{contexts: [from-carrier]}}"
                    f"\nstore: {{path: {store}}}\n"
                    "ami: [{name: lab, username: mcd, secret: s}]\n"
                    "groups: {sales: {queues: [sales]}, support: {queues: [support]}}\n")
    path.chmod(0o600)
    return path


def status_seconds(config_path: Path) -> float:
    config = load_config(str(config_path))
    best = float("inf")
    for _ in range(5):
        started = time.monotonic()
        asyncio.run(gather_status(config, time.time()))
        best = min(best, time.monotonic() - started)
    return best


def retention(store: Path, keep_days: float) -> tuple[float, float, float]:
    """Every kind's retention set to `keep_days`; pruned at the daemon's batch size until
    nothing is past it, the space released: (size before, size after in GB, seconds)."""
    async def run() -> float:
        opened = await Store.open(str(store))
        config = load_config(str(config_for(store.parent, store))).store.retention
        days = keep_days * DAY
        config = replace(config, calls=days, receipts=days, replies=days, outreach=days)
        started = time.monotonic()
        try:
            while await opened.prune_step(config, time.time(), limit=PRUNE_BATCH):
                await opened.release_space(RELEASE_BYTES)
            while await opened.release_space(RELEASE_BYTES):
                pass
            await opened.checkpoint()
            return time.monotonic() - started
        finally:
            await opened.close()

    before = size(store)
    seconds = asyncio.run(run())
    db = sqlite3.connect(store)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return before, size(store), seconds


def size(store: Path) -> float:
    wal = Path(f"{store}-wal")
    return (store.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e9


def migration(store: Path, folder: Path) -> tuple[float, int]:
    """Seconds migrations 10 to 15 take on a copy of the store taken back to schema 9, and
    the rows of the tables they index."""
    copy = folder / "schema9.db"
    shutil.copyfile(store, copy)
    db = sqlite3.connect(copy)
    for statement in since_schema_9():
        for kind in ("INDEX", "TRIGGER", "TABLE"):
            if statement.startswith(f"CREATE {kind}"):
                db.execute(f"DROP {kind} IF EXISTS " + statement.split()[2])
        if statement.startswith("ALTER TABLE bookings ADD COLUMN"):
            db.execute("ALTER TABLE bookings DROP COLUMN " + statement.split()[5])
    db.execute("ALTER TABLE messages DROP COLUMN template")
    db.execute("CREATE INDEX calls_ended ON calls (ended)")  # as schema 9 had it
    db.execute("PRAGMA user_version = 9")
    rows = sum(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in (
        "calls", "receipts", "inbound", "messages", "contact_events", "campaigns",
        "campaign_calls"))
    db.commit()
    db.close()
    started = time.monotonic()
    asyncio.run(close_new_store(copy))
    seconds = time.monotonic() - started
    for stale in (copy, Path(f"{copy}-wal"), Path(f"{copy}-shm")):
        stale.unlink(missing_ok=True)
    return seconds, rows


def ms(values: list[float], fraction: float) -> float:
    return latency.percentile(values, fraction) * 1000 if values else float("nan")


def main(arguments: argparse.Namespace) -> None:
    folder = Path(arguments.dir)
    folder.mkdir(parents=True, exist_ok=True)
    year = folder / "year.db"
    empty = folder / "empty.db"
    make_store(year, arguments.days, arguments.calls_per_day, arguments.reuse)
    for stale in (empty, Path(f"{empty}-wal"), Path(f"{empty}-shm")):
        stale.unlink(missing_ok=True)
    asyncio.run(close_new_store(empty))
    results: dict[str, object] = {"days": arguments.days, "size_gb": round(size(year), 2)}
    if arguments.seed_only:
        return
    if arguments.only == "storm":
        daemons = [("after", os.path.abspath(arguments.daemon_python))]
        if arguments.compare:
            daemons.insert(0, ("before", os.path.abspath(arguments.compare)))
        print(f"storm at real speed, {arguments.runs} run(s) each, in turns:")
        for row, values in storms(year, arguments.runs, daemons).items():
            print(f"  {row:12} {len(values)} texted   p50 {ms(values, 0.5):5.1f}  p99 "
                  f"{ms(values, 0.99):5.1f}  max {ms(values, 1.0):5.1f} ms")
        print("target: storm p99 year <= 1.5 x empty and <= 100 ms")
        return

    print(f"storm at real speed, {arguments.runs} run(s) each, in turns:")
    pooled = storms(year, arguments.runs, [("after", os.path.abspath(arguments.daemon_python))])
    on_empty, on_year = pooled["empty"], pooled["year"]
    results["storm_empty_ms"] = (round(ms(on_empty, 0.5), 1), round(ms(on_empty, 0.99), 1))
    results["storm_year_ms"] = (round(ms(on_year, 0.5), 1), round(ms(on_year, 0.99), 1))
    results["texted"] = (len(on_empty), len(on_year))

    config = config_for(folder, year)
    command = [sys.executable, "-m", "mcdaemon", "report", "-c", str(config), "--since",
               f"{arguments.days}d", "--format", "json"]
    results["report"] = child(command)
    results["report_html"] = child([*command, "--html", str(folder / "report.html")])
    results["status_in_process_s"] = round(status_seconds(config), 3)
    results["status_command"] = child([sys.executable, "-m", "mcdaemon", "status", "-c",
                                       str(config)])
    results["status_command_empty"] = child([sys.executable, "-m", "mcdaemon", "status", "-c",
                                             str(config_for(folder, empty))])
    if arguments.migration:
        results["migration_s"], results["migration_rows"] = migration(year, folder)
    before, after, seconds = retention(year, arguments.retain)
    results["retention"] = {"keep_days": arguments.retain, "before_gb": round(before, 2),
                            "after_gb": round(after, 2), "seconds": round(seconds)}
    print(json.dumps(results, indent=2))
    print("targets: storm p99 year <= 1.5 x empty and <= 100 ms; report <= 15 s within 512 MB;"
          " status <= 0.2 s; size bounded by the retention window")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=365, help="days of history to seed")
    parser.add_argument("--calls-per-day", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=4, help="storm replays per store")
    parser.add_argument("--retain", type=float, default=330.0,
                        help="days kept by the retention step at the end (default 330: the "
                             "oldest month of the year goes, at the daemon's batch size)")
    parser.add_argument("--dir", default="/tmp/mcd-history",
                        help="where the seeded stores go (never the repository)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the seeded store of an earlier run if there is one (the "
                             "retention step at the end shrinks it: reseed for its figures)")
    parser.add_argument("--migration", action="store_true",
                        help="also time migrations 10 to 15 on a copy of the seeded store")
    parser.add_argument("--seed-only", action="store_true", help="seed the store, measure nothing")
    parser.add_argument("--only", choices=["storm"], help="measure only this (storm: the "
                        "storms on the empty and the seeded store, in turns)")
    parser.add_argument("--daemon-python", default=sys.executable, metavar="PATH",
                        help="with --only storm: the interpreter that runs the daemon")
    parser.add_argument("--compare", metavar="PATH", help="with --only storm: also run the "
                        "daemon of this interpreter ('before'), in turns with --daemon-python's")
    main(parser.parse_args())
