"""Step marks: how a worker says where a job is within its type's steps (chalicelib/jobs/types.py).

The one interface every worker path calls; the writes (the step's status, times, attempts, progress and its audit
event) are the job store's, in the same transaction, so a step's history is as exact as the job's.
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
