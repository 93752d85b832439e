"""Backfill from the queue_log: the queue calls finished while no AMI link watched the PBX.

The store keeps, per PBX, the last moment its AMI link was known up (status row
`watched:<pbx>`: every second while connected, the moments of connects and drops included,
and at a clean stop, all PBXs in the heartbeat's one commit: a link that moves never waits
for the disk, and a row a crash leaves a second behind only widens the next window). At
each connect, the first after start and every reconnect, that PBX's own queue_log
(`ami[].queue_log`, and its `.1`, read in a thread) is read for the blind window, from that
moment (less BACKFILL_OVERLAP) to now and no further back than `outbox.max_age`. Its finished
calls become CallRecords and go to the one decider live calls go to (`pipeline/deciding`:
policy, webhooks, staff notes, call-backs; a call the store holds is not decided again).

The calls the tracker was following when the link dropped and that ended in the gap (its
`reconcile` closes them, partial) come here too: the queue_log says how those ended, so its
outcome completes the tracker's record (`queue_log.completed`); those it does not know are
decided as the tracker left them. The run's figures are kept in the status row
`backfill:<pbx>` for `mcdaemon status`. A PBX never watched before (a new store) is not
backfilled; one without a queue_log only has its gap calls decided.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from mcdaemon.config.model import Config
from mcdaemon.core.queue_log import QueueCall, completed, read_queue_log, to_record
from mcdaemon.core.records import CallRecord
from mcdaemon.pipeline.deciding import Decided
from mcdaemon.store import StoreInterface

log = structlog.get_logger("mcdaemon.service")

Clock = Callable[[], float]
Decide = Callable[[Sequence[CallRecord]], Awaitable[list[Decided]]]

#: the group that may read /var/log/asterisk on Debian, Ubuntu, RHEL (and FreePBX)
READER_GROUP = "asterisk"
#: the status row of a PBX's last watched moment
WATCHED = "watched:"
#: the status row of a PBX's last backfill (JSON: since, until, calls, decided, texted)
LAST_BACKFILL = "backfill:"
#: the window starts this long before the last watched moment: a call that ended as the link
#: dropped may have lost its last events (one recorded already is not decided twice)
BACKFILL_OVERLAP = 10.0


def queue_log_files(path: str) -> list[str]:
    """A PBX's queue_log after its rotated `.1`, oldest first."""
    rotated = f"{path}.1"
    return [rotated, path] if os.path.exists(rotated) else [path]


def read_text(path: str) -> str:
    with open(path, "rb") as file:
        return file.read().decode("utf-8", errors="replace")


def unreadable_hint(exc: OSError) -> str:
    """What to do about a queue_log the daemon's user may not read."""
    if not isinstance(exc, PermissionError):
        return ""
    return (f"; the user running mcdaemon needs to read it: add it to the '{READER_GROUP}' "
            f"group (usermod -aG {READER_GROUP} USER, or SupplementaryGroups={READER_GROUP} "
            "in the systemd unit)")


def in_window(calls: Sequence[QueueCall], start: float, end: float) -> list[QueueCall]:
    """The calls of a log read up to `end` that ended (or, unfinished, began) from `start`."""
    return [call for call in calls
            if (call.ended if call.ended is not None else call.entered or end) >= start]


def recovered(calls: Sequence[QueueCall], pbx: str, region: str,
              ended_in_gap: Sequence[CallRecord] = ()) -> list[CallRecord]:
    """The records to decide: the finished queue calls, each tracker record of a call that
    ended in the gap completed by its queue_log outcome, and the gap's other records as the
    tracker left them."""
    finished = {call.callid: call for call in calls if call.decided and call.ended is not None}
    records = []
    for record in ended_in_gap:
        call = finished.pop(record.call_id, None)
        records.append(record if call is None else completed(record, call))
    return records + [to_record(call, pbx, region) for call in finished.values()]


