"""The outbox's rule: a submit's result and a text's attempts in, the text's next state out."""

from __future__ import annotations

import pytest

from mcdaemon.config.model import OutboxConfig
from mcdaemon.core.outbox import SubmitOutcome, SubmitResult, retry_delay, submit_outcome

OUTBOX = OutboxConfig(max_attempts=3, retry_min=2.0, retry_max=10.0)
NOW = 1000.0


def outcome(result: SubmitResult, attempts: int = 1, jitter: float = 1.0) -> SubmitOutcome:
    return submit_outcome(7, attempts, result, now=NOW, outbox=OUTBOX, jitter=lambda: jitter)


def no_jitter() -> float:
    raise AssertionError("jitter asked for an outcome without a backoff")


def test_a_submitted_text_keeps_the_smscs_ids() -> None:
    assert outcome(SubmitResult("submitted", smsc_ids=("a1", "a2"))) == SubmitOutcome(
        7, "submitted", smsc_ids=("a1", "a2"))


def test_a_text_that_never_went_out_is_queued_at_once_and_not_counted() -> None:
    result = SubmitResult("unbound", detail="not bound")
    assert submit_outcome(7, 5, result, now=NOW, outbox=OUTBOX, jitter=no_jitter) == (
        SubmitOutcome(7, "queued", not_before=NOW, detail="not bound", refund_attempt=True))


def test_an_unbound_submit_in_doubt_is_a_retry_with_a_duplicate_risk() -> None:
    result = SubmitResult("unbound", detail="link dropped", in_doubt=True)
    assert outcome(result) == SubmitOutcome(7, "queued", not_before=NOW + 2.0,
                                            detail="link dropped", duplicate_risk=True)


def test_a_permanent_error_fails_the_text_at_once() -> None:
    result = SubmitResult("permanent", status=11, detail="invalid destination")
    assert submit_outcome(7, 1, result, now=NOW, outbox=OUTBOX, jitter=no_jitter) == (
        SubmitOutcome(7, "failed", error_code=11, detail="invalid destination"))


def test_the_last_attempt_gives_up() -> None:
    result = SubmitResult("temporary", status=88, detail="throttled")
    assert outcome(result, attempts=3) == SubmitOutcome(
        7, "failed", error_code=88, detail="gave up after 3 attempts: throttled")


@pytest.mark.parametrize(("attempts", "jitter", "delay"),
                         [(1, 1.0, 2.0), (2, 1.0, 4.0), (2, 1.2, 4.8), (2, 0.8, 3.2)])
def test_a_temporary_error_is_retried_after_a_doubling_backoff(attempts: int, jitter: float,
                                                               delay: float) -> None:
    result = SubmitResult("temporary", status=88, detail="throttled")
    assert outcome(result, attempts, jitter) == SubmitOutcome(
        7, "queued", not_before=NOW + delay, error_code=88, detail="throttled")


def test_the_backoff_stops_growing_at_retry_max() -> None:
    assert retry_delay(10, OUTBOX, 1.0) == 10.0
    assert retry_delay(10, OUTBOX, 1.2) == pytest.approx(12.0)
