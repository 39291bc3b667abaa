"""Deliveries of finished jobs: planned with the final status, each worked as its own message, every attempt audited.

A job that becomes Completed, Failed or Cancelled gets, in the same write as its status (jobs/states.transition),
one `Delivery` per report target that wants that event: email targets on `job.completed`, webhook targets on the
events they list. The same write marks the job `Delivering` in the live-jobs index (an outbox, with its own
`outboxId`); the writer then queues one `Deliver` message per delivery. The mark stays while any delivery is
Pending: the reaper's sweep (`sweep`) sends the message of a delivery that is overdue (its writer died before
queuing it, its follow-up message was lost or dead-lettered, an old worker dropped it) and clears the mark of an
outbox with nothing left to send. Delivery never holds the job's status back: it is already final.

Each attempt is claimed on the job item first (`attempt_is_ours`: the delivery still has the id, status and
attempt count the message was sent for, and no live lease), so a duplicate or late message never sends twice;
its outcome is written with an audit event in one transaction. A failed attempt is retried with the Standard
Webhooks backoff (5 s ... 10 h, about a day in all) through SQS delays, a longer wait sat out in 15-minute hops.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from pynamodb.exceptions import UpdateError

from chalicelib import clock, faults, messages
from chalicelib.jobs import deliver as steps_of_delivery
from chalicelib.jobs.states import TERMINAL, DeliveryStatus, JobStatus, event_item
from chalicelib.jobs.store import deliveries as outboxes
from chalicelib.jobs.store.deliveries import DELIVERING, UNPLANNED
from chalicelib.messages import Deliver
from chalicelib.reports import service as reports
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Control, Delivery, Job, ReportConfig

log = logging.getLogger(__name__)

EVENT_OF = {JobStatus.COMPLETED: "job.completed", JobStatus.FAILED: "job.failed",
            JobStatus.CANCELLED: "job.cancelled"}
PROGRESS_EVENT = "job.progress"
PROGRESS_EVERY_SECONDS = 10
LEASE_MARGIN_SECONDS = 30  # past the send's own deadline: a lease this old belongs to a dead attempt
RETRY_AFTER_MAX_SECONDS = 24 * 3600
# A Pending delivery whose attempt was due this long ago, with no live lease, lost its message: the sweep sends
# it again (a message in flight is taken within seconds of its due time).
OVERDUE_SECONDS = 120

D = DeliveryStatus


class _Final(Exception):
    """A failure no retry can fix: the delivery becomes Failed with this (user-safe) message."""


# --- planning (inside the final transition) -------------------------------------------------------------------


def plan(job: Job, to: JobStatus) -> list[Delivery]:
    """The deliveries of `job` entering the final status `to`, from its report's targets as they are now."""
    from chalicelib.delivery import webhook

    event = EVENT_OF.get(to)
    if job.type in ("cache_warm", "lines_import"):
        return []  # no report, so no targets (its reportId only names its type)
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
        d = Delivery(id=webhook.new_message_id(), target=i, type=target["type"], event=event,
                     destination=destination, status=D.PENDING.value, attempts=0, next_at=now, lease_until=0,
                     report_created_at=report.created_at)
        if target["type"] == "webhook" and destination in disabled:
            d.status = D.DISABLED.value
            d.last_error = (f"Not sent: the receiver answered 410 Gone on {disabled[destination]}. Retry this "
                            "delivery (or set the report's deliveryTargets) to enable the target again.")
        planned.append(d)
    return planned


def enqueue(job: Job) -> int:
    """Queue the first attempt of every delivery not yet attempted. Safe to repeat: a second message for one
    attempt loses the claim. Returns the number of messages sent; 0 when the queue refused them (the mark stays,
    and the sweep sends them once they are overdue)."""
    waiting = [(n, d) for n, d in enumerate(job.deliveries or [])
               if d.status == D.PENDING.value and int(d.attempts) == 0]
    try:
        messages.send_batch([Deliver(job.job_id, n, d.id, 1) for n, d in waiting],
                            ids=[str(n) for n, _ in waiting])
    except Exception as err:
        log.warning("could not queue deliveries; the sweep will", extra={"jobId": job.job_id,
                                                                         "error": type(err).__name__})
        return 0
    return len(waiting)


