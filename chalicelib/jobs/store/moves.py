"""The status machine's writes: each move of a job's status is one transaction with its event, its day counts,
its report lock and, for a final status, its deliveries (jobs/states.py holds the rules, this module the writes).

The named moves (start, cancel, fail, requeue_for_retry, complete...) are what the worker, the reaper and the API
call; each builds its own update and condition here, so no caller writes an expression against a job item.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from chalicelib import clock, faults, observability
from chalicelib.categorize.usage import Usage
from chalicelib.errors import ActiveJobExists, InvalidTransition
from chalicelib.jobs.states import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    DeliveryStatus,
    JobStatus,
    TransitionRaced,
    event_item,
    lock_holder,
    rate_key,
)
from chalicelib.jobs.store.deliveries import DELIVERING, UNPLANNED
from chalicelib.jobs.store.lease import Change, Lease
from chalicelib.tables import Control, Job, connection

log = logging.getLogger(__name__)
S = JobStatus
CONFLICT_ATTEMPTS = 5


# --- named conditions of the moves -------------------------------------------------------------------------------


def status_unchanged(status: JobStatus) -> Condition:
    """Closes the race with any other writer (API, worker, reaper) that moved the job after we read it: exactly
    one of them wins."""
    return Job.status == status.value


def no_live_lease(now: float) -> Condition:
    """The job waits in the queue (a delayed re-enqueue, a hand-over between invocations) or its worker is gone;
    a worker taking the lease meanwhile refuses the write."""
    return Job.lease_owner.does_not_exist() | (Job.lease_until < now)


def counts_as_read(processed: int) -> Condition:
    """A chunk's checkpoint landing between the read and the write would make "after N lines" stale."""
    return Job.processed_lines == processed


def as_seen_values(heartbeat: str | None, reap_count: int) -> Condition:
    """as_seen: fail only the job a sweep judged, never what it became since (say, retried)."""
    return (Job.heartbeat_at == heartbeat) & (Job.reap_count == reap_count)


# --- the generic move --------------------------------------------------------------------------------------------


def transition(
    job: Job,
    to: JobStatus,
    event: str,
    detail: dict[str, Any] | None = None,
    actions: Iterable[Action] = (),
    condition: Condition | None = None,
    checks: Iterable[tuple[Any, Any, Any, Condition]] = (),
    events: Iterable[tuple[str, dict[str, Any]]] = (),
) -> Job:
    """Move `job` to `to` with one conditional write that also appends `event`.

    `checks` are (model class, hash key, range key, condition) that must hold of other items in the same
    transaction (a retry checks that the job's report was not deleted meanwhile); `events` are more audit
    events (kind, detail) to write with it (the transitions of the steps the move settles).

    Raises InvalidTransition when the move is not allowed from the job's status,
    and TransitionRaced when another writer changed the status first.
    """
    from chalicelib.jobs import counts  # counts reads JobStatus from the states module

    current = JobStatus(job.status)
    if to not in TRANSITIONS[current]:
        raise InvalidTransition(f"A {current.value} job cannot become {to.value}.")
    stamp = clock.iso(clock.now())
    updates: list[Action] = [Job.status.set(to.value), Job.updated_at.set(stamp), *actions]
    deliver = False
    if to in TERMINAL:
        from chalicelib.delivery import service as delivery  # reads the job's report: only on a final move

        # The deliveries are planned in the same write as the final status (an outbox): none is lost to a crash.
        final, deliver = _final_actions(job, to, delivery.plan)
        updates += [Job.lease_owner.remove(), Job.lease_until.remove(), *final]
    else:
        updates += [Job.active_status.set(to.value)]
        if current in TERMINAL:
            # A final job taken up again: its deliveries were of the status it leaves; messages still in flight
            # for them find them gone and stop (the audit trail keeps every attempt).
            updates += [Job.deliveries.remove(), Job.outbox_id.remove()]
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            _write(job, current, to, updates, event, detail, condition, counts, tuple(checks), tuple(events))
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
    if to is S.COMPLETED:
        _deliver_step(job)  # before the first attempt is queued: its outcome settles the step
    if deliver:
        faults.point("after_final_status")
        try:
            delivery.enqueue(job)
        except Exception:  # the status has moved: a delivery left unqueued is queued by the reaper
            log.exception("could not queue the job's deliveries", extra={"jobId": job.job_id})
    return job


def _deliver_step(job: Job) -> None:
    from chalicelib.jobs import deliver

    try:
        deliver.planned(job)
    except Exception:  # the job is Completed: a step mark that failed must not hold its deliveries back
        log.exception("could not mark the deliver step", extra={"jobId": job.job_id})


