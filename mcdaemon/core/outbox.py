"""The outbox's rule: what becomes of a text after one submit (sans-IO).

A submit ends `submitted` (the SMSC took it), `unbound` (it never went out: no bind, or the
daemon stops), `temporary` or `permanent` (the SMSC's answer), or in doubt (it went out and no
answer came). `submit_outcome` maps that to the text's next state: submitted; queued again
(at once and not counted as an attempt when it never went out, else after an exponential
backoff with jitter, marked a duplicate risk when in doubt); or failed (a permanent error, or
the attempts are used up). The store applies the outcome; the service only gathers results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mcdaemon.config.model import OutboxConfig


@dataclass(frozen=True, slots=True)
class SubmitResult:
    outcome: str
    smsc_ids: tuple[str, ...] = ()
    status: int | None = None
    detail: str = ""
    #: the submit_sm went out and no answer came back: the SMSC may have taken it, so a
    #: resend may reach the caller twice (a timeout, or a link that dropped mid-window)
    in_doubt: bool = False


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What became of one submit: `submitted` (with the SMSC's id per part), `queued` again
    (a temporary failure, retried at `not_before`) or `failed` for good."""

    message_id: int
    state: str
    smsc_ids: tuple[str, ...] = ()
    not_before: float | None = None
    error_code: int | None = None
    detail: str = ""
    duplicate_risk: bool = False
    #: the text never went out (handed back unsent): its claim does not count as an attempt
    refund_attempt: bool = False


def retry_delay(attempts: int, outbox: OutboxConfig, jitter: float) -> float:
    """Seconds before the next try of a text tried `attempts` times: doubling from
    `retry_min`, at most `retry_max`, times `jitter` (0.8-1.2: retries do not come in step)."""
    delay: float = min(outbox.retry_max, outbox.retry_min * 2 ** (attempts - 1))
    return delay * jitter


def submit_outcome(message_id: int, attempts: int, result: SubmitResult, *, now: float,
                   outbox: OutboxConfig, jitter: Callable[[], float]) -> SubmitOutcome:
    """The next state of a text claimed `attempts` times whose submit gave `result` at `now`.

    `jitter` is asked only when the text is retried after a backoff."""
    if result.outcome == "submitted":
        return SubmitOutcome(message_id, "submitted", smsc_ids=result.smsc_ids)
    if result.outcome == "unbound" and not result.in_doubt:
        # never went out (the bind dropped or the daemon stops): not an attempt; sent as soon
        # as a bind is up again
        return SubmitOutcome(message_id, "queued", not_before=now, detail=result.detail,
                             refund_attempt=True)
    if result.outcome == "permanent" or attempts >= outbox.max_attempts:
        detail = result.detail if result.outcome == "permanent" else (
            f"gave up after {attempts} attempts: {result.detail}")
        return SubmitOutcome(message_id, "failed", error_code=result.status, detail=detail)
    # a submit that went out unanswered may have reached the SMSC: its resend is a
    # duplicate risk
    return SubmitOutcome(message_id, "queued",
                         not_before=now + retry_delay(attempts, outbox, jitter()),
                         error_code=result.status, detail=result.detail,
                         duplicate_risk=result.in_doubt)
