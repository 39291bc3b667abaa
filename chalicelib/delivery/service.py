"""Deliveries of finished jobs: planned with the final status, each worked as its own message, every attempt audited.

A job that becomes Completed, Failed or Cancelled gets, in the same write as its status (jobs/states.transition),
one `Delivery` per report target that wants that event: email targets on `job.completed`, webhook targets on the
events they list. The same write marks the job `Delivering` in the live-jobs index (the outbox); the writer then
queues one `Deliver` message per delivery and clears the mark. A writer that dies in between leaves the mark, and
the reaper queues them (resend_waiting). Delivery never holds the job's status back: it is already final.

Each attempt is claimed on the job item first (`attempt_is_ours`: the delivery still has the id, status and
attempt count the message was sent for, and no live lease), so a duplicate or late message never sends twice;
its outcome is written with an audit event in one transaction. A failed attempt is retried with the Standard
Webhooks backoff (5 s ... 10 h, about a day in all) through SQS delays, a longer wait sat out in 15-minute hops.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from chalicelib import clock, faults, messages
from chalicelib.jobs.states import TERMINAL, DeliveryStatus, JobStatus, event_item
from chalicelib.messages import Deliver
from chalicelib.reports import service as reports
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Delivery, Job, connection

log = logging.getLogger(__name__)

DELIVERING = "Delivering"  # Job.activeStatus of a final job whose deliveries may not be queued yet
EVENT_OF = {JobStatus.COMPLETED: "job.completed", JobStatus.FAILED: "job.failed",
            JobStatus.CANCELLED: "job.cancelled"}
PROGRESS_EVENT = "job.progress"
PROGRESS_EVERY_SECONDS = 10
LEASE_MARGIN_SECONDS = 30  # past the send's own timeout: a lease this old belongs to a dead attempt
RETRY_AFTER_MAX_SECONDS = 24 * 3600
OUTBOX_GRACE_SECONDS = 60  # a job marked Delivering this long ago lost its sender; the reaper queues for it


D = DeliveryStatus


# --- planning (inside the final transition) -------------------------------------------------------------------


def plan(job: Job, to: JobStatus) -> list[Delivery]:
    """The deliveries of `job` entering the final status `to`, from its report's targets as they are now."""
    event = EVENT_OF.get(to)
    report = reports.report_of(job.tenant or job.owner_id, job.report_id) if event else None
    if report is None:
        return []
    disabled = report.disabled_targets or {}
    now = int(time.time())
    planned = []
    for i, target in enumerate(report.delivery_targets or []):
        if target["type"] == "email" and event == "job.completed":
            destination = target["to"]
        elif target["type"] == "webhook" and event in target.get("events", []):
            destination = target["url"]
        else:
            continue
        from chalicelib.delivery import webhook

        d = Delivery(id=webhook.new_message_id(), target=i, type=target["type"], event=event,
                     destination=destination, status=D.PENDING.value, attempts=0, next_at=now, lease_until=0)
        if target["type"] == "webhook" and destination in disabled:
            d.status = D.DISABLED.value
            d.last_error = (f"Not sent: the receiver answered 410 Gone on {disabled[destination]}. Retry this "
                            "delivery (or set the report's deliveryTargets) to enable the target again.")
        planned.append(d)
    return planned


def final_actions(job: Job, to: JobStatus) -> tuple[list[Action], bool]:
    """Update actions for the final transition: the deliveries, and the outbox mark when any waits.

    Returns (actions, mark): when `mark`, the caller must call `enqueue` once its write has landed.
    """
    planned = plan(job, to)
    waiting = any(d.status == D.PENDING.value for d in planned)
    actions: list[Action] = [Job.active_status.set(DELIVERING) if waiting else Job.active_status.remove()]
    if planned:
        actions.append(Job.deliveries.set(planned))
    elif job.deliveries:
        actions.append(Job.deliveries.remove())  # a retried job's earlier outcome was delivered already
    return actions, waiting


def enqueue(job: Job) -> int:
    """Queue the first attempt of every delivery not yet attempted, then clear the outbox mark.

    Safe to repeat (the reaper does, for a mark left behind): a second message for one attempt loses the claim.
    Returns the number of messages sent; 0 and the mark kept when the queue refused them.
    """
    waiting = [(n, d) for n, d in enumerate(job.deliveries or [])
               if d.status == D.PENDING.value and int(d.attempts) == 0]
    try:
        messages.send_batch([Deliver(job.job_id, n, d.id, 1) for n, d in waiting],
                            ids=[str(n) for n, _ in waiting])
    except Exception as err:  # the mark stays: the reaper queues them within a few minutes
        log.warning("could not queue deliveries; the reaper will", extra={"jobId": job.job_id,
                                                                          "error": type(err).__name__})
        return 0
    try:
        # still_marked: a retry that took the job up again meanwhile owns activeStatus now.
        Job(job.job_id).update(actions=[Job.active_status.remove()],
                               condition=Job.active_status == DELIVERING)
    except UpdateError as err:
        if err.cause_response_code != "ConditionalCheckFailedException":
            raise
    return len(waiting)


