"""`mcdaemon replay`, run as an administrator would: a subprocess, a config, recordings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recordings import recording_path

MINIMAL_CONFIG = """\
region: GB
inbound:
  contexts: [from-carrier]
  after_hours_contexts: [closed]
"""


def replay(tmp_path: Path, *files: str | Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "mcdaemon.yaml"
    config.write_text(MINIMAL_CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "mcdaemon", "--log-level", "warning", "replay", "-c",
         str(config), *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False)


def test_replay_prints_one_json_line_per_inbound_call(tmp_path: Path) -> None:
    files = [recording_path("queue_abandon"), recording_path("repeat_caller"),
             recording_path("after_hours")]
    result = replay(tmp_path, *files)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(Path(line["file"]).stem, line["outcome"]) for line in lines] == [
        ("queue_abandon", "queue_abandon"),
        ("repeat_caller", "queue_abandon"), ("repeat_caller", "ivr_abandon"),
        ("repeat_caller", "answered"),
        ("after_hours", "after_hours"),
    ]
    first = lines[0]
    assert first["pbx"] == "pbx"
    assert first["call_id"] == "1795369867.0"
    assert first["caller_e164"] == "+447700900123"
    assert first["did"] == "442071230001"
    assert first["group"] == "support"
    assert first["stages"] == ["queue:support:abandon"]
    assert first["evicted"] is False and first["partial"] is False


def test_replay_shows_a_call_cut_off_by_the_end_of_the_recording_as_evicted(
        tmp_path: Path) -> None:
    source = (recording_path("queue_abandon")).read_bytes()
    cut = source[: source.index(b"Event: HangupRequest")]
    cut = cut[: cut.rindex(b"@")]
    truncated = tmp_path / "cut.ami"
    truncated.write_bytes(cut)
    result = replay(tmp_path, truncated)
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(line) for line in result.stdout.splitlines()]
    assert line["evicted"] is True
    assert line["outcome"] == "queue_abandon"


@pytest.mark.parametrize("content", [None, b"this is not a recording\n"])
def test_replay_of_an_unusable_file_fails_with_a_clear_message(
        tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.ami"
    if content is not None:
        path.write_bytes(content)
    result = replay(tmp_path, recording_path("dead_end"), path)
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "cannot read" in result.stderr or "not an AMI transcript" in result.stderr


def test_replay_files_merges_the_decision(tmp_path: Path) -> None:
    import io

    from mcdaemon.commands.replay import replay_files
    from mcdaemon.config.load import config_from_dict

    config = config_from_dict({"inbound": {"contexts": ["from-carrier"]}, "region": "GB",
                               "ami": {"name": "office", "username": "u", "secret": "s"}})
    out = io.StringIO()
    code = replay_files(config, [str(recording_path("dead_end"))], out,
                        decider=lambda: lambda record: {"textable": record.missed,
                                                        "reason": "test"})
    assert code == 0
    [line] = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["pbx"] == "office"
    assert line["outcome"] == "dead_end"
    assert line["textable"] is False and line["reason"] == "test"


def test_replay_with_a_minimal_config_shows_the_policy_verdict_per_call(tmp_path: Path) -> None:
    config_file = tmp_path / "min.yaml"
    config_file.write_text("region: GB\ninbound:\n  contexts: [from-carrier]\n"
                           "  after_hours_contexts: [closed]\n")
    result = subprocess.run(
        [sys.executable, "-m", "mcdaemon", "replay", "-c", str(config_file),
         str(recording_path("repeat_caller")), str(recording_path("landline_abandon")),
         str(recording_path("anonymous_caller_abandon"))],
        capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    verdicts = [(line["outcome"], line["textable"], line["reason"]) for line in lines]
    assert verdicts == [
        ("queue_abandon", True, "text"),  # first call of the repeat caller: texted
        ("ivr_abandon", False, "cooldown"),  # a minute later: one text is enough
        ("answered", False, "not_missed"),
        ("queue_abandon", False, "not_mobile"),  # a landline cannot receive texts
        ("queue_abandon", False, "withheld"),  # anonymous: nobody to text
    ]
    assert lines[0]["text"] and "missed your call" in lines[0]["text"]


def test_replay_adopts_the_calls_a_channel_list_shows_in_progress(tmp_path: Path) -> None:
    from mcdaemon.core.transcript import read_transcript
    from mcdaemon.sim.channels import LiveChannels

    frames = read_transcript(recording_path("queue_abandon")).frames
    cut = next(index for index, frame in enumerate(frames)
               if frame.raw.startswith(b"Event: QueueCallerJoin\r\n")) + 1
    live = LiveChannels()
    for frame in frames[:cut]:
        live.feed(frame.raw, frame.offset)
    at = frames[cut - 1].offset
    listing = [b"".join(f"{key}: {value}\r\n".encode() for key, value in
                        {"Event": "CoreShowChannel", **fields}.items()) + b"\r\n"
               for fields in live.listing(at)]
    listing.append(b"Event: CoreShowChannelsComplete\r\nEventList: Complete\r\n\r\n")
    path = tmp_path / "mid_call.ami"
    path.write_bytes(b"".join([f"@{at:.6f}\n".encode() + raw for raw in listing]
                              + [f"@{frame.offset:.6f}\n".encode() + frame.raw
                                 for frame in frames[cut:]]))
    config = tmp_path / "mcdaemon.yaml"
    config.write_text(MINIMAL_CONFIG + "  trunks: [PJSIP/carrier]\n")
    result = subprocess.run(
        [sys.executable, "-m", "mcdaemon", "--log-level", "warning", "replay", "-c",
         str(config), str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(line) for line in result.stdout.splitlines()]
    assert line["outcome"] == "queue_abandon" and line["adopted"] is True
    assert line["stages"] == ["queue:support:abandon"] and line["partial"] is False
