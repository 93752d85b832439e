"""`mcdaemon backfill`: the queue calls the daemon missed while away, from the queue_log.

Asterisk writes every queue caller's fate to its queue_log whether or not an AMI client was
connected. This command reads the log (`--queue-log`, or `inbound.queue_log` and its rotated
`.1`) for a window, turns each finished queue call into the CallRecord the tracker would
have made, and decides those the store has no record of, as live calls are decided: the
policy with the store's view, `outbox.max_age` (a call that ended longer ago is recorded, not
texted: `too_old`), one decision per (pbx, call id) however many times it is seen. The
running daemon sends what is queued. `--dry-run` prints the decisions and changes nothing.

Only queue calls are in the queue_log: an IVR or direct-line call missed during an outage is
not recoverable from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mcdaemon.config.model import Config
from mcdaemon.core.policy import decide_batch, destination_prefix, match_group
from mcdaemon.core.queue_log import QueueCall, read_queue_log, to_record
from mcdaemon.core.records import CallRecord, PolicyView
from mcdaemon.report.kpis import Since, parse_since
from mcdaemon.store import NewCall, Store, StoreInterface

#: the group that may read /var/log/asterisk on Debian, Ubuntu, RHEL (and FreePBX)
READER_GROUP = "asterisk"


def parse_when(text: str) -> float | Since | None:
    """`--since`/`--until`: epoch seconds, `now` (None), or what `report --since` takes."""
    value = text.strip()
    if value.lower() == "now":
        return None
    try:
        return float(value)
    except ValueError:
        return parse_since(value)


def resolve_when(when: float | Since | None, now: float, timezone: str) -> float:
    if when is None:
        return now
    if isinstance(when, Since):
        return when.start(now, timezone)
    return when


def queue_log_files(config: Config, given: Sequence[str] | None) -> list[str]:
    """The files to read, oldest first: those given, or `inbound.queue_log` after its `.1`."""
    if given:
        return list(given)
    path = config.inbound.queue_log
    if path is None:
        return []
    rotated = f"{path}.1"
    return [rotated, path] if os.path.exists(rotated) else [path]


def _read(path: str) -> str:
    with open(path, "rb") as file:
        return file.read().decode("utf-8", errors="replace")


async def backfill(config: Config, out: TextIO, err: TextIO, *, files: Sequence[str] | None,
                   since: float | Since | None, until: float | Since | None, now: float,
                   dry_run: bool = False, queues: Sequence[str] | None = None) -> int:
    """Print one JSON line per queue call of the window; 0, or 1 if a file is unusable."""
    paths = queue_log_files(config, files)
    if not paths:
        print("mcdaemon backfill: no queue_log: give --queue-log FILE or set "
              "inbound.queue_log in the config", file=err)
        return 1
    texts: list[str] = []
    for path in paths:
        try:
            texts.append(_read(path))
        except OSError as exc:
            hint = (f"; the user running mcdaemon needs to read it: add it to the "
                    f"'{READER_GROUP}' group (usermod -aG {READER_GROUP} USER, or "
                    f"SupplementaryGroups={READER_GROUP} in the systemd unit)"
                    if isinstance(exc, PermissionError) else "")
            print(f"mcdaemon backfill: cannot read {path}: {exc.strerror or exc}{hint}",
                  file=err)
            return 1
    try:
        start = resolve_when(since, now, config.timezone)
        end = resolve_when(until, now, config.timezone)
    except ValueError as exc:
        print(f"mcdaemon backfill: {exc}", file=err)
        return 1
    if start >= end:
        print("mcdaemon backfill: --since must be before --until", file=err)
        return 1
    log = read_queue_log(texts, queues=set(queues) if queues else None, until=end)
    calls = [call for call in log.calls
             if (call.ended if call.ended is not None else call.entered or end) >= start]
    pbx = config.ami[0].name if config.ami else "pbx"
    store: StoreInterface | None = None
    if not dry_run:
        store = await Store.open(config.store.path)
    elif Path(config.store.path).is_file():
        store = await Store.open_readonly(config.store.path)
    try:
        lines = await _decide(config, store, calls, pbx, now, dry_run)
    finally:
        if store is not None:
            await store.close()
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
    summary = {"files": paths, "since": start, "until": end, "calls": len(calls),
               "garbage_lines": log.garbage, "duplicate_lines": log.duplicates,
               "other_queue_lines": log.other_queues, "dry_run": dry_run,
               "recorded": sum(1 for line in lines if line.get("recorded")),
               "queued_texts": sum(1 for line in lines if line.get("queued"))}
    print(f"mcdaemon backfill: {json.dumps(summary)}", file=err)
    return 0


async def _decide(config: Config, store: StoreInterface | None, calls: list[QueueCall],
                  pbx: str, now: float, dry_run: bool) -> list[dict[str, Any]]:
    lines: dict[str, dict[str, Any]] = {}
    fresh: list[CallRecord] = []
    for call in calls:
        if call.outcome is None or call.ended is None:
            lines[call.callid] = _undecided(call, pbx)
            continue
        record = to_record(call, pbx, config.region)
        line = record.as_dict()
        lines[call.callid] = line
        known = await store.call(pbx, call.callid) if store is not None else None
        if known is not None:
            line.update(textable=False, reason="already_recorded",
                        detail=f"decided before: {known.get('reason')}", recorded=False,
                        queued=False)
            continue
        fresh.append(record)
    if fresh:
        groups = [match_group(record, config) for record in fresh]
        callers = [(record.caller_e164, group.name if group else None,
                    destination_prefix(record.caller_e164, config) if record.caller_e164
                    else None) for record, group in zip(fresh, groups, strict=True)]
        views = (await store.policy_views(callers, now) if store is not None
                 else [PolicyView() for _ in fresh])
        decisions = decide_batch(fresh, views, config, now)
        message_ids: list[int | None] = [None] * len(fresh)
        if store is not None and not dry_run:
            decided = [NewCall(record, decision)
                       for record, decision in zip(fresh, decisions, strict=True)]
            message_ids = await store.record_calls(
                decided, now=now, destinations=[decision.destination for decision in decisions])
        for record, decision, message_id in zip(fresh, decisions, message_ids, strict=True):
            lines[record.call_id].update(
                textable=decision.text, reason=decision.reason, decision_group=decision.group,
                text=decision.body, variant=decision.variant, send_after=decision.send_after,
                expires_at=decision.expires_at, detail=decision.detail or None,
                recorded=not dry_run, queued=message_id is not None)
    return list(lines.values())


def _undecided(call: QueueCall, pbx: str) -> dict[str, Any]:
    """A queue call the queue_log cannot settle: shown, neither decided nor stored."""
    detail = {"exit_with_key": f"left the queue with key {call.key or '?'}: the dialplan after "
                               "the queue decides; not known from the queue_log",
              "still_open": "still in the queue or with an agent at the window's end"}
    return {"pbx": pbx, "call_id": call.callid, "caller": call.caller or "", "group":
            call.queue, "outcome": None, "started": call.entered, "ended": call.ended,
            "extra": {"backfilled": "true", "queue": call.queue, "source": "queue_log"},
            "textable": False, "reason": call.reason, "detail": detail.get(call.reason),
            "recorded": False, "queued": False}


__all__ = ["backfill", "parse_when", "queue_log_files", "resolve_when"]