def sweep(settings: Settings | None = None) -> int:
    """The reaper's part, over the jobs marked Delivering: plan what could not be planned, send the message of
    every overdue delivery, and clear the mark of an outbox with nothing left to send. Returns messages sent."""
    sent = 0
    for entry in Job.by_active.query(DELIVERING):
        job = _read(entry.job_id)
        if job is None or job.active_status != DELIVERING or JobStatus(job.status) not in TERMINAL:
            continue
        if (job.outbox_id or "").endswith(UNPLANNED):
            job = _plan_late(job)
            if job is None:
                continue
        now = time.time()
        pending = [(n, d) for n, d in enumerate(job.deliveries or []) if d.status == D.PENDING.value]
        overdue = [(n, d) for n, d in pending
                   if float(d.next_at or 0) + OVERDUE_SECONDS < now and float(d.lease_until or 0) < now]
        if overdue:
            try:
                messages.send_batch([Deliver(job.job_id, n, d.id, int(d.attempts) + 1) for n, d in overdue],
                                    ids=[str(n) for n, _ in overdue])
                sent += len(overdue)
            except Exception as err:
                log.warning("could not queue overdue deliveries", extra={"jobId": job.job_id,
                                                                         "error": type(err).__name__})
        if not pending:
            _clear_mark(job)
    return sent


def _plan_late(job: Job) -> Job | None:
    planned = plan(job, JobStatus(job.status))
    waiting = any(d.status == D.PENDING.value for d in planned)
    if not outboxes.plan_late(job, planned, waiting, (job.outbox_id or "").removesuffix(UNPLANNED)):
        return None  # store: outbox_is_ours
    fresh = _read(job.job_id)
    if fresh is not None:
        steps_of_delivery.planned(fresh)
    enqueue(job)
    return job if waiting else None


def _clear_mark(job: Job) -> None:
    outboxes.clear_outbox(job)


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
        return "stale"  # the job is gone, or was retried (its deliveries went with the status they were for)
    d = deliveries[message.n]
    now = time.time()
    if d.status != D.PENDING.value:
        return "done"
    if int(d.attempts) >= message.attempt:
        # This attempt is recorded. Its follow-up normally went out with the record; only one overdue looks lost
        # (the sweep would send it too: a second message loses the claim).
        if int(d.attempts) == message.attempt and float(d.lease_until or 0) < now \
                and float(d.next_at or 0) + OVERDUE_SECONDS < now:
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


def _claim(job: Job, n: int, d: Delivery, lease: int, now: float) -> bool:
    return outboxes.claim(job.job_id, n, d, lease, now)  # store: attempt_is_ours


class _Outcome:
    def __init__(self, ok: bool, error: str | None = None, retry_after: float | None = None, gone: bool = False,
                 final: bool = False) -> None:
        self.ok, self.error, self.retry_after, self.gone, self.final = ok, error, retry_after, gone, final


def _attempt(job: Job, d: Delivery, settings: Settings) -> _Outcome:
    """Send once; never raises for the receiver's, SES's or the data's failures (they are the outcome)."""
    try:
        if EVENT_OF.get(JobStatus(job.status)) != d.event:
            raise _Final("Not sent: the job left the status this delivery announced.")
        report = _same_report(job, d)
        if d.type == "email":
            return _email(job, d, settings)
        return _webhook(job, report, d.destination, d.event, d.id, settings)
    except _Final as err:
        return _Outcome(False, str(err), final=True)
    except Exception as err:  # an unforeseen failure is one failed attempt, retried like the others
        log.exception("delivery attempt failed", extra={"jobId": job.job_id, "type": d.type})
        return _Outcome(False, f"Unexpected error ({type(err).__name__}).")


def _same_report(job: Job, d: Delivery) -> ReportConfig:
    """The report the delivery was planned from, still sending to its destination; else _Final."""
    report = reports.report_of(job.tenant or job.owner_id, job.report_id, fresh=True)
    if report is None or (d.report_created_at and report.created_at != d.report_created_at):
        raise _Final("Not sent: the report was deleted since this delivery was planned.")
    key = "to" if d.type == "email" else "url"
    if not any(t["type"] == d.type and t.get(key) == d.destination for t in report.delivery_targets or []):
        raise _Final("Not sent: the report no longer has this target.")
    return report


