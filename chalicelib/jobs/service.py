"""Job queries and user actions (read, list, cancel, events), each scoped to the caller."""

from __future__ import annotations

import time
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

from chalicelib import clock, paging
from chalicelib.categorize import usage
from chalicelib.categorize.prices import DEFAULT_LANE
from chalicelib.errors import Conflict, NotFound, ValidationFailed
from chalicelib.jobs import chunks, counts, runner, tenant_jobs
from chalicelib.jobs.states import TERMINAL, JobAction, JobStatus, TransitionRaced, allowed_actions
from chalicelib.jobs.store import moves
from chalicelib.jobs.store import steps as step_writes
from chalicelib.jobs.types import JobType, label
from chalicelib.lines.validation import MAX_RANGE_KEY_BYTES, key_fits, shown_id
from chalicelib.tables import Job, JobEvent


def delivery_dicts(job: Job) -> list[dict[str, Any]]:
    if not job.deliveries:
        return []  # every job until it is final: no import of the delivery package on the hot poll path
    from chalicelib.delivery.service import to_dicts

    return to_dicts(job)


if TYPE_CHECKING:
    from chalicelib.auth import Principal


def tenant_owner(principal: Principal) -> str | None:
    """The owner key of the tenant's own jobs (cache_warm) when the caller is one of its admins, else None."""
    from chalicelib.auth import ADMIN_ROLE, system_owner  # the API's: the worker never needs the token code

    return system_owner(principal.tenant) if ADMIN_ROLE in principal.roles else None


def get_job(owner_id: str, job_id: str, also: str | None = None) -> Job:
    """The caller's job (or, with `also`, one of the tenant's own jobs: tenant_owner), or 404 whether it is
    missing, someone else's or past retention."""
    try:
        job = Job.get(job_id, consistent_read=True) if _plausible_id(job_id) else None
    except Job.DoesNotExist:
        job = None
    # DynamoDB deletes expired items days late; an expired job must already read as gone.
    if job is None or job.owner_id not in (owner_id, also) or job.expires_at.timestamp() < time.time():
        raise NotFound(f"Job '{shown_id(job_id)}' was not found.")
    return job


def _plausible_id(job_id: str) -> bool:
    return 0 < len(job_id) <= 64 and job_id.replace("-", "").isalnum() and job_id.isascii()