def _final_actions(job: Job, to: JobStatus, plan: Any) -> tuple[list[Action], bool]:
    """The deliveries of a final move, and the outbox mark when any waits (see chalicelib/delivery/service.py).

    Planning reads the report; if that read fails, the final status is written all the same, marked for the
    reaper's sweep to plan (a store error must never hold a job's status back). Returns (actions, mark): when
    `mark`, the writer queues them once the move has landed.
    """

    token = uuid.uuid4().hex
    try:
        planned = plan(job, to)
    except Exception:
        log.warning("could not plan the job's deliveries; the sweep will", extra={"jobId": job.job_id},
                    exc_info=True)
        return [Job.active_status.set(DELIVERING), Job.outbox_id.set(token + UNPLANNED),
                Job.deliveries.remove()], False
    waiting = any(d.status == DeliveryStatus.PENDING.value for d in planned)
    actions: list[Action] = ([Job.active_status.set(DELIVERING), Job.outbox_id.set(token)] if waiting
                             else [Job.active_status.remove(), Job.outbox_id.remove()])
    actions.append(Job.deliveries.set(planned) if planned else Job.deliveries.remove())
    return actions, waiting


def _only_conflicts(err: TransactWriteError) -> bool:
    """The transaction was cancelled only because another one was writing one of its items."""
    codes = {r.code for r in (err.cancellation_reasons or []) if r and r.code and r.code != "None"}
    return codes == {"TransactionConflict"}


def _write(job: Job, current: JobStatus, to: JobStatus, updates: list[Action], event: str,
           detail: dict[str, Any] | None, condition: Condition | None, counts: Any,
           checks: tuple[tuple[Any, Any, Any, Condition], ...] = (),
           events: tuple[tuple[str, dict[str, Any]], ...] = ()) -> None:
    with TransactWrite(connection=connection()) as tx:
        for model, hash_key, range_key, must_hold in checks:
            tx.condition_check(model, hash_key, range_key=range_key, condition=must_hold)
        guard = status_unchanged(current) if condition is None else status_unchanged(current) & condition
        tx.update(job, actions=updates, condition=guard)
        tx.save(event_item(job.job_id, event, detail))
        for n, (kind, more) in enumerate(events, 1):
            tx.save(event_item(job.job_id, kind, more, nth=n))  # after the move's own event
        counts.moved(tx, job, current, to)  # the list's totalCount, in the same all-or-nothing write
        if to in TERMINAL:
            # lock_is_ours: never release a lock another job now holds.
            lock_is_ours = Control.pk.does_not_exist() | (Control.job_id == job.job_id)
            tx.delete(Control(job.lock_key), condition=lock_is_ours)
        elif current in TERMINAL:
            # Leaving a terminal state re-takes the active-job lock.
            tx.save(Control(job.lock_key, job_id=job.job_id, expires_at=job.expires_at),
                    condition=Control.pk.does_not_exist())


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


# --- the named moves: each a Change through the store in use (DynamoDB, or the in-memory twin) ----------------


STEP_RACES = 5


def _move(job: Job, to: JobStatus, event: str, detail: dict[str, Any] | None, change: Change) -> Job:
    """The move through the store in use, settling the job's steps in the same write (stepplan.settle).

    steps_unchanged: a step mark landing between our read and this write (a worker's begin or complete) refuses
    it; the move is made again from a fresh read while the status is still the one we moved from, so neither the
    status move nor the step mark is lost. Any other refusal is the caller's TransitionRaced, as before.
    """
    from chalicelib.jobs.store import steps
    from chalicelib.jobs.store.lease import current

    for _ in range(STEP_RACES):
        settled = steps.settled(job, to, change.set.get("error_message"))
        if settled is None:
            return current().move(job, to, event, detail, change)
        written, seen, moved = settled
        try:
            return current().move(job, to, event, detail, replace(
                change, set={**change.set, "steps": written, "steps_version": seen + 1}, steps_version=seen,
                events=change.events + steps.events(moved)))
        except TransitionRaced:
            status = job.status
            _reload(job)
            if job.status != status or steps.version(job) == seen:
                raise
    raise TransitionRaced("The job's steps kept changing while its status moved.")


def _reload(job: Job) -> None:
    from chalicelib.jobs.store.lease import current

    current().reload(job)


def start(job: Job, lease: Lease, total: int, message: str | None = None) -> Job:
    """Queued -> Processing, leased to the invocation that starts it, with its total (`message`: the status
    message, when the job starts with something other than categorizing)."""
    stamp = clock.iso(clock.now())
    return _move(job, S.PROCESSING, "started", {"totalLines": total}, Change(set={
        "started_at": job.started_at or stamp, "heartbeat_at": stamp,
        "total_lines": max(total, int(job.processed_lines)), "lease_owner": lease.owner, "lease_until": lease.until,
        "reap_count": 0, "status_message": message or f"Categorizing {total} lines",
        **({"lines_version": job.lines_version} if job.lines_version else {})}))


