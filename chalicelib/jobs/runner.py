"""Worker-side job operations: claim with a lease, checkpoint, release, finish, fail."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from pynamodb.exceptions import PynamoDBException

from chalicelib import clock
from chalicelib.categorize.usage import Usage
from chalicelib.jobs import store
from chalicelib.jobs.states import JobStatus, TransitionRaced, event_item
from chalicelib.jobs.store import Lease, Progress, moves
from chalicelib.lines import versions
from chalicelib.lines.store import count_lines
from chalicelib.tables import Job

log = logging.getLogger(__name__)
S = JobStatus


def load(job_id: str) -> Job | None:
    return store.current().load(job_id)


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
            # Pin the version of the period's lines this job reads from now on (lines/versions.py): an import
            # committing while it runs changes nothing under it. moves.start writes the pin.
            job.lines_version = job.lines_version or versions.pointer(job.owner_id, job.period).version
            total = count(job) if count else count_lines(versions.job_partition(job))
            return moves.start(job, lease, total)
        if status is S.CANCELLATION_REQUESTED:
            cancel(job)
            return None
    except TransitionRaced:
        return claim(job_id, lease, reason, count)
    if status is not S.PROCESSING:
        return None
    return _take_lease(job, lease, reason)


def take_lease(job: Job, lease: Lease) -> bool:
    """Lease a Processing job to this invocation; False if a live invocation holds it (store.lease_free)."""
    return store.current().take_lease(job, lease)


def _take_lease(job: Job, lease: Lease, reason: str) -> Job | None:
    if not take_lease(job, lease):
        log.info("job leased elsewhere; dropping duplicate message", extra={"jobId": job.job_id})
        return None
    if reason in ("rate_limited", "retried"):
        event_item(job.job_id, "resumed", {"after": reason}).save()
    return job


def checkpoint(job: Job, lease: Lease, old_cursor: str, new_cursor: str, done: Progress, eta: str | None) -> bool:
    """Advance cursor and counters together; False if someone else moved the job meanwhile (store.cursor_unchanged,
    store.lease_is_ours, store.still_worked)."""
    return store.current().checkpoint(job, lease, old_cursor, new_cursor, done, eta)


def hand_back(job: Job, lease: Lease, retries: int, resume_in: int, usage: Usage | None = None) -> bool:
    """Before the message that continues the job is sent: count the retries spent, push the heartbeat to when
    the job is due back (the reaper must not mistake a planned wait for a dead worker) and give up the lease,
    in one write. False if the lease was no longer ours: then no message may be sent (its holder goes on).

    Hand-over before send: a continuation sent while we still held the lease could reach a worker at once,
    find the lease held, be dropped as a duplicate, and leave the job without a message until the reaper.
    """
    return store.current().hand_back(job, lease, retries, resume_in, usage)


def note_wait(job_id: str, seconds: float, ends_at: float) -> float:
    """Add a rate-limited wait that ended (or ends) at `ends_at` (epoch seconds) to the job's wall-clock total.

    Only the part of the wait past the job's `limitedUntil` adds time: chunks of one job, or the invocations
    that follow each other, waiting out the same provider window count it once. Returns the seconds added.
    """
    return store.current().note_wait(job_id, seconds, ends_at)


def count_retries(job_id: str, retries: int, usage: Usage | None = None) -> None:
    """Retries (and model usage) a chunk spent before it handed itself back (its checkpoint counts the rest)."""
    store.current().count_retries(job_id, retries, usage)


def lease_is_live(owner: str | None, until: float | None, now: float | None = None) -> bool:
    return bool(owner) and until is not None and float(until) >= (time.time() if now is None else now)


def release(job: Job, lease: Lease) -> None:
    """Best effort, at an invocation's end: a lease left behind only runs out (a store error is logged, never
    allowed to hide the invocation's own outcome)."""
    try:
        if not store.current().release(job, lease):
            log.info("lease already gone", extra={"jobId": job.job_id})
    except PynamoDBException:
        log.warning("could not release the lease; it runs out by itself", extra={"jobId": job.job_id},
                    exc_info=True)


def eta(remaining_lines: int, started_at: str | None, done: int) -> str | None:
    """Projected finish from the job's pace since it started (all chunks together)."""
    began = clock.parse(started_at)
    if began is None or done <= 0 or remaining_lines <= 0:
        return None
    per_line = (clock.now() - began).total_seconds() / done
    return clock.iso(clock.now() + timedelta(seconds=per_line * remaining_lines))


def cancel(job: Job, by: str | None = None, unleased_only: bool = False) -> Job:
    """Cancelled, with the counts the job holds at that moment (store/moves.cancel says how)."""
    return moves.cancel(job, by, unleased_only)


def fail(job: Job, message: str, detail: dict | None = None) -> None:
    """Fail a live job with a message a user can act on (no-op if it is already terminal)."""
    moves.fail(job, message, detail)
