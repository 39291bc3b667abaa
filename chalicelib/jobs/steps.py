"""Step marks: how a worker path says where a job is within its type's steps (chalicelib/jobs/types.py).

The one interface every worker path calls, with the job it holds (updated in place with what the store then
holds). Each mark is one write of the job's steps with an audit event per transition (store/steps.py), made under
`steps_unchanged` and, unless `live=False`, `job_is_live`: a mark that races another is made again from a fresh
read; a mark on a job already final (cancelled, failed by the reaper) writes nothing. A mark that changes nothing
(begin of a step already Running, complete of a Completed one) writes nothing either, so marks are safe to repeat
(a redelivered message, a continuation). Each returns whether it wrote.

The status moves settle the steps themselves (store/moves._move): cancel -> Running and Pending steps Cancelled;
fail -> the Running step Failed with the job's message; complete -> Running Completed, Pending Skipped; retry ->
Failed and Cancelled steps Pending again, so the retry resumes at `resume_at`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from chalicelib import clock
from chalicelib.jobs import stepplan
from chalicelib.jobs.states import ACTIVE, JobStatus
from chalicelib.jobs.stepplan import Outcome, Plan
from chalicelib.jobs.store import current
from chalicelib.jobs.store import steps as writes
from chalicelib.jobs.types import Step
from chalicelib.tables import Job

log = logging.getLogger(__name__)
RACES = 8  # marks of one job rarely race more than once (a chunk's complete, the API's cancel)


def _mark(job: Job, move: Callable[[Plan, str], Outcome], live: bool) -> bool:
    for _ in range(RACES):
        if live and JobStatus(job.status) not in ACTIVE:
            return False
        seen = writes.version(job)
        after, moved = move(writes.read(job), clock.iso(clock.now()))
        if not moved:
            return False
        if current().write_steps(job, seen, writes.items(after), moved, live):
            return True
        current().reload(job)  # refused: another mark or a status move landed first; look again
    log.warning("a step mark kept racing; not written", extra={"jobId": job.job_id})
    return False


def begin(job: Job, step: Step, again: bool = False, live: bool = True) -> bool:
    """The step is Running (attempts + 1); the steps before it still Pending are Skipped, a Running one Completed.

    `again`: an invocation takes over a step whose worker died (a reaped job): attempts + 1 even though it is
    Running. A finished step (Completed, Skipped) is never begun again: see `retake`.
    """
    return _mark(job, lambda s, now: stepplan.begin(s, step, now, again), live)


def advance(job: Job, done: Step, then: Step, live: bool = True) -> bool:
    """`done` Completed and `then` Running, in one write."""
    return _mark(job, lambda s, now: stepplan.advance(s, done, then, now), live)


def complete(job: Job, step: Step, live: bool = True) -> bool:
    """The step is Completed."""
    return _mark(job, lambda s, now: stepplan.complete(s, step, now), live)


def fail(job: Job, step: Step, message: str, live: bool = True) -> bool:
    """The step is Failed with a user-safe message (the job's own failure is the state machine's move, which
    also fails the Running step: this mark is for a step that fails while the job goes on, or before it fails)."""
    return _mark(job, lambda s, now: stepplan.fail(s, step, message, now), live)


def skip(job: Job, step: Step, live: bool = True) -> bool:
    """A Pending step with nothing to do is Skipped."""
    return _mark(job, lambda s, now: stepplan.skip(s, step, now), live)


def retake(job: Job, step: Step, live: bool = True) -> bool:
    """A finished step runs again (attempts + 1) and the steps after it are Pending again."""
    return _mark(job, lambda s, now: stepplan.retake(s, step, now), live)


def progress(job: Job, step: Step, percent: int) -> bool:
    """Progress of a Running step, 0..100 (at checkpoints, not per row); only forward (progress_forward)."""
    steps = writes.read(job)
    moved = stepplan.progress(steps, step, percent)
    if moved is None or not job.steps:
        return False
    i = stepplan.index(steps, step)
    if not current().write_progress(job, i, int(moved[i].progress or 0)):
        return False
    job.steps[i].progress = moved[i].progress
    return True


def resume_at(job: Job) -> Step | None:
    """The first step not finished: where the job's work (re)starts."""
    name = stepplan.resume_at(writes.read(job))
    return Step(name) if name else None


def finished(job: Job, step: Step) -> bool:
    """Whether `step` is done with (Completed or Skipped): a retried job's worker passes over it."""
    from chalicelib.jobs.states import STEP_FINISHED

    steps = writes.read(job)
    return any(s.name == step.value and s.status in STEP_FINISHED for s in steps)
