"""`store:`: SQLite by `path`, or PostgreSQL by `url` with its password apart and TLS passed
through; the mistakes an administrator can make name the key to fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mcdaemon.config.load import config_from_dict, runtime_problems
from mcdaemon.config.reader import ConfigError

URL = "postgresql://mcdaemon@db.example:5432/mcdaemon"


def test_a_url_selects_postgresql_with_its_password_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCDAEMON_DB_PASSWORD", "s3cret")
    store = config_from_dict({"store": {"url": URL, "password_env": "MCDAEMON_DB_PASSWORD",
                                        "sslmode": "verify-full"}}).store

    assert (store.url, store.password, store.sslmode, store.address) == (
        URL, "s3cret", "verify-full", URL)
    assert "s3cret" not in repr(store)


def test_the_password_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "db-password"
    secret.write_text("from-a-file\n")
    store = config_from_dict({"store": {"url": URL, "password_file": str(secret)}}).store
    assert store.password == "from-a-file"


@pytest.mark.parametrize(("store", "fragment"), [
    ({"url": URL, "path": "/var/lib/mcdaemon/mcdaemon.db"},
     r"store\.url: give only one of store\.path .* and store\.url"),
    ({"url": "postgresql://mcdaemon:hunter2@db.example/mcdaemon"},
     r"store\.url: holds a password: give it by store\.password_env or store\.password_file"),
    ({"url": "mysql://db.example/mcdaemon"}, r"store\.url: .* is not a PostgreSQL URL"),
    ({"url": "postgresql://db.example"}, r"store\.url: .* is not a PostgreSQL URL"),
    ({"url": URL, "sslmode": "always"}, r"store\.sslmode: 'always' is not one of disable"),
    ({"password_env": "X"}, r"store\.password_env: only with store\.url"),
])
def test_a_wrong_store_setting_names_its_key(store: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict({"store": store})
    assert any(re.search(fragment, problem) for problem in raised.value.problems)
    assert "hunter2" not in str(raised.value)


def test_a_postgresql_store_has_no_file_to_check() -> None:
    config = config_from_dict({"store": {"url": URL}})
    assert not [problem for problem in runtime_problems(config) if "store" in problem]
