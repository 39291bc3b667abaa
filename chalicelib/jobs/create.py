"""Create a job: one transaction (job, active lock, rate window, event), then one send.

Every type is created here (jobs/types.py): the job carries its type, its trigger and its planned steps (all
Pending); the rate window and the active-job lock are per user and type.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.expressions.condition import size
from pynamodb.transactions import TransactWrite
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random

from chalicelib import clock, messages, observability
from chalicelib.categorize.prices import DEFAULT_LANE, SCHEDULED_LANE
from chalicelib.errors import ActiveJobExists, RateLimited, ServiceUnavailable
from chalicelib.jobs import stepplan
from chalicelib.jobs.states import JobStatus, lock_holder, lock_key, rate_key
from chalicelib.jobs.store import moves
from chalicelib.jobs.store import steps as step_writes
from chalicelib.jobs.types import JobType, spec
from chalicelib.messages import StartJob
from chalicelib.reports import service as reports
from chalicelib.reports.service import ReportConfig
from chalicelib.settings import get_settings
from chalicelib.tables import Control, Job

log = logging.getLogger(__name__)
WINDOW_SECONDS = 3600


class _WindowRaced(Exception):
    """Another create for this user changed the rate window between our read and write."""


def enqueue(job_id: str, delay_seconds: int = 0, reason: str = "start", *, tenant: str) -> None:
    """The job's work message (chalicelib.messages.StartJob) for its `tenant`, visible after `delay_seconds`.

    `tenant` is required: a message without one runs outside fair shares (worker/fairness.turn), as the batch
    poller's once did."""
    messages.send(StartJob(job_id, reason, tenant), delay_seconds)


def _live_stamps(window: Control | None, now: float) -> dict[str, float]:
    stamps = window.stamps.as_dict() if window is not None and window.stamps is not None else {}
    return {k: float(v) for k, v in stamps.items() if float(v) > now - WINDOW_SECONDS}


def lane_of(report: ReportConfig, trigger: str, asked: str | None = None) -> str:
    """The job's cost lane: the one asked for, else the report's, else its trigger's default (scheduled: batch)."""
    return asked or report.lane or (SCHEDULED_LANE if trigger == "schedule" else DEFAULT_LANE)


def _new_job(owner_id: str, report: ReportConfig | None, period: str, trigger: str, job_type: str,
             tenant: str | None, fields: dict[str, Any]) -> Job:
    stamp = clock.iso(clock.now())
    # A job of no report (an import alone) is named by its type, as a tenant's own job is (create_tenant_job).
    report_id = report.report_id if report is not None else job_type.replace("_", "-")
    values: dict[str, Any] = dict(
        # The report's tenant is the caller's: a report is only found within the caller's tenant
        # (reports.service._get), and a scheduled job is its owner's. The worker scopes the vendor cache by it.
        owner_id=owner_id, tenant=report.tenant if report is not None else tenant, report_id=report_id,
        period=period, type=job_type, status=JobStatus.QUEUED.value, active_status=JobStatus.QUEUED.value,
        trigger=trigger, categories=list(report.categories) if report is not None else [], created_at=stamp,
        updated_at=stamp, heartbeat_at=stamp, status_message="Waiting for a worker",
        lock_key=lock_key(owner_id, report_id, period, job_type), steps=_planned(job_type, _delivered(report)),
        steps_version=0,
        expires_at=clock.expiry(get_settings().retention_days))
    return Job(str(uuid.uuid4()), **{**values, **fields})


def _planned(job_type: str, deliver: bool = False) -> list:
    """A new job's steps: its type's, all Pending (jobs/stepplan.py); `deliver` adds the deliver step."""
    return step_writes.items(stepplan.plan(job_type, deliver))


def _delivered(report: ReportConfig | None) -> bool:
    """The report sends its result somewhere (an email or webhook target): its jobs end with `deliver`."""
    return report is not None and any(t.get("type") != "api" for t in report.delivery_targets or [])


def _commit(job: Job, add_to_window: Callable[[TransactWrite], None], of_report: bool) -> None:
    """The job, its lock, its rate-window entry and its `created` event, all or nothing (store/moves.create)."""
    try:
        moves.create(job, add_to_window, reports.job_condition() if of_report else None)
    except TransactWriteError as err:
        codes = {r.code for r in (err.cancellation_reasons or []) if r}
        if not codes & {"ConditionalCheckFailed", "TransactionConflict"}:
            raise
        # Which write was refused is read from the state, not from the reasons' order.
        holder = lock_holder(job.lock_key)
        if holder and holder != job.job_id:
            raise ActiveJobExists("An active job for this report and period already exists.",
                                  existingJobId=holder) from err
        if of_report:
            reports.explain_refused_job(job.tenant, job.report_id)  # 404 (deleted) or 409 (being deleted)
        raise _WindowRaced() from err


def _fast_window(job: Job, limit: int) -> Callable[[TransactWrite], None]:
    """Add to the window without reading it: refused when it holds `limit` entries, expired or not."""
    def add(tx: TransactWrite) -> None:
        # room_in_window: counting expired entries too can only refuse early, never admit one too many;
        # a refusal falls back to the slow path, which prunes.
        room_in_window = Control.pk.exists() & (size(Control.stamps) < limit)
        tx.update(Control(rate_key(job.owner_id, job.type)), condition=room_in_window, actions=[
            Control.stamps[job.job_id].set(int(time.time())), Control.version.add(1),
            Control.expires_at.set(clock.expiry(seconds=WINDOW_SECONDS * 2))])
    return add


