"""`mcdaemon replay`: a dry run of recorded AMI transcripts through the tracker.

An administrator checks what the daemon would have decided about the calls of a recording
(`mcdaemon capture` makes one) before letting it text anyone: one JSON object per finished
inbound call, nothing sent, nothing stored.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from mcdaemon.config.model import Config
from mcdaemon.core.policy import decide, destination_prefix
from mcdaemon.core.records import CallRecord, PolicyView
from mcdaemon.core.tracker import CallTracker
from mcdaemon.core.transcript import read_transcript

#: `expire()` time at the end of each file: far enough that every unfinished call shows.
_FAR_FUTURE = 1e18


def replay_files(config: Config, files: Sequence[str], out: TextIO,
                 decider: Callable[[], Callable[[CallRecord], dict[str, Any]]] | None = None
                 ) -> int:
    """Print one JSON line per inbound call of each transcript; 0, or 1 if a file is unusable.

    Each file gets a fresh tracker (recordings are independent) and a fresh `decider()`, the
    policy's dry run when given; calls still open at the end
    of a file are evicted and shown with `"evicted": true` when they look missed. A channel
    list (`CoreShowChannel` events, then `CoreShowChannelsComplete`) in a transcript is read
    as at a connect: the calls in progress it shows are adopted (`"adopted": true`).
    """
    pbx = config.ami[0].name if config.ami else "pbx"
    for path in files:
        try:
            transcript = read_transcript(path)
        except OSError as exc:
            print(f"mcdaemon replay: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        if not transcript.frames:
            print(f"mcdaemon replay: {path} is not an AMI transcript (no '@SECONDS' frame "
                  "lines; record one with `mcdaemon capture`)", file=sys.stderr)
            return 1
        tracker = CallTracker(pbx, config.inbound, config.region)
        decide = decider() if decider is not None else None
        records: list[CallRecord] = []
        listed: list[dict[str, str]] = []  # a CoreShowChannels answer in the transcript
        for at, event in transcript.events():
            name = event.get("Event")
            if name == "CoreShowChannel":
                listed.append(event)
            elif name == "CoreShowChannelsComplete":  # as at a connect: adopt the calls
                records.extend(tracker.reconcile({c.get("Uniqueid", "") for c in listed}, at))
                tracker.adopt(listed, at)
                listed = []
            else:
                records.extend(tracker.feed(event, at))
        records.extend(tracker.expire(_FAR_FUTURE))
        for record in records:
            line = record.as_dict()
            line["file"] = str(path)
            if decide is not None:
                line.update(decide(record))
            out.write(json.dumps(line, ensure_ascii=False, sort_keys=False) + "\n")
        out.flush()
    return 0


class DryRunPolicy:
    """The policy as `mcdaemon run` applies it, with the store's counters kept in memory.

    Each decision is taken at the moment the call ended (as live), and the texts it decides
    count for later calls of the replay: a caller who rings three times gets one text.
    Opt-outs and run-time switches are not in a recording, so none apply.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._last_text: dict[str, float] = {}
        self._texts: list[tuple[float, str]] = []  # (time, destination prefix)

    def __call__(self, record: CallRecord) -> dict[str, Any]:
        now = record.ended
        destination = record.caller_e164
        prefix = destination_prefix(destination, self.config) if destination else None
        hour, day = now - 3600, now - 86400
        view = PolicyView(
            last_text_at=self._last_text.get(destination) if destination else None,
            texts_last_hour=sum(1 for at, _ in self._texts if at > hour),
            texts_last_day=sum(1 for at, _ in self._texts if at > day),
            prefix_texts_last_hour=sum(1 for at, p in self._texts if at > hour and p == prefix),
        )
        decision = decide(record, self.config, view, now)
        if decision.text and decision.destination:
            self._last_text[decision.destination] = now
            self._texts.append((now, destination_prefix(decision.destination, self.config)))
        return {"textable": decision.text, "reason": decision.reason,
                "decision_group": decision.group, "text": decision.body,
                "variant": decision.variant, "send_after": decision.send_after,
                "detail": decision.detail or None}
