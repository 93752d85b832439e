"""Contacts: who a caller is, for `{caller_name}`.

Two sources, asked in this order by the service before the policy decides a batch of calls
(the policy itself does no I/O: the name reaches it in `PolicyView.contact_name`):

1. the contact store (`contacts` table), filled by `mcdaemon contacts import FILE.csv`;
2. the optional lookup URL (`contacts.lookup`): `GET url` with the caller's number, answered
   with JSON `{"name": "...", "tags": [...]}`. A slow or failing CRM never holds a text back
   more than `timeout`: the numbers of a batch are looked up concurrently and whatever has not
   answered by then is given up (the text goes out with the caller ID name or the fallback).
   Answers (a name or "not known") are cached for `cache_ttl`; after `failure_threshold`
   failures in a row the circuit breaker opens and nothing is asked for `open_for`, then one
   trial call decides whether it closes again.

`CircuitBreaker` and `TtlCache` are plain objects taking the clock, tested without I/O.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

import structlog

from mcdaemon.config.contacts import NUMBER_FIELD, ContactsConfig, LookupConfig
from mcdaemon.config.model import StoreConfig
from mcdaemon.core import templates
from mcdaemon.core.phone import to_e164
from mcdaemon.logs import mask_number
from mcdaemon.store import (
    Contact,
    ContactsStore,
    StoreInterface,
    open_store,
    open_store_readonly,
)

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger("mcdaemon.contacts")

Clock = Callable[[], float]

#: the most of a lookup answer read (a name and a few tags need far less)
MAX_ANSWER_BYTES = 64 * 1024
#: a name or tag longer than this in an answer or a CSV file is cut (the template cuts
#: names to `policy.caller_name_max` anyway)
MAX_NAME = 200
MAX_TAGS = 50
_NUMBER_CHARACTERS = re.compile(r"[+\d\s().\-/]+")
_TAG_SEPARATORS = re.compile(r"[;|]")


# --------------------------------------------------------------------------- CSV import


@dataclass(frozen=True, slots=True)
class RowProblem:
    line: int
    value: str
    reason: str

    def describe(self, file: str) -> str:
        return f"{file}:{self.line}: {json.dumps(self.value, ensure_ascii=False)}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ParsedCsv:
    contacts: list[Contact]  # one per number, duplicates merged
    problems: list[RowProblem]
    rows: int  # data rows read (blank lines not counted)
    duplicates: int  # rows merged into an earlier row of the same number


class CsvError(Exception):
    """The file cannot be imported at all (unreadable, not UTF-8, no header)."""


def _plain(text: str) -> str:
    """No control or format characters (bidi overrides…), whitespace collapsed (NFKC)."""
    return templates.plain_text(text)


def split_tags(text: str) -> tuple[str, ...]:
    """`vip; wholesale|north` -> ("vip", "wholesale", "north"): `;` or `|`, no blanks, no
    repeats, in order."""
    tags = (_plain(tag)[:MAX_NAME] for tag in _TAG_SEPARATORS.split(text))
    return tuple(dict.fromkeys(tag for tag in tags if tag))[:MAX_TAGS]


def parse_csv(stream: IO[str], region: str, *, source: str, now: float) -> ParsedCsv:
    """Contacts from CSV text with a header row naming `number` (and optionally `name`,
    `tags`). Raises CsvError when there is no such header."""
    reader = csv.reader(stream)
    header: list[str] | None = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip().lstrip("\ufeff").casefold() for cell in row]
            break
    if header is None:
        raise CsvError("the file is empty; the first line must be the header number,name,tags")
    if "number" not in header:
        raise CsvError(f"line {reader.line_num}: no header naming the columns (the first "
                       "line must be number,name,tags)")
    columns: dict[str, int] = {name: header.index(name) for name in ("number", "name", "tags")
               if name in header}
    merged: dict[str, Contact] = {}
    problems: list[RowProblem] = []
    rows = duplicates = 0
    last_line = reader.line_num
    for row in reader:
        line, last_line = last_line + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        rows += 1

        def cell(name: str, row: list[str] = row) -> str:
            index = columns.get(name)
            return row[index] if index is not None and index < len(row) else ""

        raw_number = cell("number").strip()
        problem = _number_problem(raw_number, region)
        if problem:
            problems.append(RowProblem(line, raw_number, problem))
            continue
        e164 = to_e164(raw_number, region)
        assert e164 is not None
        name = _plain(cell("name"))[:MAX_NAME] or None
        if name is not None and _looks_like_address(name):
            problems.append(RowProblem(line, cell("name"),
                                       "the name reads as a web or e-mail address"))
            continue
        contact = Contact(e164, name, split_tags(cell("tags")), source, now)
        if e164 in merged:
            duplicates += 1
            contact = merged[e164].merged(contact)
        merged[e164] = contact
    return ParsedCsv(list(merged.values()), problems, rows, duplicates)


def _number_problem(number: str, region: str) -> str | None:
    if not number:
        return "no number"
    if not _NUMBER_CHARACTERS.fullmatch(number) or not any(ch.isdigit() for ch in number):
        return "not a phone number"
    if to_e164(number, region) is None:
        return f"not a phone number (region {region})"
    return None


def _looks_like_address(name: str) -> bool:
    return templates.clean_contact_name(name, MAX_NAME) is None and any(
        ch.isalpha() for ch in name)


async def import_csv(config_region: str, store: ContactsStore, path: Path, *,
                     now: float) -> tuple[ParsedCsv, int, int]:
    """Parse `path` and store its good rows in one transaction: (parsed, added, updated)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            parsed = parse_csv(stream, config_region, source=f"csv:{path.name}", now=now)
    except UnicodeDecodeError as exc:
        raise CsvError(f"not UTF-8 text (byte {exc.start}); save it as CSV UTF-8") from exc
    except OSError as exc:
        raise CsvError(f"cannot read: {exc.strerror or exc}") from exc
    added, updated = await store.merge_contacts(parsed.contacts)
    return parsed, added, updated


