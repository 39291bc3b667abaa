"""The steps' contract (tests/unit/test_job_steps_store.py) against DynamoDB on the moto server."""

from __future__ import annotations

import pytest

from chalicelib.jobs.store import DynamoJobStore
from chalicelib.jobs.store import steps as writes
from chalicelib.tables import Job, JobEvent
from tests.unit.test_job_steps_store import StepsContract


class TestDynamoSteps(StepsContract):
    @pytest.fixture
    def store(self, aws_endpoint):
        return DynamoJobStore()

    def seed(self, store, job: Job) -> Job:
        job.save()
        return store.load(job.job_id)

    def step_events(self, store, job_id: str) -> list[dict]:
        return [e.detail for e in JobEvent.query(job_id, consistent_read=True) if e.type == writes.STEP_EVENT]
