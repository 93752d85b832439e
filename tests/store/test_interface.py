"""The store's interface (`store/interface.py`) declares everything each backend offers
(`Store`, SQLite; `PgStore`, PostgreSQL).

mypy checks that each satisfies `StoreInterface` (types); this checks the other way, at
run time: no public method of a backend is missing from the interface (so code annotated with
it can call everything the service calls), each owner's Protocol is its query class's public
methods, and the parameters (names, kinds, defaults) are the same.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Protocol

import pytest

from mcdaemon.store import Connection, PgConnection, PgStore, Store
from mcdaemon.store.contacts import Contacts
from mcdaemon.store.interface import (
    ContactsStore,
    OutboxStore,
    OutreachStore,
    ReceiptsStore,
    RepliesStore,
    ReportStore,
    RetentionStore,
    StatusStore,
    StoreInterface,
    WebhooksStore,
)
from mcdaemon.store.outbox import CallsAndOutbox
from mcdaemon.store.outreach import Outreach
from mcdaemon.store.receipts import Receipts
from mcdaemon.store.replies import RepliesAndOptOuts
from mcdaemon.store.report import ReportQueries
from mcdaemon.store.retention import Retention
from mcdaemon.store.status import Status
from mcdaemon.store.webhooks import WebhookQueue

#: how a backend is made, not what it does: the code that opens a store names the backend
CONSTRUCTION = {"open", "open_readonly"}
#: set on each instance by the backend's constructor, so not in `dir(Store)`
INSTANCE_ATTRIBUTES = {"path", "owner", "claim_lease", "unreachable_since"}

OWNERS: list[tuple[type[Any], type[Any]]] = [
    (OutboxStore, CallsAndOutbox), (ReceiptsStore, Receipts), (RepliesStore, RepliesAndOptOuts),
    (WebhooksStore, WebhookQueue), (ContactsStore, Contacts), (ReportStore, ReportQueries),
    (StatusStore, Status), (OutreachStore, Outreach), (RetentionStore, Retention),
]


def members(protocol: type[Any]) -> set[str]:
    """The names a Protocol declares, its bases' included."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (Protocol, object) or not getattr(cls, "_is_protocol", False):
            continue
        names |= {name for name in vars(cls) if not name.startswith("_")}
        names |= {name for name in getattr(cls, "__annotations__", {})
                  if not name.startswith("_")}
    return names


def public(cls: type[Any], *, own: bool = False) -> set[str]:
    names = vars(cls) if own else dir(cls)
    return {name for name in names if not name.startswith("_")}


BACKENDS = [(Store, Connection), (PgStore, PgConnection)]
backends = pytest.mark.parametrize(("backend", "connection"), BACKENDS,
                                   ids=["sqlite", "postgresql"])


@backends
def test_every_public_name_of_a_backend_is_in_the_interface(backend: type[Any],
                                                            connection: type[Any]) -> None:
    missing = public(backend) - CONSTRUCTION - members(StoreInterface)
    assert not missing, f"{backend.__name__} methods missing from StoreInterface: " \
        f"{sorted(missing)}"
    extra = members(StoreInterface) - INSTANCE_ATTRIBUTES - public(backend)
    assert not extra, f"StoreInterface declares what {backend.__name__} lacks: {sorted(extra)}"


@pytest.mark.parametrize(("protocol", "owner"), OWNERS, ids=lambda x: x.__name__)
def test_each_owner_protocol_is_its_query_class(protocol: type[Any], owner: type[Any]) -> None:
    assert members(protocol) == public(owner, own=True)


@backends
def test_the_connection_calls_are_declared_once_on_store_interface(backend: type[Any],
                                                                    connection: type[Any]) -> None:
    assert public(connection, own=True) - CONSTRUCTION <= public(StoreInterface, own=True)
    owned = set().union(*(members(protocol) for protocol, _ in OWNERS))
    declared_here = public(StoreInterface, own=True) | set(StoreInterface.__annotations__)
    assert members(StoreInterface) == owned | declared_here


def _shape(function: Any) -> list[tuple[str, Any, Any]]:
    signature = inspect.signature(function)
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@backends
@pytest.mark.parametrize("name", sorted(members(StoreInterface) - INSTANCE_ATTRIBUTES))
def test_parameters_match(name: str, backend: type[Any], connection: type[Any]) -> None:
    declared = getattr(StoreInterface, name)
    implemented = getattr(backend, name)
    assert _shape(declared) == _shape(implemented)
    assert inspect.iscoroutinefunction(declared) == inspect.iscoroutinefunction(implemented)


async def test_instance_attributes_are_set_by_the_backend(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "store.db"))
    try:
        for name in INSTANCE_ATTRIBUTES:
            assert name in StoreInterface.__annotations__ or isinstance(
                inspect.getattr_static(StoreInterface, name), property)
            assert hasattr(store, name)
        assert store.path == str(tmp_path / "store.db")
    finally:
        await store.close()
