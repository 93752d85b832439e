"""Moving to PostgreSQL as an administrator does it: `mcdaemon store migrate --to URL` copies
the SQLite store (every table, ids kept) into an empty database and says what it copied; a
database that holds anything is refused; `check-config` connects and names the schema."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcdaemon.cli import main
from mcdaemon.commands.migrate import migrate_store
from mcdaemon.config.load import load_config
from mcdaemon.contacts.lookup import Contact
from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import SCHEMA_VERSION, PgStore, ReceiptIn, Store, WebhookIn

pytestmark = pytest.mark.postgres

T0 = 1_736_157_600.0


def write_config(tmp_path: Path, store: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "ami": [{"name": "lab", "port": 1, "username": "mcd", "secret": "s"}],
        "smpp": {"host": "127.0.0.1", "port": 1, "system_id": "mcd", "password": "p",
                 "source_addr": "+447700900000"},
        "store": store}), encoding="utf-8")
    path.chmod(0o600)
    return path


async def a_store_with_history(path: Path) -> None:
    """Some of every kind of row: calls and texts in every state, parts and receipts,
    replies, opt-outs, switches, webhooks, contacts, bookings, a campaign."""
    store = await Store.open(str(path))
    try:
        for n in range(5):
            caller = f"+4477009000{n:02d}"
            record = CallRecord(pbx="lab", call_id=f"c{n}", caller=caller, caller_name=None,
                                caller_e164=caller, did="100", group="sales",
                                outcome=Outcome.QUEUE_ABANDON, stages=(), started=T0,
                                ended=T0 + n, wait_seconds=12.5)
            await store.record_call(record, Decision(True, "sent", group="sales",
                                                     body=f"Sorry {n}", destination=caller),
                                    now=T0 + n, destination=caller)
        claimed = await store.claim_due(T0 + 10, 3)
        await store.mark_submitted(claimed[0].id, ["a1", "a2"], T0 + 11)
        await store.mark_submitted(claimed[1].id, ["b1"], T0 + 11)
        await store.apply_receipts([ReceiptIn("a1", None, "DELIVRD", None, T0 + 12),
                                    ReceiptIn("zz", None, "DELIVRD", None, T0 + 12)])
        await store.add_inbound("+447700900004", "+447700900000", "STOP", T0 + 20, "STOP")
        await store.opt_out("+447700900004", "STOP", T0 + 20)
        await store.set_switch("group:sales", False, T0 + 30)
        await store.enqueue_webhooks([WebhookIn("d1", "crm", "call.missed", "c0", "c0",
                                                "{}")], T0)
        await store.merge_contacts([Contact("+447700900001", "Zoë", ("vip",), "import", T0)])
        await store.add_booking("+447700900000", 120.0, T0 + 40, now=T0 + 40)
        await store.start_or_merge(pbx="lab", call_id="c3", e164="+447700900003",
                                   group="sales", campaign_pbx="lab", first_due=T0 + 60,
                                   now=T0 + 3)
    finally:
        await store.close()


async def test_a_sqlite_store_moves_into_an_empty_database_whole_with_its_ids(
        tmp_path: Path, pg_url: str) -> None:
    path = tmp_path / "mcdaemon.db"
    await a_store_with_history(path)
    config = load_config(write_config(tmp_path, {"path": str(path)}))
    out, err = io.StringIO(), io.StringIO()

    assert await migrate_store(config, pg_url, out, err) == 0, err.getvalue()

    report = out.getvalue()
    for line in ("  calls: 5 row(s)", "  messages: 5 row(s)", "  message_parts: 3 row(s)",
                 "  receipts: 2 row(s)", "  opt_outs: 1 row(s)", "  campaigns: 1 row(s)",
                 "  campaign_attempts: 1 row(s)", "  contacts: 1 row(s)",
                 "  bookings: 1 row(s)", "  webhooks: 1 row(s)"):
        assert line in report.splitlines()
    sqlite, pg = await Store.open_readonly(str(path)), await PgStore.open(pg_url)
    try:
        assert await pg.messages() == await sqlite.messages()
        assert await pg.call("lab", "c2") == await sqlite.call("lab", "c2")
        assert await pg.report_counts(T0 - 1, T0 + 99) == await sqlite.report_counts(
            T0 - 1, T0 + 99)
        assert [[tuple(row) for row in batch.texts] async for batch in pg.report_texts(
            T0 - 1, T0 + 99)] == [[tuple(row) for row in batch.texts]
                                  async for batch in sqlite.report_texts(T0 - 1, T0 + 99)]
        assert await pg.switches() == {"group:sales": False}
        assert await pg.campaigns() == await sqlite.campaigns()
        assert await pg.contacts_for(["+447700900001"]) == await sqlite.contacts_for(
            ["+447700900001"])
        # the sequences moved on: a new row gets a new id
        new = await pg.enqueue_message(pbx="lab", call_id="t", kind="test", seq=0,
                                       destination="+447700900099", body="hi", now=T0,
                                       not_before=None, expires_at=None)
        assert new == max(m.id for m in await sqlite.messages()) + 1
    finally:
        await sqlite.close()
        await pg.close()


def test_a_database_that_holds_anything_is_refused_and_left_as_it_is(
        tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mcdaemon.db"
    asyncio.run(a_store_with_history(path))
    config = write_config(tmp_path, {"path": str(path)})
    assert main(["store", "migrate", "-c", str(config), "--to", pg_url]) == 0
    assert "  calls: 5 row(s)" in capsys.readouterr().out

    assert main(["store", "migrate", "-c", str(config), "--to", pg_url]) == 1
    err = capsys.readouterr().err
    assert "is not empty" in err and "new, empty database" in err

    async def calls() -> int:
        pg = await PgStore.open(pg_url)
        try:
            return await pg.count_calls()
        finally:
            await pg.close()

    assert asyncio.run(calls()) == 5


def test_check_config_connects_and_names_the_schema(tmp_path: Path, pg_url: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"url": pg_url})

    assert main(["check-config", "-c", str(config)]) == 0
    assert "connected; no schema yet" in capsys.readouterr().out

    async def first_start() -> None:
        await (await PgStore.open(pg_url)).close()

    asyncio.run(first_start())
    assert main(["check-config", "-c", str(config)]) == 0
    assert f"schema {SCHEMA_VERSION} (current)" in capsys.readouterr().out


def test_check_config_names_store_url_when_the_server_refuses(tmp_path: Path,
                                                              pg_url: str) -> None:
    wrong = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    result = subprocess.run([sys.executable, "-m", "mcdaemon", "check-config", "-c",
                             str(write_config(tmp_path, {"url": wrong}))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "store.url: cannot connect to the store" in result.stderr
    assert "no_such_database" in result.stderr