def _email(job: Job, d: Delivery, settings: Settings) -> _Outcome:
    from botocore.exceptions import BotoCoreError, ClientError

    from chalicelib.delivery import email

    try:
        email.send(job, d.destination, _job_url(job, settings) + "/result")
    except email.Rejected as err:
        return _Outcome(False, str(err), final=True)
    except ValueError as err:
        return _Outcome(False, f"Not sent: {err}", final=True)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code")
        if getattr(err, "operation_name", "") in ("HeadObject", "GetObject") and code in ("404", "NoSuchKey",
                                                                                           "NotFound"):
            return _Outcome(False, "Not sent: the report's files are no longer stored (past retention).",
                            final=True)
        return _Outcome(False, f"SES refused the message for now ({code}).")
    except BotoCoreError as err:
        return _Outcome(False, f"SES could not be reached ({type(err).__name__}).")
    return _Outcome(True)


def _webhook(job: Job, report: ReportConfig, url: str, event: str, msg_id: str, settings: Settings) -> _Outcome:
    from chalicelib.delivery import webhook
    from chalicelib.jobs import service as jobs

    secrets = reports.live_secrets(report)
    if not secrets:
        return _Outcome(False, "Not sent: the report has no webhook secret.", final=True)
    data = jobs.to_dict(job, _base_url(settings))
    data.pop("deliveries", None)  # the payload is the job, not its delivery bookkeeping (and stays the same)
    stamp = int(time.time())
    try:
        body = webhook.payload(event, data, clock.from_epoch(stamp))
    except ValueError as err:
        return _Outcome(False, f"Not sent: {err}", final=True)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
               "webhook-signature": webhook.sign(secrets, msg_id, stamp, body), "content-type": "application/json"}
    out = webhook.post(url, body, headers, allow_loopback=settings.webhook_allow_loopback,
                       timeout=settings.webhook_timeout_seconds)
    if out.ok:
        return _Outcome(True)
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
    now = time.time()
    detail = {"n": n, "target": int(d.target), "type": d.type, "event": d.event, "attempt": attempt,
              "outcome": "delivered" if outcome.ok else "failed", "status": status.value}
    if error:
        detail["error"] = error
    if delay is not None:
        detail["nextAttemptAt"] = clock.iso(clock.from_epoch(now + delay))
    if not outboxes.record(job.job_id, n, d, lease, status.value, attempt, error, int(now + (delay or 0)),
                           detail):  # store: delivery_lease_is_ours
        # Sent, but another claim (ours outlived its lease) or a retry of the job took the delivery over.
        log.warning("delivery attempt outlived its lease; not recorded", extra={"jobId": job.job_id, "n": n})
        event_item(job.job_id, "delivery_attempt", {**detail, "status": "Unrecorded",
                                                    "note": "outlived its lease"}).save()
        return "lost"
    if status is D.DISABLED:
        reports.set_target_disabled(job.tenant or job.owner_id, job.report_id, d.destination, True)
    if status is D.PENDING:
        messages.send(Deliver(job.job_id, n, d.id, attempt + 1), delay or 0)
    else:
        fresh = _read(job.job_id)
        if fresh is not None and not any(x.status == D.PENDING.value for x in fresh.deliveries or []):
            _clear_mark(fresh)  # (two deliveries ending at once may each leave it: the sweep clears it then)
            steps_of_delivery.settled(fresh)  # the job's `deliver` step: Completed, or Failed naming what missed
    return status.value


def _follow_up(job: Job, n: int, d: Delivery) -> None:
    messages.send(Deliver(job.job_id, n, d.id, int(d.attempts) + 1), max(0.0, float(d.next_at) - time.time()))


