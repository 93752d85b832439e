"""`mcdaemon status --health` (the Docker HEALTHCHECK): healthy only while the daemon runs and
every link is up. A link that is down is retried by the daemon, but is worth a red light."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from mcdaemon.commands.control import show_status
from mcdaemon.config.load import config_from_dict
from mcdaemon.core.daemons import DaemonBeat, process_id
from mcdaemon.store import Store


async def health(tmp_path: Path, *, ami: str, smsc: str) -> int:
    path = tmp_path / "mcdaemon.db"
    store = await Store.open(str(path))
    now = time.time()
    try:
        beat = DaemonBeat(process_id(), process_id(), smsc, {"lab": ami})  # this process
        await store.set_status(beat.row, beat.value(), now)
    finally:
        await store.close()
    config = config_from_dict({
        "region": "GB", "inbound": {"contexts": ["from-carrier"]},
        "store": {"path": str(path)},
        "ami": [{"name": "lab", "username": "mcd", "secret": "s"}]})
    return await show_status(config, io.StringIO(), as_json=False, health=True)


@pytest.mark.parametrize(("ami", "smsc", "code"), [
    ("connected", "bound", 0),
    ("connecting", "bound", 1),  # the PBX is down: retried, but unhealthy
    ("connected", "down", 1),  # the SMSC is down
    ("connected", "auth_failed", 1),
])
async def test_health_needs_every_link_up(tmp_path: Path, ami: str, smsc: str,
                                          code: int) -> None:
    assert await health(tmp_path, ami=ami, smsc=smsc) == code


async def test_status_lists_the_daemons_alive_and_the_pbxs_each_watches(tmp_path: Path) -> None:
    path = tmp_path / "mcdaemon.db"
    store = await Store.open(str(path))
    now = time.time()
    try:
        for beat, seen in [
                (DaemonBeat("east", process_id(), "bound", {"lab": "connected", "b": "connected"}),
                 now),
                (DaemonBeat("west", process_id(), "bound", {"lab": "connected",
                                                            "c": "disconnected"}), now - 1),
                (DaemonBeat("gone", process_id(), "bound", {"lab": "connected"}), now - 60)]:
            await store.set_status(beat.row, beat.value(), seen)
    finally:
        await store.close()
    config = config_from_dict({
        "region": "GB", "inbound": {"contexts": ["from-carrier"]},
        "store": {"path": str(path)},
        "ami": [{"name": name, "username": "mcd", "secret": "s"} for name in ["lab", "b", "c"]]})
    out = io.StringIO()
    assert await show_status(config, out, as_json=False, health=False) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "daemon:   running"
    assert lines[1] == f"  east ({process_id()}): smsc bound; watching 2 PBX(s), 2 connected"
    assert lines[2] == (f"  west ({process_id()}): smsc bound; watching 2 PBX(s), 1 connected;"
                        " not connected: c disconnected")
    assert "ami c: disconnected" in lines and "ami b: connected" in lines
    out = io.StringIO()
    await show_status(config, out, as_json=True, health=False)
    shown = json.loads(out.getvalue())
    assert [daemon["name"] for daemon in shown["daemons"]] == ["east", "west"]
    assert shown["daemons"][1]["pbxs"] == {"lab": "connected", "c": "disconnected"}
