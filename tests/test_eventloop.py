"""The daemon's event loop polls for I/O at most once per POLL_PACE while callbacks are ready,
so that the SMPP thread gets the GIL in a storm (see mcdaemon/eventloop.py)."""

from __future__ import annotations

import asyncio
import selectors
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mcdaemon import eventloop
from mcdaemon.eventloop import PacedSelector


@contextmanager
def readable_socket() -> Iterator[socket.socket]:
    reader, writer = socket.socketpair()
    try:
        writer.send(b"x")
        yield reader
    finally:
        reader.close()
        writer.close()


def test_a_zero_timeout_poll_within_the_pace_reports_nothing_without_polling() -> None:
    with readable_socket() as reader, PacedSelector(pace=60.0) as selector:
        selector.register(reader, selectors.EVENT_READ)
        assert len(selector.select(0)) == 1  # the first poll is real
        assert selector.select(0) == []  # callbacks are ready: no poll, the GIL stays put
        assert selector.select(-1) == []


def test_a_zero_timeout_poll_after_the_pace_polls() -> None:
    with readable_socket() as reader, PacedSelector(pace=0.02) as selector:
        selector.register(reader, selectors.EVENT_READ)
        selector.select(0)
        time.sleep(0.03)
        assert len(selector.select(0)) == 1


def test_a_poll_that_may_block_is_never_skipped() -> None:
    with readable_socket() as reader, PacedSelector(pace=60.0) as selector:
        selector.register(reader, selectors.EVENT_READ)
        selector.select(0)
        assert len(selector.select(0.5)) == 1
        assert len(selector.select(None)) == 1


def test_the_paced_loop_still_reads_a_socket_while_callbacks_keep_it_busy() -> None:
    async def busy_reader() -> tuple[bytes, int]:
        spins = 0
        stop = asyncio.Event()

        async def spin() -> None:  # always a callback ready: every poll wants a zero timeout
            nonlocal spins
            while not stop.is_set():
                spins += 1
                await asyncio.sleep(0)

        spinner = asyncio.create_task(spin())
        left, right = socket.socketpair()
        stream_reader, stream_writer = await asyncio.open_connection(sock=left)
        right.send(b"hello")
        data = await asyncio.wait_for(stream_reader.readexactly(5), 5)
        stop.set()
        await spinner
        stream_writer.close()
        right.close()
        return data, spins

    data, spins = eventloop.run(busy_reader())
    assert data == b"hello"
    assert spins > 0  # the loop was busy all along


def test_run_uses_the_paced_selector() -> None:
    async def selector_kind() -> type:
        return type(asyncio.get_running_loop()._selector)  # type: ignore[attr-defined]

    assert eventloop.run(selector_kind()) is PacedSelector
