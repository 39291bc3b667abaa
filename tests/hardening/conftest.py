"""The hardening suites create many jobs they never run (fuzzed generates, hostile ids, races). A live job stays
in the reaper's index, and every later `reaper.reap()` of this test process (other suites sweep too) would
re-enqueue it again and again. So each test here stops the live jobs it leaves behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def _live_jobs() -> set[str]:
    from chalicelib.jobs.states import ACTIVE, status_values
    from chalicelib.tables import Job

    return {job.job_id for status in status_values(ACTIVE) for job in Job.by_active.query(status)}


def _stop(job_id: str) -> None:
    from chalicelib.errors import AppError
    from chalicelib.jobs import runner, service
    from chalicelib.jobs.states import JobStatus
    from chalicelib.tables import Job

    try:
        job = service.cancel_job(Job.get(job_id, consistent_read=True).owner_id, job_id)
        if job.status == JobStatus.CANCELLATION_REQUESTED.value:
            runner.cancel(job)
    except (AppError, Job.DoesNotExist):
        pass  # it finished or moved meanwhile: not live any more, or someone else's to finish


@pytest.fixture(autouse=True)
def leave_no_live_jobs(aws_endpoint: str) -> Iterator[None]:
    before = _live_jobs()
    yield
    for job_id in _live_jobs() - before:
        _stop(job_id)
