"""The README's commands no other test ran, as an administrator runs them: `mcdaemon preview`,
`capture` then `replay`, `disable`/`enable --group` read back by `status --json`, and `demo`."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

from mcdaemon.core.transcript import read_transcript
from mcdaemon.sim.amiserver import AmiTestServer

from e2e.harness import free_port, write_config
from recordings import recording_path

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "config.example.yaml"


async def mcdaemon(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcdaemon", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_preview_renders_every_template_of_the_config() -> None:
    code, out, err = await mcdaemon("preview", "-c", str(EXAMPLE))
    assert code == 0, err
    for heading in ("== group sales (Sales)", "== group support (Support)",
                    "-- queue_abandon (variant short)", "-- after_hours"):
        assert heading in out
    assert re.search(r"GSM-7, \d+ characters used, \d+ left of 160, 1 SMS \(fits", out)


async def test_preview_of_one_group_outcome_and_caller() -> None:
    code, out, err = await mcdaemon("preview", "-c", str(EXAMPLE), "--group", "sales",
                                    "--outcome", "queue_abandon", "--caller", "+447700900123")
    assert code == 0, err
    assert "caller +447700900123: can receive texts" in out
    assert "-- queue_abandon (variant short)" in out and "-- after_hours" in out
    assert "group support" not in out


async def test_capture_then_replay_shows_what_would_have_been_texted(tmp_path: Path) -> None:
    recording = tmp_path / "today.ami"
    async with AmiTestServer([read_transcript(recording_path("queue_abandon"))],
                             speed=0) as server:
        config = write_config(tmp_path, ami_port=server.port, smsc_port=free_port())
        code, _out, err = await mcdaemon("capture", "-c", str(config), "--out", str(recording),
                                         "--duration", "2")
        assert code == 0, err
        assert server.connections == 1
    captured = read_transcript(recording)
    assert len(captured.frames) > len(read_transcript(recording_path("queue_abandon")).frames) / 2

    code, out, err = await mcdaemon("replay", "-c", str(config), str(recording))
    assert code == 0, err
    calls = [json.loads(line) for line in out.splitlines()]
    assert [(call["caller"], call["outcome"], call["textable"], call["reason"])
            for call in calls] == [("+447700900123", "queue_abandon", True, "text")]
    assert calls[0]["text"] == "Sorry we missed your call. We will call you back."


async def test_disable_and_enable_one_group_as_status_json_shows(tmp_path: Path) -> None:
    template = {"templates": {"default": "Sorry we missed your call."}}
    config = str(write_config(tmp_path, ami_port=free_port(), smsc_port=free_port(),
                              groups={"sales": template, "default": template}))

    async def texting() -> dict[str, bool]:
        code, out, err = await mcdaemon("status", "-c", config, "--json")
        assert code == 0, err
        status = json.loads(out)
        assert status["daemon"] == "not running" and status["smsc"] == "down"
        assert status["ami"] == {"lab": "disconnected"}
        return dict(status["texting"])

    code, out, err = await mcdaemon("disable", "-c", config, "--group", "sales")
    assert code == 0, err
    assert "texting for group sales disabled" in out
    assert await texting() == {"global": True, "sales": False, "default": True}

    assert (await mcdaemon("disable", "-c", config))[0] == 0
    assert await texting() == {"global": False, "sales": False, "default": True}

    code, out, _ = await mcdaemon("enable", "-c", config, "--group", "sales")
    assert code == 0 and "texting for group sales enabled" in out
    assert (await mcdaemon("enable", "-c", config))[0] == 0
    assert await texting() == {"global": True, "sales": True, "default": True}

    code, _, err = await mcdaemon("enable", "-c", config, "--group", "billing")
    assert code == 1 and "no group 'billing'" in err


async def test_demo_texts_the_missed_callers_through_the_embedded_smsc() -> None:
    code, out, err = await mcdaemon("demo", "--speed", "100", timeout=120)
    assert code == 0, err
    summary = re.search(r"(\d+) texts decided, (\d+) received by the SMSC", out)
    assert summary is not None, out
    assert int(summary.group(1)) > 0 and summary.group(1) == summary.group(2)
    assert "-> no text (not_mobile)" in out and "SMSC" in out


async def test_version_names_the_installed_release() -> None:
    from mcdaemon import __version__

    code, out, _ = await mcdaemon("--version")
    assert code == 0 and out.strip() == f"mcdaemon {__version__}"