def cancel(job: Job, by: str | None = None, unleased_only: bool = False) -> Job:
    """Cancelled, with the counts the job holds at that moment (`unleased_only`: only while no live lease holds
    it, for a cancel the API completes itself).

    counts_as_read: a chunk's checkpoint landing between our read and this write is refused and the write made
    again from a fresh read (TransitionRaced only when the status itself moved, or no_live_lease refused).
    """
    for _ in range(5):
        processed = int(job.processed_lines)
        try:
            return _move(job, S.CANCELLED, "cancelled", {"processedLines": processed, **({"by": by} if by else {})},
                         Change(set={"status_message": f"Cancelled after {processed} of {int(job.total_lines)} lines"},
                                processed=processed, unleased_at=time.time() if unleased_only else None))
        except TransitionRaced:
            status = job.status
            _reload(job)
            if job.status != status or int(job.processed_lines) == processed:
                raise  # the status moved, or the lease condition refused
    raise TransitionRaced("The job kept moving while it was being cancelled.")


def cancel_queued(job: Job) -> Job:
    """Queued -> Cancelled by its user: nothing ran."""
    return _move(job, S.CANCELLED, "cancelled", {"by": "user"},
                 Change(set={"status_message": "Cancelled before it started"}))


def request_cancel(job: Job) -> Job:
    """Processing -> CancellationRequested: the worker that holds it stops after its batch."""
    return _move(job, S.CANCELLATION_REQUESTED, "cancel_requested", {"by": "user"},
                 Change(set={"status_message": "Cancellation requested; stopping after this batch"}))


def fail(job: Job, message: str, detail: dict | None = None, judged: bool = False,
         lease: Lease | None = None) -> None:
    """Fail a live job with a message a user can act on (no-op if it is already final). `judged`: only the job
    as this caller saw it (as_seen), once; `lease`: only while that lease holds it (lease_is_ours), once; else
    again from a fresh read if it moved."""
    once = judged or lease is not None
    for _ in range(1 if once else 3):
        if S(job.status) not in ACTIVE:
            return
        try:
            _move(job, S.FAILED, "failed", {"reason": message, **(detail or {})},
                  Change(set={"error_message": message, "status_message": "Failed"}, lease=lease,
                         seen=(job.heartbeat_at, int(job.reap_count)) if judged else None))
            return
        except TransitionRaced:
            if judged:
                raise
            _reload(job)


def requeue_for_retry(job: Job, report_check: tuple[Any, Any, Any, Condition]) -> Job:
    """Failed or Cancelled -> Queued, from its checkpoint; `report_check` must hold of its report in the same
    transaction (a report deleted meanwhile gets no active job)."""
    return _move(job, S.QUEUED, "retried", {"from": job.status, "cursor": job.cursor}, Change(
        set={"reap_count": 0, "rate_limited_seconds": 0, "recheck_flagged": _recheck(job),
             # Now, not when it stopped: a job retried long after it failed must not look stale to the reaper.
             "heartbeat_at": clock.iso(clock.now()), "status_message": "Queued again; resuming from checkpoint"},
        remove=("error_message", "completed_at", "limited_until", "recheck_after"), report_check=report_check))


def _recheck(job: Job) -> bool:
    """The retry asks the model again about the lines it flagged, unless categorize is finished: a retry resumes at
    the first step not finished, so a job that failed in `assemble` is assembled again, not categorized again."""
    from chalicelib.jobs.states import STEP_FINISHED
    from chalicelib.jobs.store import steps
    from chalicelib.jobs.types import Step

    categorize = next((s for s in steps.read(job) if s.name == Step.CATEGORIZE.value), None)
    done = categorize is not None and categorize.status in STEP_FINISHED
    return int(job.failed_lines) > 0 and not done


def fail_unqueued(job: Job) -> None:
    """A retry whose message the queue refused: Failed again, saying so."""
    _move(job, S.FAILED, "failed", {"reason": "could not be queued"},
          Change(set={"error_message": "The job could not be queued again; retry it shortly."}))


@dataclass(frozen=True)
class LastBatch:
    """The batch a completion also checkpoints: the cursor it read from and ends at, and what it counted."""

    cursor_before: str
    cursor_after: str
    processed: int
    cached: int
    retries: int
    usage: Usage = Usage()  # the batch's model usage (categorize/usage.py)


@dataclass(frozen=True)
class Report:
    version: int
    key: str
    lines: int
    needs_review: int