class Backfill:
    """The watched moments of the PBXs, and the backfill at each connect. `load()` once at
    start; `link_moved(pbx, state, at, ended)` as a link moves; `save(pbxs, now)` every
    second with the PBXs connected."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 clock: Clock, decide: Decide) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._decide = decide
        self._watched: dict[str, float] = {}
        self._unsaved: set[str] = set()  # PBXs whose watched moment the store lacks
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """The last watched moments the store holds (from before this start)."""
        for name, (_, at) in (await self._store().statuses()).items():
            if name.startswith(WATCHED):
                self._watched[name.removeprefix(WATCHED)] = at

    def mark(self, pbx: str, at: float) -> None:
        """The link to `pbx` was up at `at` (stored at the next `save`)."""
        self._watched[pbx] = max(at, self._watched.get(pbx, at))
        self._unsaved.add(pbx)

    async def save(self, pbxs: Sequence[str], now: float) -> None:
        """The PBXs connected are watched at `now`: store it, with the moments marked since
        the last save, in the caller's transaction (the heartbeat's: one commit a second)."""
        for pbx in pbxs:
            self.mark(pbx, now)
        unsaved, self._unsaved = self._unsaved, set()
        store = self._store()
        for pbx in sorted(unsaved):
            await store.set_status(WATCHED + pbx, "up", self._watched[pbx])

    def link_moved(self, pbx: str, state: str, at: float,
                   ended_in_gap: list[CallRecord]) -> list[CallRecord]:
        """An AMI link's state (a connect, or the drop of a link that was up), with the
        calls that ended unseen while it was down; returns those the intake is to decide
        (none when a backfill of the blind window takes them)."""
        since = self._watched.get(pbx)
        self.mark(pbx, at)
        if state != "connected":
            return ended_in_gap
        path = next((entry.queue_log for entry in self._config().ami if entry.name == pbx),
                    None)
        if since is None or path is None:
            return ended_in_gap
        # in a task of its own: the AMI consumer does not wait for the file
        task = asyncio.create_task(self.run(pbx, path, since, at, ended_in_gap),
                                   name=f"backfill:{pbx}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return []

    async def stop(self) -> None:
        """Cancel the backfills under way (the next connect's window covers theirs)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3.0)

    async def run(self, pbx: str, path: str, since: float, until: float,
                  ended_in_gap: Sequence[CallRecord] = ()) -> None:
        """Backfill `pbx` from its queue_log `path` for the window after `since`, up to
        `until`."""
        config = self._config()
        start = max(since - BACKFILL_OVERLAP, until - config.outbox.max_age)
        calls: list[QueueCall] = []
        paths = queue_log_files(path)
        try:
            texts = await asyncio.to_thread(lambda: [read_text(each) for each in paths])
        except OSError as exc:
            log.warning(f"queue_log not backfilled: cannot read {exc.filename or path}: "
                        f"{exc.strerror or exc}{unreadable_hint(exc)}", pbx=pbx,
                        path=exc.filename or path, group=READER_GROUP)
            await self._decide(ended_in_gap)  # as the tracker left them
            return
        if start < until:
            calls = in_window(read_queue_log(texts, until=until).calls, start, until)
        decided = await self._decide(recovered(calls, pbx, config.region, ended_in_gap))
        texted = sum(1 for result in decided if result.message_id is not None)
        figures: dict[str, Any] = dict(since=round(start, 3), until=round(until, 3),
                                       window_seconds=round(max(until - start, 0.0), 1),
                                       calls=len(calls), ended_in_gap=len(ended_in_gap),
                                       decided=len(decided), texted=texted)
        log.info("queue_log backfilled", pbx=pbx, **figures)
        await self._store().set_status(LAST_BACKFILL + pbx, json.dumps(figures),
                                       self._clock())


__all__ = ["BACKFILL_OVERLAP", "LAST_BACKFILL", "READER_GROUP", "WATCHED", "Backfill",
           "in_window", "queue_log_files", "read_text", "recovered", "unreadable_hint"]
