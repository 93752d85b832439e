"""A daemon's heartbeat on a real store: its row with its links, the peers it sees, its share
of the throughput, and its row gone at a clean stop."""

from __future__ import annotations

from pathlib import Path

from mcdaemon.config.load import config_from_dict
from mcdaemon.core.daemons import ALIVE_WITHIN, FORGET_AFTER, DaemonBeat, read_beats
from mcdaemon.pipeline.heartbeat import Heartbeat
from mcdaemon.store import Store, StoreInterface

NOW = 1_736_157_600.0


def heartbeat(store: StoreInterface, name: str, shares: list[int],
              links: dict[str, str] | None = None) -> Heartbeat:
    config = config_from_dict({"daemon": {"name": name}, "smpp": {
        "throughput": 10, "system_id": "mcd", "password": "p", "source_addr": "Acme"}})

    async def watched(now: float) -> None:
        await store.set_status("watched:lab", "up", now)

    return Heartbeat(lambda: config, lambda: store, links=lambda: links or {"lab": "connected"},
                     smsc=lambda: "bound", watched=watched, share=shares.append)


async def test_each_daemon_writes_its_row_and_shares_the_throughput_with_the_peers_alive(
        tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        alpha_shares: list[int] = []
        beta_shares: list[int] = []
        alpha = heartbeat(store, "alpha", alpha_shares, {"lab": "connected", "b": "connecting"})
        beta = heartbeat(store, "beta", beta_shares)
        await alpha.beat(NOW)
        await beta.beat(NOW + 0.5)
        await alpha.beat(NOW + 1)
        assert (alpha_shares, beta_shares) == ([1, 2], [2])
        statuses = await store.statuses()
        assert statuses["watched:lab"] == ("up", NOW + 1)  # in the same commit
        assert {beat.id: dict(beat.pbxs) for beat in read_beats(statuses)} == {
            "alpha": {"lab": "connected", "b": "connecting"}, "beta": {"lab": "connected"}}
        # beta stops cleanly: alpha takes the whole at its next beat
        await beta.leave()
        await alpha.beat(NOW + 2)
        assert alpha_shares[-1] == 1
        # a peer killed (no leave) counts until its heartbeat is stale
        await beta.beat(NOW + 3)
        await alpha.beat(NOW + 3 + ALIVE_WITHIN - 0.5)
        assert alpha_shares[-1] == 2
        await alpha.beat(NOW + 3 + ALIVE_WITHIN)
        assert alpha_shares[-1] == 1
        # and its row is forgotten at last
        await alpha.beat(NOW + 4 + FORGET_AFTER)
        assert [beat.id for beat in read_beats(await store.statuses())] == ["alpha"]
    finally:
        await store.close()


async def test_two_daemons_given_one_name_are_reported(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    store = await Store.open(str(tmp_path / "mcdaemon.db"))
    try:
        twin = DaemonBeat("alpha", "99999@another-host", "bound", {})
        await store.set_status(twin.row, twin.value(), NOW)
        with capture_logs() as logs:
            await heartbeat(store, "alpha", []).beat(NOW + 1)
            await heartbeat(store, "alpha", []).beat(NOW + 1.5)
        errors = [entry["event"] for entry in logs if entry["log_level"] == "error"]
        assert len(errors) == 1 and "daemon.name: 'alpha'" in errors[0]
    finally:
        await store.close()
