"""`mcdaemon demo`: the real daemon between an AMI replay and an SMSC simulator, on loopback.

Nothing here stands in for the daemon: the demo writes an ordinary config file and runs the
same `Service` that `mcdaemon run` runs. Around it, an AMI server replays real recordings of
a real Asterisk 22 (bundled in `mcdaemon/sim/recordings/`) over TCP, and an SMSC simulator takes
the binds, answers the submits and sends delivery receipts. A newcomer sees which calls were
missed and the texts that went out, in seconds, with no PBX and no carrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import TextIO

import yaml

from mcdaemon.config.load import load_config
from mcdaemon.core.records import CallRecord, Decision
from mcdaemon.core.transcript import Transcript, read_transcript
from mcdaemon.service import Service
from mcdaemon.sim.amiserver import AmiTestServer
from mcdaemon.sim.smsc import Submit, TestSmsc

#: the order the recordings are played in: a small day at a call centre
DEMO_RECORDINGS = (
    "queue_abandon", "answered", "landline_abandon", "ivr_then_queue_abandon", "ivr_abandon",
    "anonymous_caller_abandon", "ring_no_answer_direct", "voicemail_hangup_no_message",
    "after_hours", "dead_end", "repeat_caller",
)

_SECRET = "demo-secret"
_SMPP_PASSWORD = "demopass"


def demo_transcripts() -> list[Transcript]:
    folder = resources.files("mcdaemon.sim") / "recordings"
    transcripts = []
    for name in DEMO_RECORDINGS:
        with resources.as_file(folder / f"{name}.ami") as path:
            transcripts.append(read_transcript(path))
    return transcripts


def demo_config(workdir: Path, ami_port: int, smsc_port: int) -> dict[str, object]:
    return {
        "region": "GB",
        "timezone": "Europe/London",
        "company": "Acme Ltd",
        "log_full_numbers": True,
        "ami": [{"name": "lab", "host": "127.0.0.1", "port": ami_port, "username": "mcd",
                 "secret": _SECRET, "ping_interval": "2s"}],
        "inbound": {"contexts": ["from-carrier"], "after_hours_contexts": ["closed"]},
        "store": {"path": str(workdir / "mcdaemon.db")},
        "smpp": {"host": "127.0.0.1", "port": smsc_port, "system_id": "mcdaemon",
                 "password": _SMPP_PASSWORD, "source_addr": "Acme", "throughput": 50,
                 "reconnect_min": "0.2s"},
        "policy": {"opt_out_confirmation": "You will get no more texts from Acme Ltd."},
        "groups": {
            "sales": {"display_name": "Sales", "queues": ["sales"],
                      "templates": {"default": "Hi {caller_name}, sorry we missed your call to "
                                               "{company} {group}. Reply here or book: "
                                               "{booking_link}"},
                      "variables": {"booking_link": "acme.example/book"}},
            "default": {
                "display_name": "Support",
                "triggers": ["missed"],
                "templates": {
                    "default": "Hi {caller_name}, sorry we missed your call to {company}. "
                               "We will call you back shortly - or just reply here.",
                    "queue_abandon": "Hi {caller_name}, sorry you had to hang up while waiting "
                                     "for {company} {group}. We will call you back shortly.",
                    "voicemail_left": "Thanks for your message, {caller_name}. {company} "
                                      "will call you back today.",
                    "after_hours": "Hi {caller_name}, {company} is closed right now. We "
                                   "will call you back when we open.",
                },
            },
        },
    }


async def run_demo(out: TextIO, *, speed: float = 20.0, timeout: float = 60.0) -> int:
    started = time.monotonic()
    decisions: list[tuple[CallRecord, Decision]] = []
    received: list[Submit] = []

    def show_decision(record: CallRecord, decision: Decision) -> None:
        decisions.append((record, decision))
        verdict = "text" if decision.text else f"no text ({decision.reason})"
        print(f"  call  {record.caller or '-':>16}  {record.outcome:<21} -> {verdict}",
              file=out, flush=True)

    def show_submit(submit: Submit) -> None:
        received.append(submit)
        print(f"  SMSC  {submit.destination:>16}  received: {submit.text!r}", file=out,
              flush=True)

    transcripts = demo_transcripts()
    print(f"mcdaemon demo: replaying {len(transcripts)} real Asterisk recordings "
          f"({sum(len(t.labels) for t in transcripts)} calls) at {speed:g}x speed", file=out)
    with tempfile.TemporaryDirectory(prefix="mcdaemon-demo-") as tmp:
        workdir = Path(tmp)
        async with TestSmsc(system_id="mcdaemon", password=_SMPP_PASSWORD,
                            on_submit=show_submit) as smsc, \
                AmiTestServer(transcripts, username="mcd", secret=_SECRET,
                              speed=speed) as ami:
            config_path = workdir / "config.yaml"
            config_path.write_text(yaml.safe_dump(demo_config(workdir, ami.port, smsc.port)))
            config_path.chmod(0o600)
            config = load_config(config_path)
            print(f"  AMI server 127.0.0.1:{ami.port}, SMSC 127.0.0.1:{smsc.port}, "
                  f"store {config.store.address}\n", file=out, flush=True)
            service = Service(config, config_path=config_path, on_decision=show_decision,
                              install_signal_handlers=False)
            daemon = asyncio.create_task(service.run())
            code = 1  # unless the daemon stops cleanly
            try:
                await asyncio.wait_for(ami.finished(), timeout)
                wanted = sum(1 for _, decision in decisions if decision.text)
                deadline = time.monotonic() + 10
                while len(received) < wanted and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)  # delivery receipts
            finally:
                service.request_stop()
                with contextlib.suppress(asyncio.CancelledError):
                    code = await daemon
    outcomes = Counter(str(record.outcome) for record, _ in decisions)
    texted = sum(1 for _, decision in decisions if decision.text)
    print(f"\nsummary: {len(decisions)} inbound calls, "
          + ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())),
          file=out)
    print(f"         {texted} texts decided, {len(received)} received by the SMSC, "
          f"{len(decisions) - texted} calls not texted (answered, landline, withheld, "
          f"cooldown, ...); {time.monotonic() - started:.1f} s", file=out)
    return 0 if code == 0 and len(received) >= texted else 1
