"""After a retry, the lines flagged for review are asked again once (`recheck_flagged`), a batch at a time and
checkpointed on the job (`recheckAfter`), before the job goes on; `read_flagged` reads them."""

from __future__ import annotations

import time
from itertools import islice

from pynamodb.exceptions import UpdateError

from chalicelib import clock
from chalicelib.jobs.states import JobStatus
from chalicelib.tables import Job, LineResult
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
        # recheck_unchanged + lease_is_ours: a stale or duplicate worker never takes the same fixes off twice.
        recheck_unchanged = (Job.recheck_after == after) if after else Job.recheck_after.does_not_exist()
        lease_is_ours = Job.lease_owner == run.lease.owner
        if not flagged:
            job.update(actions=[Job.recheck_flagged.set(False), Job.recheck_after.remove()],
                       condition=lease_is_ours & recheck_unchanged)
            return True
        with CancelWatch(job.job_id):
            answers = categorize(run, JobScope(run), flagged)
        if answers is None:
            return False
        rows.write(job, flagged, answers)
        fixed = sum(not a.needs_review for a in answers.values())
        done = progress(run, {})
        run.done += len(flagged)
        try:
            job.update(actions=[Job.failed_lines.add(-fixed), Job.recheck_after.set(flagged[-1].line_id),
                                Job.retry_count.add(done.retries), Job.heartbeat_at.set(clock.iso(clock.now())),
                                Job.reap_count.set(0)],
                       condition=lease_is_ours & recheck_unchanged & (Job.status == JobStatus.PROCESSING.value))
        except UpdateError as err:
            if err.cause_response_code != "ConditionalCheckFailedException":
                raise
        job.refresh(consistent_read=True)


def read_flagged(job_id: str, after: str, n: int) -> list[LineResult]:
    """Up to `n` of the job's lines flagged for review, after `after` in lineId order."""
    condition = LineResult.line_id > after if after else None
    query = LineResult.query(job_id, range_key_condition=condition,
                             filter_condition=LineResult.needs_review == True,  # noqa: E712
                             consistent_read=True, page_size=max(n, 100))
    return list(islice(query, n))