def resend_waiting(settings: Settings | None = None) -> int:
    """The reaper's part: queue the deliveries of final jobs whose writer died before queuing them."""
    cutoff = clock.iso(clock.now() - timedelta(seconds=OUTBOX_GRACE_SECONDS))
    sent = 0
    for entry in Job.by_active.query(DELIVERING):
        job = _read(entry.job_id)
        if job is not None and job.active_status == DELIVERING and (job.updated_at or "") < (cutoff or ""):
            sent += enqueue(job)
    return sent


# --- attempts (the worker, one message each) -------------------------------------------------------------------


def handle(message: Deliver, settings: Settings | None = None) -> str:
    """Work one Deliver message; returns what happened (for logs and tests). Raises on a store error (the
    message is then redelivered)."""
    settings = settings or get_settings()
    if message.event == PROGRESS_EVENT:
        return _send_progress(message, settings)
    job = _read(message.job_id)
    deliveries = (job.deliveries or []) if job else []
    if job is None or message.n >= len(deliveries) or deliveries[message.n].id != message.id:
        return "stale"  # the job is gone, or a later final status replaced its deliveries
    d = deliveries[message.n]
    now = time.time()
    if d.status != D.PENDING.value:
        return "done"
    if int(d.attempts) >= message.attempt:
        # This attempt is recorded; the message for the next may have died with its sender: send it again (a
        # duplicate is harmless, the claim lets one through).
        if int(d.attempts) == message.attempt and float(d.lease_until or 0) < now:
            _follow_up(job, message.n, d)
        return "duplicate"
    if int(d.attempts) != message.attempt - 1:
        return "stale"
    if float(d.next_at or 0) > now + 1:
        messages.send(message, float(d.next_at) - now)  # SQS delays stop at 15 minutes: one more hop
        return "waiting"
    lease = int(now + settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)
    if not _claim(job, message.n, d, lease, now):
        return "taken"
    faults.point("after_delivery_claim")
    outcome = _attempt(job, d, settings)
    return _record(job, message.n, d, message.attempt, lease, outcome)


def _path(n: int) -> Any:
    return Job.deliveries[n]  # type: ignore[index]


def _claim(job: Job, n: int, d: Delivery, lease: int, now: float) -> bool:
    p = _path(n)
    # attempt_is_ours: the same delivery (id), still waiting, at the attempt this message is for, and no live
    # lease (a dead attempt's lease runs out, and the redelivered message takes it over).
    attempt_is_ours = ((p.id == d.id) & (p.status == D.PENDING.value) & (p.attempts == int(d.attempts))
                       & (p.lease_until < int(now)))
    try:
        Job(job.job_id).update(actions=[p.lease_until.set(lease)], condition=attempt_is_ours)
        return True
    except UpdateError as err:
        if err.cause_response_code != "ConditionalCheckFailedException":
            raise
        return False


class _Outcome:
    def __init__(self, ok: bool, error: str | None = None, retry_after: float | None = None, gone: bool = False,
                 final: bool = False, detail: str | None = None) -> None:
        self.ok, self.error, self.retry_after, self.gone, self.final = ok, error, retry_after, gone, final
        self.detail = detail


def _attempt(job: Job, d: Delivery, settings: Settings) -> _Outcome:
    """Send once; never raises for the receiver's or SES's failures (they are the outcome)."""
    try:
        if d.type == "email":
            return _email(job, d, settings)
        return _webhook(job, d.destination, d.event, d.id, settings)
    except Exception as err:  # an unforeseen failure is one failed attempt, retried like the others
        log.exception("delivery attempt failed", extra={"jobId": job.job_id, "type": d.type})
        return _Outcome(False, f"Unexpected error ({type(err).__name__}).")


def _email(job: Job, d: Delivery, settings: Settings) -> _Outcome:
    from botocore.exceptions import BotoCoreError, ClientError

    from chalicelib.delivery import email

    try:
        message_id = email.send(job, d.destination, _job_url(job, settings) + "/result")
    except email.Rejected as err:
        return _Outcome(False, str(err), final=True)
    except ClientError as err:
        return _Outcome(False, f"SES refused the message for now ({err.response['Error'].get('Code')}).")
    except BotoCoreError as err:
        return _Outcome(False, f"SES could not be reached ({type(err).__name__}).")
    return _Outcome(True, detail=message_id)


