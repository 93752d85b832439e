"""The intake holds the calls that end while the decider cannot record them (a PostgreSQL
server away), in order, up to `HELD_MAX`: the oldest are kept, the newer ones dropped and
counted; once the decider goes on it gets every call held, oldest first."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mcdaemon.adapters.metrics import Metrics
from mcdaemon.config.load import config_from_dict
from mcdaemon.core.records import CallRecord, Outcome
from mcdaemon.pipeline import intake as intake_module
from mcdaemon.pipeline.intake import Intake

T0 = 1_736_157_600.0


def ended(n: int) -> CallRecord:
    caller = f"+4477009{n:05d}"
    return CallRecord(pbx="lab", call_id=f"1736157600.{n}", caller=caller, caller_name=None,
                      caller_e164=caller, did="100", group="sales",
                      outcome=Outcome.QUEUE_ABANDON, stages=(), started=T0 - 30, ended=T0,
                      wait_seconds=30.0)


class StoreAwayDecider:
    """Decides nothing until `back` is set, as the decider does while the store is away."""

    def __init__(self) -> None:
        self.back = asyncio.Event()
        self.batches: list[list[str]] = []

    async def decide(self, records: Sequence[CallRecord]) -> list[object]:
        await self.back.wait()
        self.batches.append([record.call_id for record in records])
        return []


async def test_calls_held_past_the_cap_are_the_newest_dropped_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_module, "HELD_MAX", 5)
    config = config_from_dict({})
    decider = StoreAwayDecider()
    intake = Intake(lambda: config, lambda: None, queue=asyncio.Queue(),
                    metrics=Metrics.from_config(config), outreach=None,
                    decider=decider, report_links=lambda: None)
    deciding = asyncio.create_task(intake.decide())
    try:
        intake._hand_to_decider([ended(n) for n in (1, 2, 3)])
        await asyncio.sleep(0)  # the decider has the first batch, and waits for the store
        intake._hand_to_decider([ended(n) for n in (4, 5, 6, 7)])
        assert (intake.undecided, intake.dropped) == (5, 2)

        decider.back.set()
        while intake.undecided:
            await asyncio.sleep(0.01)
    finally:
        deciding.cancel()
    assert decider.batches == [[f"1736157600.{n}" for n in (1, 2, 3)],
                               [f"1736157600.{n}" for n in (4, 5)]]