def to_dict(job: Job, base_url: str) -> dict[str, Any]:
    status_url = f"{base_url}/api/v1/jobs/{job.job_id}"
    total = int(job.total_lines)
    processed = int(job.processed_lines)
    if job.status == JobStatus.COMPLETED.value:
        percent = 100
    else:
        percent = min(99, processed * 100 // total) if total else 0
    return {
        "jobId": job.job_id, "reportId": job.report_id, "period": job.period or None, "type": job.type,
        "typeLabel": label(job.type), "status": job.status, "statusMessage": job.status_message,
        "progressPercent": percent,
        "totalLines": total, "processedLines": processed, "failedLines": int(job.failed_lines),
        "cachedLines": int(job.cached_lines), "retryCount": int(job.retry_count), "trigger": job.trigger,
        "steps": [step.to_dict() for step in step_writes.read(job)],
        "lane": job.lane or DEFAULT_LANE, "usage": usage.to_dict(job),
        "createdAt": job.created_at, "startedAt": job.started_at, "updatedAt": job.updated_at,
        "completedAt": job.completed_at, "estimatedCompletionAt": job.estimated_completion_at,
        "errorMessage": job.error_message, "statusUrl": status_url,
        "resultUrl": f"{status_url}/result" if job.status == JobStatus.COMPLETED.value
        and job.type != JobType.CACHE_WARM.value else None,
        # What the caller may do next, from the state machine: the dashboard and the CLI read this, not the status.
        "allowedActions": _actions(job),
        # One per report target the final status was sent to (email, webhook); [] until the job is final.
        "deliveries": delivery_dicts(job),
        "warm": _warm_counts(job),
        "import": import_progress(job),
    }


def _actions(job: Job) -> list[str]:
    actions = [a.value for a in allowed_actions(job.status)]
    if job.type == JobType.CACHE_WARM.value:
        # An admin may cancel a tenant's warm run; it is never retried (the next run refreshes what it left) and
        # has no result.
        return [a for a in actions if a == JobAction.CANCEL.value]
    return actions


def import_progress(job: Job) -> dict[str, Any] | None:
    """An import's file and what became of it (lines/importer.py keeps it on the job); null for other types."""
    state = job.lines_import
    if state is None:
        return None
    return {"mode": state.get("mode", "merge"), "stage": state.get("stage", "upload"), "rows": state.get("rows"),
            "storedLines": state.get("storedLines"), "newLines": state.get("new"),
            "errors": state.get("errors", []), "errorCount": int(state.get("errorCount", 0)),
            "uploadExpiresAt": state.get("uploadExpiresAt")}


def _warm_counts(job: Job) -> dict[str, int] | None:
    """A cache_warm job's vendors (categorize/warm_jobs.py); null for every other type."""
    if job.type != JobType.CACHE_WARM.value:
        return None
    return {"vendorsRefreshed": int(job.vendors_refreshed or 0), "vendorsFailed": int(job.vendors_failed or 0),
            "vendorsSkipped": int(job.vendors_skipped or 0)}


def list_jobs(owner_id: str, status: str | None, size: int, page: int | None, token: str | None,
              also: str | None = None) -> dict[str, Any]:
    """The caller's jobs, newest first: one index query for the page, counters for `totalCount` (jobs/counts.py).

    A page by number skips the jobs before it reading their keys only; `nextToken` resumes after the last job
    of the page before, whatever the page number.
    """
    if status is not None and status not in {s.value for s in JobStatus}:
        raise ValidationFailed(f"status: must be one of {', '.join(s.value for s in JobStatus)}.", field="status")
    start = paging.decode(token)
    if start is not None:
        if set(start) != {"jobId", "createdAt", "page"} or not isinstance(start["page"], int) or not all(
                isinstance(start[k], str) and 0 < len(start[k]) <= 64 for k in ("jobId", "createdAt")):
            raise ValidationFailed("nextToken: is not a token this API issued.", field="nextToken")
        page = start["page"]
    page = page or 1
    now = clock.now()
    # DynamoDB deletes expired items days late: an expired job must already be gone from the list.
    condition = Job.expires_at > now
    if status:
        condition = condition & (Job.status == status)
    if also is not None:
        return tenant_jobs.merged(owner_id, also, condition, size, page, start, JobStatus(status) if status else None)
    after: dict[str, dict[str, str]] | Literal[False] | None = (_index_key(owner_id, start["createdAt"], start["jobId"])
                                                      if start else None)
    skip = 0 if start else (page - 1) * size
    items: list[Job] = []
    if skip > SKIP_IN_ONE_READ:
        after, skip = _skip(owner_id, condition, skip), 0
    if after is not False:
        # A near page by number is one read from the top (the jobs before it are dropped here); a far one
        # resumes after the keys `_skip` read, so no far page turns thousands of items into models.
        items = list(Job.by_owner.query(owner_id, filter_condition=condition, scan_index_forward=False,
                                        last_evaluated_key=after, limit=skip + size + 1,
                                        page_size=max(100, skip + size + 1)))[skip:]
    more = len(items) > size
    items = items[:size]
    token_out = paging.encode({"jobId": items[-1].job_id, "createdAt": items[-1].created_at, "page": page + 1}) \
        if more else None
    total = counts.total(owner_id, JobStatus(status) if status else None, now)
    return {"items": items, "page": page, "pageSize": size, "totalCount": total, "nextToken": token_out}


SKIP_IN_ONE_READ = 500  # jobs before a page by number that are read whole, not by keys first (`_skip`)


def _index_key(owner_id: str, created_at: str, job_id: str) -> dict[str, dict[str, str]]:
    """Where a query of the owner index resumes: just past this job."""
    return {"ownerId": {"S": owner_id}, "createdAt": {"S": created_at}, "jobId": {"S": job_id}}


def _skip(owner_id: str, condition: Any, n: int) -> dict[str, dict[str, str]] | Literal[False]:
    """The index key of the `n`th job (newest first), read by keys only; False when there are fewer."""
    # As few requests as DynamoDB allows (it stops a page at 1 MB read anyway): each is a round trip.
    keys = Job.by_owner.query(owner_id, filter_condition=condition, scan_index_forward=False,
                              page_size=min(max(n, 500), 10_000), attributes_to_get=["jobId", "createdAt", "ownerId"])
    skipped = list(islice(keys, n))
    if len(skipped) < n:
        return False
    return _index_key(owner_id, skipped[-1].created_at, skipped[-1].job_id)


def cancel_job(owner_id: str, job_id: str, also: str | None = None) -> Job:
    """Cancel: final at once where no one works the job, else asked of the worker that does (it stops within
    a second or two: it looks at the job while it waits on the model, see worker/cancel.CancelWatch)."""
    for _ in range(3):
        job = get_job(owner_id, job_id, also)
        status = JobStatus(job.status)
        if status in TERMINAL:
            raise Conflict(f"The job is already {status.value}.", jobStatus=status.value)
        try:
            if status is JobStatus.QUEUED:
                return moves.cancel_queued(job)
            if not _worked_now(job):
                # no_live_lease: the job waits in the queue (a delayed re-enqueue, a hand-over between
                # invocations) or its worker is gone; a worker taking the lease meanwhile refuses this write,
                # and we look again. A chunk that starts after it finds the job Cancelled; a checkpoint racing
                # it is refused (the job is no longer live), so the counts stay those of the cancel.
                return runner.cancel(job, by="user", unleased_only=True)
            if status is JobStatus.CANCELLATION_REQUESTED:
                return job
            job = moves.request_cancel(job)
            return _complete_if_let_go(job)
        except TransitionRaced:
            continue  # the worker moved it meanwhile: look again
    raise Conflict("The job kept changing while it was being cancelled; try again.")


def _complete_if_let_go(job: Job) -> Job:
    """cancel_vs_hand_back: the worker we saw may have given the job up (a continuation, a 429's delayed
    re-enqueue) between our read and our write, without seeing the cancel; then no one else would complete it
    soon. The worker looks at the job after its hand-back too, so one of the two always does."""
    if _worked_now(job):
        return job
    try:
        return runner.cancel(job, by="user", unleased_only=True)  # store/moves.no_live_lease
    except TransitionRaced:
        job.refresh(consistent_read=True)  # a worker took it meanwhile, or completed the cancel itself
        return job


def _worked_now(job: Job) -> bool:
    """A live invocation holds the job, or one of its chunks."""
    now = time.time()
    if runner.lease_is_live(job.lease_owner, job.lease_until, now):
        return True
    return bool(int(job.chunk_count)) and chunks.live_lease(job.job_id, now)


def events(owner_id: str, job_id: str, size: int, token: str | None, also: str | None = None) -> dict[str, Any]:
    """One page of the job's audit trail, oldest first; `nextToken` names the last event of the page."""
    start = paging.decode(token)
    if start is not None and (set(start) != {"eventKey"} or not key_fits(start["eventKey"], MAX_RANGE_KEY_BYTES)):
        raise ValidationFailed("nextToken: is not a token this API issued.", field="nextToken")
    get_job(owner_id, job_id, also)
    last = {"jobId": {"S": job_id}, "eventKey": {"S": start["eventKey"]}} if start else None
    page = JobEvent.query(job_id, consistent_read=True, limit=size, last_evaluated_key=last)
    found = list(page)
    items = [{"at": e.at, "type": e.type, "detail": e.detail or {}} for e in found]
    more = page.last_evaluated_key is not None and len(found) == size
    return {"items": items, "nextToken": paging.encode({"eventKey": found[-1].event_key}) if more else None}