def _webhook(job: Job, url: str, event: str, msg_id: str, settings: Settings) -> _Outcome:
    from chalicelib.delivery import webhook
    from chalicelib.jobs import service as jobs

    report = reports.report_of(job.tenant or job.owner_id, job.report_id, fresh=True)
    if report is None:
        return _Outcome(False, "The report was deleted, and its signing secret with it; nothing was sent.",
                        final=True)
    secrets = reports.live_secrets(report)
    if not secrets:
        return _Outcome(False, "The report has no webhook secret; nothing was sent.", final=True)
    data = jobs.to_dict(job, _base_url(settings))
    data.pop("deliveries", None)  # the payload is the job, not its delivery bookkeeping (and stays the same)
    stamp = int(time.time())
    body = webhook.payload(event, data, clock.from_epoch(stamp))
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
               "webhook-signature": webhook.sign(secrets, msg_id, stamp, body), "content-type": "application/json"}
    out = webhook.post(url, body, headers, allow_loopback=settings.webhook_allow_loopback,
                       timeout=settings.webhook_timeout_seconds)
    if out.ok:
        return _Outcome(True, detail=f"HTTP {out.status}")
    if out.gone:
        return _Outcome(False, "The receiver answered 410 Gone; the target is disabled.", gone=True, final=True)
    return _Outcome(False, out.error or "Failed.", retry_after=out.retry_after)


def _record(job: Job, n: int, d: Delivery, attempt: int, lease: int, outcome: _Outcome) -> str:
    from chalicelib.delivery import webhook

    delay: float | None = None
    if outcome.ok:
        status = D.DELIVERED
    elif outcome.gone:
        status = D.DISABLED
    elif outcome.final:
        status = D.FAILED
    else:
        delay = webhook.backoff_seconds(attempt)
        if delay is not None and outcome.retry_after:
            delay = max(delay, min(outcome.retry_after, RETRY_AFTER_MAX_SECONDS))
        status = D.PENDING if delay is not None else D.FAILED
    error = outcome.error
    if status is D.FAILED and not outcome.final and error:
        error = f"{error} Gave up after {attempt} attempts."
    p = _path(n)
    now = time.time()
    actions = [p.status.set(status.value), p.attempts.set(attempt), p.at.set(clock.iso(clock.now())),
               p.lease_until.set(0), p.next_at.set(int(now + (delay or 0))),
               p.last_error.set(error) if error else p.last_error.remove()]
    detail = {"n": n, "target": int(d.target), "type": d.type, "event": d.event, "attempt": attempt,
              "outcome": "delivered" if outcome.ok else "failed", "status": status.value}
    if error:
        detail["error"] = error
    if delay is not None:
        detail["nextAttemptAt"] = clock.iso(clock.from_epoch(now + delay))
    try:
        with TransactWrite(connection=connection()) as tx:
            # lease_is_ours: the attempt we claimed; a later claim (ours ran past its lease) records its own.
            tx.update(Job(job.job_id), actions=actions, condition=(p.id == d.id) & (p.lease_until == lease))
            tx.save(event_item(job.job_id, "delivery_attempt", detail))
    except TransactWriteError as err:
        codes = {r.code for r in (err.cancellation_reasons or []) if r}
        if "ConditionalCheckFailed" not in codes:
            raise
        log.warning("delivery attempt outlived its lease; not recorded", extra={"jobId": job.job_id, "n": n})
        return "lost"
    if status is D.DISABLED:
        reports.set_target_disabled(job.tenant or job.owner_id, job.report_id, d.destination, True)
    if status is D.PENDING:
        messages.send(Deliver(job.job_id, n, d.id, attempt + 1), delay or 0)
    return status.value


def _follow_up(job: Job, n: int, d: Delivery) -> None:
    messages.send(Deliver(job.job_id, n, d.id, int(d.attempts) + 1), max(0.0, float(d.next_at) - time.time()))


# --- progress webhooks -------------------------------------------------------------------------------------------


def progress(job_id: str, tenant: str, report_id: str) -> int:
    """After a checkpoint: one job.progress webhook per subscribed target, at most every PROGRESS_EVERY_SECONDS
    for the whole fleet (a conditional write takes the turn). Never retried: the next one supersedes it."""
    report = reports.report_of(tenant, report_id)
    if report is None:
        return 0
    disabled = report.disabled_targets or {}
    wanted = [i for i, t in enumerate(report.delivery_targets or []) if t["type"] == "webhook"
              and PROGRESS_EVENT in t.get("events", []) and t["url"] not in disabled]
    if not wanted:
        return 0
    now = int(time.time())
    try:
        # progress_turn_free: the last progress webhook of this job went out at least 10 s ago.
        Job(job_id).update(actions=[Job.progress_sent_at.set(now)], condition=Job.job_id.exists() & (
            Job.progress_sent_at.does_not_exist() | (Job.progress_sent_at <= now - PROGRESS_EVERY_SECONDS)))
    except UpdateError as err:
        if err.cause_response_code != "ConditionalCheckFailedException":
            raise
        return 0
    from chalicelib.delivery import webhook

    try:
        messages.send_batch([Deliver(job_id, i, webhook.new_message_id(), 1, PROGRESS_EVENT) for i in wanted])
    except Exception as err:  # progress is best effort: the job goes on
        log.warning("could not queue progress webhooks", extra={"jobId": job_id, "error": type(err).__name__})
        return 0
    return len(wanted)


