"""The job state machine: its statuses, the moves allowed between them and what each allows a user to do (the
writes are the job store's: chalicelib/jobs/store/)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum
from typing import Any

from chalicelib import clock
from chalicelib.errors import InvalidTransition
from chalicelib.settings import get_settings
from chalicelib.tables import Control, Job, JobEvent

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    QUEUED = "Queued"
    PROCESSING = "Processing"
    CANCELLATION_REQUESTED = "CancellationRequested"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


S = JobStatus
# The one definition of which statuses are final and which are live: every other module imports these.
TERMINAL = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED})
ACTIVE = frozenset(set(S) - TERMINAL)
# Live and taken up by a worker: a worker may hold its lease and count work for it (checkpoints, chunks).
WORKED = frozenset(ACTIVE - {S.QUEUED})
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.PROCESSING, S.CANCELLED, S.FAILED}),
    # Processing -> Cancelled: a cancel the API completes itself when no live lease holds the job (a delayed
    # re-enqueue, a hand-over between invocations, chunks waiting for a worker); see jobs/service.cancel_job.
    S.PROCESSING: frozenset({S.COMPLETED, S.FAILED, S.CANCELLATION_REQUESTED, S.CANCELLED}),
    S.CANCELLATION_REQUESTED: frozenset({S.CANCELLED, S.FAILED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
    S.COMPLETED: frozenset(),
}


def in_order(statuses: Iterable[JobStatus]) -> tuple[JobStatus, ...]:
    """`statuses` in their declared order (a frozenset's own order changes from one process to the next)."""
    chosen = set(statuses)
    return tuple(s for s in JobStatus if s in chosen)


def status_values(statuses: Iterable[JobStatus]) -> tuple[str, ...]:
    """The stored values of `statuses`, in declared order (for `is_in` conditions and index queries)."""
    return tuple(s.value for s in in_order(statuses))


class JobAction(StrEnum):
    """What a user may do with a job next: the job representation's `allowedActions` (a closed set)."""

    CANCEL = "cancel"  # DELETE /jobs/{jobId}
    RETRY = "retry"  # POST /jobs/{jobId}/retry
    RESULT = "result"  # GET /jobs/{jobId}/result
    SETTLE = "settle"  # PATCH /jobs/{jobId}/lines/{lineId}


def allowed_actions(status: JobStatus | str) -> tuple[JobAction, ...]:
    """The user actions a job in `status` allows, from the state machine above.

    cancel: a live job that can still be moved to Cancelled and is not already being cancelled (a repeated
    DELETE of a CancellationRequested job changes nothing). retry: a job the machine lets go back to Queued.
    result, settle: a Completed job, the only one with a report.
    """
    status = JobStatus(status)
    allowed = []
    if status in ACTIVE and S.CANCELLED in TRANSITIONS[status] and status is not S.CANCELLATION_REQUESTED:
        allowed.append(JobAction.CANCEL)
    if status in TERMINAL and S.QUEUED in TRANSITIONS[status]:
        allowed.append(JobAction.RETRY)
    if status is S.COMPLETED:
        allowed += [JobAction.RESULT, JobAction.SETTLE]
    return tuple(allowed)


class StepStatus(StrEnum):
    """One of a job's ordered steps (jobs/stepplan.py holds their moves, jobs/store/steps.py writes them)."""

    PENDING = "Pending"  # not begun (yet): a retry resumes at the first step not finished
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"  # the job failed in it (a retry begins it again)
    SKIPPED = "Skipped"  # nothing to do in it (passed over by a later step, or the job completed without it)
    CANCELLED = "Cancelled"  # the job was cancelled before it finished (a retry begins it again)


# A step in one of these is done with: a retry leaves it as it is and resumes after it.
STEP_FINISHED = frozenset({StepStatus.COMPLETED, StepStatus.SKIPPED})


class ChunkStatus(StrEnum):
    """A chunk of a fanned-out job (jobs/chunks.py): its own small state machine beside the job's."""

    PENDING = "Pending"  # made, handed back or reaped: waits for its message to be taken up
    RUNNING = "Running"  # an invocation holds its lease
    DONE = "Done"  # its lines are counted on the job; final


C = ChunkStatus
CHUNK_TERMINAL = frozenset({C.DONE})
CHUNK_TRANSITIONS: dict[ChunkStatus, frozenset[ChunkStatus]] = {
    # Pending -> Pending: the reaper re-sends a chunk that waited too long, or a retry resets it.
    C.PENDING: frozenset({C.RUNNING, C.PENDING}),
    # Running -> Running: a claim takes over a lease that expired (its holder died) or is already ours.
    # Running -> Pending: hand-back before a continuation, release at the end of an invocation, reap, retry.
    C.RUNNING: frozenset({C.RUNNING, C.PENDING, C.DONE}),
    C.DONE: frozenset(),
}


def chunk_may_become(current: ChunkStatus | str, to: ChunkStatus | str) -> bool:
    return ChunkStatus(to) in CHUNK_TRANSITIONS[ChunkStatus(current)]


class DeliveryStatus(StrEnum):
    """A delivery of a final job to one report target (chalicelib/delivery/service.py)."""

    PENDING = "Pending"  # waiting for an attempt (the first, or a retry after a backoff)
    DELIVERED = "Delivered"  # accepted (a 2xx; SES took the message)
    FAILED = "Failed"  # attempts exhausted, or a failure no retry can fix
    DISABLED = "Disabled"  # the receiver answered 410 Gone (now or earlier): its target is disabled


DELIVERY_TRANSITIONS: dict[DeliveryStatus, frozenset[DeliveryStatus]] = {
    # Pending -> Pending: an attempt failed and another is due after the backoff.
    DeliveryStatus.PENDING: frozenset(DeliveryStatus),
    # Out of a final delivery status only by a user's retry (POST /jobs/{jobId}/deliveries/{n}/retry).
    DeliveryStatus.DELIVERED: frozenset({DeliveryStatus.PENDING}),
    DeliveryStatus.FAILED: frozenset({DeliveryStatus.PENDING}),
    DeliveryStatus.DISABLED: frozenset({DeliveryStatus.PENDING}),
}


class TransitionRaced(InvalidTransition):
    """The job's status changed between our read and our conditional write."""


def event_item(job_id: str, kind: str, detail: dict[str, Any] | None = None, nth: int = 0) -> JobEvent:
    """An audit event, keyed by its moment; `nth` > 0: the nth event after the first of one write, a microsecond
    apart each, so the events of one transaction read back in the order they were made."""
    moment = clock.now() + timedelta(microseconds=nth)
    return JobEvent(
        job_id,
        f"{moment.strftime('%Y-%m-%dT%H:%M:%S.%f')}#{uuid.uuid4().hex[:8]}",
        at=clock.iso(moment),
        type=kind,
        detail=detail or {},
        expires_at=clock.expiry(get_settings().retention_days),
    )


def lock_key(owner_id: str, report_id: str, period: str, job_type: str = "expense_report") -> str:
    """The active-job lock: one live job per (user, report, period) and type. An `expense_report` lock keeps the key
    it had before job types, so a lock taken before a deploy still holds after it."""
    if job_type == "expense_report":
        return f"lock#{owner_id}#{report_id}#{period}"
    return f"lock#{owner_id}#{job_type}#{report_id}#{period}"


def rate_key(owner_id: str, job_type: str) -> str:
    """The rolling-hour window of the jobs a user created, per type (20 of each type an hour)."""
    return f"rate#{owner_id}#{job_type}"


def transition(job: Job, to: JobStatus, event: str, detail: dict[str, Any] | None = None, **options: Any) -> Job:
    """Move `job` to `to` (the job store writes it: jobs/store/moves.transition, which says what it raises)."""
    from chalicelib.jobs.store import moves  # the store reads this module's rules

    return moves.transition(job, to, event, detail, **options)


def lock_holder(key: str) -> str | None:
    try:
        return Control.get(key, consistent_read=True).job_id
    except Control.DoesNotExist:
        return None
