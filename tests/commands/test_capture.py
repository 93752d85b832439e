"""`mcdaemon capture` records the AMI stream byte for byte, as the replay needs it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mcdaemon.commands.capture import capture_async
from mcdaemon.config.model import AmiConfig
from mcdaemon.core.transcript import parse_frame, read_transcript
from mcdaemon.sim.amiserver import AmiTestServer

from recordings import recording_path


async def test_capture_writes_every_event_frame_exactly_as_received(tmp_path: Path) -> None:
    original = read_transcript(recording_path("queue_abandon"))
    out = tmp_path / "captured.ami"
    stop = asyncio.Event()
    async with AmiTestServer([original], speed=0) as server:
        config = AmiConfig(name="pbx", port=server.port, username="mcd", secret="mcdsecret",
                           reconnect_min=0.05, reconnect_max=0.2)
        recording = asyncio.create_task(capture_async(config, out, duration=30, stop=stop))
        await asyncio.wait_for(server.finished(), 10)
        await asyncio.sleep(0.3)  # the last frames cross the socket
        stop.set()
        frames = await asyncio.wait_for(recording, 10)
    captured = read_transcript(out)
    events = [frame.raw for frame in captured.frames
              if parse_frame(frame.raw).get("Event") != "FullyBooted"]
    assert events == [frame.raw for frame in original.frames]
    assert frames == len(captured.frames)
    assert captured.t0_epoch > 0
    assert "Asterisk Call Manager" in captured.header[0]
    assert not any(b"Response:" in frame.raw or b"ActionID: mcdaemon-" in frame.raw
                   for frame in captured.frames)


async def test_capture_stops_after_its_duration(tmp_path: Path) -> None:
    async with AmiTestServer([], speed=0) as server:
        config = AmiConfig(name="pbx", port=server.port, username="mcd", secret="mcdsecret")
        frames = await asyncio.wait_for(capture_async(config, tmp_path / "c.ami", 0.3), 10)
    assert frames == 1  # FullyBooted, as a real Asterisk sends after login