# --------------------------------------------------------------------------- the CLI


async def cli_import(config_region: str, store_config: StoreConfig, file: str, out: IO[str],
                     err: IO[str], now: float) -> int:
    """`mcdaemon contacts import`: 0 all rows imported, 1 some refused, 2 nothing readable."""
    from mcdaemon.store import StoreError

    path = Path(file)
    if not path.is_file():
        print(f"{file}: no such file", file=err)
        return 2
    try:
        store: StoreInterface = await open_store(store_config)
    except StoreError as exc:
        print(f"mcdaemon contacts import: {exc}", file=err)
        return 2
    try:
        parsed, added, updated = await import_csv(config_region, store, path, now=now)
    except CsvError as exc:
        print(f"{file}: {exc}", file=err)
        return 2
    finally:
        await store.close()
    for problem in parsed.problems:
        print(problem.describe(file), file=err)
    merged = f", {parsed.duplicates} duplicate row(s) merged" if parsed.duplicates else ""
    print(f"{file}: {len(parsed.contacts)} contact(s) imported ({added} new, {updated} "
          f"updated){merged}; {len(parsed.problems)} row(s) refused", file=out)
    return 1 if parsed.problems else 0


async def cli_show(region: str, store_config: StoreConfig, number: str, out: IO[str],
                   err: IO[str]) -> int:
    from mcdaemon.store import StoreError

    e164 = to_e164(number, region)
    if e164 is None:
        print(f"{number!r} is not a phone number", file=err)
        return 2
    try:
        store: StoreInterface = await open_store_readonly(store_config)
    except StoreError as exc:
        print(f"mcdaemon contacts show: {exc}", file=err)
        return 1
    try:
        contact = await store.contact(e164)
    finally:
        await store.close()
    if contact is None:
        print(f"{e164}: no contact", file=err)
        return 1
    print(f"number:  {contact.e164}\nname:    {contact.name or '-'}\n"
          f"tags:    {', '.join(contact.tags) or '-'}\nsource:  {contact.source or '-'}\n"
          f"updated: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(contact.updated_at))}",
          file=out)
    return 0


