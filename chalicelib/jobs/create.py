"""Create a job: one transaction (job, active lock, rate window, event), then one send."""

from __future__ import annotations

import json
import logging
import time
import uuid

from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.transactions import TransactWrite
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random

from chalicelib import clock, deps
from chalicelib.errors import ActiveJobExists, RateLimited, ServiceUnavailable
from chalicelib.jobs.states import JobStatus, event_item, lock_holder, lock_key
from chalicelib.reports.service import ReportConfig
from chalicelib.settings import get_settings
from chalicelib.tables import Control, Job, JobEvent, connection

log = logging.getLogger(__name__)
WINDOW_SECONDS = 3600


class _WindowRaced(Exception):
    """Another create for this user changed the rate window between our read and write."""


def enqueue(job_id: str, delay_seconds: int = 0, reason: str = "start") -> None:
    deps.client("sqs").send_message(
        QueueUrl=deps.work_queue_url(),
        MessageBody=json.dumps({"jobId": job_id, "reason": reason}),
        DelaySeconds=max(0, min(900, int(delay_seconds))),
    )


def _live_stamps(window: Control | None, now: float) -> dict[str, float]:
    stamps = window.stamps.as_dict() if window is not None and window.stamps is not None else {}
    return {k: float(v) for k, v in stamps.items() if float(v) > now - WINDOW_SECONDS}


@retry(retry=retry_if_exception_type(_WindowRaced), stop=stop_after_attempt(40), wait=wait_random(0.001, 0.03),
       reraise=True)
def _write(owner_id: str, report: ReportConfig, period: str, trigger: str) -> Job:
    settings = get_settings()
    now = time.time()
    rate_key = f"rate#{owner_id}"
    try:
        window = Control.get(rate_key, consistent_read=True)
    except Control.DoesNotExist:
        window = None
    live = _live_stamps(window, now)
    if len(live) >= settings.jobs_per_hour:
        wait = int(min(live.values()) + WINDOW_SECONDS - now) + 1
        raise RateLimited(f"At most {settings.jobs_per_hour} jobs may be created per hour; try again in {wait} s.",
                          retry_after=wait)
    stamp = clock.iso(clock.now())
    job = Job(
        str(uuid.uuid4()), owner_id=owner_id, report_id=report.report_id, period=period,
        status=JobStatus.QUEUED.value, active_status=JobStatus.QUEUED.value, trigger=trigger,
        categories=list(report.categories), created_at=stamp, updated_at=stamp, heartbeat_at=stamp,
        status_message="Waiting for a worker", lock_key=lock_key(owner_id, report.report_id, period),
        expires_at=clock.expiry(settings.retention_days),
    )
    live[job.job_id] = now
    try:
        with TransactWrite(connection=connection()) as tx:
            tx.save(job, condition=Job.job_id.does_not_exist())
            # lock_is_free: one active job per (user, report, period), however many creates race.
            tx.save(Control(job.lock_key, job_id=job.job_id, expires_at=job.expires_at),
                    condition=Control.pk.does_not_exist())
            # window_unchanged: the hourly count we checked is still the count we write.
            window_unchanged = (Control.version == window.version) if window else Control.pk.does_not_exist()
            tx.save(Control(rate_key, stamps=live, version=(window.version + 1) if window else 1,
                            expires_at=clock.expiry(seconds=WINDOW_SECONDS * 2)), condition=window_unchanged)
            tx.save(event_item(job.job_id, "created", {"trigger": trigger, "period": period}))
    except TransactWriteError as err:
        codes = {r.code for r in (err.cancellation_reasons or []) if r}
        if not codes & {"ConditionalCheckFailed", "TransactionConflict"}:
            raise
        # Which write was refused is read from the state, not from the reasons' order.
        holder = lock_holder(job.lock_key)
        if holder and holder != job.job_id:
            raise ActiveJobExists("An active job for this report and period already exists.",
                                  existingJobId=holder) from err
        raise _WindowRaced() from err
    return job


def _undo(job: Job) -> None:
    """Remove every trace of a job whose message could not be sent."""
    with TransactWrite(connection=connection()) as tx:
        tx.delete(job)
        tx.delete(Control(job.lock_key), condition=Control.pk.does_not_exist() | (Control.job_id == job.job_id))
        tx.update(Control(f"rate#{job.owner_id}"), actions=[Control.stamps[job.job_id].remove()])
    with JobEvent.batch_write() as batch:
        for event in JobEvent.query(job.job_id):
            batch.delete(event)


def create_job(owner_id: str, report: ReportConfig, period: str, trigger: str = "api") -> Job:
    try:
        job = _write(owner_id, report, period, trigger)
    except (ActiveJobExists, RateLimited):
        raise
    except (PynamoDBException, _WindowRaced) as err:
        log.warning("job store unavailable during create", extra={"error": type(err).__name__})
        raise ServiceUnavailable("The job store is unavailable; no job was created. Try again shortly.") from err
    try:
        enqueue(job.job_id)
    except Exception as err:  # any send failure: the job must not stay behind without a message
        log.warning("work queue unavailable during create", extra={"jobId": job.job_id, "error": type(err).__name__})
        try:
            _undo(job)
        except Exception:
            log.exception("could not undo job after failed send", extra={"jobId": job.job_id})
        raise ServiceUnavailable("The work queue is unavailable; no job was created. Try again shortly.") from err
    return job
