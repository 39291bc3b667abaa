"""An admin's job list: the caller's own jobs and the tenant's own jobs (auth.system_owner), newest first.

The tenant's own jobs are few (one `cache_warm` job a night, kept 30 days), so they are read whole (up to
TENANT_JOBS_MAX) from the same `byOwner` index under the tenant's system owner key and merged into the caller's
page: one more query, and the caller's own jobs are read as for anyone else (a page by number from the top,
`nextToken` from the last job shown, by its creation time and id).
"""

from __future__ import annotations

from typing import Any

from chalicelib import clock, paging
from chalicelib.jobs import counts
from chalicelib.jobs.states import JobStatus
from chalicelib.tables import Job

TENANT_JOBS_MAX = 200  # the tenant's newest own jobs merged into a list; one a night is ~30 within retention
TIES = 20  # room for the caller's jobs created at the very moment of the last one shown


def _key(job: Job) -> tuple[str, str]:
    return job.created_at, job.job_id


def merged(owner_id: str, tenant_owner: str, condition: Any, size: int, page: int, start: dict | None,
           status: JobStatus | None) -> dict[str, Any]:
    """One page of the caller's and the tenant's jobs, newest first (ties by job id); `totalCount` of both."""
    theirs = list(Job.by_owner.query(tenant_owner, filter_condition=condition, scan_index_forward=False,
                                     limit=TENANT_JOBS_MAX))
    if start is not None:
        cut = (start["createdAt"], start["jobId"])
        mine = [job for job in Job.by_owner.query(owner_id, Job.created_at <= start["createdAt"],
                                                  filter_condition=condition, scan_index_forward=False,
                                                  limit=size + 1 + TIES) if _key(job) < cut]
        theirs = [job for job in theirs if _key(job) < cut]
        skip = 0
    else:
        skip = (page - 1) * size
        # The first skip + size + 1 of the merged list hold at most that many of the caller's own.
        mine = list(Job.by_owner.query(owner_id, filter_condition=condition, scan_index_forward=False,
                                       limit=skip + size + 1, page_size=max(100, skip + size + 1)))
    items = sorted(mine + theirs, key=_key, reverse=True)[skip:skip + size + 1]
    more = len(items) > size
    items = items[:size]
    token_out = paging.encode({"jobId": items[-1].job_id, "createdAt": items[-1].created_at, "page": page + 1}) \
        if more else None
    now = clock.now()
    total = counts.total(owner_id, status, now) + counts.total(tenant_owner, status, now)
    return {"items": items, "page": page, "pageSize": size, "totalCount": total, "nextToken": token_out}
