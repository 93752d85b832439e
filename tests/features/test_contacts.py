"""Contacts: CSV import, the name chosen per source, hostile caller ID names, and the lookup
over real TCP (timeout, circuit breaker, cache)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from mcdaemon.cli import main
from mcdaemon.config.contacts import LookupConfig
from mcdaemon.config.load import config_from_dict
from mcdaemon.config.reader import ConfigError
from mcdaemon.contacts.lookup import (
    CircuitBreaker,
    ContactLookup,
    ContactNames,
    CsvError,
    LookupFailed,
    TtlCache,
    lookup_url,
    parse_answer,
    parse_csv,
    split_tags,
)
from mcdaemon.core import templates
from mcdaemon.core.policy import decide
from mcdaemon.core.records import CallRecord, Outcome, PolicyView
from mcdaemon.store import Contact, Store

NOW = time.time()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- CSV


def parse(text: str, region: str = "GB") -> Any:
    return parse_csv(io.StringIO(text), region, source="csv:test.csv", now=NOW)


def test_csv_rows_are_normalised_merged_and_bad_rows_named_by_line() -> None:
    parsed = parse(
        "number,name,tags\n"
        "07700 900123,Jane Smith,vip;north\n"          # line 2
        "+44 7700 900456,Bob,\n"                       # line 3
        "\n"                                           # line 4: blank, skipped
        "12ab,Nobody,\n"                               # line 5
        ",No number,\n"                                # line 6
        "447700900123,,wholesale|vip\n"                # line 7: duplicate, empty name
        "00447700900456,Robert,new\n"                  # line 8: duplicate, new name
        "07700900789,see www.evil.example,\n"          # line 9: name is an address
        '"07700 900999","Multi\nLine",x\n'             # lines 10-11
        "123,Short,\n")                                # line 12
    by_number = {contact.e164: contact for contact in parsed.contacts}
    assert by_number["+447700900123"].name == "Jane Smith"
    assert by_number["+447700900123"].tags == ("vip", "north", "wholesale")
    assert by_number["+447700900456"].name == "Robert"
    assert by_number["+447700900456"].tags == ("new",)
    assert by_number["+447700900999"].name == "Multi Line"
    assert set(by_number) == {"+447700900123", "+447700900456", "+447700900999"}
    assert parsed.duplicates == 2 and parsed.rows == 9
    described = [problem.describe("contacts.csv") for problem in parsed.problems]
    assert described == [
        'contacts.csv:5: "12ab": not a phone number',
        'contacts.csv:6: "": no number',
        'contacts.csv:9: "see www.evil.example": the name reads as a web or e-mail address',
        'contacts.csv:12: "123": not a phone number (region GB)',
    ]


def test_csv_needs_a_header_with_a_number_column() -> None:
    with pytest.raises(CsvError, match="header"):
        parse("07700900123,Jane,vip\n")
    with pytest.raises(CsvError, match="empty"):
        parse("\n\n")
    parsed = parse("Tags,NUMBER\nvip,07700900123\n")  # any order, any case; name optional
    assert parsed.contacts == [Contact("+447700900123", None, ("vip",), "csv:test.csv", NOW)]


def test_tags_split_on_semicolons_and_bars() -> None:
    assert split_tags(" vip ; north|vip||  ") == ("vip", "north")
    assert split_tags("") == ()


@pytest.fixture
def _fresh_logging() -> Iterator[None]:
    """`cli.main` points the log at the stream of the moment (pytest's capture): undo it."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("_fresh_logging")
def test_contacts_import_show_list_exit_codes(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"region: GB\nstore:\n  path: {tmp_path / 'db.sqlite'}\n")
    good = tmp_path / "good.csv"
    good.write_bytes("\ufeffnumber,name,tags\n07700900123,Zoë Smith,vip\n".encode())
    assert main(["contacts", "import", "-c", str(config), str(good)]) == 0
    out = capsys.readouterr().out
    assert "1 contact(s) imported (1 new, 0 updated)" in out

    mixed = tmp_path / "contacts.csv"
    mixed.write_text("number,name,tags\n07700900123,,north\n12ab,x,\n07700900456,Bob,\n",
                     encoding="utf-8")
    assert main(["contacts", "import", "-c", str(config), str(mixed)]) == 1
    captured = capsys.readouterr()
    assert f'{mixed}:3: "12ab": not a phone number' in captured.err
    assert "2 contact(s) imported (1 new, 1 updated); 1 row(s) refused" in captured.out

    assert main(["contacts", "show", "-c", str(config), "07700 900123"]) == 0
    out = capsys.readouterr().out
    assert "name:    Zoë Smith" in out and "tags:    vip, north" in out  # tags added up
    assert main(["contacts", "show", "-c", str(config), "07700 900999"]) == 1
    capsys.readouterr()

    assert main(["contacts", "list", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "*********123  Zoë Smith  [vip, north]" in out and "+447700900123" not in out
    assert main(["contacts", "list", "-c", str(config), "--full"]) == 0
    assert "+447700900456  Bob" in capsys.readouterr().out

    assert main(["contacts", "import", "-c", str(config), str(tmp_path / "missing.csv")]) == 2
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("07700900123,Jane\n", encoding="utf-8")
    assert main(["contacts", "import", "-c", str(config), str(headerless)]) == 2
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("number,name\n07700900123,Zoë\n".encode("latin-1"))
    assert main(["contacts", "import", "-c", str(config), str(latin1)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


async def test_an_import_stores_every_good_row_in_one_transaction(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "db.sqlite"))
    try:
        contacts = [Contact(f"+4477009{index:05d}", f"Name {index}", (), "csv:x", NOW)
                    for index in range(1200)]
        assert await store.merge_contacts(contacts) == (1200, 0)
        found = await store.contacts_for([c.e164 for c in contacts] + ["+447700999999"])
        assert len(found) == 1200 and found["+447700900007"].name == "Name 7"
        assert await store.merge_contacts(
            [Contact("+447700900007", None, ("a",), "csv:y", NOW + 1)]) == (0, 1)
        kept = await store.contact("+447700900007")
        assert kept == Contact("+447700900007", "Name 7", ("a",), "csv:y", NOW + 1)
    finally:
        await store.close()


# --------------------------------------------------------------------------- names


HOSTILE = [
    ("WIRELESS CALLER", None),
    ("UNKNOWN", None),
    ("Anonymous", None),
    ("LONDON UK", None),
    ("DALLAS TX", None),
    ("07700900123", None),
    ("+44 7700 900123", None),
    ("...---", None),
    ("Visit evil.com", None),
    ("ev\u0456l.com", None),  # a Cyrillic i
    ("WWW EVIL", None),
    ("win at http", None),
    ("me@evil", None),
    ("acme . com", None),
    ("J\u202eohn", "John"),  # bidi override removed
    ("Jo\u200bhn\x07\x1b[31m", None),  # zero-width space and a bell go; "[31m" has digits
    ("Jo\u200bhn\x07", "John"),
    ("  Mary \t\n  Jane  ", "Mary Jane"),
    ("ＪＯＨＮ ＳＭＩＴＨ", "John Smith"),  # full-width letters
    ("Z\u0337\u0322\u0334a\u0338\u0335l\u0334\u0336g\u0335o\u0336", None),
    ("SMITH JOHN", "Smith John"),
    ("O'Brien", "O'Brien"),
    ("Mr. Smith", "Mr. Smith"),
    ("A" * 500, "A" + "a" * 19),
    ("Jean-Pierre Marie-Louise Dupont", "Jean-Pierre"),
]


@pytest.mark.parametrize(("raw", "expected"), HOSTILE)
def test_hostile_caller_id_names(raw: str, expected: str | None) -> None:
    assert templates.clean_caller_name(raw, 20) == expected


@pytest.mark.parametrize("raw", ["Acme & Sons (Leeds) 2", "Flat 3 Ltd", "Jane (VIP)"])
def test_contact_names_allow_more_than_caller_id(raw: str) -> None:
    assert templates.clean_contact_name(raw, 30) == raw
    assert templates.clean_caller_name(raw, 30) != raw


@pytest.mark.parametrize("raw", ["www.acme.example", "mail me@x", "Unknown", "\u202e\u200b",
                                 "12345", "acme . com"])
def test_contact_names_refuse_addresses_and_placeholders(raw: str) -> None:
    assert templates.clean_contact_name(raw, 30) is None


def test_the_name_comes_from_the_contact_then_caller_id_then_the_fallback() -> None:
    assert templates.caller_name_for("Jane Smith", "BOB JONES", 20) == "Jane Smith"
    assert templates.caller_name_for(None, "BOB JONES", 20) == "Bob Jones"
    assert templates.caller_name_for("see evil.com", "BOB JONES", 20) == "Bob Jones"
    assert templates.caller_name_for(None, "WIRELESS CALLER", 20) is None
    assert templates.caller_name_for("A very long contact name indeed", None, 20) == (
        "A very long contact")


def record(caller_name: str | None = "WIRELESS CALLER") -> CallRecord:
    return CallRecord(pbx="lab", call_id="c1", caller="447700900123", caller_name=caller_name,
                      caller_e164="+447700900123", did="442071230001", group="sales",
                      outcome=Outcome.QUEUE_ABANDON, stages=("queue",), started=NOW - 60,
                      ended=NOW - 10, wait_seconds=40.0)


@pytest.mark.parametrize(("contact", "caller_id", "greeting"), [
    ("Jane Smith", "BOB JONES", "Hi Jane Smith,"),
    (None, "BOB JONES", "Hi Bob Jones,"),
    (None, "WIRELESS CALLER", "Hi there,"),
    ("https://evil.example", "\u202eevil.com", "Hi there,"),
])
def test_the_policy_uses_the_name_given_in_the_view(contact: str | None, caller_id: str,
                                                    greeting: str) -> None:
    config = config_from_dict({"region": "GB", "groups": {"sales": {
        "queues": ["sales"], "triggers": ["queue_abandon"],
        "templates": {"default": "Hi {caller_name}, sorry we missed you."}}}})
    decision = decide(record(caller_id), config, PolicyView(contact_name=contact), NOW)
    assert decision.text and decision.body is not None
    assert decision.body.startswith(greeting)


def test_the_contacts_section_is_read_and_checked() -> None:
    config = config_from_dict({"contacts": {"lookup": {
        "url": "https://crm.example/api/lookup?number={number}", "timeout": "250ms",
        "cache_ttl": "10m", "headers": {"Authorization": "Bearer x"},
        "failure_threshold": 3, "open_for": "30s"}}})
    lookup = config.contacts.lookup
    assert (lookup.enabled, lookup.timeout, lookup.cache_ttl, lookup.failure_threshold,
            lookup.open_for) == (True, 0.25, 600.0, 3, 30.0)
    assert lookup.headers == {"Authorization": "Bearer x"}
    assert "Bearer" not in repr(config.contacts) and lookup.where == "https://crm.example"
    assert not config_from_dict({}).contacts.lookup.enabled
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"contacts": {"lookup": {"url": "ftp://crm.example/{number}",
                                                  "timeot": "1s"}}}, source="c.yaml")
    assert caught.value.problems == [
        "c.yaml: contacts.lookup.url: must be an http:// or https:// URL, e.g. "
        "https://crm.example/api/lookup?number={number}",
        "c.yaml: contacts.lookup.timeot: unknown key (a typo? see config.example.yaml)"]
    with pytest.raises(ConfigError, match=r"must contain \{number\}"):
        config_from_dict({"contacts": {"lookup": {"url": "https://crm.example/lookup"}}})
    with pytest.raises(ConfigError, match="at most 5s"):
        config_from_dict({"contacts": {"lookup": {"url": "https://c.example/{number}",
                                                  "timeout": "10s"}}})


# --------------------------------------------------------------------------- breaker, cache


def test_the_breaker_opens_after_n_failures_and_lets_one_trial_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, open_for=60, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        assert not breaker.failure()
    breaker.success()  # a success resets the count
    for _ in range(2):
        breaker.failure()
    assert breaker.state == "closed"
    assert breaker.failure()  # the third in a row opens it
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 59.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial only
    assert breaker.failure()  # the failed trial opens it again
    assert breaker.state == "open"
    clock.now += 60
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_the_cache_expires_and_stays_bounded() -> None:
    clock = FakeClock()
    cache = TtlCache(ttl=10, max_size=2, clock=clock)
    cache.put("a", 1)
    cache.put("b", None)  # "not known" is an answer too
    assert cache.get("a") == (True, 1) and cache.get("b") == (True, None)
    cache.put("c", 3)
    assert cache.get("a") == (False, None) and len(cache) == 2
    clock.now += 10
    assert cache.get("b") == (False, None) and cache.get("c") == (False, None)
    assert cache.get("zzz") == (False, None)


def test_answers_are_parsed_strictly() -> None:
    assert parse_answer(200, b'{"name": "Jane\\u202e", "tags": ["vip", 3]}').name == "Jane"
    assert parse_answer(200, b'{"name": null}').name is None
    assert parse_answer(404, b"").name is None
    for status, body in ((500, b"{}"), (200, b"<html>"), (200, b"[1]"),
                         (200, b'{"name": 5}'), (200, b'{"tags": "x"}')):
        with pytest.raises(LookupFailed):
            parse_answer(status, body)
    assert lookup_url("https://crm.example/l?n={number}", "+447700900123") == (
        "https://crm.example/l?n=%2B447700900123")


# --------------------------------------------------------------------------- lookup over TCP

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Crm:
    """A lookup endpoint on 127.0.0.1: answers with `names`, or by `behaviour`."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {"+447700900123": "Jane Smith"}
        self.behaviour = "normal"  # normal | slow | error
        self.delay = 5.0
        self.requests: list[web.Request] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        if self.behaviour == "error":
            return web.Response(status=500, text="boom")
        if self.behaviour == "slow":
            await asyncio.sleep(self.delay)
        number = request.query.get("number", "")
        if number not in self.names:
            return web.Response(status=404)
        return web.json_response({"name": self.names[number], "tags": ["vip"]})

    async def __aenter__(self) -> Crm:
        app = web.Application()
        app.router.add_get("/lookup", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/lookup?number={{number}}"


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    async with Crm() as server:
        yield server


def lookup_for(crm: Crm, clock: FakeClock | None = None, **settings: Any) -> ContactLookup:
    config = LookupConfig(url=crm.url, headers={"Authorization": "Bearer t0ken"},
                          **{"timeout": 0.3, "failure_threshold": 3, "open_for": 60.0,
                             **settings})
    return ContactLookup(config, clock=clock or FakeClock())


async def test_a_lookup_answers_with_the_crm_name_and_sends_the_headers(crm: Crm) -> None:
    lookup = lookup_for(crm)
    try:
        answers = await lookup.lookup_many(["+447700900123", "+447700900999"])
    finally:
        await lookup.close()
    assert {number: answer.name for number, answer in answers.items()} == {
        "+447700900123": "Jane Smith"}
    assert answers["+447700900123"].tags == ("vip",)
    assert sorted(request.query["number"] for request in crm.requests) == [
        "+447700900123", "+447700900999"]
    assert all(request.headers["Authorization"] == "Bearer t0ken" for request in crm.requests)


async def test_a_cached_answer_needs_no_second_request(crm: Crm) -> None:
    clock = FakeClock()
    lookup = lookup_for(crm, clock, cache_ttl=60.0)
    try:
        for _ in range(3):
            answers = await lookup.lookup_many(["+447700900123", "+447700900999"])
            assert answers["+447700900123"].name == "Jane Smith"
        assert len(crm.requests) == 2  # the "not known" answer is cached too
        clock.now += 61
        await lookup.lookup_many(["+447700900123"])
        assert len(crm.requests) == 3
    finally:
        await lookup.close()


async def test_a_slow_crm_is_given_up_after_the_timeout(crm: Crm) -> None:
    crm.behaviour, crm.delay = "slow", 5.0
    lookup = lookup_for(crm, timeout=0.3)
    try:
        started = time.monotonic()
        answers = await lookup.lookup_many([f"+4477009001{index:02d}" for index in range(20)])
        elapsed = time.monotonic() - started
    finally:
        await lookup.close()
    assert answers == {}
    assert elapsed < 4.0, f"the lookup held the batch {elapsed:.2f} s"  # not the CRM's 5 s
    assert len(crm.requests) == 20  # all at once, not one after another


async def test_failures_open_the_breaker_and_a_trial_follows_open_for(crm: Crm) -> None:
    crm.behaviour = "error"
    clock = FakeClock()
    lookup = lookup_for(crm, clock, failure_threshold=3, open_for=60.0)
    try:
        for _ in range(3):
            assert await lookup.lookup_many(["+447700900123"]) == {}
        assert lookup.breaker.state == "open" and len(crm.requests) == 3
        for _ in range(5):  # open: nothing is asked
            assert await lookup.lookup_many(["+447700900123", "+447700900456"]) == {}
        assert len(crm.requests) == 3
        clock.now += 60
        crm.behaviour = "normal"
        answers = await lookup.lookup_many(["+447700900123", "+447700900456"])
        assert len(crm.requests) == 4  # one trial call, the other number waits
        assert answers["+447700900123"].name == "Jane Smith"
        assert lookup.breaker.state == "closed"
        await lookup.lookup_many(["+447700900456"])
        assert len(crm.requests) == 5
    finally:
        await lookup.close()


async def test_contact_names_ask_the_store_first_then_the_lookup(tmp_path: Path,
                                                                 crm: Crm) -> None:
    store = await Store.open(str(tmp_path / "db.sqlite"))
    # a timeout that a loaded machine cannot trip: this test is about who is asked, not when
    config = config_from_dict({"contacts": {"lookup": {"url": crm.url, "timeout": "3s"}}})
    names = ContactNames(config.contacts)
    try:
        await store.merge_contacts([Contact("+447700900123", "Stored Name", (), "csv:x", NOW),
                                    Contact("+447700900456", None, ("vip",), "csv:x", NOW)])
        crm.names["+447700900456"] = "Crm Name"
        found = await names.names(store, ["+447700900123", "+447700900456", "+447700900789"])
        assert found == {"+447700900123": "Stored Name", "+447700900456": "Crm Name"}
        # the store knew the first number: the CRM was not asked about it
        assert sorted(r.query["number"] for r in crm.requests) == ["+447700900456",
                                                                   "+447700900789"]
    finally:
        await names.close()
        await store.close()
