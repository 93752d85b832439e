"""The `docker compose` example (examples/compose/): PostgreSQL and two daemons built from the
project's Dockerfile, sharing the store. Docker is not run here: the file's structure is
checked, and each daemon's config, as mounted, loads with the password file in place and
agrees with the services around it (the database's host, user and name, the secret, the
healthcheck's port, one PBX watched by both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from mcdaemon.config.load import load_config
from mcdaemon.config.model import Config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "compose"
SECRET_IN_CONTAINER = "/run/secrets/db_password"
DAEMONS = ("mcdaemon-a", "mcdaemon-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLE / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def mounted_config(service: dict[str, Any]) -> Path:
    mounts = [volume.split(":") for volume in service["volumes"]]
    sources = [source for source, target, *_ in mounts if target == "/etc/mcdaemon/config.yaml"]
    assert len(sources) == 1, "the daemon's config is mounted where the Dockerfile runs it"
    return EXAMPLE / sources[0]


def load_as_mounted(service: dict[str, Any], tmp_path: Path, password: str) -> Config:
    """The daemon's config with the compose secret where the container would find it."""
    secret = tmp_path / "db_password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    text = mounted_config(service).read_text()
    assert SECRET_IN_CONTAINER in text
    config = tmp_path / "config.yaml"
    config.write_text(text.replace(SECRET_IN_CONTAINER, str(secret)))
    return load_config(config)


def test_postgresql_from_the_official_image_with_its_password_from_the_secret(
        compose: dict[str, Any]) -> None:
    db = compose["services"]["db"]
    assert db["image"].startswith("postgres:")
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == SECRET_IN_CONTAINER
    assert "db_password" in db["secrets"] and db["restart"]
    assert "pg_isready" in db["healthcheck"]["test"]
    assert compose["secrets"]["db_password"]["file"] == "./db-password"


@pytest.mark.parametrize("name", DAEMONS)
def test_each_daemon_is_built_from_the_project_and_restarted_and_health_checked(
        compose: dict[str, Any], name: str) -> None:
    daemon = compose["services"][name]
    assert (EXAMPLE / daemon["build"]["context"] / "Dockerfile").is_file()
    assert daemon["restart"] in ("always", "unless-stopped", "on-failure")
    assert daemon["depends_on"]["db"]["condition"] == "service_healthy"
    assert "db_password" in daemon["secrets"]
    assert daemon["healthcheck"]["test"][0] == "CMD"


def test_each_daemons_config_loads_and_agrees_with_the_services(
        compose: dict[str, Any], tmp_path: Path) -> None:
    db_env = compose["services"]["db"]["environment"]
    configs = []
    for name in DAEMONS:
        service = compose["services"][name]
        folder = tmp_path / name
        folder.mkdir()
        config = load_as_mounted(service, folder, "s3cret-from-the-file")
        url = urlsplit(config.store.url)
        assert (url.hostname, url.username, url.path.strip("/")) == \
            ("db", db_env["POSTGRES_USER"], db_env["POSTGRES_DB"])
        assert url.password is None and config.store.password == "s3cret-from-the-file"
        assert config.metrics.enabled
        assert config.metrics.listen.rsplit(":", 1)[-1] in " ".join(service["healthcheck"]["test"])
        configs.append(config)
    first, second = configs
    assert first.daemon.name and second.daemon.name and first.daemon.name != second.daemon.name
    assert first.store == second.store  # one store
    assert first.ami == second.ami  # one PBX, watched by both


def test_the_password_file_is_not_in_the_repository() -> None:
    assert "/examples/compose/db-password" in (ROOT / ".gitignore").read_text().splitlines()
