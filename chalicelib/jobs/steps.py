"""Step marks: how a worker says where a job is within its type's steps (chalicelib/jobs/types.py).

The one interface every worker path calls. On this build the marks record nothing yet (the job representation has
no `steps`): the store-backed steps (status, times, attempts, progress and an audit event per transition, written in
one transaction with the job) arrive with the rest of the job types work. Callers mark now so that nothing changes
on their side then.
"""

from __future__ import annotations

from chalicelib.jobs.types import Step


def begin(job_id: str, step: Step) -> None:
    """The step is Running (attempts + 1); the steps before it that are still Pending become Skipped."""


def progress(job_id: str, step: Step, percent: int) -> None:
    """Progress of a Running step, 0..100 (written at checkpoints, not per row)."""


def complete(job_id: str, step: Step) -> None:
    """The step is Completed."""


def fail(job_id: str, step: Step, message: str) -> None:
    """The step is Failed with a user-safe message (the job's own failure is the state machine's move)."""
