"""User actions after a job ran: retry a stopped job, settle a line of a completed one."""

from __future__ import annotations

import logging
from typing import Any

from pynamodb.exceptions import UpdateError
from pynamodb.expressions.update import Action

from chalicelib import results
from chalicelib.categorize import cache
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from chalicelib.jobs import store
from chalicelib.jobs.create import enqueue
from chalicelib.jobs.service import get_job
from chalicelib.jobs.states import JobAction, JobStatus, TransitionRaced, allowed_actions
from chalicelib.jobs.store import moves
from chalicelib.lines.validation import shown_id
from chalicelib.reports import service as reports
from chalicelib.tables import Job, LineResult, ReportConfig

log = logging.getLogger(__name__)


def retry_job(owner_id: str, job_id: str, also: str | None = None) -> Job:
    """A Failed or Cancelled job is queued again and resumes from its checkpoint."""
    job = get_job(owner_id, job_id, also)
    if job.type == "cache_warm":
        raise Conflict("A cache_warm job is not retried: the next warm run refreshes the vendors it left.",
                       jobStatus=job.status)
    if JobAction.RETRY not in allowed_actions(job.status):
        raise Conflict(f"Only a Failed or Cancelled job can be retried; this one is {job.status}.")
    if not reports.still_there(job.tenant or job.owner_id, job.report_id):
        # A deleted report's jobs stay readable until they expire, but none becomes active again.
        raise Conflict("This job's report was deleted, so the job cannot be retried.", jobStatus=job.status)
    try:
        # report_not_deleted: a delete that marked the report after our read above must not find, once its job
        # check is done, a job of the report active again.
        job = moves.requeue_for_retry(job, (ReportConfig, job.tenant or job.owner_id, job.report_id,
                                            reports.job_condition()))
    except TransitionRaced as err:
        if not reports.still_there(job.tenant or job.owner_id, job.report_id):
            raise Conflict("This job's report was deleted, so the job cannot be retried.",
                           jobStatus=job.status) from err
        raise Conflict("The job changed while it was being retried; look at it again.") from err
    try:
        enqueue(job.job_id, reason="retried", tenant=job.tenant or job.owner_id)
    except Exception as err:
        log.warning("work queue unavailable during retry", extra={"jobId": job.job_id})
        moves.fail_unqueued(job)
        raise ServiceUnavailable("The work queue is unavailable; the job was not retried.") from err
    return job


def settle_line(owner_id: str, job_id: str, line_id: str, body: Any) -> dict[str, Any]:
    """A person's category for one line of a Completed job; the report and the cache follow."""
    job = get_job(owner_id, job_id)
    if not isinstance(body, dict) or set(body) != {"category"} or not isinstance(body["category"], str):
        raise ValidationFailed('The body must be {"category": "<one of the report\'s categories>"}.',
                               field="category")
    category = body["category"]
    if category not in job.categories:
        raise ValidationFailed(f"category: '{category}' is not in this report's taxonomy.", field="category")
    if job.status != JobStatus.COMPLETED.value:
        raise Conflict(f"Lines can be settled once the job is Completed; it is {job.status}.")
    try:
        line = LineResult.get(job_id, line_id, consistent_read=True)
    except LineResult.DoesNotExist:
        raise NotFound(f"Line '{shown_id(line_id)}' is not part of this job.") from None
    fixed = _settle(line, category)
    # The job's tenant's cache only: a person in one tenant never decides another tenant's answers.
    cache.learn_manual(list(job.categories), normalize_vendor(line.vendor), category,
                       tenant=job.tenant or job.owner_id)  # a job from before tenants: its owner is its tenant
    _rebuild(job, fixed)
    return results.line_dict(line)


def _settle(line: LineResult, category: str) -> int:
    """Write the person's answer on the line; 1 if this write is the one that cleared its flag, else 0."""
    settled: list[Action] = [LineResult.category.set(category), LineResult.confidence.set(1.0),
               LineResult.source.set("manual"), LineResult.needs_review.set(False)]
    if line.needs_review:
        try:
            # still_flagged: N PATCHes settling one flagged line at once all read it flagged; only the write
            # that finds it still flagged takes it off the job's counts, so they drop once, never below zero.
            line.update(actions=settled, condition=LineResult.needs_review == True)  # noqa: E712 (a DynamoDB condition)
            return 1
        except UpdateError as err:
            if err.cause_response_code != "ConditionalCheckFailedException":
                raise
    try:
        # line_exists: already settled (just now, or before): a change of category that decrements nothing;
        # the condition keeps the update from re-creating a line whose TTL removed it meanwhile.
        line.update(actions=settled, condition=LineResult.line_id.exists())
    except UpdateError as err:
        if err.cause_response_code != "ConditionalCheckFailedException":
            raise
        raise NotFound(f"Line '{shown_id(line.line_id)}' is not part of this job.") from None
    return 0


def _rebuild(job: Job, fixed: int) -> None:
    version = store.current().next_result_version(job, fixed)
    key, left = results.assemble(job, version)
    # store.newest_result: of two settlements racing, the later version's report stays current.
    store.current().set_result(job, version, key, f"Categorized {int(job.processed_lines)} lines; {left} need review")
