"""SQS record handler: the checkpointed batch loop that categorizes a job's lines."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chalicelib import clock, deps, faults, results
from chalicelib.categorize import pipeline, provider
from chalicelib.categorize.errors import JobFatal, LongWait
from chalicelib.categorize.retry import DEFAULT_POLICY, RetryLoop
from chalicelib.categorize.types import Answer
from chalicelib.jobs import runner
from chalicelib.jobs.create import enqueue
from chalicelib.jobs.runner import Lease, Progress
from chalicelib.jobs.states import JobStatus, TransitionRaced, event_item, transition
from chalicelib.lines.store import iter_lines
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Job, LineResult

log = logging.getLogger(__name__)
# A failed record is reported, not raised: the rest of the batch is deleted either way.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def handle_batch(event: dict[str, Any], context: Any, settings: Settings | None = None) -> dict[str, Any]:
    """Lambda entry: one failed record goes back to the queue, never the whole batch."""
    return process_partial_response(event=event, processor=processor, context=context,
                                    record_handler=lambda record: handle_record(record, context, settings))


def handle_dead_letters(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry on the DLQ: each message's job becomes Failed with the reason."""
    from chalicelib.reaper import dead_letter

    def one(record: SQSRecord) -> None:
        dead_letter(record.body, record.attributes.approximate_receive_count)

    return process_partial_response(event=event, record_handler=one, processor=processor, context=context)


def handle_record(record: SQSRecord, context: Any, settings: Settings | None = None) -> None:
    try:
        message = json.loads(record.body)
        if message.get("kind") == "warm":
            warm_cache(context, settings, after=str(message.get("after") or ""))
            return
        job_id, reason = str(message["jobId"]), str(message.get("reason", "start"))
    except (ValueError, KeyError, TypeError, AttributeError):
        log.error("dropping a message that is not a job message", extra={"messageId": record.message_id})
        return
    try:
        run_job(job_id, reason, context, settings)
    except Exception:
        # The record goes back to the queue and is redone from the checkpoint.
        log.exception("job invocation failed; the message will be redelivered", extra={"jobId": job_id})
        raise


@dataclass
class Invocation:
    job: Job
    lease: Lease
    settings: Settings
    deadline: float  # time.monotonic() by which we checkpoint and hand over
    loop: RetryLoop
    backend: pipeline.ModelBackend | None
    started: float
    done: int = 0
    seen: tuple[int, int, float] = (0, 0, 0.0)  # retry stats already counted in a checkpoint


def _backend(settings: Settings, loop: RetryLoop) -> pipeline.ModelBackend | None:
    if not settings.openai_api_key:
        return None
    limiter = None
    if settings.openai_rpm or settings.openai_tpm:
        from chalicelib.categorize.limiter import SharedLimiter

        limiter = SharedLimiter(settings.openai_rpm, settings.openai_tpm)
    api = provider.client(settings.openai_api_key, settings.openai_base_url, settings.openai_timeout_seconds)
    return pipeline.ModelBackend(api, settings.openai_model, loop, settings.model_batch_size,
                                 settings.model_concurrency, limiter)


def _loop(settings: Settings, remaining: float, limited_so_far: float = 0.0) -> RetryLoop:
    deadline = time.monotonic() + max(0.0, remaining - settings.lambda_time_reserve_seconds)
    return RetryLoop(settings.retry_policy or DEFAULT_POLICY, deadline=deadline,
                     inline_wait_max=settings.inline_wait_max_seconds,
                     ceiling_seconds=settings.rate_limit_ceiling_seconds, already_limited_seconds=limited_so_far)


def warm_cache(context: Any, settings: Settings | None = None, after: str = "") -> dict[str, Any]:
    """One warm run within this invocation's time; what is left goes on in a continuation message."""
    from chalicelib.categorize import warmer

    settings = settings or get_settings()
    remaining = context.get_remaining_time_in_millis() / 1000.0
    loop = _loop(settings, remaining)
    outcome = warmer.warm(_backend(settings, loop), max(1.0, remaining - settings.lambda_time_reserve_seconds),
                          after)
    if outcome.get("after"):
        deps.client("sqs").send_message(QueueUrl=deps.work_queue_url(),
                                        MessageBody=json.dumps({"kind": "warm", "after": outcome["after"]}))
    log.info("cache warm run", extra={k: v for k, v in outcome.items() if k != "after"})
    return outcome


