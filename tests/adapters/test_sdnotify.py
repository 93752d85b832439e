"""sd_notify against a real AF_UNIX datagram socket, as systemd offers one in $NOTIFY_SOCKET:
a file-system path and the abstract-namespace `@name` form; a no-op without it."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcdaemon.adapters import sdnotify


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # a short directory of our own: AF_UNIX paths are limited to 107 bytes, pytest's are long
    with tempfile.TemporaryDirectory(prefix="mcd-") as directory:
        address = str(Path(directory) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            sock.settimeout(2)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            yield sock


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"mcdaemon-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


def exchange(sock: socket.socket) -> list[bytes]:
    """What the daemon says over its life, in order, each as systemd receives it."""
    said = ["READY=1\nSTATUS=watching the PBX", "WATCHDOG=1", "STATUS=reloading",
            "WATCHDOG=1", "STOPPING=1"]
    for state in said:
        assert sdnotify.notify(state) is True
    return [sock.recv(4096) for _ in said]


EXPECTED = [b"READY=1\nSTATUS=watching the PBX", b"WATCHDOG=1", b"STATUS=reloading",
            b"WATCHDOG=1", b"STOPPING=1"]


def test_messages_arrive_on_a_path_socket(path_socket: socket.socket) -> None:
    assert exchange(path_socket) == EXPECTED


def test_messages_arrive_on_an_abstract_socket(abstract_socket: socket.socket) -> None:
    assert exchange(abstract_socket) == EXPECTED


def test_each_message_is_one_datagram_of_key_value_lines(path_socket: socket.socket) -> None:
    sdnotify.notify("READY=1\nSTATUS=watching the PBX")
    datagram = path_socket.recv(4096).decode()
    assert dict(line.split("=", 1) for line in datagram.split("\n")) == {
        "READY": "1", "STATUS": "watching the PBX"}


def test_without_notify_socket_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.notify("WATCHDOG=1") is False


def test_a_socket_that_went_away_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="mcd-") as directory:
        monkeypatch.setenv("NOTIFY_SOCKET", str(Path(directory) / "gone"))
        assert sdnotify.notify("WATCHDOG=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", f"@mcdaemon-test-nobody-{uuid.uuid4().hex}")
    assert sdnotify.notify("STOPPING=1") is False


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("30000000", None, 15.0),  # WatchdogSec=30: ping at least every 15 s
    ("30000000", "self", 15.0),
    ("30000000", "1", None),  # meant for another process (e.g. our parent)
    (None, None, None),
    ("soon", None, None),
])
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None,
                           expected: float | None) -> None:
    for name, value in (("WATCHDOG_USEC", usec),
                        ("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert sdnotify.watchdog_interval() == expected