async def cli_list(store_config: StoreConfig, out: IO[str], err: IO[str], *, full: bool) -> int:
    from mcdaemon.store import StoreError

    try:
        store: StoreInterface = await open_store_readonly(store_config)
    except StoreError as exc:
        print(f"mcdaemon contacts list: {exc}", file=err)
        return 1
    try:
        contacts = await store.list_contacts()
    finally:
        await store.close()
    width = max((len(c.e164) for c in contacts), default=6)
    for contact in contacts:
        print(f"{mask_number(contact.e164, full):<{width}}  {contact.name or '-'}"
              + (f"  [{', '.join(contact.tags)}]" if contact.tags else ""), file=out)
    print(f"{len(contacts)} contact(s)", file=err)
    return 0


# --------------------------------------------------------------------------- cache, breaker


class TtlCache:
    """At most `max_size` entries, each kept `ttl` seconds of `clock`; the oldest go first."""

    def __init__(self, ttl: float, max_size: int, clock: Clock) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, value) for a live entry, else (False, None)."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if entry[0] <= self._clock():
            del self._entries[key]
            return False, None
        return True, entry[1]

    def put(self, key: str, value: Any) -> None:
        if self.max_size <= 0 or self.ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self.ttl, value)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class CircuitBreaker:
    """closed (calls go) → `threshold` failures in a row → open (no calls for `open_for`)
    → half-open: one trial call; its success closes the breaker, its failure opens it again."""

    def __init__(self, threshold: int, open_for: float, clock: Clock) -> None:
        self.threshold = threshold
        self.open_for = open_for
        self._clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._trial = False  # the half-open trial call is out

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.open_for:
            return "open"
        return "half_open"

    def allow(self) -> bool:
        """May a call go now? In half-open state only one (the trial) does."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial:
            return False
        self._trial = True
        return True

    def success(self) -> None:
        self.failures = 0
        self._opened_at = None
        self._trial = False

    def failure(self) -> bool:
        """Record a failure; True when it opens the breaker (a failed trial opens it again)."""
        self.failures += 1
        if self._trial or (self._opened_at is None and self.failures >= self.threshold):
            self._opened_at = self._clock()
            self._trial = False
            return True
        return False


# --------------------------------------------------------------------------- the lookup


@dataclass(frozen=True, slots=True)
class LookupAnswer:
    name: str | None
    tags: tuple[str, ...] = ()


class LookupFailed(Exception):
    """The lookup gave no usable answer (HTTP error, bad JSON, timeout)."""


def parse_answer(status: int, body: bytes) -> LookupAnswer:
    """200 with `{"name": ..., "tags": [...]}` (both optional), or 404 (not known)."""
    if status == 404:
        return LookupAnswer(None)
    if status != 200:
        raise LookupFailed(f"HTTP {status}")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise LookupFailed("the answer is not JSON") from exc
    if data is None:
        return LookupAnswer(None)
    if not isinstance(data, dict):
        raise LookupFailed("the answer is not a JSON object")
    name = data.get("name")
    tags = data.get("tags") or []
    if name is not None and not isinstance(name, str):
        raise LookupFailed("`name` is not text")
    if not isinstance(tags, list):
        raise LookupFailed("`tags` is not a list")
    clean = _plain(name)[:MAX_NAME] if name else ""
    return LookupAnswer(clean or None, tuple(
        _plain(str(tag))[:MAX_NAME] for tag in tags[:MAX_TAGS] if isinstance(tag, str | int)))


def lookup_url(template: str, e164: str) -> str:
    return template.replace(NUMBER_FIELD, quote(e164, safe=""))


class ContactLookup:
    """The HTTP lookup with its cache and circuit breaker; one per Service."""

    def __init__(self, config: LookupConfig, *, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.cache = TtlCache(config.cache_ttl, config.cache_size, clock)
        self.breaker = CircuitBreaker(config.failure_threshold, config.open_for, clock)
        self._session: aiohttp.ClientSession | None = None
        self._given_up: set[asyncio.Task[LookupAnswer]] = set()  # cancelled, still ending
        self.requests = 0  # HTTP requests made (for tests and the log)

    def update(self, config: LookupConfig) -> None:
        """A reloaded config: new settings start with an empty cache and a closed breaker."""
        if config != self.config:
            self.config = config
            self.cache = TtlCache(config.cache_ttl, config.cache_size, self._clock)
            self.breaker = CircuitBreaker(config.failure_threshold, config.open_for,
                                          self._clock)

    async def close(self) -> None:
        if self._given_up:
            await asyncio.wait(self._given_up, timeout=1.0)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _forget(self, task: asyncio.Task[LookupAnswer]) -> None:
        self._given_up.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: it ended as a timeout or an error after all

    async def lookup_many(self, numbers: Sequence[str]) -> dict[str, LookupAnswer]:
        """Answers for the numbers the cache or the CRM knows within `timeout` (all at once).
        Numbers not answered in time, failed or skipped (breaker open) are left out."""
        answers: dict[str, LookupAnswer] = {}
        wanted: list[str] = []
        for number in dict.fromkeys(numbers):
            hit, value = self.cache.get(number)
            if hit:
                if value is not None:
                    answers[number] = value
            elif self.breaker.allow():
                wanted.append(number)
        if not wanted:
            return answers
        tasks = {asyncio.create_task(self._fetch(number)): number for number in wanted}
        _, pending = await asyncio.wait(tasks, timeout=self.config.timeout)
        for task in pending:
            task.cancel()  # it ends in the background: the batch does not wait for it
            self._given_up.add(task)
            task.add_done_callback(self._forget)
        failures = 0
        for task, number in tasks.items():
            if task in pending:
                failures += 1
                log.debug("contact lookup too slow", caller=mask_number(number),
                          timeout=self.config.timeout)
                continue
            exc = task.exception()
            if exc is not None:
                failures += 1
                log.debug("contact lookup failed", caller=mask_number(number), error=str(exc)
                          or type(exc).__name__)
                continue
            answer: LookupAnswer = task.result()
            self.breaker.success()
            self.cache.put(number, answer if answer.name or answer.tags else None)
            if answer.name or answer.tags:
                answers[number] = answer
        opened = False
        for _ in range(failures):
            opened = self.breaker.failure() or opened
        if failures:
            log.warning("contact lookup failed or too slow; texts go without its names",
                        where=self.config.where, failed=failures, asked=len(wanted),
                        breaker=self.breaker.state)
        if opened:
            log.warning("contact lookup paused (circuit breaker open)", where=self.config.where,
                        failures=self.breaker.failures, open_for=self.config.open_for)
        return answers

    async def _fetch(self, number: str) -> LookupAnswer:
        import aiohttp
        import yarl

        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.requests += 1
        # lookup_many gives up at `timeout`; this only bounds a request it no longer waits for
        timeout = aiohttp.ClientTimeout(total=self.config.timeout + 1.0)
        try:
            async with self._session.get(
                    yarl.URL(lookup_url(self.config.url, number), encoded=True),
                    headers={"Accept": "application/json", **self.config.headers},
                    timeout=timeout, allow_redirects=False) as response:
                body = await _read_limited(response)
                return parse_answer(response.status, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LookupFailed(str(exc) or type(exc).__name__) from exc


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise LookupFailed(f"the answer is longer than {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ContactNames:
    """What the service asks before deciding a batch: a name per number, store then lookup."""

    def __init__(self, config: ContactsConfig, *, clock: Clock = time.monotonic) -> None:
        self.lookup = ContactLookup(config.lookup, clock=clock)

    def update(self, config: ContactsConfig) -> None:
        self.lookup.update(config.lookup)

    async def names(self, store: ContactsStore, numbers: Sequence[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(numbers))
        if not wanted:
            return {}
        names = {number: contact.name
                 for number, contact in (await store.contacts_for(wanted)).items()
                 if contact.name}
        missing = [number for number in wanted if number not in names]
        if missing and self.lookup.config.enabled:
            for number, answer in (await self.lookup.lookup_many(missing)).items():
                if answer.name:
                    names[number] = answer.name
        return names

    async def close(self) -> None:
        await self.lookup.close()

