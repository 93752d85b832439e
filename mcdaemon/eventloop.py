"""The daemon's event loop: asyncio's, with its I/O polls paced while it has work ready.

Why: the SMPP sender is a thread of its own (smpplib blocks), so in a storm it needs the GIL
while the event loop is busy. CPython hands the GIL over to a waiting thread when the holder
has kept it for the switch interval without letting go. But the loop lets go at every
iteration: each poll for I/O is a system call, made with the GIL released, even with a zero
timeout when callbacks are ready. Each release wakes the waiting thread, which nearly always
loses the race for the GIL to the loop (back from its poll within microseconds) and then
starts a new wait of a whole switch interval. A loop that iterates more often than the
switch interval therefore keeps the SMPP thread out for as long as it stays busy: measured at
10-20 ms in a storm of 200 hangups, while texts decided and stored waited to be written to
the SMSC (`bench/gil_handover.py` shows it in isolation).

So while callbacks are ready, `PacedSelector` polls at most once per POLL_PACE and answers
"nothing ready" in between, without a system call: the loop then holds the GIL long enough
for a waiting thread's interval to run out, and the thread gets it. A poll that may block
(the loop is idle, or waits for a timer) is never skipped. The cost: a socket that becomes
readable while the loop is busy is noticed up to POLL_PACE later.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: while callbacks are ready, the least time between two polls for I/O (seconds); several
#: times the switch interval the daemon runs with (`service.GIL_SWITCH_INTERVAL`)
POLL_PACE = 0.002


class PacedSelector(selectors.DefaultSelector):
    """The platform's selector, with zero-timeout polls at most once per `pace` seconds."""

    def __init__(self, pace: float | None = None) -> None:
        super().__init__()
        self.pace = POLL_PACE if pace is None else pace
        self._polled = float("-inf")  # time.monotonic() of the last real poll

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0 \
                and time.monotonic() - self._polled < self.pace:
            return []  # callbacks are ready: they run first, the GIL stays put
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        self._polled = time.monotonic()
        return ready


def paced_event_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(PacedSelector())


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a paced event loop."""
    with asyncio.Runner(loop_factory=paced_event_loop) as runner:
        return runner.run(main)