def _send_progress(message: Deliver, settings: Settings) -> str:
    job = _read(message.job_id)
    if job is None or JobStatus(job.status) in TERMINAL:
        return "stale"  # the final event says more
    report = reports.report_of(job.tenant or job.owner_id, job.report_id)
    targets = (report.delivery_targets or []) if report else []
    target = targets[message.n] if message.n < len(targets) else None
    if target is None or target["type"] != "webhook" or PROGRESS_EVENT not in target.get("events", []):
        return "stale"
    outcome = _webhook(job, target["url"], PROGRESS_EVENT, message.id, settings)
    if outcome.gone:
        reports.set_target_disabled(job.tenant or job.owner_id, job.report_id, target["url"], True)
    if not outcome.ok:
        log.info("progress webhook not delivered", extra={"jobId": job.job_id, "error": outcome.error})
    return "delivered" if outcome.ok else "failed"


# --- the API's part ------------------------------------------------------------------------------------------------


def retry(owner_id: str, job_id: str, n: int) -> Job:
    """Send delivery `n` (its place in the job's `deliveries`) again: a Failed, Disabled or Delivered one.

    A Disabled one's target is enabled again first. 409 while the delivery is still being attempted, or when the
    job is running again (its deliveries will be replaced when it finishes).
    """
    from chalicelib.errors import Conflict, NotFound
    from chalicelib.jobs.service import get_job

    job = get_job(owner_id, job_id)
    deliveries = job.deliveries or []
    if not 0 <= n < len(deliveries):
        raise NotFound(f"This job has no delivery {n}; its deliveries are numbered from 0 to {len(deliveries) - 1}."
                       if deliveries else "This job has no deliveries.")
    if JobStatus(job.status) not in TERMINAL:
        raise Conflict(f"The job is {job.status} again; its deliveries are replaced when it finishes.")
    d = deliveries[n]
    if d.status == D.PENDING.value:
        raise Conflict(f"Delivery {n} is still being attempted ({int(d.attempts)} attempts so far); its outcome "
                       "will show here.", deliveryStatus=d.status)
    if d.status == D.DISABLED.value:
        reports.set_target_disabled(job.tenant or job.owner_id, job.report_id, d.destination, False)
    p = _path(n)
    try:
        with TransactWrite(connection=connection()) as tx:
            # delivery_unchanged: two retries at once, or an attempt recorded meanwhile: one wins, the other 409.
            tx.update(Job(job.job_id), actions=[
                p.status.set(D.PENDING.value), p.attempts.set(0), p.next_at.set(int(time.time())),
                p.lease_until.set(0), p.last_error.remove(), Job.active_status.set(DELIVERING)],
                condition=(p.id == d.id) & (p.status == d.status) & (Job.status == job.status))
            tx.save(event_item(job.job_id, "delivery_retry_requested",
                               {"n": n, "target": int(d.target), "type": d.type, "from": d.status, "by": "user"}))
    except TransactWriteError as err:
        codes = {r.code for r in (err.cancellation_reasons or []) if r}
        if not codes & {"ConditionalCheckFailed", "TransactionConflict"}:
            raise
        raise Conflict("The delivery or the job changed while this ran; look at the job again.") from err
    job.refresh(consistent_read=True)
    enqueue(job)
    job.refresh(consistent_read=True)
    return job


# --- shared ---------------------------------------------------------------------------------------------------


def to_dicts(job: Job) -> list[dict[str, Any]]:
    """The job representation's `deliveries`."""
    return [{"target": int(d.target), "type": d.type, "event": d.event, "destination": d.destination,
             "status": d.status, "attempts": int(d.attempts), "lastError": d.last_error, "at": d.at,
             "nextAttemptAt": clock.iso(clock.from_epoch(float(d.next_at)))
             if d.status == D.PENDING.value and d.next_at else None}
            for d in job.deliveries or []]


def _read(job_id: str) -> Job | None:
    try:
        return Job.get(job_id, consistent_read=True)
    except Job.DoesNotExist:
        return None


def _base_url(settings: Settings) -> str:
    return settings.public_base_url or ""


def _job_url(job: Job, settings: Settings) -> str:
    return f"{_base_url(settings)}/api/v1/jobs/{job.job_id}"
