"""A job's steps as values: the plan a new job of a type starts with, and each move of a step (pure: no store).

Every function takes the steps as they were read and returns the steps as they are to be written, with the
transitions made (`Moved`, each one audit event). No transition (the step is already where the move would put it)
is an empty list, and the caller writes nothing. jobs/store/steps.py writes the result under `steps_unchanged`, so
two writers never lose each other's move; jobs/steps.py is the interface the worker paths call.

The rules:
- begin: Pending, Failed or Cancelled -> Running (attempts + 1); a Running step stays as it is unless `again` (an
  invocation takes over from one that died: attempts + 1). The steps before it that were Pending are Skipped and a
  Running one Completed: a later step began, so they are done with. A finished step (Completed, Skipped) is never
  begun again (that is `retake`).
- complete / fail / skip: the step, unless already finished. retake: a finished step runs again, and the steps
  after it are Pending again (they used what it made).
- settle: the status machine's final moves (and a retry) settle the steps in the same write: Cancelled -> every
  Running or Pending step Cancelled; Failed -> the Running step Failed with the job's message; Completed -> Running
  Completed, Pending Skipped (but `deliver`, which comes after: chalicelib/jobs/deliver.py); Queued again (a
  retry) -> Failed and Cancelled steps Pending, so the retry resumes at the first step not finished (`resume_at`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from chalicelib.jobs.states import STEP_FINISHED, JobStatus, StepStatus
from chalicelib.jobs.types import Step, steps_for

P = StepStatus


@dataclass(frozen=True)
class StepState:
    name: str
    status: StepStatus = P.PENDING
    started_at: str | None = None
    completed_at: str | None = None
    attempts: int = 0
    progress: int | None = None  # 0..100, only for a step that counts its work
    error: str | None = None  # user-safe

    def to_dict(self) -> dict[str, Any]:
        """As the job representation shows it (`steps` items)."""
        return {"name": self.name, "status": self.status.value, "startedAt": self.started_at,
                "completedAt": self.completed_at, "attempts": self.attempts, "progressPercent": self.progress,
                "errorMessage": self.error}


@dataclass(frozen=True)
class Moved:
    """One step transition: one audit event (`step`) in the same transaction as the steps."""

    step: str
    before: StepStatus
    after: StepStatus
    attempts: int
    error: str | None = None

    def detail(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "from": self.before.value, "to": self.after.value,
                               "attempts": self.attempts}
        if self.error:
            out["errorMessage"] = self.error
        return out


Plan = tuple[StepState, ...]
Outcome = tuple[Plan, list[Moved]]


def plan(job_type: str, deliver: bool = False) -> Plan:
    """The steps of a new job of `job_type`, all Pending."""
    return tuple(StepState(step.value) for step in steps_for(job_type, deliver))


def index(steps: Plan, name: str | Step) -> int:
    for i, state in enumerate(steps):
        if state.name == str(name):
            return i
    raise ValueError(f"step {name!r} is not one of this job's steps ({', '.join(s.name for s in steps)})")


def resume_at(steps: Plan) -> str | None:
    """The first step not finished (where a retry resumes); None when every step is."""
    return next((s.name for s in steps if s.status not in STEP_FINISHED), None)


def _move(steps: list[StepState], i: int, to: StepStatus, moved: list[Moved], **changes: Any) -> None:
    before = steps[i]
    after = replace(before, status=to, **changes)
    steps[i] = after
    if before.status is not to or after.attempts != before.attempts:
        moved.append(Moved(after.name, before.status, to, after.attempts, after.error))


def _close_before(steps: list[StepState], i: int, now: str, moved: list[Moved]) -> None:
    """A later step moved on: the Pending steps before it were passed over, a Running one is done."""
    for j in range(i):
        if steps[j].status is P.PENDING:
            _move(steps, j, P.SKIPPED, moved, completed_at=now)
        elif steps[j].status is P.RUNNING:
            _move(steps, j, P.COMPLETED, moved, completed_at=now,
                  progress=100 if steps[j].progress is not None else None)


def begin(steps: Plan, name: str | Step, now: str, again: bool = False) -> Outcome:
    out, moved, i = list(steps), list[Moved](), index(steps, name)
    state = out[i]
    if state.status in STEP_FINISHED or (state.status is P.RUNNING and not again):
        return steps, []
    _close_before(out, i, now, moved)
    # The progress of a step begun again stays: its work resumes from the job's checkpoint, not from nothing.
    _move(out, i, P.RUNNING, moved, started_at=now, completed_at=None, error=None, attempts=state.attempts + 1)
    return tuple(out), moved


def complete(steps: Plan, name: str | Step, now: str) -> Outcome:
    out, moved, i = list(steps), list[Moved](), index(steps, name)
    state = out[i]
    if state.status in STEP_FINISHED:
        return steps, []
    _close_before(out, i, now, moved)
    _move(out, i, P.COMPLETED, moved, started_at=state.started_at or now, completed_at=now, error=None,
          attempts=max(1, state.attempts), progress=100 if state.progress is not None else None)
    return tuple(out), moved


def fail(steps: Plan, name: str | Step, message: str, now: str) -> Outcome:
    out, moved, i = list(steps), list[Moved](), index(steps, name)
    state = out[i]
    if state.status in STEP_FINISHED or state.status is P.FAILED:
        return steps, []
    _move(out, i, P.FAILED, moved, completed_at=now, error=message, attempts=max(1, state.attempts),
          started_at=state.started_at or now)
    return tuple(out), moved


def skip(steps: Plan, name: str | Step, now: str) -> Outcome:
    out, moved, i = list(steps), list[Moved](), index(steps, name)
    if out[i].status is not P.PENDING:
        return steps, []
    _move(out, i, P.SKIPPED, moved, completed_at=now)
    return tuple(out), moved


def advance(steps: Plan, done: str | Step, then: str | Step, now: str) -> Outcome:
    """`done` Completed and `then` begun, in one write."""
    first, moved = complete(steps, done, now)
    second, more = begin(first, then, now)
    return second, moved + more


def retake(steps: Plan, name: str | Step, now: str) -> Outcome:
    """A finished step runs again (attempts + 1); the steps after it are Pending again."""
    out, moved, i = list(steps), list[Moved](), index(steps, name)
    state = out[i]
    if state.status not in STEP_FINISHED:
        return begin(steps, name, now)
    _move(out, i, P.RUNNING, moved, started_at=now, completed_at=None, error=None, attempts=state.attempts + 1)
    for j in range(i + 1, len(out)):
        if out[j].status is not P.PENDING:
            _move(out, j, P.PENDING, moved, started_at=None, completed_at=None, error=None, progress=None)
    return tuple(out), moved


def progress(steps: Plan, name: str | Step, percent: int) -> Plan | None:
    """The steps with `name`'s progress at `percent` (0..100); None unless it is Running and moves forward."""
    i = index(steps, name)
    state = steps[i]
    percent = max(0, min(100, int(percent)))
    if state.status is not P.RUNNING or (state.progress is not None and state.progress >= percent):
        return None
    return steps[:i] + (replace(state, progress=percent),) + steps[i + 1:]