def complete(job: Job, lease: Lease, report: Report, message: str, last: LastBatch | None = None) -> Job:
    """Processing -> Completed with its report, by the lease holder; with `last`, also that batch's checkpoint
    (conditioned on the cursor as a checkpoint is, so a redone batch never counts twice)."""
    values = {"completed_at": clock.iso(clock.now()), "result_key": report.key, "result_version": report.version,
              "needs_review": report.needs_review, "failed_lines": report.needs_review, "total_lines": report.lines,
              "status_message": message}
    adds: dict[str, int] = {}
    if last is not None:
        values |= {"cursor": last.cursor_after, "processed_lines": last.processed,
                   "heartbeat_at": clock.iso(clock.now())}
        adds = {"cached_lines": last.cached, "retry_count": last.retries, **last.usage.adds()}
    return _move(job, S.COMPLETED, "completed", {"lines": report.lines, "needsReview": report.needs_review},
                 Change(set=values, add=adds, remove=("estimated_completion_at",), lease=lease,
                        cursor=last.cursor_before if last is not None else None))


def start_warm(job: Job, due: int, skipped: int) -> Job:
    """A cache_warm job, Queued -> Processing by the warm run that made it (no lease: categorize/warm_jobs.py),
    its counts from zero and the vendors `select` found not due."""
    stamp = clock.iso(clock.now())
    return transition(job, S.PROCESSING, "started", {"vendorsDue": due, "vendorsSkipped": skipped}, actions=[
        Job.started_at.set(stamp), Job.heartbeat_at.set(stamp), Job.vendors_refreshed.set(0),
        Job.vendors_failed.set(0), Job.vendors_skipped.set(skipped),
        Job.status_message.set(f"Refreshing {due} vendors")])


def complete_warm(job: Job) -> Job:
    """A cache_warm job, Processing -> Completed, with a message naming its counts."""
    refreshed, failed, skipped = (int(job.vendors_refreshed or 0), int(job.vendors_failed or 0),
                                  int(job.vendors_skipped or 0))
    return _move(job, S.COMPLETED, "completed",
                 {"vendorsRefreshed": refreshed, "vendorsFailed": failed, "vendorsSkipped": skipped},
                 Change(set={"completed_at": clock.iso(clock.now()), "status_message":
                             f"Refreshed {refreshed} vendors; {failed} failed, {skipped} skipped (not due)"}))


def add_warm_counts(job: Job, refreshed: int, failed: int, message: str) -> bool:
    """A cache_warm job's request group: its vendors counted (categorize/warm_jobs.py). False when the job is no
    longer Processing."""
    stamp = clock.iso(clock.now())
    try:
        # still_processing: an admin's cancel that landed since keeps the counts it was made with.
        job.update(condition=status_unchanged(S.PROCESSING), actions=[
            Job.processed_lines.add(refreshed + failed), Job.vendors_refreshed.add(refreshed),
            Job.vendors_failed.add(failed), Job.heartbeat_at.set(stamp), Job.updated_at.set(stamp),
            Job.status_message.set(message)])
    except UpdateError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


# --- creation ----------------------------------------------------------------------------------------------------


def create(job: Job, add_to_window: Any, report_condition: Condition | None) -> None:
    """A new job with its lock, its place in the caller's hourly window (`add_to_window` adds it to the
    transaction), its day count and its `created` event, all or nothing; raises TransactWriteError when refused
    (jobs/create explains which write was, from the state it left). `report_condition` None: a tenant's own job
    (cache_warm), of no report."""
    from chalicelib.jobs import counts
    from chalicelib.tables import ReportConfig

    with TransactWrite(connection=connection()) as tx:
        tx.save(job, condition=Job.job_id.does_not_exist())
        # lock_is_free: one active job per (user, report, period), however many creates race.
        tx.save(Control(job.lock_key, job_id=job.job_id, expires_at=job.expires_at),
                condition=Control.pk.does_not_exist())
        add_to_window(tx)
        tx.save(event_item(job.job_id, "created", {"trigger": job.trigger, "period": job.period}))
        counts.created(tx, job)
        if report_condition is not None:
            # report_accepts_jobs: not deleted, nor being deleted (reports.service.delete_report checks for jobs).
            tx.condition_check(ReportConfig, job.tenant, job.report_id, condition=report_condition)


def undo_create(job: Job) -> None:
    """Every trace of a job whose message could not be sent, gone."""
    from chalicelib.jobs import counts
    from chalicelib.tables import JobEvent

    with TransactWrite(connection=connection()) as tx:
        # still_queued: a send that timed out may have been delivered after all; a job a worker has taken is
        # left alone (and counted) rather than deleted under it.
        tx.delete(job, condition=Job.status == S.QUEUED.value)
        tx.delete(Control(job.lock_key), condition=Control.pk.does_not_exist() | (Control.job_id == job.job_id))
        tx.update(Control(rate_key(job.owner_id, job.type)), actions=[Control.stamps[job.job_id].remove()])
        counts.undone(tx, job)
    with JobEvent.batch_write() as batch:
        for event in JobEvent.query(job.job_id):
            batch.delete(event)