@retry(retry=retry_if_exception_type(_WindowRaced), stop=stop_after_attempt(40), wait=wait_random(0.001, 0.03),
       reraise=True)
def _slow_write(job: Job, limit: int, of_report: bool) -> None:
    """Read the window, drop what is older than an hour, then refuse (429) or write it back whole."""
    now = time.time()
    key = rate_key(job.owner_id, job.type)
    try:
        window = Control.get(key, consistent_read=True)
    except Control.DoesNotExist:
        window = None
    live = _live_stamps(window, now)
    if len(live) >= limit:
        wait = int(min(live.values()) + WINDOW_SECONDS - now) + 1
        raise RateLimited(f"At most {limit} jobs of this type ({job.type}) may be created per hour; try again in "
                          f"{wait} s.", retry_after=wait)
    live[job.job_id] = int(now)

    def put(tx: TransactWrite) -> None:
        # window_unchanged: the hourly count we checked is still the count we write.
        window_unchanged = (Control.version == window.version) if window else Control.pk.does_not_exist()
        tx.save(Control(key, stamps=live, version=(window.version + 1) if window else 1,
                        expires_at=clock.expiry(seconds=WINDOW_SECONDS * 2)), condition=window_unchanged)

    _commit(job, put, of_report)


def _write(job: Job, of_report: bool) -> Job:
    """One transaction in the common case; a read of the rate window only when it may be full."""
    limit = get_settings().jobs_per_hour
    try:
        _commit(job, _fast_window(job, limit), of_report)
    except _WindowRaced:
        _slow_write(job, limit, of_report)  # missing, full (perhaps of expired entries) or contended
    return job


def _undo(job: Job) -> None:
    """Remove every trace of a job whose message could not be sent (store/moves.undo_create)."""
    moves.undo_create(job)


def create_job(owner_id: str, report: ReportConfig | None, period: str, trigger: str | None = None,
               job_type: str = JobType.EXPENSE_REPORT.value, tenant: str | None = None,
               fields: dict[str, Any] | None = None, start: bool = True, lane: str | None = None) -> Job:
    """A new job of `job_type` for `owner_id`: Queued, its steps planned, its message sent (unless `start` is
    False: its work begins on another signal, an uploaded file's arrival).

    `report` None: a job of no report (`tenant` is then the caller's). `trigger` None: the type's default.
    `fields` sets more of the job's attributes (model names); `lane` the cost lane asked for (lane_of). Raises
    ActiveJobExists (409), RateLimited (429, per user and type) and ServiceUnavailable (503, nothing left behind).
    """
    trigger = trigger or spec(job_type).trigger
    if report is not None:  # a job that categorizes has a cost lane (one that only imports asks no model)
        fields = {"lane": lane_of(report, trigger, lane), **(fields or {})}
    job = _new_job(owner_id, report, period, trigger, JobType(job_type).value, tenant, fields or {})
    try:
        job = _write(job, report is not None)
    except (ActiveJobExists, RateLimited):
        raise
    except (PynamoDBException, _WindowRaced) as err:
        log.warning("job store unavailable during create", extra={"error": type(err).__name__})
        raise ServiceUnavailable("The job store is unavailable; no job was created. Try again shortly.") from err
    if not start:
        observability.job_created()
        return job
    try:
        enqueue(job.job_id, tenant=job.tenant or job.owner_id)
    except Exception as err:  # any send failure: the job must not stay behind without a message
        log.warning("work queue unavailable during create", extra={"jobId": job.job_id, "error": type(err).__name__})
        try:
            _undo(job)
        except Exception:
            log.exception("could not undo job after failed send", extra={"jobId": job.job_id})
        raise ServiceUnavailable("The work queue is unavailable; no job was created. Try again shortly.") from err
    observability.job_created()
    return job


# --- a tenant's own jobs (cache_warm) ---------------------------------------------------------------------------


def create_tenant_job(tenant: str, job_type: str, period: str, total: int, trigger: str = "schedule") -> Job:
    """A tenant's own job (auth.system_owner; no report, no rate window, no work message: its creator works it).

    One active job per tenant and type (its lock, `lock#<system owner>#<type>#any`): raises ActiveJobExists
    naming the holder otherwise.
    """
    from chalicelib.auth import system_owner

    owner = system_owner(tenant)
    stamp = clock.iso(clock.now())
    job = Job(str(uuid.uuid4()), owner_id=owner, tenant=tenant, report_id=job_type.replace("_", "-"), period=period,
              type=job_type, status=JobStatus.QUEUED.value, active_status=JobStatus.QUEUED.value, trigger=trigger,
              categories=[], created_at=stamp, updated_at=stamp, heartbeat_at=stamp, total_lines=total,
              status_message="Selecting vendors", lock_key=lock_key(owner, job_type, "any"),
              steps=_planned(job_type), steps_version=0, expires_at=clock.expiry(get_settings().retention_days))
    try:
        moves.create(job, lambda tx: None, None)
    except TransactWriteError as err:
        holder = lock_holder(job.lock_key)
        if holder and holder != job.job_id:
            raise ActiveJobExists("An active job of this type exists for the tenant.", existingJobId=holder) from err
        raise
    return job
