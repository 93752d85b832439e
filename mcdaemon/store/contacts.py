"""Contacts: the names callers are greeted by, merged from imports and lookups.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from mcdaemon.store.plumbing import Plumbing

log = structlog.get_logger("mcdaemon.store")


@dataclass(frozen=True, slots=True)
class Contact:
    """A row of `contacts`: a caller's name and tags, from an import (`source`)."""

    e164: str
    name: str | None
    tags: tuple[str, ...] = ()
    source: str = ""
    updated_at: float = 0.0

    def merged(self, newer: Contact) -> Contact:
        """`newer` over this one: its name if it has one, the tags of both."""
        tags = tuple(dict.fromkeys([*self.tags, *newer.tags]))
        return Contact(self.e164, newer.name or self.name, tags, newer.source or self.source,
                       max(self.updated_at, newer.updated_at))


def _contact(row: Sequence[Any]) -> Contact:
    try:
        tags = tuple(str(tag) for tag in json.loads(row[2] or "[]"))
    except (ValueError, TypeError):
        tags = ()
    return Contact(str(row[0]), row[1], tags, str(row[3] or ""), float(row[4] or 0.0))


class Contacts(Plumbing):
    """Contacts."""

    async def contacts_for(self, numbers: Sequence[str]) -> dict[str, Contact]:
        """The stored contacts among these E.164 numbers (a few queries whatever the count)."""
        wanted = sorted(set(numbers))

        async def work() -> dict[str, Contact]:
            found: dict[str, Contact] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                for row in await self._rows(
                        "SELECT e164, name, tags, source, updated_at FROM contacts"
                        f" WHERE e164 IN ({','.join('?' * len(chunk))})", chunk):
                    found[str(row[0])] = _contact(row)
            return found

        return await self._read(work) if wanted else {}

    async def merge_contacts(self, contacts: Sequence[Contact]) -> tuple[int, int]:
        """Add or update contacts in one transaction: a non-empty name replaces the stored
        one, tags are added to the stored ones. Returns (added, updated)."""
        async def work() -> tuple[int, int]:
            known: dict[str, Contact] = {}
            numbers = sorted({contact.e164 for contact in contacts})
            for start in range(0, len(numbers), 500):
                chunk = numbers[start:start + 500]
                for row in await self._rows(
                        "SELECT e164, name, tags, source, updated_at FROM contacts"
                        f" WHERE e164 IN ({','.join('?' * len(chunk))})", chunk):
                    known[str(row[0])] = _contact(row)
            added = sum(1 for number in numbers if number not in known)
            merged = [known[contact.e164].merged(contact) if contact.e164 in known else contact
                      for contact in contacts]
            await self._many(
                "INSERT INTO contacts (e164, name, tags, source, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT (e164) DO UPDATE SET name = excluded.name, tags = excluded.tags,"
                " source = excluded.source, updated_at = excluded.updated_at",
                [(c.e164, c.name, json.dumps(list(c.tags), ensure_ascii=False), c.source,
                  c.updated_at) for c in merged])
            return added, len(numbers) - added

        return await self._transaction(work) if contacts else (0, 0)

    async def list_contacts(self) -> list[Contact]:
        """Every contact, by number (none when the store predates the contacts table)."""
        if "contacts" not in await self.tables():
            return []
        rows = await self._read(lambda: self._rows(
            "SELECT e164, name, tags, source, updated_at FROM contacts ORDER BY e164"))
        return [_contact(row) for row in rows]

    async def contact(self, e164: str) -> Contact | None:
        if "contacts" not in await self.tables():
            return None
        return (await self.contacts_for([e164])).get(e164)
