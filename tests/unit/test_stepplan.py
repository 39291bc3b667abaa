"""The steps as values (jobs/stepplan.py): the plan of each type and each move's rule, without a store."""

from __future__ import annotations

from chalicelib.jobs import stepplan
from chalicelib.jobs.states import JobStatus, StepStatus
from chalicelib.jobs.types import REGISTRY, JobType, Step

NOW = "2026-01-01T00:00:00.000Z"
P = StepStatus


def states(steps: stepplan.Plan) -> list[tuple[str, str, int]]:
    return [(s.name, s.status.value, s.attempts) for s in steps]


def test_each_type_plans_its_registry_steps_all_pending():
    for job_type, spec in REGISTRY.items():
        planned = stepplan.plan(job_type.value)
        assert [s.name for s in planned] == [s.value for s in spec.steps]
        assert {s.status for s in planned} == {P.PENDING}
    assert [s.name for s in stepplan.plan("expense_report")] == ["collect", "categorize", "assemble"]


def test_begin_passes_over_pending_steps_and_completes_a_running_one():
    steps, moved = stepplan.begin(stepplan.plan("import_and_report"), Step.VALIDATE, NOW)
    assert states(steps)[:2] == [("upload", "Skipped", 0), ("validate", "Running", 1)]
    steps, moved = stepplan.begin(steps, Step.STAGE, NOW)
    assert states(steps)[1:3] == [("validate", "Completed", 1), ("stage", "Running", 1)]
    assert [(m.step, m.before, m.after) for m in moved] == [("validate", P.RUNNING, P.COMPLETED),
                                                           ("stage", P.PENDING, P.RUNNING)]


def test_begin_again_counts_an_attempt_and_keeps_the_progress():
    steps, _ = stepplan.begin(stepplan.plan("expense_report"), Step.CATEGORIZE, NOW)
    steps = stepplan.progress(steps, Step.CATEGORIZE, 40) or steps
    assert stepplan.begin(steps, Step.CATEGORIZE, NOW) == (steps, [])  # a repeated begin: nothing
    again, moved = stepplan.begin(steps, Step.CATEGORIZE, NOW, again=True)
    assert (again[1].attempts, again[1].progress, moved[0].attempts) == (2, 40, 2)


def test_a_finished_step_is_not_begun_again_but_retaken_with_what_follows():
    steps, _ = stepplan.advance(stepplan.plan("expense_report"), Step.COLLECT, Step.CATEGORIZE, NOW)
    steps, _ = stepplan.advance(steps, Step.CATEGORIZE, Step.ASSEMBLE, NOW)
    assert stepplan.begin(steps, Step.CATEGORIZE, NOW) == (steps, [])
    retaken, _ = stepplan.retake(steps, Step.CATEGORIZE, NOW)
    assert states(retaken) == [("collect", "Completed", 1), ("categorize", "Running", 2), ("assemble", "Pending", 1)]


def test_progress_only_forward_and_only_while_running():
    steps, _ = stepplan.begin(stepplan.plan("expense_report"), Step.CATEGORIZE, NOW)
    forty = stepplan.progress(steps, Step.CATEGORIZE, 40)
    assert forty is not None and forty[1].progress == 40
    assert stepplan.progress(forty, Step.CATEGORIZE, 30) is None
    assert stepplan.progress(forty, Step.ASSEMBLE, 10) is None
    assert stepplan.progress(forty, Step.CATEGORIZE, 400)[1].progress == 100  # type: ignore[index]


def test_settling_each_final_status_and_a_retry():
    running, _ = stepplan.advance(stepplan.plan("expense_report"), Step.COLLECT, Step.CATEGORIZE, NOW)
    cancelled, _ = stepplan.settle(running, JobStatus.CANCELLED, NOW)
    assert [s.status.value for s in cancelled] == ["Completed", "Cancelled", "Cancelled"]
    failed, moved = stepplan.settle(running, JobStatus.FAILED, NOW, "boom")
    assert [s.status.value for s in failed] == ["Completed", "Failed", "Pending"] and failed[1].error == "boom"
    assert moved[0].detail() == {"step": "categorize", "from": "Running", "to": "Failed", "attempts": 1,
                                 "errorMessage": "boom"}
    completed, _ = stepplan.settle(running, JobStatus.COMPLETED, NOW)
    assert [s.status.value for s in completed] == ["Completed", "Completed", "Skipped"]
    retried, _ = stepplan.settle(failed, JobStatus.QUEUED, NOW)
    assert [s.status.value for s in retried] == ["Completed", "Pending", "Pending"]
    assert stepplan.resume_at(retried) == "categorize" and retried[1].attempts == 1 and retried[1].error is None
    assert stepplan.settle(running, JobStatus.PROCESSING, NOW) == (running, [])


def test_the_representation_of_a_step():
    steps, _ = stepplan.begin(stepplan.plan(JobType.CACHE_WARM.value), Step.REFRESH, NOW)
    assert steps[1].to_dict() == {"name": "refresh", "status": "Running", "startedAt": NOW, "completedAt": None,
                                  "attempts": 1, "progressPercent": None, "errorMessage": None}


def test_completion_leaves_deliver_to_the_deliveries():
    planned = stepplan.plan("expense_report", deliver=True)
    assert [s.name for s in planned] == ["collect", "categorize", "assemble", "deliver"]
    running, _ = stepplan.begin(planned, Step.ASSEMBLE, NOW)
    completed, _ = stepplan.settle(running, JobStatus.COMPLETED, NOW)
    assert [s.status.value for s in completed] == ["Skipped", "Skipped", "Completed", "Pending"]
    cancelled, _ = stepplan.settle(running, JobStatus.CANCELLED, NOW)
    assert cancelled[3].status is P.CANCELLED  # a cancelled job delivers no report
