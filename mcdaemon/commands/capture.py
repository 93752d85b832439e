"""`mcdaemon capture`: record a PBX's AMI stream, byte for byte, in the transcript format.

A capture is what an administrator sends with a bug report, and what `mcdaemon replay`
checks a configuration against before it texts anyone. It connects without an event filter
(the recording must show everything Asterisk said) and writes every event frame exactly as
received; the answers to its own actions (login, pings, channel list) are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from mcdaemon.adapters.ami import ACTION_ID_PREFIX, AmiConnection, AmiItem, AmiStatus
from mcdaemon.config.model import AmiConfig, Config
from mcdaemon.core.transcript import TranscriptWriter, parse_frame


def is_own_frame(raw: bytes) -> bool:
    """A response, or an event answering one of our actions: not part of the PBX's stream."""
    fields = parse_frame(raw)
    return ("Response" in fields and "Event" not in fields) or \
        fields.get("ActionID", "").startswith(ACTION_ID_PREFIX)


def capture(config: Config, out_path: str, pbx: str | None, duration: float | None,
            force: bool = False) -> int:
    """Record until SIGINT/SIGTERM or `duration` seconds; return the exit status."""
    chosen = [ami for ami in config.ami if pbx is None or ami.name == pbx]
    if not chosen:
        names = ", ".join(ami.name for ami in config.ami) or "none configured"
        print(f"capture: no ami: entry named {pbx!r} (have: {names})", file=sys.stderr)
        return 2
    if not force and Path(out_path).exists():
        print(f"capture: {out_path} exists; choose another --out, or add --force to "
              "overwrite it", file=sys.stderr)
        return 1
    try:
        frames = asyncio.run(capture_async(chosen[0], Path(out_path), duration))
    except OSError as error:
        print(f"capture: cannot write {out_path}: {error}", file=sys.stderr)
        return 1
    print(f"capture: wrote {frames} frames from {chosen[0].name} to {out_path}")
    return 0


async def capture_async(ami: AmiConfig, out_path: Path, duration: float | None,
                        stop: asyncio.Event | None = None) -> int:
    """Record `ami` into `out_path` until `stop` is set, a signal, or `duration`; frames."""
    stop = stop or asyncio.Event()
    queue: asyncio.Queue[AmiItem] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    # callers' numbers and names: readable by the owner only (0600), whatever the umask
    with open(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        writer: TranscriptWriter | None = None
        connection: AmiConnection

        def record(raw: bytes, at: float) -> None:
            nonlocal writer
            if is_own_frame(raw):
                return
            if writer is None:
                writer = TranscriptWriter(out, source=f"{ami.host}:{ami.port}",
                                          banner=connection.banner)
            writer.write(raw, at)

        connection = AmiConnection(ami, queue, raw_sink=record)
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
        print(f"capture: recording {ami.name} ({ami.host}:{ami.port}) into {out_path}"
              + (f" for {duration:g} s" if duration else "; Ctrl-C to stop"), file=sys.stderr)
        running = asyncio.create_task(connection.run())
        reporter = asyncio.create_task(_report_status(queue))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        finally:
            await connection.stop()
            await running
            reporter.cancel()
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(signum)
        return writer.frames if writer is not None else 0


async def _report_status(queue: asyncio.Queue[AmiItem]) -> None:
    """Tell the administrator about connection changes (the events are in the file)."""
    while True:
        item = await queue.get()
        if isinstance(item, AmiStatus) and item.state != "connecting":
            print(f"capture: {item.pbx} {item.state}: {item.detail}", file=sys.stderr)
