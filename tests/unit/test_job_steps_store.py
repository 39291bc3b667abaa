"""The steps' writes (jobs/steps.py over store/steps.py): each rule, the same for the in-memory store and DynamoDB.

`StepsContract` runs here against `MemoryJobStore` and, subclassed, against DynamoDB on the moto server
(tests/integration/test_job_steps_dynamo.py).
"""

from __future__ import annotations

import threading

import pytest

from chalicelib.jobs import steps
from chalicelib.jobs.states import JobStatus
from chalicelib.jobs.stepplan import plan
from chalicelib.jobs.store import MemoryJobStore, moves, use_store
from chalicelib.jobs.store import steps as writes
from chalicelib.jobs.types import Step
from chalicelib.tables import Job
from tests.unit.test_job_store import new_job


def planned(status: JobStatus = JobStatus.PROCESSING, **fields) -> Job:
    return new_job(status, steps=writes.items(plan("expense_report")), steps_version=0, **fields)


def shown(job: Job) -> list[tuple[str, str, int]]:
    return [(s.name, s.status, int(s.attempts)) for s in job.steps]


class StepsContract:
    """Subclasses give `store`, `seed(store, job)` and `step_events(store, job_id)` (the `step` events' details)."""

    def seed(self, store, job: Job) -> Job:
        raise NotImplementedError

    def step_events(self, store, job_id: str) -> list[dict]:
        raise NotImplementedError

    @pytest.fixture
    def in_use(self, store):
        previous = use_store(store)
        yield store
        use_store(previous)

    def test_marks_move_the_steps_in_order_with_one_event_per_transition(self, in_use):
        job = self.seed(in_use, planned())
        assert steps.begin(job, Step.COLLECT)
        assert not steps.begin(job, Step.COLLECT)  # already Running: a repeated mark writes nothing
        assert steps.advance(job, Step.COLLECT, Step.CATEGORIZE)
        assert steps.progress(job, Step.CATEGORIZE, 40)
        stored = in_use.load(job.job_id)
        assert shown(stored) == [("collect", "Completed", 1), ("categorize", "Running", 1), ("assemble", "Pending", 0)]
        assert int(stored.steps[1].progress) == 40 and stored.steps[1].started_at and stored.steps[0].completed_at
        assert [(e["step"], e["from"], e["to"]) for e in self.step_events(in_use, job.job_id)] == [
            ("collect", "Pending", "Running"), ("collect", "Running", "Completed"),
            ("categorize", "Pending", "Running")]

    def test_progress_only_moves_forward_and_only_on_the_running_step(self, in_use):
        job = self.seed(in_use, planned())
        steps.begin(job, Step.CATEGORIZE)  # collect passed over: Skipped
        assert steps.progress(job, Step.CATEGORIZE, 60)
        late = in_use.load(job.job_id)
        late.steps[1].progress = 10  # a checkpoint that read the job before the 60 landed
        assert not steps.progress(late, Step.CATEGORIZE, 30)
        assert not in_use.write_progress(late, 1, 30)  # progress_forward, at the store itself
        assert not steps.progress(job, Step.ASSEMBLE, 50)  # Pending: no progress
        stored = in_use.load(job.job_id)
        assert stored.steps[0].status == "Skipped" and int(stored.steps[1].progress) == 60

    def test_a_stale_steps_write_is_refused_and_a_mark_is_made_again_from_a_fresh_read(self, in_use):
        job = self.seed(in_use, planned())
        stale = in_use.load(job.job_id)
        steps.begin(job, Step.COLLECT)
        # steps_unchanged, at the store: the list read before the begin is not written over it.
        assert not in_use.write_steps(stale, writes.version(stale), stale.steps, [], True)
        # The mark reads again and keeps the other writer's move.
        assert steps.advance(stale, Step.COLLECT, Step.CATEGORIZE)
        assert shown(in_use.load(job.job_id))[:2] == [("collect", "Completed", 1), ("categorize", "Running", 1)]

    def test_a_mark_on_a_final_job_writes_nothing_unless_not_live(self, in_use):
        job = self.seed(in_use, planned(JobStatus.CANCELLED))
        assert not steps.begin(job, Step.COLLECT)
        assert shown(in_use.load(job.job_id))[0] == ("collect", "Pending", 0)
        assert steps.complete(job, Step.COLLECT, live=False)
        assert shown(in_use.load(job.job_id))[0] == ("collect", "Completed", 1)

    def test_cancel_settles_running_and_pending_steps(self, in_use):
        job = self.seed(in_use, planned())
        steps.advance(job, Step.COLLECT, Step.CATEGORIZE)
        moves.cancel(job, by="user")
        assert shown(in_use.load(job.job_id)) == [("collect", "Completed", 1), ("categorize", "Cancelled", 1),
                                                  ("assemble", "Cancelled", 0)]
        assert ("categorize", "Running", "Cancelled") in [(e["step"], e["from"], e["to"])
                                                          for e in self.step_events(in_use, job.job_id)]

    def test_fail_fails_the_running_step_and_a_retry_resumes_there(self, in_use):
        job = self.seed(in_use, planned())
        steps.advance(job, Step.COLLECT, Step.CATEGORIZE)
        steps.advance(job, Step.CATEGORIZE, Step.ASSEMBLE)
        moves.fail(job, "The report could not be written.")
        failed = in_use.load(job.job_id)
        assert shown(failed)[2] == ("assemble", "Failed", 1)
        assert failed.steps[2].error == "The report could not be written."
        queued = moves.requeue_for_retry(failed, self.report_check())
        assert shown(queued) == [("collect", "Completed", 1), ("categorize", "Completed", 1),
                                 ("assemble", "Pending", 1)]
        assert steps.resume_at(queued) is Step.ASSEMBLE and not queued.recheck_flagged
        steps.begin(queued, Step.ASSEMBLE)
        assert shown(in_use.load(job.job_id))[2] == ("assemble", "Running", 2)

    def test_complete_completes_the_running_step_and_skips_the_pending(self, in_use):
        job = self.seed(in_use, planned(JobStatus.QUEUED))
        moves.start(job, moves.Lease("a", 4e9), total=0)
        steps.complete(job, Step.COLLECT)
        steps.begin(job, Step.ASSEMBLE)  # nothing to categorize: passed over
        moves.complete(job, moves.Lease("a", 4e9), moves.Report(1, "k", 0, 0), "empty")
        assert [(s.name, s.status) for s in in_use.load(job.job_id).steps] == [
            ("collect", "Completed"), ("categorize", "Skipped"), ("assemble", "Completed")]

    def test_a_step_mark_racing_a_status_move_both_land_or_the_mark_sees_the_job_final(self, in_use):
        for _ in range(6):
            job = self.seed(in_use, planned())
            steps.begin(job, Step.COLLECT)
            marker, mover = in_use.load(job.job_id), in_use.load(job.job_id)
            start = threading.Barrier(2)

            def mark(marker: Job = marker, start: threading.Barrier = start) -> None:
                start.wait()
                steps.advance(marker, Step.COLLECT, Step.CATEGORIZE)

            def fail(mover: Job = mover, start: threading.Barrier = start) -> None:
                start.wait()
                moves.fail(mover, "boom")

            threads = [threading.Thread(target=mark), threading.Thread(target=fail)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            stored = in_use.load(job.job_id)
            states = [s.status for s in stored.steps]
            # Whichever landed first, the other kept it: exactly one step Failed, none left Running.
            assert stored.status == "Failed" and states.count("Failed") == 1 and "Running" not in states

    def report_check(self):
        return None


class TestMemorySteps(StepsContract):
    @pytest.fixture
    def store(self):
        return MemoryJobStore()

    def seed(self, store, job: Job) -> Job:
        store.put(job)
        return store.load(job.job_id)

    def step_events(self, store, job_id: str) -> list[dict]:
        return [detail for jid, kind, detail in store.events if jid == job_id and kind == writes.STEP_EVENT]
