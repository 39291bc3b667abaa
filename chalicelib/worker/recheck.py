"""After a retry, the lines flagged for review are asked again once (`recheck_flagged`), a batch at a time and
checkpointed on the job (`recheckAfter`), before the job goes on; `read_flagged` reads them."""

from __future__ import annotations

import time
from itertools import islice

from chalicelib.jobs import store
from chalicelib.jobs.states import JobStatus
from chalicelib.tables import LineResult
from chalicelib.worker import rows
from chalicelib.worker.cancel import CancelWatch, stop
from chalicelib.worker.invocation import Invocation, progress
from chalicelib.worker.loop import categorize
from chalicelib.worker.scopes import JobScope


def recheck_flagged(run: Invocation) -> bool:
    """After a retry: lines flagged for review are asked again once; the rest stay done.

    Bounded like the main loop: a batch at a time, each checkpointed (`recheckAfter`, the fixed lines off
    `failedLines`) under the lease, a look for a cancel before each, and a continuation past the deadline.
    True when the recheck is over and the job goes on; False when this invocation stopped (the job was handed
    back, cancelled or failed).
    """
    job = run.job
    while True:
        if job.status == JobStatus.CANCELLATION_REQUESTED.value:
            stop(job)
            return False
        if job.status != JobStatus.PROCESSING.value or job.lease_owner != run.lease.owner:
            return False
        if run.done and time.monotonic() > run.deadline:
            JobScope(run).requeue(0, "continuation", progress(run, {}))
            return False
        after = job.recheck_after or ""
        flagged = read_flagged(job.job_id, after, run.settings.line_batch_size)
        if not flagged:
            if store.current().end_recheck(job, run.lease, after):  # store: lease_is_ours, recheck_unchanged
                return True
            job.refresh(consistent_read=True)  # someone else holds the job now (or moved the recheck): stop
            return False
        with CancelWatch(job.job_id):
            answers = categorize(run, JobScope(run), flagged)
        if answers is None:
            return False
        rows.write(job, flagged, answers)
        fixed = sum(not a.needs_review for a in answers.values())
        done = progress(run, {})
        run.done += len(flagged)
        store.current().recheck_batch(job, run.lease, after, flagged[-1].line_id, fixed, done.retries, done.usage)
        job.refresh(consistent_read=True)


def read_flagged(job_id: str, after: str, n: int) -> list[LineResult]:
    """Up to `n` of the job's lines flagged for review, after `after` in lineId order."""
    condition = LineResult.line_id > after if after else None
    query = LineResult.query(job_id, range_key_condition=condition,
                             filter_condition=LineResult.needs_review == True,  # noqa: E712
                             consistent_read=True, page_size=max(n, 100))
    return list(islice(query, n))
