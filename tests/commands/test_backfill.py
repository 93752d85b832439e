"""`mcdaemon backfill`: the queue calls an AMI outage hid, recovered from the queue_log."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mcdaemon.commands import backfill as backfill_module
from mcdaemon.commands.backfill import backfill
from mcdaemon.commands.replay import replay_files
from mcdaemon.config.load import load_config
from mcdaemon.config.model import Config
from mcdaemon.core.policy import decide
from mcdaemon.core.records import CallRecord, PolicyView
from mcdaemon.store import NewCall, Store
from mcdaemon.webhooks.delivery import STAFF_NOTE_KIND

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "outage"
QUEUE_LOG = FIXTURES / "outage_dev.queue_log"
AMI = FIXTURES / "outage_dev.ami"
#: the recording's last line: the window ends a little after it
LAST = 1796173302.0

CONFIG = """\
region: GB
inbound:
  contexts: [from-carrier]
policy:
  treat_as_mobile: ["+447700"]
store:
  path: {store}
"""


def unseen_callers() -> set[str]:
    """The `# call` labels of the .ami ending `seen=no`: the callers no AMI client saw."""
    labels = [line for line in AMI.read_text().splitlines() if line.startswith("# call")]
    return {re.search(r"callerid='([^']*)'", line).group(1)  # type: ignore[union-attr]
            for line in labels if line.rstrip().endswith("seen=no")}


def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "mcdaemon.yaml"
    path.write_text(CONFIG.format(store=tmp_path / "store" / "mcdaemon.db") + extra)
    return path


def run(config: Config, *, dry_run: bool, now: float = LAST + 60,
        files: list[str] | None = None) -> tuple[int, list[dict[str, object]], str]:
    out, err = io.StringIO(), io.StringIO()
    status = asyncio.run(backfill(config, out, err, files=files or [str(QUEUE_LOG)],
                                  since=LAST - 3600, until=now, now=now, dry_run=dry_run))
    return status, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_the_fixture_labels_eight_unseen_callers() -> None:
    assert len(unseen_callers()) == 8


def mcdaemon(*args: str) -> subprocess.CompletedProcess[str]:
    """A process of its own: `main()` in-process would point the log at pytest's capture."""
    return subprocess.run([sys.executable, "-m", "mcdaemon", "--log-level", "warning", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_dry_run_prints_the_outage_calls_and_changes_nothing(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    result = mcdaemon("backfill", "-c", str(path), "--queue-log", str(QUEUE_LOG),
                      "--since", str(int(LAST - 3600)), "--until", str(int(LAST + 60)),
                      "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 11
    assert unseen_callers() <= {line["caller"] for line in lines}
    for line in lines:
        assert line["outcome"] == "queue_abandon" and line["group"] == "support"
        assert line["extra"]["backfilled"] == "true" and line["recorded"] is False
        assert {"caller_e164", "call_id", "ended", "textable", "reason"} <= set(line)
    assert not (tmp_path / "store").exists()


def test_dry_run_decides_with_the_policy_and_max_age() -> None:
    config = load_config_text()
    status, lines, _ = run(config, dry_run=True)
    assert status == 0
    assert {line["reason"] for line in lines} == {"text"}, lines[0]
    assert all(line["textable"] for line in lines)
    status, late, _ = run(config, dry_run=True, now=LAST + 3 * 3600)
    assert {line["reason"] for line in late} == {"too_old"}


def load_config_text() -> Config:
    import tempfile

    directory = Path(tempfile.mkdtemp())
    return load_config(config_file(directory))


def live_records(config: Config) -> list[CallRecord]:
    """What the daemon saw live: the .ami replayed through the tracker."""
    out = io.StringIO()
    assert replay_files(config, [str(AMI)], out) == 0
    return [CallRecord.from_dict({key: value for key, value in json.loads(line).items()
                                  if key != "file"}) for line in out.getvalue().splitlines()]


def test_a_backfill_decides_only_what_the_store_has_not_seen(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path))
    seen = live_records(config)
    assert seen and unseen_callers().isdisjoint(record.caller for record in seen)

    async def record_live() -> None:
        store = await Store.open(config.store.path)
        try:
            calls = [NewCall(record, decide(record, config, PolicyView(), record.ended))
                     for record in seen]
            await store.record_calls(calls, now=LAST, destinations=[
                call.decision.destination for call in calls])
        finally:
            await store.close()

    asyncio.run(record_live())
    status, lines, err = run(config, dry_run=False)
    assert status == 0, err
    recorded = {line["caller"] for line in lines if line["recorded"]}
    assert recorded == unseen_callers()
    assert {line["reason"] for line in lines if not line["recorded"]} == {"already_recorded"}
    assert sum(bool(line["queued"]) for line in lines) == 8

    async def stored() -> tuple[int, int]:
        store = await Store.open_readonly(config.store.path)
        try:
            return await store.count_calls(), len(await store.messages())
        finally:
            await store.close()

    assert asyncio.run(stored()) == (11, 8 + sum(1 for record in seen if decide(
        record, config, PolicyView(), record.ended).text))
    status, again, _ = run(config, dry_run=False)
    assert status == 0
    assert not any(line["recorded"] for line in again)
    assert asyncio.run(stored())[0] == 11


def test_a_file_it_cannot_read_names_the_path_and_the_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "queue_log"
    log.write_text("")

    def refuse(path: str) -> str:  # as root, chmod 0 would not stop the read
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(backfill_module, "read_text", refuse)
    status, lines, err = run(load_config(config_file(tmp_path)), dry_run=True,
                             files=[str(log)])
    assert status == 1 and not lines
    assert len(err.splitlines()) == 1 and str(log) in err and "'asterisk' group" in err


def test_a_missing_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    result = mcdaemon("backfill", "-c", str(path), "--queue-log", str(tmp_path / "nope"),
                      "--since", "1h", "--queue", "support")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and str(tmp_path / "nope") in result.stderr


def test_the_config_names_the_default_file(tmp_path: Path) -> None:
    copy = tmp_path / "queue_log"
    copy.write_bytes(QUEUE_LOG.read_bytes())
    path = config_file(tmp_path)
    path.write_text(path.read_text().replace(
        "  contexts: [from-carrier]\n", f"  contexts: [from-carrier]\n  queue_log: {copy}\n"))
    path.write_text(path.read_text() + "ami:\n  - {name: lab, username: mcd, secret: s}\n")
    config = load_config(path)
    assert config.ami[0].queue_log == str(copy)
    out, err = io.StringIO(), io.StringIO()
    status = asyncio.run(backfill(config, out, err, files=None, since=LAST - 3600,
                                  until=LAST + 60, now=LAST + 60, dry_run=True))
    assert status == 0 and len(out.getvalue().splitlines()) == 11


def test_a_backfill_queues_what_a_live_call_would_cause(tmp_path: Path) -> None:
    """The staff of the group are told of each backfilled missed call, as of a live one."""
    path = config_file(tmp_path, "groups:\n  default:\n    triggers: [queue_abandon]\n"
                                 "    templates: {default: Sorry!}\n"
                                 "    notify_staff: ['+447700900999']\n")
    status, lines, err = run(load_config(path), dry_run=False)
    assert status == 0, err
    assert sum(bool(line["queued"]) for line in lines) == 11

    async def kinds() -> list[str]:
        store = await Store.open_readonly(str(tmp_path / "store" / "mcdaemon.db"))
        try:
            return [message.kind for message in await store.messages()]
        finally:
            await store.close()

    assert sorted(set(kinds_ := asyncio.run(kinds()))) == ["first", STAFF_NOTE_KIND]
    assert kinds_.count(STAFF_NOTE_KIND) == 11


def test_a_queue_log_given_by_hand_names_its_pbx_when_there_are_several(tmp_path: Path) -> None:
    path = config_file(tmp_path, "ami:\n  - {name: lab, username: mcd, secret: s}\n"
                                 "  - {name: branch, username: mcd, secret: s}\n")
    out, err = io.StringIO(), io.StringIO()
    status = asyncio.run(backfill(load_config(path), out, err, files=[str(QUEUE_LOG)],
                                  since=LAST - 3600, until=LAST + 60, now=LAST + 60,
                                  dry_run=True))
    assert status == 1 and "--pbx" in err.getvalue() and "lab, branch" in err.getvalue()
    status = asyncio.run(backfill(load_config(path), out, err, files=[str(QUEUE_LOG)],
                                  since=LAST - 3600, until=LAST + 60, now=LAST + 60,
                                  dry_run=True, pbx="branch"))
    assert status == 0
    assert {json.loads(line)["pbx"] for line in out.getvalue().splitlines()} == {"branch"}
