"""Moving a store from SQLite to PostgreSQL (`mcdaemon store migrate --to URL`): every table's
rows copied with their ids, in one transaction, into an empty database; the id sequences
moved past the copied ids, so the next row gets a new one.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from mcdaemon.store.connection import Connection
from mcdaemon.store.pg_connection import PgConnection
from mcdaemon.store.plumbing import StoreError

#: copied before the tables whose rows name theirs (message_parts' message_id, campaign
#: attempts' campaign_id); the others in name order
_FIRST = ("messages", "campaigns")
#: rows the schema itself writes (the migrations fill them; `call_counts`, `text_counts`
#: and `text_waits`: the database's triggers as the calls and texts are copied): never
#: copied
_SCHEMA_TABLES = frozenset({"message_transitions", "call_counts", "text_counts",
                            "text_waits"})


async def copy_store(source: Connection, target: PgConnection) -> dict[str, int]:
    """Copy every table of `source` (at the current schema) into `target` (migrated, empty):
    rows per table. Refuses a target that holds any row: nothing is merged."""
    names = await source.tables() - _SCHEMA_TABLES
    tables = [name for name in _FIRST if name in names] + sorted(names - set(_FIRST))
    missing = set(tables) - await target.tables()
    if missing:
        raise StoreError(f"{target.path} lacks the tables {', '.join(sorted(missing))}: "
                         "is it the same mcdaemon version?")
    copied: dict[str, int] = {}

    async def work() -> None:
        for table in tables:
            present = int(await target._scalar(f"SELECT COUNT(*) FROM {table}"))
            if present:
                raise StoreError(f"{target.path} is not empty ({table} holds {present} "
                                 "row(s)): migrate into a new, empty database")
        for table in tables:
            columns = sorted(await source._columns(table))
            select = f"SELECT {', '.join(columns)} FROM {table}"
            rows: list[tuple[Any, ...]] = [
                tuple(row) for row in await source._read(partial(source._rows, select))]
            await target._copy_rows(table, columns, rows)
            copied[table] = len(rows)
            if "id" in columns and rows:
                await target._scalar(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT MAX(id) FROM {table}))")

    await target._transaction(work)
    return copied