def run_job(job_id: str, reason: str, context: Any, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    remaining = context.get_remaining_time_in_millis() / 1000.0
    lease = Lease(owner=str(getattr(context, "aws_request_id", "local")), until=time.time() + remaining + 5)
    job = runner.claim(job_id, lease, reason)
    if job is None:
        return
    loop = _loop(settings, remaining, float(job.rate_limited_seconds))
    run = Invocation(job, lease, settings, loop.deadline, loop, _backend(settings, loop), time.time())
    try:
        _work(run)
    finally:
        if JobStatus(run.job.status) not in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            runner.release(run.job, lease)


def _work(run: Invocation) -> None:
    job = run.job
    if job.recheck_flagged:
        _recheck_flagged(run)
    while True:
        job.refresh(consistent_read=True)
        status = JobStatus(job.status)
        if status is JobStatus.CANCELLATION_REQUESTED:
            return runner.cancel(job)
        if status is not JobStatus.PROCESSING or job.lease_owner != run.lease.owner:
            return None
        # At least one batch per invocation, so a short budget still makes progress.
        if run.done and time.monotonic() > run.deadline:
            faults.point("before_continuation_send")
            enqueue(job.job_id, reason="continuation")
            return None
        lines = list(islice(iter_lines(job.owner_id, job.period, after=job.cursor), run.settings.line_batch_size))
        if not lines:
            return _finish(run)
        answers = _categorize(run, lines)
        if answers is None:
            return None
        faults.point("after_model_call")
        _write_results(job, lines, answers)
        faults.point("after_result_writes")
        done = _progress(run, answers)
        run.done += done.lines
        eta = runner.eta(int(job.total_lines) - int(job.processed_lines) - done.lines, run.started, run.done)
        runner.checkpoint(job, run.lease, job.cursor, lines[-1].line_id, done, eta)
        faults.point("after_checkpoint")


def _categorize(run: Invocation, lines: list) -> dict[str, Answer] | None:
    """Answers for `lines`, or None when the job was re-enqueued or failed meanwhile."""
    try:
        return pipeline.categorize(lines, list(run.job.categories), run.settings, run.backend)
    except LongWait as wait:
        delay = min(900, max(1, math.ceil(wait.seconds)))
        runner.note_retries(run.job, run.lease, _progress(run, {}), resume_in=delay)
        event_item(run.job.job_id, "rate_limited", {"waitSeconds": round(wait.seconds, 3),
                                                    "requeuedWithDelaySeconds": delay}).save()
        enqueue(run.job.job_id, delay_seconds=delay, reason="rate_limited")
        return None
    except JobFatal as fatal:
        runner.fail(run.job, str(fatal))
        return None


def _progress(run: Invocation, answers: dict[str, Answer]) -> Progress:
    """Counts for this batch, with the retries spent since the previous batch."""
    stats = run.loop.stats
    before = run.seen
    run.seen = (stats.retries, stats.rate_limited, stats.rate_limited_seconds)
    limited = stats.rate_limited - before[1]
    if limited:
        event_item(run.job.job_id, "rate_limited", {"count": limited, "inline": True,
                                                    "waitSeconds": round(stats.rate_limited_seconds - before[2], 3)
                                                    }).save()
    values = answers.values()
    return Progress(lines=len(answers), failed=sum(a.needs_review for a in values),
                    cached=sum(a.source == "cache" for a in values), retries=stats.retries - before[0],
                    rate_limited_seconds=stats.rate_limited_seconds - before[2])


def _write_results(job: Job, lines: list, answers: dict[str, Answer]) -> None:
    # Puts keyed by (job, line): a redone batch overwrites, never adds.
    with LineResult.batch_write() as batch:
        for line in lines:
            a = answers[line.line_id]
            batch.save(LineResult(job.job_id, line.line_id, date=line.date, vendor=line.vendor,
                                  amount=line.amount, currency=line.currency, description=line.description or "",
                                  category=a.category, confidence=a.confidence, source=a.source,
                                  needs_review=a.needs_review, expires_at=job.expires_at))


def _recheck_flagged(run: Invocation) -> None:
    """After a retry: lines flagged for review are asked again once; the rest stay done."""
    job = run.job
    flagged = list(LineResult.query(job.job_id, filter_condition=LineResult.needs_review == True,  # noqa: E712
                                    consistent_read=True))
    fixed = 0
    for start in range(0, len(flagged), run.settings.line_batch_size):
        chunk = flagged[start:start + run.settings.line_batch_size]
        answers = _categorize(run, chunk)
        if answers is None:
            return
        _write_results(job, chunk, answers)
        fixed += sum(not a.needs_review for a in answers.values())
    job.update(actions=[Job.failed_lines.add(-fixed), Job.recheck_flagged.set(False)],
               condition=Job.lease_owner == run.lease.owner)


def _finish(run: Invocation) -> None:
    job = run.job
    version = int(job.result_version) + 1
    key, needs_review = results.assemble(job, version)
    processed = int(job.processed_lines)
    message = (f"Categorized {processed} lines; {needs_review} need review" if processed
               else f"No expense lines for {job.period}; the report is empty")
    try:
        transition(job, JobStatus.COMPLETED, "completed", {"lines": processed, "needsReview": needs_review},
                   actions=[Job.completed_at.set(clock.iso(clock.now())), Job.result_key.set(key),
                            Job.result_version.set(version), Job.needs_review.set(needs_review),
                            Job.failed_lines.set(needs_review), Job.total_lines.set(processed),
                            Job.estimated_completion_at.remove(), Job.status_message.set(message)],
                   condition=Job.lease_owner == run.lease.owner)
    except TransitionRaced:
        job.refresh(consistent_read=True)
        if job.status == JobStatus.CANCELLATION_REQUESTED.value:
            runner.cancel(job)
