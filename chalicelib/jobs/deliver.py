"""The `deliver` step of a report job whose report has email or webhook targets (jobs/types.steps_for).

It comes after the job's final status: completion leaves it Pending (stepplan.settle), and the deliveries the
Completed move planned settle it (chalicelib/delivery/service.py calls these): Running once they are queued (or
Skipped when none is due: no target wants `job.completed`, or every one is disabled), Completed when every one is
Delivered, Failed (naming how many failed and the first reason) when none is Pending any more and one failed or
is disabled, and Running again (attempts + 1) when a person retries one. The job is final by then, so these marks
are made with live=False; each is conditioned on the steps read (steps_unchanged) like every other mark. A job
failed or cancelled is not delivered as a report: its `job.failed` / `job.cancelled` webhooks are deliveries of
the job, not this step.
"""

from __future__ import annotations

from chalicelib.jobs import steps
from chalicelib.jobs.states import DeliveryStatus, JobStatus
from chalicelib.jobs.store import steps as step_writes
from chalicelib.jobs.store.deliveries import UNPLANNED
from chalicelib.jobs.types import Step
from chalicelib.tables import Job

D = DeliveryStatus


def _has_step(job: Job) -> bool:
    return job.status == JobStatus.COMPLETED.value and any(s.name == Step.DELIVER.value
                                                           for s in step_writes.read(job))


def planned(job: Job) -> None:
    """The Completed move planned the job's deliveries (or planned them late): begin the step, or skip it."""
    if not _has_step(job) or (job.outbox_id or "").endswith(UNPLANNED):
        return  # planning failed at the final move: the reaper's sweep plans them, and calls this again
    if any(d.status == D.PENDING.value for d in job.deliveries or []):
        steps.begin(job, Step.DELIVER, live=False)
    else:
        settled(job)


def settled(job: Job) -> None:
    """A delivery reached a final status: once none is Pending, the step is done."""
    if not _has_step(job):
        return
    deliveries = list(job.deliveries or [])
    if any(d.status == D.PENDING.value for d in deliveries):
        return
    missed = [d for d in deliveries if d.status != D.DELIVERED.value]
    if not deliveries:
        steps.skip(job, Step.DELIVER, live=False)
    elif not missed:
        steps.complete(job, Step.DELIVER, live=False)
    else:
        first = missed[0]
        reason = first.last_error or f"{first.type} delivery {first.status.lower()}"
        steps.fail(job, Step.DELIVER, f"{len(missed)} of {len(deliveries)} deliveries did not arrive: {reason}",
                   live=False)


def reopened(job: Job) -> None:
    """A person retries a delivery of a Completed job: the step runs again."""
    if _has_step(job):
        steps.retake(job, Step.DELIVER, live=False)
