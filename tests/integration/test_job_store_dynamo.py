"""The job store's contract (tests/unit/test_job_store.py) against DynamoDB on the moto server."""

from __future__ import annotations

import pytest

from chalicelib.jobs.store import DynamoJobStore
from chalicelib.tables import Job
from tests.unit.test_job_store import StoreContract


class TestDynamoStore(StoreContract):
    @pytest.fixture
    def store(self, aws_endpoint):
        return DynamoJobStore()

    def seed(self, store, job: Job) -> Job:
        job.save()
        return store.load(job.job_id)