def _settler(to: JobStatus, now: str, message: str | None) -> Callable[[StepState], tuple[StepStatus, dict]] | None:
    if to is JobStatus.CANCELLED:
        return lambda s: ((P.CANCELLED, {"completed_at": now if s.status is P.RUNNING else None})
                          if s.status in (P.RUNNING, P.PENDING) else (s.status, {}))
    if to is JobStatus.FAILED:
        return lambda s: ((P.FAILED, {"completed_at": now, "error": message})
                          if s.status is P.RUNNING else (s.status, {}))
    if to is JobStatus.COMPLETED:
        def completed(s: StepState) -> tuple[StepStatus, dict]:
            if s.name == Step.DELIVER.value and s.status is P.PENDING:
                return s.status, {}  # it begins now: the deliveries the completion planned settle it (deliver.py)
            if s.status is P.PENDING:
                return P.SKIPPED, {"completed_at": now}
            if s.status in (P.RUNNING, P.FAILED, P.CANCELLED):
                return P.COMPLETED, {"completed_at": now, "error": None, "attempts": max(1, s.attempts),
                                     "started_at": s.started_at or now,
                                     "progress": 100 if s.progress is not None else None}
            return s.status, {}
        return completed
    if to is JobStatus.QUEUED:
        # A retry: what stopped the job is to be done again; its attempts count on.
        return lambda s: ((P.PENDING, {"completed_at": None, "error": None})
                          if s.status in (P.FAILED, P.CANCELLED) else (s.status, {}))
    return None


def settle(steps: Plan, to: JobStatus, now: str, message: str | None = None) -> Outcome:
    """The steps as the job's move to `to` leaves them (the same write as the status)."""
    rule = _settler(to, now, message)
    if rule is None:
        return steps, []
    out, moved = list(steps), list[Moved]()
    for i, state in enumerate(steps):
        status, changes = rule(state)
        if status is not state.status:
            _move(out, i, status, moved, **changes)
    return tuple(out), moved
