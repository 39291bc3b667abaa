"""The job state machine: the only code that writes a job's status."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from chalicelib import clock, faults, observability
from chalicelib.errors import ActiveJobExists, InvalidTransition
from chalicelib.settings import get_settings
from chalicelib.tables import Control, Job, JobEvent, connection

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


def event_item(job_id: str, kind: str, detail: dict[str, Any] | None = None) -> JobEvent:
    moment = clock.now()
    return JobEvent(
        job_id,
        f"{moment.strftime('%Y-%m-%dT%H:%M:%S.%f')}#{uuid.uuid4().hex[:8]}",
        at=clock.iso(moment),
        type=kind,
        detail=detail or {},
        expires_at=clock.expiry(get_settings().retention_days),
    )


def lock_key(owner_id: str, report_id: str, period: str) -> str:
    return f"lock#{owner_id}#{report_id}#{period}"


def transition(
    job: Job,
    to: JobStatus,
    event: str,
    detail: dict[str, Any] | None = None,
    actions: Iterable[Action] = (),
    condition: Condition | None = None,
    checks: Iterable[tuple[Any, Any, Any, Condition]] = (),
) -> Job:
    """Move `job` to `to` with one conditional write that also appends `event`.

    `checks` are (model class, hash key, range key, condition) that must hold of other items in the same
    transaction (a retry checks that the job's report was not deleted meanwhile).

    Raises InvalidTransition when the move is not allowed from the job's status,
    and TransitionRaced when another writer changed the status first.
    """
    from chalicelib.jobs import counts  # counts reads JobStatus from here

    current = JobStatus(job.status)
    if to not in TRANSITIONS[current]:
        raise InvalidTransition(f"A {current.value} job cannot become {to.value}.")
    stamp = clock.iso(clock.now())
    updates: list[Action] = [Job.status.set(to.value), Job.updated_at.set(stamp), *actions]
    deliver = False
    if to in TERMINAL:
        from chalicelib.delivery import service as delivery  # reads the job's report: only on a final move

        # The deliveries are planned in the same write as the final status (an outbox): none is lost to a crash.
        final, deliver = delivery.final_actions(job, to)
        updates += [Job.lease_owner.remove(), Job.lease_until.remove(), *final]
    else:
        updates += [Job.active_status.set(to.value)]
        if current in TERMINAL:
            from chalicelib.delivery import service as delivery

            updates += delivery.leaving_final_actions()
    # status_unchanged: closes the race with any other writer (API, worker, reaper)
    # that moved the job after we read it; exactly one of them wins.
    status_unchanged = Job.status == current.value
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            _write_transition(job, current, to, updates, event, detail, condition, status_unchanged, counts,
                              tuple(checks))
            break
        except TransactWriteError as err:
            if _only_conflicts(err) and attempt + 1 < CONFLICT_ATTEMPTS:
                # A transaction touching the same item at that moment (the user's day count, another job's
                # transition): nothing was written; the same write, still guarded by `status_unchanged`, again.
                time.sleep(random.uniform(0.005, 0.03) * (attempt + 1))
                continue
            raise _explain(err, job, current, to) from err
    job.refresh(consistent_read=True)
    observability.job_finished(to.value, job.created_at)  # counts terminal states only
    if deliver:
        faults.point("after_final_status")
        try:
            delivery.enqueue(job)
        except Exception:  # the status has moved: a delivery left unqueued is queued by the reaper
            log.exception("could not queue the job's deliveries", extra={"jobId": job.job_id})
    return job


CONFLICT_ATTEMPTS = 5


def _only_conflicts(err: TransactWriteError) -> bool:
    """The transaction was cancelled only because another one was writing one of its items."""
    codes = {r.code for r in (err.cancellation_reasons or []) if r and r.code and r.code != "None"}
    return codes == {"TransactionConflict"}


def _write_transition(job: Job, current: JobStatus, to: JobStatus, updates: list[Action], event: str,
                      detail: dict[str, Any] | None, condition: Condition | None, status_unchanged: Condition,
                      counts: Any, checks: tuple[tuple[Any, Any, Any, Condition], ...] = ()) -> None:
    with TransactWrite(connection=connection()) as tx:
        for model, hash_key, range_key, must_hold in checks:
            tx.condition_check(model, hash_key, range_key=range_key, condition=must_hold)
        guard = status_unchanged if condition is None else status_unchanged & condition
        tx.update(job, actions=updates, condition=guard)
        tx.save(event_item(job.job_id, event, detail))
        counts.moved(tx, job, current, to)  # the list's totalCount, in the same all-or-nothing write
        if to in TERMINAL:
            # lock_is_ours: never release a lock another job now holds.
            lock_is_ours = Control.pk.does_not_exist() | (Control.job_id == job.job_id)
            tx.delete(Control(job.lock_key), condition=lock_is_ours)
        elif current in TERMINAL:
            # Leaving a terminal state re-takes the active-job lock.
            tx.save(Control(job.lock_key, job_id=job.job_id, expires_at=job.expires_at),
                    condition=Control.pk.does_not_exist())


def lock_holder(key: str) -> str | None:
    try:
        return Control.get(key, consistent_read=True).job_id
    except Control.DoesNotExist:
        return None


def _explain(err: TransactWriteError, job: Job, current: JobStatus, to: JobStatus) -> Exception:
    """Name why a transition's transaction was refused, from the state it left behind.

    (PynamoDB sends deletes, puts and updates in that order, not ours, so the position
    of a cancellation reason does not say which of our writes failed.)
    """
    codes = {r.code for r in (err.cancellation_reasons or []) if r}
    if not codes & {"ConditionalCheckFailed", "TransactionConflict"}:
        return err
    if current in TERMINAL and to not in TERMINAL:
        holder = lock_holder(job.lock_key)
        if holder and holder != job.job_id:
            return ActiveJobExists("Another job for this report and period is active.", existingJobId=holder)
    return TransitionRaced(f"The job is no longer {current.value}; it changed while this request ran.")
