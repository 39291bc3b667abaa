"""Import jobs, the API's side: create one (POST /imports) and remove a period's lines (DELETE /expenses).

An import is a job of type `lines_import` (or `import_and_report`, with a report to generate afterwards) created
Queued with a presigned upload URL; the bucket's notification starts it when the file arrives, and the worker
(lines/importer.py) stores all of its rows or none.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from pynamodb.exceptions import PynamoDBException

from chalicelib import clock
from chalicelib.auth import Principal
from chalicelib.errors import ActiveJobExists, NotAsyncReport, ServiceUnavailable
from chalicelib.jobs.create import create_job
from chalicelib.jobs.states import lock_holder, lock_key
from chalicelib.jobs.types import JobType
from chalicelib.lines import uploads, versions
from chalicelib.reports import service as reports
from chalicelib.tables import Job

IMPORT_REPORT_ID = "lines-import"  # an import without a report is named by its type (jobs/create._new_job)
MODES = ("merge", "replace")


@dataclass(frozen=True)
class Created:
    job: Job
    upload_url: str
    upload_expires_at: datetime


def create_import(principal: Principal, mode: str, period: str | None, report_id: str | None) -> Created:
    """A Queued import job and the URL to PUT its file to. 409 (existingJobId) while another import of the same
    period is active; 429 past the hour's imports (per user and type); with `report_id`, what generating that
    report needs (permission, async target)."""
    owner = principal.user_id
    report = None
    if report_id is not None:
        report = reports.get_for_generation(principal, report_id)
        if {"type": "api", "mode": "async"} not in report.delivery_targets:
            raise NotAsyncReport("Report is not configured for asynchronous generation.")
    job_type = JobType.IMPORT_AND_REPORT if report is not None else JobType.LINES_IMPORT
    expires = clock.now() + timedelta(seconds=uploads.UPLOAD_SECONDS)
    # Without a period the file names it (its first row): the lock is then the job's own (a fresh id), and two
    # such imports of one month are kept apart by the commit's conditions instead (lines/versions.pointer_unmoved).
    lock = import_lock(owner, period or f"job-{uuid.uuid4()}")
    fields = {"lock_key": lock, "status_message": "Waiting for the file to be uploaded",
              "lines_import": {"mode": mode, "stage": "upload", "uploadExpiresAt": clock.iso(expires),
                               "periodGiven": bool(period)}}
    try:
        job = create_job(owner, report, period or "", job_type=job_type.value, tenant=principal.tenant,
                         fields=fields, start=False)  # its file's arrival starts it (the bucket's notification)
    except ActiveJobExists as err:
        raise ActiveJobExists(f"An import of {period} is already running.", **err.extensions) from err
    url = uploads.presign(job.job_id)
    return Created(job, url, expires)


def import_lock(owner_id: str, period: str) -> str:
    """One active import per user and period: every import job's lock, whatever its type (an import_and_report
    job too), so DELETE /expenses finds it."""
    return lock_key(owner_id, IMPORT_REPORT_ID, period, JobType.LINES_IMPORT.value)


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
