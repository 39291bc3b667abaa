"""Import jobs, the API's side: create one (POST /imports) and remove a period's lines (DELETE /expenses).

An import is a job of type `lines_import` (or `import_and_report`, with a report to generate afterwards) created
Queued with a presigned upload URL; the bucket's notification starts it when the file arrives, and the worker
(lines/importer.py) stores all of its rows or none.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from pynamodb.exceptions import PynamoDBException, TransactWriteError

from chalicelib import clock
from chalicelib.auth import Principal
from chalicelib.errors import ActiveJobExists, NotAsyncReport, ServiceUnavailable
from chalicelib.jobs.states import JobStatus, lock_holder, lock_key
from chalicelib.jobs.store import moves
from chalicelib.jobs.types import JobType
from chalicelib.lines import uploads, versions
from chalicelib.reports import service as reports
from chalicelib.settings import get_settings
from chalicelib.tables import Job

IMPORT_REPORT_ID = "lines-import"  # the reportId of an import without a report: it names the type (no report)
MODES = ("merge", "replace")


@dataclass(frozen=True)
class Created:
    job: Job
    upload_url: str
    upload_expires_at: datetime


def import_lock(owner_id: str, period: str) -> str:
    """One active import per user and period (report ids have no `_`, so no report's lock is this one)."""
    return lock_key(owner_id, JobType.LINES_IMPORT.value, period)


def create_import(principal: Principal, mode: str, period: str | None, report_id: str | None) -> Created:
    """A Queued import job and the URL to PUT its file to. 409 (existingJobId) while another import of the same
    period is active; with `report_id`, what generating that report needs (permission, async target)."""
    owner = principal.user_id
    job_id = str(uuid.uuid4())
    stamp = clock.iso(clock.now())
    url, expires = uploads.presign(job_id)
    condition = None
    if report_id is not None:
        report = reports.get_for_generation(principal, report_id)
        if {"type": "api", "mode": "async"} not in report.delivery_targets:
            raise NotAsyncReport("Report is not configured for asynchronous generation.")
        job_type, tenant, categories = JobType.IMPORT_AND_REPORT, report.tenant, list(report.categories)
        condition = reports.job_condition()
    else:
        job_type, tenant, categories = JobType.LINES_IMPORT, principal.tenant, []
        report_id = IMPORT_REPORT_ID
    # Without a period the file names it (its first row): the lock is then the job's own, and two such imports of
    # one month are kept apart by the commit's conditions instead (lines/versions.pointer_unmoved).
    lock = import_lock(owner, period) if period else import_lock(owner, f"job-{job_id}")
    job = Job(job_id, owner_id=owner, tenant=tenant, report_id=report_id, period=period or "", type=job_type.value,
              status=JobStatus.QUEUED.value, active_status=JobStatus.QUEUED.value, trigger="api",
              categories=categories, created_at=stamp, updated_at=stamp, heartbeat_at=stamp,
              status_message="Waiting for the file to be uploaded", lock_key=lock,
              lines_import={"key": uploads.object_key(job_id), "mode": mode, "stage": "upload",
                            "uploadExpiresAt": clock.iso(expires), "periodGiven": bool(period)},
              expires_at=clock.expiry(get_settings().retention_days))
    try:
        moves.create(job, lambda tx: None, condition)
    except TransactWriteError as err:
        holder = lock_holder(lock)
        if holder and holder != job_id:
            raise ActiveJobExists(f"An import of {period} is already running.", existingJobId=holder) from err
        if condition is not None:
            reports.explain_refused_job(tenant, report_id)
        raise ServiceUnavailable("The job store is unavailable; no job was created. Try again shortly.") from err
    except PynamoDBException as err:
        raise ServiceUnavailable("The job store is unavailable; no job was created. Try again shortly.") from err
    return Created(job, url, expires)


def reader_of(owner_id: str, period: str) -> str | None:
    """An active job of the user that reads (or writes) the period's lines, or None."""
    holder = lock_holder(import_lock(owner_id, period))
    if holder:
        return holder
    found = Job.by_owner.query(owner_id, filter_condition=Job.active_status.exists() & (Job.period == period))
    return next((job.job_id for job in found), None)


def delete_period(principal: Principal, period: str) -> None:
    """The period's lines are gone for the caller; 409 naming the job while one reads them.

    The lines are not deleted here but made unreachable at once (the pointer names an empty version, in one
    write); the reaper's sweep deletes them. A job that starts meanwhile reads the version it pinned.
    """
    holder = reader_of(principal.user_id, period)
    if holder:
        raise ActiveJobExists(f"A job is reading the lines of {period}; delete them once it has finished.",
                              existingJobId=holder)
    try:
        versions.delete_period(principal.user_id, period)
    except (versions.PeriodChanged, PynamoDBException) as err:
        raise ServiceUnavailable("The period's lines could not be deleted just now; try again.") from err
