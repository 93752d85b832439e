"""The call tracker: AMI events in, one CallRecord per finished inbound call out (sans-IO).

Theory of operation
===================

Asterisk reports channels, not calls. Every channel that belongs to one call carries the same
`Linkedid` (the `Uniqueid` of the channel that started the call: for an inbound call, the trunk
channel). The tracker therefore keeps one `_Call` per Linkedid and one `_Channel` per live
Uniqueid, and emits a record when the last live channel of a call hangs up. Nothing here reads
a clock or does I/O: every event comes with the time it was received, so a recording replays
exactly as it ran live.

Which calls are tracked
-----------------------
A call starts with the `Newchannel` of a channel that began its own call (`Uniqueid ==
Linkedid`) in one of `inbound.contexts`. It is *confirmed* inbound when that channel was
created ringing (an incoming channel; originated ones start "Down") or by its first `Newexten`
in an inbound context. Outgoing legs (an agent calling out through the trunk) share the
agent's Linkedid and so never start a call; channels Asterisk originates towards the trunk
start Down and never run dialplan in the inbound context, so they give no record. Events of
other Linkedids are dropped after one dictionary lookup. The caller's number is put in E.164
when the call starts, and `take_new_callers` offers it to the service, which classifies it
then: when the call ends and the caller waits for the text, nothing costly is left to do.

Calls already in progress when the daemon connected show no `Newchannel`. At every AMI
connect the adapter lists the live channels (`CoreShowChannels`) and `adopt()` takes them
over: a channel that began its own call (`Uniqueid == Linkedid`) and sits in an inbound
context, or on an inbound trunk (`inbound.trunks`: a prefix of the channel's name, needed once
the call has moved on to e.g. `queue-support`), is an inbound caller. Its call is tracked from
there, whole (not `partial`) and marked `adopted`, with the stage its application shows:

    Application         adopted stage                   the rest of the call
    Queue (data Q,...)  queue:Q waiting (in the queue)  QueueCallerAbandon / Hangup ->
                                                         queue_abandon, AgentConnect -> answered
    Dial / FollowMe     dial ringing                    DialEnd, Hangup -> ring_no_answer
    BackGround / Read   ivr menu                        Newexten -> chose, Hangup -> ivr_abandon
    VoiceMail           voicemail:BOX greeting          MessageWaiting -> voicemail_left
    any, bridged        (answered: BridgeId set on a Queue or Dial)
    anything else       none yet: later Newexten events add them

The call's other live channels (agents' legs) join it, so it ends with its last channel; its
start is the listing's time less the channel's `Duration`. Channels of other calls (internal
calls, agents calling out: not their Linkedid's own channel, or in no inbound context or
trunk) are never adopted, nor is a call the tracker already knows, but for one first seen
by a `Newexten` in an inbound context (tracked as `partial`, no text) just before the list
came: that one is made whole and marked adopted.

The path of a call: stages
--------------------------
While a call runs, the tracker appends *stages* to its path. Only the caller's side counts: the
inbound channel, and the `;2` half of a Local channel the caller's own `Dial` reached. Queue
member legs (and the `;2` of a twinned agent's Local channel, which runs its own `Dial`) are the
agents' side: their dialplan never adds a stage.

    stage       entered by                                     statuses (-> outcome)
    ivr         BackGround / WaitExten / Read / ReadExten      menu (ivr_abandon), chose
    queue:Q     Queue app, QueueCallerJoin                     entered, waiting, abandon
                                                               (queue_abandon); timeout,
                                                               empty, unavailable, full, left
                                                               (queue_timeout); answered
    dial        Dial / FollowMe / RetryDial app                ringing, noanswer, busy, cancel,
                                                               chanunavail, congestion
                                                               (ring_no_answer); answer
    voicemail   VoiceMail app or a voicemail context           greeting, no_message
                                                               (voicemail_no_message); left
    dead_end    Congestion / Busy app                          (dead_end)

Statuses move with the events in the tables below (`_QUEUE_STATUS`, `_DIAL_STATUS`,
`_VM_STATUS`, `_APP_KINDS`). Two facts from real recordings shape them:

* `QueueCallerAbandon` is sent both when the caller hangs up and when the queue times out
  (then with HoldTime = max wait, followed by `QueueCallerLeave` and `QUEUESTATUS=TIMEOUT`).
  A caller who abandons has asked to hang up first (`HangupRequest`/`SoftHangupRequest` on
  the channel), so an abandon without a hangup request is a timeout; `QUEUESTATUS`, when the
  AMI user may read it, confirms or refines (JOINEMPTY, LEAVEEMPTY, ...).
* "Up" means nothing: IVR, voicemail and announcements answer the trunk. Only `AgentConnect`
  or `DialEnd DialStatus=ANSWER` on any leg of the call means a person answered.

The outcome
-----------
When the call ends, the outcome is, in this order:

1. answered      a person answered at some point (transfers afterwards do not matter);
2. dead_end      the call was ignored (ignore context / ignore DID / MCD_IGNORE=1);
3. callback_requested  the caller asked for a call-back (AGI script named like "callback",
                 or MCD_CALLBACK=1);
4. after_hours   the call reached an after-hours context (or MCD_AFTER_HOURS=1), whatever
                 came after it there (e.g. voicemail);
5. otherwise the most advanced stage reached (voicemail > queue = dial > ivr = dead_end; the
   later one wins a tie), through `_OUTCOME_OF`;
6. no stage at all: dead_end when the PBX hung up (announcement, then Hangup), ivr_abandon when
   the caller hung up (in the welcome audio, before any menu). An IVR where the caller made a
   choice that led nowhere but a PBX hangup (e.g. an information message) is a dead_end too.

`wait_seconds` is the time the caller waited for a person: the time spent in queues (join to
leave) plus the time the caller's own Dial rang (DialBegin to DialEnd), measured with the
events' receive times, up to the answer or the end of the call.

Memory
------
A finished call's state is dropped at once; its Linkedid goes into a bounded memory of
finished calls, so a duplicated or replayed stream never yields a second record (the store's
uniqueness on (pbx, Linkedid) is the final guard). Calls whose Hangup never comes are dropped
by `expire()`; after an AMI reconnect `reconcile()` ends the calls whose channels are gone, then
`adopt()` takes over the inbound calls that began while the daemon was away.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog

from mcdaemon.config.model import InboundConfig
from mcdaemon.core.phone import to_e164
from mcdaemon.core.records import MISSED_OUTCOMES, CallRecord, Outcome
from mcdaemon.logs import RepeatLimiter

_log = structlog.get_logger("mcdaemon.tracker")  # the name log lines carry

#: AMI events the tracker reads; the AMI adapter may ask Asterisk for only these.
NEEDED_EVENTS: Final[frozenset[str]] = frozenset({
    "Newchannel", "Newexten", "VarSet", "HangupRequest", "SoftHangupRequest", "Hangup",
    "DialBegin", "DialEnd", "AgentCalled", "AgentConnect", "QueueCallerJoin",
    "QueueCallerLeave", "QueueCallerAbandon", "MessageWaiting",
})

_VARIABLES: Final = ("QUEUESTATUS", "VMSTATUS", "DIALSTATUS", "MCD_GROUP", "MCD_DID",
                     "MCD_AFTER_HOURS", "MCD_IGNORE", "MCD_CALLBACK")
#: VarSet variable names the tracker reads, with the `_`/`__` prefixes inherited copies show.
NEEDED_VARIABLES: Final[frozenset[str]] = frozenset(
    prefix + name for name in _VARIABLES for prefix in ("", "_", "__"))

#: How many finished Linkedids are remembered to drop duplicated events and streams.
FINISHED_MEMORY: Final = 65536
#: Calls tracked at once at most; beyond it the oldest is dropped (a flood, or lost Hangups).
MAX_ACTIVE_CALLS: Final = 100_000
#: New callers kept for `take_new_callers` when nobody takes them (`mcdaemon replay`).
NEW_CALLERS_KEPT: Final = 1024

_MAX_TEXT = 80  # caller names, DIDs and groups longer than this are cut (attacker input)
_SPECIAL_EXTENS: Final = frozenset({"s", "h", "i", "t", "T", "e", "a", "o"})
_NOT_A_CHOICE: Final = frozenset({"i", "t", "T", "h", "e"})
_TRUE: Final = frozenset({"1", "yes", "true", "on", "y"})
_WITHHELD: Final = frozenset({"", "anonymous", "unknown", "<unknown>", "private",
                              "restricted", "withheld", "unavailable"})

# ---------------------------------------------------------------- transitions as data

IVR, QUEUE, DIAL, VOICEMAIL, AGI, DEAD, HANGUP = (
    "ivr", "queue", "dial", "voicemail", "agi", "dead_end", "hangup")

#: dialplan application (lower case) -> what reaching it means for the caller
_APP_KINDS: Final[dict[str, str]] = {
    "background": IVR, "waitexten": IVR, "read": IVR, "readexten": IVR,
    "queue": QUEUE,
    "dial": DIAL, "followme": DIAL, "retrydial": DIAL,
    "voicemail": VOICEMAIL,
    "agi": AGI, "eagi": AGI, "deadagi": AGI,
    "congestion": DEAD, "busy": DEAD,
    "hangup": HANGUP,
}

#: QUEUESTATUS value -> queue stage status
_QUEUE_STATUS: Final[dict[str, str]] = {
    "TIMEOUT": "timeout", "JOINEMPTY": "empty", "LEAVEEMPTY": "empty",
    "JOINUNAVAIL": "unavailable", "LEAVEUNAVAIL": "unavailable", "FULL": "full",
    "WITHDRAW": "left",
}
#: DialEnd DialStatus / DIALSTATUS value -> dial stage status
_DIAL_STATUS: Final[dict[str, str]] = {
    "ANSWER": "answer", "NOANSWER": "noanswer", "BUSY": "busy", "CANCEL": "cancel",
    "CHANUNAVAIL": "chanunavail", "CONGESTION": "congestion", "DONTCALL": "cancel",
    "TORTURE": "cancel", "INVALIDARGS": "chanunavail",
}
#: VMSTATUS value -> voicemail stage status
_VM_STATUS: Final[dict[str, str]] = {
    "SUCCESS": "left", "FAILED": "no_message", "USEREXIT": "no_message",
}

#: (kind, status) still running when the call ended -> the status it ends with
_GIVEN_UP: Final[dict[tuple[str, str | None], str]] = {
    (QUEUE, "entered"): "abandon", (QUEUE, "waiting"): "abandon",
    (DIAL, "ringing"): "cancel", (VOICEMAIL, "greeting"): "no_message",
}

#: how advanced a stage kind is: the highest decides, the later one wins a tie
_RANK: Final[dict[str, int]] = {IVR: 1, DEAD: 1, QUEUE: 2, DIAL: 2, VOICEMAIL: 3}

#: (stage kind, status) -> outcome; None as status is the kind's default
_OUTCOME_OF: Final[dict[tuple[str, str | None], Outcome]] = {
    (IVR, None): Outcome.IVR_ABANDON,
    (DEAD, None): Outcome.DEAD_END,
    (QUEUE, None): Outcome.QUEUE_ABANDON,  # entered, waiting, abandon
    (QUEUE, "timeout"): Outcome.QUEUE_TIMEOUT,
    (QUEUE, "empty"): Outcome.QUEUE_TIMEOUT,
    (QUEUE, "unavailable"): Outcome.QUEUE_TIMEOUT,
    (QUEUE, "full"): Outcome.QUEUE_TIMEOUT,
    (QUEUE, "left"): Outcome.QUEUE_TIMEOUT,
    (QUEUE, "answered"): Outcome.ANSWERED,
    (DIAL, None): Outcome.RING_NO_ANSWER,
    (DIAL, "answer"): Outcome.ANSWERED,
    (VOICEMAIL, None): Outcome.VOICEMAIL_NO_MESSAGE,
    (VOICEMAIL, "left"): Outcome.VOICEMAIL_LEFT,
}


# ---------------------------------------------------------------- state


@dataclass(slots=True)
class _Stage:
    kind: str
    name: str | None = None
    status: str | None = None

    def label(self) -> str:
        parts = [self.kind]
        if self.name is not None:
            parts.append(self.name)
        if self.status is not None and self.kind != IVR:
            parts.append(self.status)
        return ":".join(parts)


@dataclass(slots=True)
class _Channel:
    uniqueid: str
    name: str
    call: _Call
    caller_side: bool = False
    app: str = ""  # the kind (or lower-case name) of the application it runs now
    hangup_requested: bool = False
    ivr_position: tuple[str, str] | None = None  # (context, exten) of its running IVR menu


@dataclass(slots=True, eq=False)
class _Call:
    linkedid: str
    inbound_uid: str
    channel_name: str
    caller: str
    caller_name: str | None
    started: float
    last_seen: float
    caller_e164: str | None = None  # found at the start: nothing costly is left for the end
    partial: bool = False
    adopted: bool = False  # in progress at an AMI connect (`adopt`)
    confirmed: bool = False  # ran dialplan in an inbound context
    did: str | None = None
    did_override: str | None = None
    group: str | None = None
    group_override: str | None = None
    stages: list[_Stage] = field(default_factory=list)
    live: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)
    caller_locals: set[str] = field(default_factory=set)  # Local/..;1 names the caller dialled
    answered: bool = False
    ignored: bool = False
    callback: bool = False
    after_hours: bool = False
    hangup_by: str | None = None  # "caller" | "pbx"
    in_queue: bool = False
    dialing: set[str] = field(default_factory=set)
    wait_started: float | None = None
    waited: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)
    agents_called: int = 0


# ---------------------------------------------------------------- the tracker


class CallTracker:
    """Feeds AMI events of one PBX through the call state machine (see the module docstring)."""

    def __init__(self, pbx: str, inbound: InboundConfig, region: str) -> None:
        self.pbx = pbx
        self.update_settings(inbound, region)
        self._repeats = RepeatLimiter(_log)  # a storm or a broken peer repeats these at will
        self._calls: dict[str, _Call] = {}
        self._channels: dict[str, _Channel] = {}
        self._finished: dict[str, None] = {}  # finished or internal Linkedids; ordered, bounded
        #: E.164 callers of the calls begun since `take_new_callers`, latest kept if nobody asks
        self._new_callers: collections.deque[str] = collections.deque(maxlen=NEW_CALLERS_KEPT)
        self._dispatch = {
            "Newchannel": self._on_newchannel,
            "Newexten": self._on_newexten,
            "VarSet": self._on_varset,
            "HangupRequest": self._on_hangup_request,
            "SoftHangupRequest": self._on_soft_hangup_request,
            "Hangup": self._on_hangup,
            "DialBegin": self._on_dial_begin,
            "DialEnd": self._on_dial_end,
            "AgentCalled": self._on_agent_called,
            "AgentConnect": self._on_agent_connect,
            "QueueCallerJoin": self._on_queue_join,
            "QueueCallerLeave": self._on_queue_leave,
            "QueueCallerAbandon": self._on_queue_abandon,
            "MessageWaiting": self._on_message_waiting,
        }
        assert set(self._dispatch) == NEEDED_EVENTS

    # ------------------------------------------------------------ public API

    def update_settings(self, inbound: InboundConfig, region: str) -> None:
        """Take a reloaded config; calls in progress keep their state and go on."""
        self.region = region
        self._ttl = inbound.call_ttl
        self._inbound = frozenset(inbound.contexts)
        self._after_hours = frozenset(inbound.after_hours_contexts)
        self._ignore_contexts = frozenset(inbound.ignore_contexts)
        self._ignore_dids = frozenset(inbound.ignore_dids)
        self._voicemail_contexts = frozenset(inbound.voicemail_contexts)
        self._trunks = tuple(inbound.trunks)

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def feed(self, event: Mapping[str, str], at: float) -> list[CallRecord]:
        """Take one event received at `at` (epoch); return the records of calls it ended."""
        handler = self._dispatch.get(event.get("Event", ""))
        if handler is None:
            return []
        try:
            record = handler(event, at)
        except Exception:  # one odd frame must never stop the tracker
            self._repeats.warning(
                ("failed", event.get("Event")), "AMI event could not be tracked: skipped",
                pbx=self.pbx, ami_event=event.get("Event"), linkedid=event.get("Linkedid"),
                hint="a defect or an unusual dialplan: report it with a capture (mcdaemon "
                     "capture)", exc_info=True)
            return []
        return [record] if record is not None else []

    def take_new_callers(self) -> Sequence[str]:
        """The E.164 callers of the inbound calls begun since the last time asked: the caller
        can prepare what the decision will need (the number's classification) while the
        call goes on, instead of when it ends and the caller waits for the text."""
        if not self._new_callers:
            return ()  # asked after every event: no list built for nothing
        callers = list(self._new_callers)
        self._new_callers.clear()
        return callers

    def expire(self, now: float) -> list[CallRecord]:
        """Drop calls silent for `call_ttl`; return evicted records of those that look missed."""
        stale = [call for call in self._calls.values() if now - call.last_seen >= self._ttl]
        records = []
        for call in stale:
            record = self._finish(call, call.last_seen, evicted=True)
            _log.info("call evicted", linkedid=call.linkedid, idle=round(now - call.last_seen),
                      outcome=str(record.outcome) if record else None)
            if record is not None and record.outcome in MISSED_OUTCOMES:
                records.append(record)
        return records

    def reconcile(self, live_uniqueids: set[str], at: float) -> list[CallRecord]:
        """After a reconnect: end (partial) the calls none of whose channels is still live."""
        records = []
        for call in list(self._calls.values()):
            if call.live & live_uniqueids:
                for uid in call.live - live_uniqueids:  # legs that hung up during the gap
                    self._drop_channel(call, uid)
                continue
            _log.info("call ended during an AMI gap", linkedid=call.linkedid)
            call.partial = True
            call.extra["ended_during_gap"] = "1"
            record = self._finish(call, at)
            if record is not None:
                records.append(record)
        return records

    def adopt(self, channels: Sequence[Mapping[str, str]], at: float) -> int:
        """At an AMI connect: track the inbound calls in progress among the live channels
        (`CoreShowChannel` fields, listed at `at`); how many calls were adopted."""
        by_call: dict[str, list[Mapping[str, str]]] = {}
        for fields in channels:
            uid = fields.get("Uniqueid", "")
            if uid:
                by_call.setdefault(fields.get("Linkedid") or uid, []).append(fields)
        adopted = 0
        for linkedid, legs in by_call.items():
            first = next((leg for leg in legs if leg.get("Uniqueid") == linkedid), None)
            known = self._calls.get(linkedid)
            if known is not None and known.partial and first is not None \
                    and self._is_inbound_channel(first):
                # first seen by a Newexten while the list was being read: seen from its
                # start on as much as an adopted call, and so whole
                known.partial, known.adopted = False, True
                known.started = min(known.started, at - _duration(first.get("Duration", "")))
                known.extra.setdefault("adopted_in", _clean(first.get("Context", ""), 120))
                adopted += 1
                continue
            if (first is None or linkedid in self._calls or linkedid in self._finished
                    or any(leg.get("Uniqueid") in self._channels for leg in legs)
                    or not self._is_inbound_channel(first)):
                continue
            try:
                self._adopt_call(first, legs, at)
            except Exception:  # one odd channel must never stop the others
                self._repeats.warning(
                    "adopt failed", "call in progress could not be adopted: skipped",
                    pbx=self.pbx, linkedid=linkedid, exc_info=True,
                    hint="a defect or an unusual dialplan: report it with the channel's "
                         "CoreShowChannel fields")
                self._calls.pop(linkedid, None)
                for leg in legs:
                    self._channels.pop(leg.get("Uniqueid", ""), None)
                continue
            adopted += 1
        return adopted

    def _is_inbound_channel(self, fields: Mapping[str, str]) -> bool:
        """A channel that began its own call: in an inbound context, or on an inbound trunk."""
        if fields.get("Context") in self._inbound:
            return True
        name = fields.get("Channel", "")
        return any(name.startswith(trunk) and (len(name) == len(trunk)
                                               or name[len(trunk)] in "-/@;")
                   for trunk in self._trunks if trunk)

    def _adopt_call(self, first: Mapping[str, str], legs: Sequence[Mapping[str, str]],
                    at: float) -> None:
        call = self._start_call(first, at, partial=False)
        call.started = at - _duration(first.get("Duration", ""))
        call.adopted = call.confirmed = True
        context = first.get("Context", "")
        exten = first.get("Exten", "")
        if context in self._inbound and exten and exten not in _SPECIAL_EXTENS:
            call.did = _clean(exten)
        channel = self._add_channel(call, call.inbound_uid, first.get("Channel", ""))
        for leg in legs:  # the agents' legs: the call ends with its last channel
            uid = leg.get("Uniqueid", "")
            if uid and uid not in self._channels:
                self._add_channel(call, uid, leg.get("Channel", ""))
        if context in self._after_hours:
            call.after_hours = True
            call.stages.append(_Stage("after_hours"))
        if context in self._ignore_contexts:
            call.ignored = True
        app = first.get("Application", "")
        kind = _APP_KINDS.get(app.lower())
        channel.app = kind or app.lower()
        data = first.get("ApplicationData", "")
        bridged = bool(first.get("BridgeId", "").strip())
        if kind == QUEUE:
            name = _clean(data.split(",", 1)[0].strip()) or None
            call.stages.append(_Stage(QUEUE, name, "waiting"))
            call.group = name or call.group
            call.in_queue = True
            if bridged:
                call.stages[-1].status = "answered"
                self._mark_answered(call, at)
        elif kind == DIAL:
            call.stages.append(_Stage(DIAL, None, "answer" if bridged else "ringing"))
            if bridged:
                self._mark_answered(call, at)
            else:
                call.dialing.update(uid for uid in call.live if uid != call.inbound_uid)
        elif kind == IVR:
            call.stages.append(_Stage(IVR, None, "menu"))
            channel.ivr_position = (context, exten)
        elif kind == VOICEMAIL or (context in self._voicemail_contexts and kind is None):
            mailbox = _clean(data.split(",", 1)[0].split("&", 1)[0].strip()) \
                if kind == VOICEMAIL else ""
            call.stages.append(_Stage(VOICEMAIL, mailbox or None, "greeting"))
        elif kind == AGI and _is_callback_script(data.split(",", 1)[0]):
            self._mark_callback(call)
        elif kind == DEAD:
            call.stages.append(_Stage(DEAD, app))
        self._update_wait(call, at)
        call.extra["adopted_in"] = _clean(f"{context}/{app}" if app else context, 120)
        _log.info("call in progress adopted", pbx=self.pbx, linkedid=call.linkedid,
                  channel=call.channel_name, application=app or None,
                  stages=[stage.label() for stage in call.stages])

    # ------------------------------------------------------------ lookup

    def _locate(self, event: Mapping[str, str], at: float) -> tuple[_Call | None,
                                                                     _Channel | None]:
        """The call and channel an event is about; the channel joins the call if new."""
        uid = event.get("Uniqueid")
        if uid:
            channel = self._channels.get(uid)
            if channel is not None:
                channel.call.last_seen = at
                return channel.call, channel
        call = self._calls.get(event.get("Linkedid") or uid or "")
        if call is None:
            return None, None
        call.last_seen = at
        if not uid or uid in call.dead:
            return call, None
        return call, self._add_channel(call, uid, event.get("Channel", ""))

    def _add_channel(self, call: _Call, uid: str, name: str) -> _Channel:
        channel = _Channel(uid, name, call)
        channel.caller_side = uid == call.inbound_uid or (
            name.endswith(";2") and name[:-1] + "1" in call.caller_locals)
        self._channels[uid] = channel
        call.live.add(uid)
        return channel

    def _drop_channel(self, call: _Call, uid: str) -> None:
        self._channels.pop(uid, None)
        call.live.discard(uid)
        call.dead.add(uid)

    def _start_call(self, event: Mapping[str, str], at: float, *, partial: bool) -> _Call:
        uid = event.get("Uniqueid", "")
        if len(self._calls) >= MAX_ACTIVE_CALLS:
            oldest = next(iter(self._calls.values()))
            self._repeats.warning(
                "too many", "too many active calls: the oldest forgotten", pbx=self.pbx,
                limit=MAX_ACTIVE_CALLS, dropped=oldest.linkedid,
                hint="calls that never end: check that AMI sends Hangup events (manager.conf "
                     "read=call) and inbound.call_ttl")
            self._forget(oldest)
        name = _clean(event.get("CallerIDName", ""))
        caller = _clean(event.get("CallerIDNum", ""), 64)
        call = _Call(
            linkedid=event.get("Linkedid") or uid, inbound_uid=uid,
            channel_name=_clean(event.get("Channel", ""), 200), caller=caller,
            caller_name=None if name.lower() in ("", "<unknown>") else name,
            started=at, last_seen=at, caller_e164=_e164(caller, self.region),
            partial=partial)
        self._calls[call.linkedid] = call
        if call.caller_e164:
            self._new_callers.append(call.caller_e164)
        if partial:
            _log.debug("call joined in progress", linkedid=call.linkedid)
        return call

    # ------------------------------------------------------------ handlers

    def _on_newchannel(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        uid = event.get("Uniqueid")
        if not uid:
            return None
        linkedid = event.get("Linkedid") or uid
        call = self._calls.get(linkedid)
        if call is None:
            if linkedid != uid or linkedid in self._finished:
                return None
            if event.get("Context") not in self._inbound:
                self._remember(linkedid)  # an internal call: never ours, even via a Goto
                return None
            call = self._start_call(event, at, partial=False)
            # Incoming channels start ringing; the channels Asterisk originates start Down
            # (chan_sip's incoming ones too: those are confirmed by their first Newexten).
            call.confirmed = event.get("ChannelStateDesc", "Down") != "Down"
            exten = event.get("Exten", "")
            if exten and exten not in _SPECIAL_EXTENS:
                call.did = _clean(exten)
        call.last_seen = at
        if uid not in self._channels and uid not in call.dead:
            self._add_channel(call, uid, event.get("Channel", ""))
        return None

    def _on_newexten(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        call, channel = self._locate(event, at)
        context = event.get("Context", "")
        if call is None:
            uid = event.get("Uniqueid")
            linkedid = event.get("Linkedid") or uid
            if (not uid or linkedid != uid or context not in self._inbound
                    or linkedid in self._finished):
                return None
            call = self._start_call(event, at, partial=True)
            channel = self._add_channel(call, uid, event.get("Channel", ""))
        if channel is None or not channel.caller_side:
            return None
        exten = event.get("Exten", "")
        if channel.uniqueid == call.inbound_uid and context in self._inbound:
            call.confirmed = True
            if call.did is None and exten and exten not in _SPECIAL_EXTENS:
                call.did = _clean(exten)
        if context in self._after_hours and not call.after_hours:
            call.after_hours = True
            call.stages.append(_Stage("after_hours"))
        if context in self._ignore_contexts:
            call.ignored = True
        if channel.ivr_position is not None and channel.ivr_position != (context, exten):
            if exten not in _NOT_A_CHOICE:
                self._last_stage(call, IVR, create=False, status="chose")
            channel.ivr_position = None
        app = event.get("Application", "").lower()
        kind = _APP_KINDS.get(app)
        channel.app = kind or app
        if context in self._voicemail_contexts and kind is None:
            last = call.stages[-1] if call.stages else None
            if last is None or last.kind != VOICEMAIL:
                call.stages.append(_Stage(VOICEMAIL, None, "greeting"))
        if kind is None:
            return None
        data = event.get("AppData", "")
        if kind == IVR:
            channel.ivr_position = (context, exten)
            last = call.stages[-1] if call.stages else None
            if last is not None and last.kind == IVR:
                last.status = "menu"
            else:
                call.stages.append(_Stage(IVR, None, "menu"))
        elif kind == QUEUE:
            name = _clean(data.split(",", 1)[0].strip()) or None
            call.stages.append(_Stage(QUEUE, name, "entered"))
            call.group = name or call.group
        elif kind == DIAL:
            call.stages.append(_Stage(DIAL, None, "ringing"))
        elif kind == VOICEMAIL:
            mailbox = _clean(data.split(",", 1)[0].split("&", 1)[0].strip())
            last = call.stages[-1] if call.stages else None
            if last is not None and last.kind == VOICEMAIL and last.status == "greeting":
                last.name = mailbox or None
            else:
                call.stages.append(_Stage(VOICEMAIL, mailbox or None, "greeting"))
            if mailbox:
                call.extra["mailbox"] = mailbox
        elif kind == AGI:
            if _is_callback_script(data.split(",", 1)[0]):
                self._mark_callback(call)
        elif kind == DEAD:
            call.stages.append(_Stage(DEAD, app))
        elif kind == HANGUP and call.hangup_by is None:
            call.hangup_by = "pbx"
        return None

    def _on_varset(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        variable = event.get("Variable", "")
        if variable not in NEEDED_VARIABLES:
            return None
        call, channel = self._locate(event, at)
        if call is None:
            return None
        name = variable.lstrip("_")
        value = event.get("Value", "").strip()
        if name.startswith("MCD_"):
            self._on_admin_variable(call, name, value)
            return None
        if channel is None or not channel.caller_side or not value:
            return None
        if name == "QUEUESTATUS":
            status = _QUEUE_STATUS.get(value.upper())
            stage = self._last_stage(call, QUEUE, create=status is not None)
            if status is not None and stage is not None and stage.status != "answered":
                stage.status = status
            call.extra["queue_status"] = _clean(value, 20)
        elif name == "VMSTATUS":
            status = _VM_STATUS.get(value.upper())
            stage = self._last_stage(call, VOICEMAIL, create=status is not None)
            if status is not None and stage is not None and stage.status != "left":
                stage.status = status
            call.extra["vm_status"] = _clean(value, 20)
        elif name == "DIALSTATUS" and channel.app == DIAL:
            status = _DIAL_STATUS.get(value.upper())
            if status == "answer":
                self._mark_answered(call, at)
            stage = self._last_stage(call, DIAL, create=status is not None)
            if status is not None and stage is not None and stage.status != "answer":
                stage.status = status
            call.extra["dial_status"] = _clean(value, 20)
        return None

    def _on_admin_variable(self, call: _Call, name: str, value: str) -> None:
        if name == "MCD_GROUP":
            call.group_override = _clean(value) or None
        elif name == "MCD_DID":
            call.did_override = _clean(value) or None
        elif value.lower() not in _TRUE:
            return
        elif name == "MCD_IGNORE":
            call.ignored = True
        elif name == "MCD_CALLBACK":
            self._mark_callback(call)
        elif name == "MCD_AFTER_HOURS" and not call.after_hours:
            call.after_hours = True
            call.stages.append(_Stage("after_hours"))

    def _on_hangup_request(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        self._hangup_requested(event, at, "caller")
        return None

    def _on_soft_hangup_request(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        self._hangup_requested(event, at, "pbx")
        return None

    def _hangup_requested(self, event: Mapping[str, str], at: float, by: str) -> None:
        call, channel = self._locate(event, at)
        if call is None or channel is None:
            return
        channel.hangup_requested = True
        if channel.uniqueid == call.inbound_uid and call.hangup_by is None:
            call.hangup_by = by

    def _on_hangup(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        call, channel = self._locate(event, at)
        if call is None or channel is None:
            return None
        if channel.uniqueid == call.inbound_uid:
            cause = event.get("Cause", "")
            if cause:
                call.extra["hangup_cause"] = _clean(cause, 10)
        self._drop_channel(call, channel.uniqueid)
        call.dialing.discard(channel.uniqueid)
        if call.live:
            return None
        return self._finish(call, at)

    def _on_dial_begin(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        call, channel = self._locate(event, at)
        if call is None or channel is None or not channel.caller_side:
            return None
        if channel.app == "" and not call.in_queue:  # no Newexten seen (no dialplan class)
            channel.app = DIAL
            call.stages.append(_Stage(DIAL, None, "ringing"))
        if channel.app != DIAL:
            return None
        dest_uid = event.get("DestUniqueid", "")
        dest_name = event.get("DestChannel", "")
        if dest_name.endswith(";1"):
            call.caller_locals.add(dest_name)
            for uid in call.live:
                other = self._channels[uid]
                if other.name == dest_name[:-1] + "2":
                    other.caller_side = True
        if dest_uid:
            call.dialing.add(dest_uid)
            self._update_wait(call, at)
        return None

    def _on_dial_end(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        call, channel = self._locate(event, at)
        if call is None:
            return None
        raw_status = event.get("DialStatus", "").upper()
        if raw_status == "ANSWER":
            dest = event.get("DestChannel", "")
            if dest and "agent" not in call.extra:
                call.extra["agent"] = _clean(dest, 200)
            self._mark_answered(call, at)
        if channel is None or not channel.caller_side or channel.app != DIAL:
            return None
        status = _DIAL_STATUS.get(raw_status)
        stage = self._last_stage(call, DIAL, create=False)
        if status is not None and stage is not None and stage.status != "answer":
            stage.status = status
        call.dialing.discard(event.get("DestUniqueid", ""))
        self._update_wait(call, at)
        return None

    def _on_agent_called(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        call, _ = self._locate(event, at)
        if call is not None:
            call.agents_called += 1
        return None

    def _on_agent_connect(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        call, _ = self._locate(event, at)
        if call is None:
            return None
        agent = event.get("MemberName") or event.get("Interface") or event.get("DestChannel")
        if agent:
            call.extra["agent"] = _clean(agent, 200)
        stage = self._last_stage(call, QUEUE, create=True, name=event.get("Queue"))
        if stage is not None:
            stage.status = "answered"
        call.in_queue = False
        self._mark_answered(call, at)
        return None

    def _on_queue_join(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        call, channel = self._locate(event, at)
        if call is None:
            return None
        if channel is not None:
            channel.app = QUEUE
        name = _clean(event.get("Queue", "")) or None
        last = call.stages[-1] if call.stages else None
        if last is not None and last.kind == QUEUE and last.status == "entered" and (
                last.name == name or last.name is None):
            last.name, last.status = name, "waiting"
        else:
            call.stages.append(_Stage(QUEUE, name, "waiting"))
        call.group = name or call.group
        call.in_queue = True
        self._update_wait(call, at)
        return None

    def _on_queue_abandon(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        call, channel = self._locate(event, at)
        if call is None:
            return None
        stage = self._last_stage(call, QUEUE, create=True, name=event.get("Queue"))
        if stage is not None and stage.status != "answered":
            stage.status = "abandon" if self._caller_gone(call, channel) else "timeout"
        hold = event.get("HoldTime", "")
        if hold:
            call.extra["queue_hold"] = _clean(hold, 10)
        call.in_queue = False
        self._update_wait(call, at)
        return None

    def _on_queue_leave(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        call, channel = self._locate(event, at)
        if call is None:
            return None
        stage = self._last_stage(call, QUEUE, create=True, name=event.get("Queue"))
        if stage is not None and stage.status in ("entered", "waiting"):
            if call.answered:
                stage.status = "answered"
            elif self._caller_gone(call, channel):
                stage.status = "abandon"
            else:
                stage.status = "left"
        call.in_queue = False
        self._update_wait(call, at)
        return None

    def _on_message_waiting(self, event: Mapping[str, str], at: float) -> CallRecord | None:
        if not event.get("Uniqueid"):
            return None  # a mailbox update not made by a call
        call, _ = self._locate(event, at)
        if call is None:
            return None
        stage = self._last_stage(call, VOICEMAIL, create=True)
        if stage is not None:
            stage.status = "left"
        return None

    # ------------------------------------------------------------ helpers

    def _caller_gone(self, call: _Call, channel: _Channel | None) -> bool:
        if channel is not None and channel.hangup_requested:
            return True
        inbound = self._channels.get(call.inbound_uid)
        return inbound is None or inbound.hangup_requested

    @staticmethod
    def _last_stage(call: _Call, kind: str, *, create: bool, status: str | None = None,
                    name: str | None = None) -> _Stage | None:
        """The latest stage of `kind` (created if asked and there is none); set `status`."""
        for stage in reversed(call.stages):
            if stage.kind == kind:
                break
        else:
            if not create:
                return None
            stage = _Stage(kind, _clean(name) if name else None)
            call.stages.append(stage)
        if status is not None:
            stage.status = status
        return stage

    def _mark_answered(self, call: _Call, at: float) -> None:
        if not call.answered:
            call.answered = True
            call.dialing.clear()
            call.in_queue = False
            self._update_wait(call, at)

    @staticmethod
    def _mark_callback(call: _Call) -> None:
        if not call.callback:
            call.callback = True
            call.stages.append(_Stage("callback"))

    @staticmethod
    def _update_wait(call: _Call, at: float) -> None:
        waiting = (call.in_queue or bool(call.dialing)) and not call.answered
        if waiting and call.wait_started is None:
            call.wait_started = at
        elif not waiting and call.wait_started is not None:
            call.waited += max(0.0, at - call.wait_started)
            call.wait_started = None

    def _forget(self, call: _Call) -> None:
        for uid in call.live:
            self._channels.pop(uid, None)
        self._calls.pop(call.linkedid, None)
        self._remember(call.linkedid)

    def _remember(self, linkedid: str) -> None:
        """Remember a Linkedid that must not start a call again (finished, or not inbound)."""
        self._finished[linkedid] = None
        if len(self._finished) > FINISHED_MEMORY:
            del self._finished[next(iter(self._finished))]

    def _finish(self, call: _Call, at: float, *, evicted: bool = False) -> CallRecord | None:
        """Drop the call's state; its record, unless it never proved to be inbound."""
        self._forget(call)
        if not call.confirmed:
            _log.debug("call not inbound", linkedid=call.linkedid)
            return None
        if call.wait_started is not None:
            call.waited += max(0.0, at - call.wait_started)
            call.wait_started = None
        for stage in call.stages:  # a stage still running when the call ended was given up
            stage.status = _GIVEN_UP.get((stage.kind, stage.status), stage.status)
        did = call.did_override or call.did
        if did is not None and did.lstrip("+") in self._ignore_dids:  # digits, as the config
            call.ignored = True
        extra = dict(call.extra)
        if call.hangup_by:
            extra["hangup_by"] = call.hangup_by
        if call.agents_called:
            extra["agents_called"] = str(call.agents_called)
        return CallRecord(
            pbx=self.pbx, call_id=call.linkedid, caller=call.caller,
            caller_name=call.caller_name, caller_e164=call.caller_e164,
            did=did, group=call.group_override or call.group, outcome=_decide(call),
            stages=tuple(stage.label() for stage in call.stages), started=call.started,
            ended=at, wait_seconds=round(call.waited, 3), partial=call.partial,
            evicted=evicted, channel=call.channel_name or None, adopted=call.adopted,
            extra=extra)


# ---------------------------------------------------------------- pure functions


def _decide(call: _Call) -> Outcome:
    """The outcome of a finished call (precedence explained in the module docstring)."""
    if call.answered:
        return Outcome.ANSWERED
    if call.ignored:
        return Outcome.DEAD_END
    if call.callback:
        return Outcome.CALLBACK_REQUESTED
    if call.after_hours:
        return Outcome.AFTER_HOURS
    best: _Stage | None = None
    best_rank = 0
    for stage in call.stages:
        rank = _RANK.get(stage.kind, 0)
        if rank and rank >= best_rank:
            best, best_rank = stage, rank
    if best is None:
        return Outcome.DEAD_END if call.hangup_by == "pbx" else Outcome.IVR_ABANDON
    if best.kind == IVR and best.status == "chose" and call.hangup_by == "pbx":
        return Outcome.DEAD_END
    outcome = _OUTCOME_OF.get((best.kind, best.status))
    if outcome is None:
        outcome = _OUTCOME_OF[(best.kind, None)]
    return outcome


def _duration(text: str) -> float:
    """CoreShowChannel's Duration ("HH:MM:SS", or seconds) in seconds; 0 if unreadable."""
    seconds = 0.0
    try:
        for part in text.strip().split(":"):
            seconds = seconds * 60 + float(part)
    except ValueError:
        return 0.0
    return seconds if 0 <= seconds < 86400 * 7 else 0.0


def _is_callback_script(script: str) -> bool:
    """True for AGI scripts that take a call-back request, e.g. agi://host/callback."""
    name = script.strip().lower().split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return any(word in name for word in ("callback", "call-back", "call_back", "callmeback"))


def _clean(value: str, limit: int = _MAX_TEXT) -> str:
    """Caller-controlled text made safe to store and log: no control characters, bounded."""
    value = value[: limit * 4]
    if not value.isprintable():
        value = "".join(ch for ch in value if ch.isprintable())
    return value.strip()[:limit]


def _e164(number: str, region: str) -> str | None:
    """The caller in E.164, or None when withheld, anonymous or not a possible number."""
    text = number.strip()
    if text.lower() in _WITHHELD or len(text) > 32 or not any(c.isdigit() for c in text):
        return None
    return to_e164(text, region)


__all__ = ["NEEDED_EVENTS", "NEEDED_VARIABLES", "CallTracker"]
