"""The nightly warm run as tracked jobs: one `cache_warm` job per tenant with vendors due a refresh.

A tenant's job is owned by the tenant itself (auth.system_owner), so its members' own job lists never show it and
its `admin`s do (jobs/service.py). Steps: `select` (the tenant's due vendors are counted; the seen ones not due
are `vendorsSkipped`), then `refresh` (each request group adds to `vendorsRefreshed` and `vendorsFailed`). No
lease is taken: an admin's cancel is final at once, and the run stops asking for that tenant at its next group.
"""

from __future__ import annotations

import logging

from chalicelib import clock
from chalicelib.errors import ActiveJobExists
from chalicelib.jobs import runner, steps
from chalicelib.jobs.create import create_tenant_job
from chalicelib.jobs.states import ACTIVE, JobStatus, TransitionRaced, lock_holder, lock_key
from chalicelib.jobs.store import moves
from chalicelib.jobs.types import JobType, Step
from chalicelib.tables import Job

log = logging.getLogger(__name__)
STOPPED = "The warm run stopped before it finished; the next run refreshes what it left."


def _live_job(tenant: str) -> Job | None:
    from chalicelib.auth import system_owner

    holder = lock_holder(lock_key(system_owner(tenant), JobType.CACHE_WARM.value, "any"))
    job = runner.load(holder) if holder else None
    return job if job is not None and JobStatus(job.status) in ACTIVE else None


def open_job(tenant: str, due: int, skipped: int, continuing: bool) -> Job | None:
    """The tenant's job for this run: the live one a continuation goes on with, else a new one (`select` done,
    `refresh` begun). None when the tenant is not to be asked now (its job was cancelled during this run)."""
    live = _live_job(tenant)
    if continuing:
        return live if live is not None and live.status == JobStatus.PROCESSING.value else None
    if live is not None:  # left behind by a run that died: this run takes over
        moves.fail(live, STOPPED)
    try:
        job = create_tenant_job(tenant, JobType.CACHE_WARM.value, clock.now().strftime("%Y-%m"), due)
    except ActiveJobExists:
        log.warning("another warm job is live for a tenant; not warming it now")
        return None
    steps.complete(job, Step.SELECT)  # counted before the job was made: done in one mark
    try:
        job = moves.start_warm(job, due, skipped)
    except TransitionRaced:
        return None  # cancelled while Queued
    steps.begin(job, Step.REFRESH)
    return job


def record(job: Job, refreshed: int, failed: int) -> bool:
    """Add one request group's counts; False when the job is no longer Processing (an admin cancelled it)."""
    done = int(job.processed_lines) + refreshed + failed
    if not moves.add_warm_counts(job, refreshed, failed, f"Refreshed {done} of {int(job.total_lines)} vendors"):
        return False
    total = int(job.total_lines)
    steps.progress(job, Step.REFRESH, min(100, done * 100 // total) if total else 100)
    return True


def finish(job: Job) -> None:
    """Completed, with a message naming the counts (a job cancelled meanwhile stays Cancelled)."""
    job.refresh(consistent_read=True)
    steps.complete(job, Step.REFRESH)
    try:
        moves.complete_warm(job)
    except TransitionRaced:
        pass


def fail(job: Job, message: str) -> None:
    steps.fail(job, Step.REFRESH, message)
    moves.fail(job, message)
