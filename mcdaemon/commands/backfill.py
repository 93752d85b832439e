"""`mcdaemon backfill`: the queue calls the daemon missed while away, from the queue_log.

Asterisk writes every queue caller's fate to its queue_log whether or not an AMI client was
connected. This command reads each PBX's log (`ami[].queue_log` and its rotated `.1`, or
`--queue-log` for one PBX) for a window, turns each finished queue call into the CallRecord
the tracker would have made, and hands them to the decider live calls go to
(`pipeline/deciding`): the policy with the store's view, `outbox.max_age` (a call that ended
longer ago is recorded, not texted: `too_old`), webhooks, staff notes and call-backs queued
in the store, one decision per (pbx, call id) however many times it is seen. The running
daemon sends what is queued. `--dry-run` prints the decisions and changes nothing.

Only queue calls are in the queue_log: an IVR or direct-line call missed during an outage is
not recoverable from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mcdaemon.adapters.metrics import Metrics
from mcdaemon.config.model import Config
from mcdaemon.contacts.lookup import ContactNames
from mcdaemon.core.policy import decide_batch
from mcdaemon.core.queue_log import QueueCall, QueueLog, read_queue_log
from mcdaemon.core.records import CallRecord, Decision, PolicyView
from mcdaemon.outreach.callbacks import Outreach
from mcdaemon.pipeline.backfill import (
    READER_GROUP,
    in_window,
    queue_log_files,
    read_text,
    recovered,
    unreadable_hint,
)
from mcdaemon.pipeline.deciding import Decider
from mcdaemon.report.kpis import Since, parse_since
from mcdaemon.store import StoreInterface, open_store, open_store_readonly
from mcdaemon.webhooks.delivery import WebhookWorker
from mcdaemon.webhooks.notify import Notifier


class BackfillError(Exception):
    """What stops the command, as one line for the administrator."""


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


def files_by_pbx(config: Config, files: Sequence[str] | None,
                 pbx: str | None) -> dict[str, list[str]]:
    """The queue_log files of each PBX to backfill: `--queue-log` for the one PBX (`--pbx`,
    or the config's only one), else each PBX's `ami[].queue_log` (all, or `--pbx`'s)."""
    names = [entry.name for entry in config.ami]
    if pbx is not None and pbx not in names:
        raise BackfillError(f"--pbx {pbx}: no such PBX in ami (there are: "
                            f"{', '.join(names) or 'none'})")
    if files:
        if pbx is None and len(names) > 1:
            raise BackfillError("--queue-log: name the PBX it belongs to with --pbx "
                                f"({', '.join(names)})")
        return {pbx or (names[0] if names else "pbx"): list(files)}
    chosen = {entry.name: queue_log_files(entry.queue_log) for entry in config.ami
              if entry.queue_log is not None and pbx in (None, entry.name)}
    if not chosen:
        raise BackfillError("no queue_log: give --queue-log FILE or set ami[].queue_log "
                            "in the config")
    return chosen


def read_files(paths: Sequence[str], *, queues: Sequence[str] | None,
               until: float) -> QueueLog:
    texts: list[str] = []
    for path in paths:
        try:
            texts.append(read_text(path))
        except OSError as exc:
            raise BackfillError(f"cannot read {path}: {exc.strerror or exc}"
                                f"{unreadable_hint(exc)}") from exc
    return read_queue_log(texts, queues=set(queues) if queues else None, until=until)


def command_decider(config: Config, store: StoreInterface, now: float,
                    contacts: ContactNames) -> Decider:
    """The daemon's decider without a sender: what it queues, the running daemon sends."""
    def clock() -> float:
        return now

    notify = Notifier(lambda: store, lambda: config, WebhookWorker(lambda: config.webhooks),
                      clock, lambda count: None)
    return Decider(lambda: config, lambda: store, clock=clock,
                   metrics=Metrics.from_config(config), contacts=contacts, notify=notify,
                   outreach=Outreach(lambda: config, {}, clock, notify=notify))


def decided_line(record: CallRecord, decision: Decision | None, *, recorded: bool,
                 queued: bool) -> dict[str, Any]:
    line = record.as_dict()
    if decision is None:
        line.update(textable=False, reason="already_recorded", recorded=False, queued=False)
        return line
    line.update(textable=decision.text, reason=decision.reason, decision_group=decision.group,
                text=decision.body, variant=decision.variant, send_after=decision.send_after,
                expires_at=decision.expires_at, detail=decision.detail or None,
                recorded=recorded, queued=queued)
    return line


def undecided_line(call: QueueCall, pbx: str) -> dict[str, Any]:
    """A queue call the queue_log cannot settle: shown, neither decided nor stored."""
    detail = {"exit_with_key": f"left the queue with key {call.key or '?'}: the dialplan after "
                               "the queue decides; not known from the queue_log",
              "still_open": "still in the queue or with an agent at the window's end"}
    return {"pbx": pbx, "call_id": call.callid, "caller": call.caller or "", "group":
            call.queue, "outcome": None, "started": call.entered, "ended": call.ended,
            "extra": {"backfilled": "true", "queue": call.queue, "source": "queue_log"},
            "textable": False, "reason": call.reason, "detail": detail.get(call.reason),
            "recorded": False, "queued": False}


async def decide_lines(config: Config, store: StoreInterface | None, pbx: str,
                       calls: Sequence[QueueCall], now: float, dry_run: bool,
                       contacts: ContactNames) -> list[dict[str, Any]]:
    """One line per call: decided (and, unless `dry_run`, recorded) as live calls are."""
    records = recovered(calls, pbx, config.region)
    lines = {call.callid: undecided_line(call, pbx) for call in calls if not call.decided}
    known = await store.recorded_calls([(pbx, r.call_id) for r in records]) if store else set()
    fresh = [record for record in records if (pbx, record.call_id) not in known]
    lines.update({record.call_id: decided_line(record, None, recorded=False, queued=False)
                  for record in records if (pbx, record.call_id) in known})
    if store is None or dry_run:  # no store yet: every caller is new to the policy
        decisions = (await command_decider(config, store, now, contacts).decisions(store, fresh)
                     if store is not None else
                     decide_batch(fresh, [PolicyView() for _ in fresh], config, now))
        lines.update({record.call_id: decided_line(record, decision, recorded=False,
                                                   queued=False)
                      for record, decision in zip(fresh, decisions, strict=True)})
    else:
        for result in await command_decider(config, store, now, contacts).decide(fresh):
            lines[result.record.call_id] = decided_line(
                result.record, result.decision, recorded=True,
                queued=result.message_id is not None)
    order = {call.callid: index for index, call in enumerate(calls)}
    return sorted(lines.values(), key=lambda line: order.get(str(line["call_id"]), 0))


async def backfill(config: Config, out: TextIO, err: TextIO, *, files: Sequence[str] | None,
                   since: float | Since | None, until: float | Since | None, now: float,
                   dry_run: bool = False, queues: Sequence[str] | None = None,
                   pbx: str | None = None) -> int:
    """Print one JSON line per queue call of the window; 0, or 1 if a file is unusable."""
    try:
        start = resolve_when(since, now, config.timezone)
        end = resolve_when(until, now, config.timezone)
        if start >= end:
            raise BackfillError("--since must be before --until")
        logs = {name: (paths, read_files(paths, queues=queues, until=end))
                for name, paths in files_by_pbx(config, files, pbx).items()}
    except (BackfillError, ValueError) as exc:
        print(f"mcdaemon backfill: {exc}", file=err)
        return 1
    store: StoreInterface | None = None
    if not dry_run:
        store = await open_store(config.store)
    elif config.store.url or Path(config.store.path).is_file():
        store = await open_store_readonly(config.store)
    contacts = ContactNames(config.contacts)
    try:
        for name, (paths, log) in logs.items():
            calls = in_window(log.calls, start, end)
            lines = await decide_lines(config, store, name, calls, now, dry_run, contacts)
            for line in lines:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
            summary = {"pbx": name, "files": paths, "since": start, "until": end,
                       "calls": len(calls), "garbage_lines": log.garbage,
                       "duplicate_lines": log.duplicates, "other_queue_lines": log.other_queues,
                       "dry_run": dry_run,
                       "recorded": sum(1 for line in lines if line.get("recorded")),
                       "queued_texts": sum(1 for line in lines if line.get("queued"))}
            print(f"mcdaemon backfill: {json.dumps(summary)}", file=err)
    finally:
        await contacts.close()
        if store is not None:
            await store.close()
    return 0


__all__ = ["READER_GROUP", "BackfillError", "backfill", "files_by_pbx", "parse_when",
           "resolve_when"]
