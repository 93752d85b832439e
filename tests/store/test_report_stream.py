"""`report_callers` streams: each texted caller once, with their texts, replies and opt-outs,
merged from three queries read a batch at a time. On both backends, with batches of two
rows, so every merge crosses batch boundaries (PostgreSQL: cursors of one transaction)."""

from __future__ import annotations

from unittest.mock import patch

from mcdaemon.core.records import CallRecord, Decision, Outcome
from mcdaemon.store import PgStore, Store

T0 = 1_736_157_600.0


async def texted(store: Store | PgStore, call_id: str, caller: str, at: float) -> None:
    record = CallRecord(pbx="lab", call_id=call_id, caller=caller.lstrip("+"),
                        caller_name=None, caller_e164=caller, did=None, group="sales",
                        outcome=Outcome.QUEUE_ABANDON, stages=("queue",), started=at - 30,
                        ended=at, wait_seconds=20.0)
    await store.record_call(record, Decision(text=True, reason="sent", group="sales",
                                             body="Sorry we missed you.",
                                             template="queue_abandon", destination=caller),
                            now=at, destination=caller)
    [claimed] = await store.claim_due(at, 1)
    await store.mark_submitted(claimed.id, [f"{call_id}-1"], at + 2)


async def test_each_texted_caller_comes_once_with_their_replies_across_batches(
        store: Store | PgStore) -> None:
    callers = [f"+4477009001{n:02d}" for n in range(7)]
    for n, caller in enumerate(callers):
        await texted(store, f"a{n}", caller, T0 + n)
        if n % 2 == 0:
            await texted(store, f"b{n}", caller, T0 + 600 + n)  # a second call, texted too
    for n, caller in enumerate(callers):
        if n != 3:
            await store.add_inbound(caller, "lab", f"hi {n}", T0 + 60 + n)
            await store.add_inbound(caller, "lab", f"again {n}", T0 + 120 + n)
    await store.add_inbound("+447700900000", "lab", "never texted", T0 + 60)  # sorts first
    await store.add_inbound("+447700900999", "lab", "never texted", T0 + 60)  # sorts last
    await store.opt_out(callers[4], "STOP", T0 + 300)

    with patch("mcdaemon.store.report._FETCH", 2):
        streamed = [caller async for caller in store.report_callers(T0 - 1, T0 + 3600)]

    assert [caller.number for caller in streamed] == callers
    assert [len(caller.texts) for caller in streamed] == [2, 1, 2, 1, 2, 1, 2]
    assert [[text for text, _ in caller.inbound] for caller in streamed] == [
        [] if n == 3 else [f"hi {n}", f"again {n}"] for n in range(7)]
    assert [caller.opt_outs for caller in streamed] == [
        [T0 + 300] if n == 4 else [] for n in range(7)]
    assert all(text.state == "submitted" for caller in streamed for text in caller.texts)
