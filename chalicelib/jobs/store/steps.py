"""The writes of a job's steps: each step transition one transaction with its audit events, under named conditions.

jobs/stepplan.py computes the steps a move leaves; this module writes them. A status move settles the steps in its
own transaction (moves._move puts `settled` into its Change). `MemorySteps` is the in-memory twin's half, held to
the same contract (tests/unit/test_job_store.py).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.transactions import TransactWrite

from chalicelib import clock
from chalicelib.jobs import stepplan
from chalicelib.jobs.states import ACTIVE, JobStatus, StepStatus, event_item, status_values
from chalicelib.jobs.stepplan import Moved, Plan, StepState
from chalicelib.tables import Job, JobStep, connection

STEP_EVENT = "step"  # the audit event of one step transition (detail: step, from, to, attempts[, errorMessage])


# --- the named conditions ------------------------------------------------------------------------------------------


def steps_unchanged(version: int) -> Condition:
    """Two writers of the steps (a worker's begin, the API's cancel settling them, a chunk's complete) each read the
    list and write it whole: the list we changed is still the one stored, or the write is refused and made again
    from a fresh read, so no writer's transition is lost. (A job from before steps has no version: 0.)"""
    if version == 0:
        return Job.steps_version.does_not_exist() | (Job.steps_version == 0)
    return Job.steps_version == version


def job_is_live() -> Condition:
    """A step mark that arrives after the job became final (a cancel, the reaper's fail) must not reopen a step the
    final move settled."""
    return Job.status.is_in(*status_values(ACTIVE))


def _step(i: int) -> Any:
    return Job.steps[i]  # a JobStep path (PynamoDB types list indexing as a bare Path)


def progress_forward(i: int, percent: int) -> Condition:
    """Progress is written by every checkpoint, of every chunk, in any order: it only ever moves forward, and only
    on the step that is Running (a late one never lands on a step a later move finished)."""
    step = _step(i)
    return (step.status == StepStatus.RUNNING.value) & (step.progress.does_not_exist() | (step.progress < percent))


# --- values <-> items ----------------------------------------------------------------------------------------------


def read(job: Job) -> Plan:
    """The job's steps as values; a job from before steps has its type's plan, all Pending."""
    if not job.steps:
        return stepplan.plan(job.type or "expense_report")
    return tuple(StepState(s.name, StepStatus(s.status), s.started_at, s.completed_at, int(s.attempts or 0),
                           int(s.progress) if s.progress is not None else None, s.error) for s in job.steps)


def items(steps: Plan) -> list[JobStep]:
    return [JobStep(name=s.name, status=s.status.value, started_at=s.started_at, completed_at=s.completed_at,
                    attempts=s.attempts, progress=s.progress, error=s.error) for s in steps]


def version(job: Job) -> int:
    return int(job.steps_version or 0)


def events(moved: Sequence[Moved]) -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((STEP_EVENT, m.detail()) for m in moved)


def settled(job: Job, to: JobStatus, message: str | None) -> tuple[list[JobStep], int, list[Moved]] | None:
    """What the job's move to `to` makes of its steps: (items, the version read, transitions); None if nothing."""
    after, moved = stepplan.settle(read(job), to, clock.iso(clock.now()), message)
    return (items(after), version(job), moved) if moved else None


def _failed_condition(err: Exception) -> bool:
    if isinstance(err, TransactWriteError):
        return any(r is not None and r.code in ("ConditionalCheckFailed", "TransactionConflict")
                   for r in (err.cancellation_reasons or []))
    return getattr(err, "cause_response_code", None) == "ConditionalCheckFailedException"


# --- DynamoDB ------------------------------------------------------------------------------------------------------


def write(job: Job, seen: int, steps: list[JobStep], moved: Sequence[Moved], live: bool) -> bool:
    """The steps and an event per transition, in one transaction; False when a named condition refused it."""
    stamp = clock.iso(clock.now())
    condition = steps_unchanged(seen) & job_is_live() if live else steps_unchanged(seen)
    try:
        with TransactWrite(connection=connection()) as tx:
            tx.update(job, condition=condition, actions=[
                Job.steps.set(steps), Job.steps_version.set(seen + 1), Job.updated_at.set(stamp)])
            for n, (kind, detail) in enumerate(events(moved)):
                tx.save(event_item(job.job_id, kind, detail, nth=n))
    except TransactWriteError as err:
        if _failed_condition(err):
            return False
        raise
    job.steps, job.steps_version, job.updated_at = steps, seen + 1, stamp
    return True


def write_progress(job: Job, i: int, percent: int) -> bool:
    """One step's progress (not a transition: no event); False when progress_forward refused it."""
    try:
        job.update(condition=progress_forward(i, percent) & job_is_live(),
                   actions=[_step(i).progress.set(percent)])
    except UpdateError as err:
        if _failed_condition(err):
            return False
        raise
    return True


# --- in memory -----------------------------------------------------------------------------------------------------


class MemorySteps:
    """The in-memory twin's steps writes: the same rules, checked directly under the store's lock."""

    jobs: dict[str, Job]
    events: list[tuple[str, str, dict[str, Any]]]
    _lock: Any

    def write_steps(self, job: Job, seen: int, steps: list[JobStep], moved: Sequence[Moved], live: bool) -> bool:
        with self._lock:
            stored = self.jobs[job.job_id]
            if version(stored) != seen or (live and JobStatus(stored.status) not in ACTIVE):
                return False
            stored.steps, stored.steps_version = copy.deepcopy(steps), seen + 1
            stored.updated_at = clock.iso(clock.now())
            self.events += [(job.job_id, kind, detail) for kind, detail in events(moved)]
            self._copy_into(job, stored)
            return True

    def write_progress(self, job: Job, i: int, percent: int) -> bool:
        with self._lock:
            stored = self.jobs[job.job_id]
            step = stored.steps[i] if stored.steps and i < len(stored.steps) else None
            if (step is None or step.status != StepStatus.RUNNING.value or JobStatus(stored.status) not in ACTIVE
                    or (step.progress is not None and int(step.progress) >= percent)):
                return False
            step.progress = percent
            self._copy_into(job, stored)
            return True

    @staticmethod
    def _copy_into(target: Any, source: Any) -> None:
        raise NotImplementedError  # MemoryJobStore's
