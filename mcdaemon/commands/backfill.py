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
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from mcdaemon.config.model import Config
from mcdaemon.core.queue_log import read_queue_log
from mcdaemon.pipeline.backfill import (
    READER_GROUP,
    decide_queue_calls,
    in_window,
    queue_log_files,
    read_text,
    unreadable_hint,
)
from mcdaemon.report.kpis import Since, parse_since
from mcdaemon.store import StoreInterface, open_store, open_store_readonly


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
            texts.append(read_text(path))
        except OSError as exc:
            print(f"mcdaemon backfill: cannot read {path}: {exc.strerror or exc}"
                  f"{unreadable_hint(exc)}", file=err)
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
    calls = in_window(log.calls, start, end)
    pbx = config.ami[0].name if config.ami else "pbx"
    store: StoreInterface | None = None
    if not dry_run:
        store = await open_store(config.store)
    elif config.store.url or Path(config.store.path).is_file():
        store = await open_store_readonly(config.store)
    try:
        lines = (await decide_queue_calls(config, store, calls, pbx, now, dry_run)).lines
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


__all__ = ["READER_GROUP", "backfill", "parse_when", "queue_log_files", "resolve_when"]
