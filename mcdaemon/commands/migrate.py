"""`mcdaemon store migrate --to postgresql://…`: the SQLite store (`store.path`) copied into an
empty PostgreSQL database, ids kept, so several daemons can then share it (`store.url`).
The password is asyncpg's (libpq's) to find: PGPASSWORD or ~/.pgpass, never the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from mcdaemon.config.model import Config
from mcdaemon.store import PgStore, Store, StoreError
from mcdaemon.store.pg_connection import shown_url
from mcdaemon.store.transfer import copy_store


async def migrate_store(config: Config, url: str, out: IO[str], err: IO[str]) -> int:
    """0 copied, 1 refused (the message says why and what to do)."""
    if config.store.url:
        print(f"{config.source}: store.url: already PostgreSQL ({config.store.url}); "
              "`store migrate` copies a SQLite store (store.path)", file=err)
        return 1
    if not Path(config.store.path).is_file():
        print(f"{config.source}: store.path: there is no store at {config.store.path}",
              file=err)
        return 1
    if not url.startswith(("postgresql://", "postgres://")):
        print(f"--to: {url!r} is not a PostgreSQL URL (postgresql://USER@HOST:5432/DATABASE)",
              file=err)
        return 1
    try:
        source = await Store.open(config.store.path)
        try:
            target = await PgStore.open(url)
            try:
                copied = await copy_store(source, target)
            finally:
                await target.close()
        finally:
            await source.close()
    except StoreError as exc:
        print(f"mcdaemon store migrate: {exc}", file=err)
        return 1
    print(f"copied {config.store.path} into {shown_url(url)}:", file=out)
    for table, count in copied.items():
        print(f"  {table}: {count} row(s)", file=out)
    print(f"  {sum(copied.values())} row(s) in {len(copied)} tables", file=out)
    print(f"next: in {config.source} replace store.path with store.url: {shown_url(url)} "
          "(its password by store.password_env or store.password_file), then start the "
          "daemons", file=out)
    return 0
