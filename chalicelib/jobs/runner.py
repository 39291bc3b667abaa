"""Worker-side job operations: claim with a lease, checkpoint, release, finish, fail."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from pynamodb.exceptions import UpdateError

from chalicelib import clock
from chalicelib.jobs.states import JobStatus, TransitionRaced, event_item, transition
from chalicelib.lines.store import count_lines
from chalicelib.tables import Job

log = logging.getLogger(__name__)
S = JobStatus


@dataclass(frozen=True)
class Lease:
    owner: str
    until: float  # epoch seconds: the end of the invocation holding it


@dataclass(frozen=True)
class Progress:
    lines: int = 0
    failed: int = 0
    cached: int = 0
    retries: int = 0
    rate_limited_seconds: float = 0.0


def load(job_id: str) -> Job | None:
    try:
        return Job.get(job_id, consistent_read=True)
    except Job.DoesNotExist:
        return None


def claim(job_id: str, lease: Lease, reason: str, count: Callable[[Job], int] | None = None) -> Job | None:
    """The job, leased to us, if there is work to do; None if the message is stale or a duplicate.

    `count` gives a starting job its total (default: count_lines).
    """
    job = load(job_id)
    if job is None:
        return None
    status = S(job.status)
    try:
        if status is S.QUEUED:
            stamp = clock.iso(clock.now())
            total = count(job) if count else count_lines(job.owner_id, job.period)
            return transition(job, S.PROCESSING, "started", {"totalLines": total}, actions=[
                Job.started_at.set(job.started_at or stamp), Job.heartbeat_at.set(stamp),
                Job.total_lines.set(max(total, int(job.processed_lines))),
                Job.lease_owner.set(lease.owner), Job.lease_until.set(lease.until), Job.reap_count.set(0),
                Job.status_message.set(f"Categorizing {total} lines")])
        if status is S.CANCELLATION_REQUESTED:
            transition(job, S.CANCELLED, "cancelled", {"processedLines": int(job.processed_lines)},
                       actions=[Job.status_message.set(_stopped_message(job))])
            return None
    except TransitionRaced:
        return claim(job_id, lease, reason, count)
    if status is not S.PROCESSING:
        return None
    return _take_lease(job, lease, reason)


def take_lease(job: Job, lease: Lease) -> bool:
    """Lease a Processing job to this invocation; False if a live invocation holds it."""
    # lease_free: only one invocation works a job at a time; a duplicate message finds
    # the lease held and is dropped (a dead holder's lease expires and the reaper re-enqueues).
    lease_free = Job.lease_owner.does_not_exist() | (Job.lease_until < time.time()) | (Job.lease_owner == lease.owner)
    try:
        job.update(actions=[Job.lease_owner.set(lease.owner), Job.lease_until.set(lease.until),
                            Job.heartbeat_at.set(clock.iso(clock.now()))],
                   condition=lease_free & (Job.status == S.PROCESSING.value))
        return True
    except UpdateError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise


def _take_lease(job: Job, lease: Lease, reason: str) -> Job | None:
    if not take_lease(job, lease):
        log.info("job leased elsewhere; dropping duplicate message", extra={"jobId": job.job_id})
        return None
    if reason in ("rate_limited", "retried"):
        event_item(job.job_id, "resumed", {"after": reason}).save()
    return job


def checkpoint(job: Job, lease: Lease, old_cursor: str, new_cursor: str, done: Progress, eta: str | None) -> bool:
    """Advance cursor and counters together; False if someone else moved the job meanwhile."""
    processed = int(job.processed_lines) + done.lines
    total = max(int(job.total_lines), processed)
    # cursor_unchanged + lease_is_ours: a duplicate or stale worker can never count a batch twice.
    cursor_unchanged = Job.cursor == old_cursor
    lease_is_ours = Job.lease_owner == lease.owner
    still_running = Job.status.is_in(S.PROCESSING.value, S.CANCELLATION_REQUESTED.value)
    try:
        job.update(actions=[
            Job.cursor.set(new_cursor), Job.processed_lines.add(done.lines), Job.failed_lines.add(done.failed),
            Job.cached_lines.add(done.cached), Job.retry_count.add(done.retries),
            Job.rate_limited_seconds.add(round(done.rate_limited_seconds, 3)),
            Job.total_lines.set(total), Job.heartbeat_at.set(clock.iso(clock.now())), Job.reap_count.set(0),
            Job.updated_at.set(clock.iso(clock.now())),
            Job.estimated_completion_at.set(eta) if eta else Job.estimated_completion_at.remove(),
            Job.status_message.set(f"Categorized {processed} of {total} lines"),
        ], condition=cursor_unchanged & lease_is_ours & still_running)
        return True
    except UpdateError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            job.refresh(consistent_read=True)
            return False
        raise


def note_retries(job: Job, lease: Lease, done: Progress, resume_in: int) -> None:
    """Before a delayed re-enqueue: count the retries spent, and push the heartbeat to when
    the job is due back, so the reaper does not mistake a planned wait for a dead worker."""
    due = clock.iso(clock.now() + timedelta(seconds=resume_in))
    job.update(actions=[Job.retry_count.add(done.retries), Job.heartbeat_at.set(due),
                        Job.rate_limited_seconds.add(round(done.rate_limited_seconds, 3))],
               condition=Job.lease_owner == lease.owner)


def release(job: Job, lease: Lease) -> None:
    try:
        job.update(actions=[Job.lease_owner.remove(), Job.lease_until.remove()],
                   condition=Job.lease_owner == lease.owner)
    except UpdateError:
        log.info("lease already gone", extra={"jobId": job.job_id})


def eta(remaining_lines: int, started_at: str | None, done: int) -> str | None:
    """Projected finish from the job's pace since it started (all chunks together)."""
    began = clock.parse(started_at)
    if began is None or done <= 0 or remaining_lines <= 0:
        return None
    per_line = (clock.now() - began).total_seconds() / done
    return clock.iso(clock.now() + timedelta(seconds=per_line * remaining_lines))


def _stopped_message(job: Job) -> str:
    return f"Cancelled after {int(job.processed_lines)} of {int(job.total_lines)} lines"


def cancel(job: Job) -> None:
    transition(job, S.CANCELLED, "cancelled", {"processedLines": int(job.processed_lines)},
               actions=[Job.status_message.set(_stopped_message(job))])


def fail(job: Job, message: str, detail: dict | None = None) -> None:
    """Fail a live job with a message a user can act on (no-op if it is already terminal)."""
    for _ in range(3):
        if S(job.status) not in (S.QUEUED, S.PROCESSING, S.CANCELLATION_REQUESTED):
            return
        try:
            transition(job, S.FAILED, "failed", {"reason": message, **(detail or {})},
                       actions=[Job.error_message.set(message), Job.status_message.set("Failed")])
            return
        except TransitionRaced:
            job.refresh(consistent_read=True)