def dead_lettered(message: Deliver) -> dict[str, Any]:
    """A delivery message that failed all its receives: the delivery becomes Failed (a progress one is dropped)."""
    if message.event == PROGRESS_EVENT:
        return {"outcome": "dropped", "jobId": message.job_id}
    job = _read(message.job_id)
    deliveries = (job.deliveries or []) if job else []
    if job is None or message.n >= len(deliveries) or deliveries[message.n].id != message.id \
            or deliveries[message.n].status != D.PENDING.value:
        return {"outcome": "stale", "jobId": message.job_id}
    d = deliveries[message.n]
    error = "Sending this delivery failed repeatedly (its message was moved to the dead-letter queue)."
    detail = {"n": message.n, "target": int(d.target), "type": d.type, "event": d.event,
              "attempt": int(d.attempts) + 1, "outcome": "failed", "status": D.FAILED.value, "error": error}
    if not outboxes.fail_waiting(job.job_id, message.n, d, error, detail):  # store: still_waiting
        return {"outcome": "stale", "jobId": message.job_id}
    fresh = _read(job.job_id)
    if fresh is not None:
        steps_of_delivery.settled(fresh)
    return {"outcome": "failed", "jobId": message.job_id}


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
        # progress_turn_free: the last progress webhook of this job went out at least 10 s ago. Its own item, not
        # the job's: a chunk's checkpoint transaction on the job item must never meet this write.
        Control(f"progress#{job_id}").update(
            actions=[Control.version.set(now), Control.expires_at.set(clock.expiry(days=1))],
            condition=Control.pk.does_not_exist() | (Control.version <= now - PROGRESS_EVERY_SECONDS))
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
    if report is None or target is None or target["type"] != "webhook" \
            or PROGRESS_EVENT not in target.get("events", []):
        return "stale"
    try:
        outcome = _webhook(job, report, target["url"], PROGRESS_EVENT, message.id, settings)
    except Exception:  # best effort: a progress message is never redelivered (nor dead-lettered) for a failure
        log.warning("progress webhook failed", extra={"jobId": job.job_id}, exc_info=True)
        return "failed"
    if outcome.gone:
        reports.set_target_disabled(job.tenant or job.owner_id, job.report_id, target["url"], True)
    if not outcome.ok:
        log.info("progress webhook not delivered", extra={"jobId": job.job_id, "error": outcome.error})
    return "delivered" if outcome.ok else "failed"


# --- the API's part ------------------------------------------------------------------------------------------------


def retry(owner_id: str, job_id: str, n: int) -> Job:
    """Send delivery `n` (its place in the job's `deliveries`) again: a Failed, Disabled or Delivered one, or a
    Pending one whose attempt is long overdue (its message was lost).

    A Disabled one's target is enabled again when the caller owns the report (a holder of its roles may resend
    their job's delivery, not change the owner's report). 409 while the delivery is being attempted.
    """
    from chalicelib.errors import Conflict, NotFound
    from chalicelib.jobs.service import get_job

    job = get_job(owner_id, job_id)
    deliveries = job.deliveries or []
    if not 0 <= n < len(deliveries):
        raise NotFound(f"This job has no delivery {n}; its deliveries are numbered from 0 to {len(deliveries) - 1}."
                       if deliveries else "This job has no deliveries.")
    d = deliveries[n]
    now = time.time()
    stuck = float(d.next_at or 0) + OVERDUE_SECONDS < now and float(d.lease_until or 0) < now
    if d.status == D.PENDING.value and not stuck:
        raise Conflict(f"Delivery {n} is still being attempted ({int(d.attempts)} attempts so far); its outcome "
                       "will show here.", deliveryStatus=d.status)
    detail = {"n": n, "target": int(d.target), "type": d.type, "from": d.status, "by": "user"}
    if not outboxes.reopen(job, n, d, now, job.outbox_id or uuid.uuid4().hex, detail):  # store: delivery_unchanged
        raise Conflict("The delivery or the job changed while this ran; look at the job again.")
    if d.status == D.DISABLED.value:
        report = reports.report_of(job.tenant or job.owner_id, job.report_id, fresh=True)
        if report is not None and report.owner_id == owner_id:
            reports.set_target_disabled(report.tenant, report.report_id, d.destination, False)
    job.refresh(consistent_read=True)
    steps_of_delivery.reopened(job)
    enqueue(job)
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

