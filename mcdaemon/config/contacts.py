"""The `contacts:` section of the config: the optional name lookup over HTTP.

Kept apart from `config.load` (which calls `read_contacts`) so the contact code owns its
settings; it imports nothing of the loader (the `Section` is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from mcdaemon.config.reader import Section

NUMBER_FIELD = "{number}"


@dataclass(frozen=True, slots=True)
class LookupConfig:
    """GET `url` with `{number}` replaced by the caller's E.164 number (URL-encoded, so
    `%2B447700900123`); the answer is JSON `{"name": "...", "tags": [...]}`. Empty url: off."""

    url: str = field(default="", repr=False)  # may hold a token: logs show `where` only
    timeout: float = 0.3  # the whole lookup of a batch of calls; then the text goes without
    cache_ttl: float = 3600.0  # answers (names and "not known") are kept this long
    cache_size: int = 10_000  # numbers kept at most; the oldest go first
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    failure_threshold: int = 5  # consecutive failures that open the circuit breaker
    open_for: float = 60.0  # no calls while open; then one trial call

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def where(self) -> str:
        """The URL without path, query or credentials: what logs may show."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or '?'}" + (
            f":{parts.port}" if parts.port else "")


@dataclass(frozen=True, slots=True)
class ContactsConfig:
    lookup: LookupConfig = field(default_factory=LookupConfig)


def read_contacts(section: Section) -> ContactsConfig:
    """`contacts:`; every key is read (and so known) whether the section is there or not."""
    lookup_section = section.section("lookup")
    url = lookup_section.str("url", "").strip()
    headers: dict[str, str] = {}
    for name, value in lookup_section.section("headers").items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            lookup_section.error(f"headers.{name}", "must be text")
        elif any(ch in f"{name}{value}" for ch in "\r\n"):
            lookup_section.error(f"headers.{name}", "must not contain line breaks")
        else:
            headers[name] = str(value)
    if headers:  # an API token, usually: the file must not be readable by others
        section.reader.warnings.append("inline-secret")
    lookup = LookupConfig(
        url=url,
        timeout=lookup_section.duration("timeout", 0.3, minimum=0.01),
        cache_ttl=lookup_section.duration("cache_ttl", 3600.0),
        cache_size=lookup_section.int("cache_size", 10_000, minimum=0, maximum=10_000_000),
        headers=headers,
        failure_threshold=lookup_section.int("failure_threshold", 5, minimum=1,
                                             maximum=1000),
        open_for=lookup_section.duration("open_for", 60.0, minimum=0.1),
    )
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            lookup_section.error("url", "must be an http:// or https:// URL, e.g. "
                                        "https://crm.example/api/lookup?number={number}")
        elif NUMBER_FIELD not in url:
            lookup_section.error("url", "must contain {number} where the caller's number "
                                        "goes, e.g. https://crm.example/api/lookup?"
                                        "number={number}")
    if lookup.timeout > 5.0:
        lookup_section.error("timeout", f"{lookup.timeout:g} s would hold every text back "
                                        "that long when the lookup is slow; at most 5s")
    lookup_section.done()
    section.done()
    return ContactsConfig(lookup=lookup)
