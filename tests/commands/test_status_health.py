"""`mcdaemon status --health` (the Docker HEALTHCHECK): healthy only while the daemon runs and
every link is up. A link that is down is retried by the daemon, but is worth a red light."""

from __future__ import annotations

import io
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
