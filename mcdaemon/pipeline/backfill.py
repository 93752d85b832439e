"""Backfill from the queue_log: the queue calls finished while no AMI link watched the PBX.

`decide_queue_calls` is the decide-and-record step `mcdaemon backfill` and the running daemon
share: each finished queue call the store has no record of is decided by the policy with the
store's view and recorded keyed by (pbx, call id); a call already recorded is left alone.

`Backfill` is the daemon's side. The store keeps, per PBX, the last moment its AMI link was
known up (status row `watched:<pbx>`: every second while connected, the moments of connects
and drops included, and at a clean stop, all PBXs in the heartbeat's one commit: a link that
moves never waits for the disk, and a row a crash leaves a second behind only widens the next
window). At each connect, the first after start and every reconnect, the
queue_log (`inbound.queue_log` and its `.1`, read in a thread) is read for the blind window,
from that moment (less BACKFILL_OVERLAP) to now and no further back than `outbox.max_age`,
and its finished calls are decided as above; the dispatcher is then woken. A PBX never
watched before (no row: a new store) is not backfilled. Only the first PBX of `ami` is
backfilled: `inbound.queue_log` is its file, as it is `mcdaemon backfill`'s.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from mcdaemon.config.model import Config
from mcdaemon.core.policy import decide_batch, destination_prefix, match_group
from mcdaemon.core.queue_log import QueueCall, read_queue_log, to_record
from mcdaemon.core.records import CallRecord, Decision, PolicyView
from mcdaemon.store import NewCall, StoreInterface

log = structlog.get_logger("mcdaemon.service")

Clock = Callable[[], float]

#: the group that may read /var/log/asterisk on Debian, Ubuntu, RHEL (and FreePBX)
READER_GROUP = "asterisk"
#: the status row of a PBX's last watched moment
WATCHED = "watched:"
#: the window starts this long before the last watched moment: a call that ended as the link
#: dropped may have lost its last events (one recorded already is not decided twice)
BACKFILL_OVERLAP = 10.0


def queue_log_files(config: Config, given: Sequence[str] | None = None) -> list[str]:
    """The files to read, oldest first: those given, or `inbound.queue_log` after its `.1`."""
    if given:
        return list(given)
    path = config.inbound.queue_log
    if path is None:
        return []
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


@dataclass
class Decided:
    """What `decide_queue_calls` did: one line per call (the command prints them), and the
    calls decided now with their decision and queued text's id."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    decided: list[tuple[CallRecord, Decision, int | None]] = field(default_factory=list)


async def decide_queue_calls(config: Config, store: StoreInterface | None,
                             calls: Sequence[QueueCall], pbx: str, now: float,
                             dry_run: bool = False) -> Decided:
    """Decide the finished calls the store has no record of and (unless `dry_run`, or with
    no store) record them; a call the queue_log cannot settle is shown, not decided."""
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
    result = Decided()
    if fresh:
        groups = [match_group(record, config) for record in fresh]
        callers = [(record.caller_e164, group.name if group else None,
                    destination_prefix(record.caller_e164, config) if record.caller_e164
                    else None) for record, group in zip(fresh, groups, strict=True)]
        views = (await store.policy_views(callers, now) if store is not None
                 else [PolicyView() for _ in fresh])
        decisions = decide_batch(fresh, views, config, now)
        message_ids: list[int | None] = [None] * len(fresh)
        recorded = store is not None and not dry_run
        if store is not None and recorded:  # (both, for mypy's narrowing)
            decided = [NewCall(record, decision)
                       for record, decision in zip(fresh, decisions, strict=True)]
            message_ids = await store.record_calls(
                decided, now=now, destinations=[decision.destination for decision in decisions])
        for record, decision, message_id in zip(fresh, decisions, message_ids, strict=True):
            lines[record.call_id].update(
                textable=decision.text, reason=decision.reason, decision_group=decision.group,
                text=decision.body, variant=decision.variant, send_after=decision.send_after,
                expires_at=decision.expires_at, detail=decision.detail or None,
                recorded=recorded, queued=message_id is not None)
            if recorded:
                result.decided.append((record, decision, message_id))
    result.lines = list(lines.values())
    return result


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


def in_window(calls: Sequence[QueueCall], start: float, end: float) -> list[QueueCall]:
    """The calls of a log read up to `end` that ended (or, unfinished, began) from `start`."""
    return [call for call in calls
            if (call.ended if call.ended is not None else call.entered or end) >= start]


DecidedCallback = Callable[[CallRecord, Decision, int | None], None]


class Backfill:
    """The watched moments of the PBXs, and the backfill at each connect. `load()` once at
    start; `link_moved(pbx, state, at)` as the links move; `save(pbxs, now)` every second
    with the PBXs connected."""

    def __init__(self, config: Callable[[], Config], store: Callable[[], StoreInterface], *,
                 clock: Clock, lock: asyncio.Lock, on_decided: DecidedCallback,
                 texts_queued: Callable[[int], None]) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._lock = lock  # the decider's: caps count across live and backfilled decisions
        self._on_decided = on_decided
        self._texts_queued = texts_queued
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

    def link_moved(self, pbx: str, state: str, at: float) -> None:
        """An AMI link's state (the intake calls this for a connect, and for a drop of a
        link that was up). A connect backfills the window since the last watched moment, in
        a task of its own: the AMI consumer does not wait for it."""
        since = self._watched.get(pbx)
        self.mark(pbx, at)
        config = self._config()
        if state != "connected" or since is None or config.inbound.queue_log is None \
                or not config.ami or config.ami[0].name != pbx:
            return
        task = asyncio.create_task(self.run(pbx, since, at), name=f"backfill:{pbx}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel the backfills under way (the next connect's window covers theirs)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3.0)

    async def run(self, pbx: str, since: float, until: float) -> None:
        """Backfill `pbx` for the window after `since`, up to `until`."""
        config = self._config()
        start = max(since - BACKFILL_OVERLAP, until - config.outbox.max_age)
        if start >= until:
            return
        paths = queue_log_files(config)
        try:
            texts = await asyncio.to_thread(lambda: [read_text(path) for path in paths])
        except OSError as exc:
            log.warning(f"queue_log not backfilled: cannot read {exc.filename or paths[-1]}: "
                        f"{exc.strerror or exc}{unreadable_hint(exc)}", pbx=pbx,
                        path=exc.filename or paths[-1], group=READER_GROUP)
            return
        queue_log = read_queue_log(texts, until=until)
        calls = in_window(queue_log.calls, start, until)
        async with self._lock:
            result = await decide_queue_calls(config, self._store(), calls, pbx,
                                              self._clock())
        for record, decision, message_id in result.decided:
            self._on_decided(record, decision, message_id)
        texted = sum(1 for _, _, message_id in result.decided if message_id is not None)
        log.info("queue_log backfilled", pbx=pbx, since=round(start, 3),
                 until=round(until, 3), window_seconds=round(until - start, 1),
                 calls=len(calls), decided=len(result.decided), texted=texted)
        if texted:
            self._texts_queued(texted)  # the dispatcher is woken


__all__ = ["BACKFILL_OVERLAP", "READER_GROUP", "WATCHED", "Backfill", "Decided",
           "decide_queue_calls", "in_window", "queue_log_files", "read_text",
           "unreadable_hint"]
