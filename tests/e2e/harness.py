"""Shared set-up for end-to-end tests: the real service between the test AMI server and SMSC."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mcdaemon.config.load import load_config
from mcdaemon.service import Service

AMI_SECRET = "mcdsecret"
SMPP_PASSWORD = "secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, *, ami_port: int, smsc_port: int,
                 **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "region": "GB",
        "timezone": "Europe/London",
        "ami": [{"name": "lab", "host": "127.0.0.1", "port": ami_port, "username": "mcd",
                 "secret": AMI_SECRET, "ping_interval": "1s", "ping_timeout": "1s",
                 "reconnect_min": "0.1s", "reconnect_max": "0.5s"}],
        "inbound": {"contexts": ["from-carrier"], "after_hours_contexts": ["closed"]},
        "store": {"path": str(tmp_path / "mcdaemon.db")},
        "smpp": {"host": "127.0.0.1", "port": smsc_port, "system_id": "mcdaemon",
                 "password": SMPP_PASSWORD, "source_addr": "Acme", "throughput": 200,
                 "reconnect_min": "0.1s", "reconnect_max": "0.5s", "enquire_link": "5s"},
        "outbox": {"retry_min": "0.1s", "retry_max": "0.5s"},
        "policy": {"caps": {"per_prefix_hour": 1000, "per_hour": 1000, "per_day": 5000}},
        "groups": {"default": {"triggers": ["missed"],
                               "templates": {"default": "Sorry we missed your call. "
                                                        "We will call you back."}}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def run_service(config_path: Path) -> tuple[Service, asyncio.Task[int]]:
    """The daemon in this process (`mcdaemon run`'s code path) on a config file."""
    service = Service(load_config(config_path), config_path=config_path,
                      install_signal_handlers=False)
    return service, asyncio.create_task(service.run())


async def stop(service: Service, task: asyncio.Task[int], timeout: float = 15.0) -> int:
    """Stop it as SIGTERM would; its exit code."""
    service.request_stop()
    return await asyncio.wait_for(task, timeout)
