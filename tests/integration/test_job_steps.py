"""A report job's type and steps through the API, the worker and the audit trail; a retry resumes at the first
step not finished (moto server, the provider simulator through the real openai client)."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from chalicelib import reaper, results
from chalicelib.settings import get_settings
from tests.integration.test_worker import assert_every_line_once
from tests.support import Ctx, deliver, drain, expense_lines, receive, seed_body, vendors, wait_for


@pytest.fixture
def model_settings(sim):
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               line_batch_size=40, line_read_ahead=1, model_batch_size=10, model_concurrency=2)


def steps_of(job: dict) -> list[tuple[str, str, int]]:
    return [(s["name"], s["status"], s["attempts"]) for s in job["steps"]]


def step_moves(api, job_id: str) -> list[tuple[str, str, str]]:
    events = api.call("get", f"/jobs/{job_id}/events")[1]["items"]
    return [(e["detail"]["step"], e["detail"]["from"], e["detail"]["to"]) for e in events if e["type"] == "step"]


def test_a_report_job_shows_its_type_trigger_and_steps_from_queued_to_completed(api, sim, model_settings):
    lines = expense_lines(120, vendors(40))
    job_id = api.start(lines)
    queued = api.job(job_id)
    assert (queued["type"], queued["typeLabel"], queued["trigger"]) == ("expense_report", "Generate report", "api")
    assert steps_of(queued) == [("collect", "Pending", 0), ("categorize", "Pending", 0), ("assemble", "Pending", 0)]
    assert all(s["startedAt"] is None and s["errorMessage"] is None for s in queued["steps"])
    drain({job_id}, model_settings)
    done = api.job(job_id)
    assert_every_line_once(api, job_id, lines)
    assert steps_of(done) == [("collect", "Completed", 1), ("categorize", "Completed", 1),
                              ("assemble", "Completed", 1)]
    categorize = done["steps"][1]
    assert categorize["progressPercent"] == 100 and categorize["startedAt"] <= categorize["completedAt"]
    assert done["steps"][0]["completedAt"] <= categorize["startedAt"] <= done["steps"][2]["startedAt"]
    # Every transition an audit event, in the order made.
    assert step_moves(api, job_id) == [
        ("collect", "Pending", "Completed"), ("categorize", "Pending", "Running"),
        ("categorize", "Running", "Completed"), ("assemble", "Pending", "Running"),
        ("assemble", "Running", "Completed")]
    listed = api.call("get", "/jobs")[1]["items"]
    assert [(j["jobId"], j["typeLabel"], j["steps"]) for j in listed] == [(job_id, "Generate report", done["steps"])]


def test_a_job_that_failed_in_assemble_is_retried_without_asking_the_model_again(api, sim, model_settings,
                                                                                monkeypatch):
    lines = expense_lines(120, vendors(60))
    job_id = api.start(lines)
    real, broken = results.assemble_counted, []

    def s3_down(*args, **kwargs):
        broken.append(1)
        raise OSError("the bucket is unreachable")

    monkeypatch.setattr(results, "assemble_counted", s3_down)

    def assembling_failed() -> bool:
        messages = receive({job_id})
        if messages:
            deliver(messages, Ctx(), model_settings)
        return bool(broken)

    wait_for(assembling_failed, 30, interval=0.05, what="the worker to reach assemble")
    running = api.job(job_id)
    assert running["status"] == "Processing" and running["processedLines"] == len(lines)
    assert steps_of(running) == [("collect", "Completed", 1), ("categorize", "Completed", 1),
                                 ("assemble", "Running", 1)]
    # Its message ran out of receives: the dead-letter handler fails the job, in the step it was in.
    reaper.dead_letter(json.dumps({"jobId": job_id, "reason": "start"}), "5")
    drain({job_id}, model_settings)  # the redelivered message finds the job Failed and does nothing
    failed = api.job(job_id)
    assert failed["status"] == "Failed"
    assert steps_of(failed)[2] == ("assemble", "Failed", 1)
    assert failed["steps"][2]["errorMessage"] == failed["errorMessage"]
    asked = sim.stats()["requests"]

    monkeypatch.setattr(results, "assemble_counted", real)
    status, body = api.call("post", f"/jobs/{job_id}/retry")
    assert status == 202 and steps_of(body)[2] == ("assemble", "Pending", 1)
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    assert sim.stats()["requests"] == asked  # categorize was done: not one model request on the retry
    assert steps_of(api.job(job_id)) == [("collect", "Completed", 1), ("categorize", "Completed", 1),
                                         ("assemble", "Completed", 2)]
    assert step_moves(api, job_id)[-4:] == [("assemble", "Running", "Failed"), ("assemble", "Failed", "Pending"),
                                            ("assemble", "Pending", "Running"), ("assemble", "Running", "Completed")]


def test_cancelling_a_running_job_cancels_its_unfinished_steps(api, sim, model_settings):
    lines = expense_lines(200, vendors(200))
    job_id = api.start(lines)
    one_batch = dataclasses.replace(model_settings, lambda_time_reserve_seconds=300)  # then a continuation
    deliver(receive({job_id}), Ctx(), one_batch)
    running = api.job(job_id)
    assert running["status"] == "Processing" and 0 < running["processedLines"] < len(lines)
    assert steps_of(running)[1] == ("categorize", "Running", 1)
    assert running["steps"][1]["progressPercent"] == running["processedLines"] * 100 // len(lines)
    status, body = api.call("delete", f"/jobs/{job_id}")
    assert status == 200 and body["status"] == "Cancelled"
    assert steps_of(body) == [("collect", "Completed", 1), ("categorize", "Cancelled", 1),
                              ("assemble", "Cancelled", 0)]


# --- per type: the hourly limit and the active-job lock ----------------------------------------------------------


def test_the_hourly_limit_and_the_active_job_lock_count_per_user_and_type(client, token_for, monkeypatch):
    from chalicelib.errors import ActiveJobExists, RateLimited
    from chalicelib.jobs import create
    from chalicelib.jobs.states import rate_key
    from chalicelib.jobs.store import moves
    from chalicelib.tables import Control, ReportConfig
    from tests.driver import Driver

    monkeypatch.setattr(create, "get_settings", lambda: dataclasses.replace(get_settings(), jobs_per_hour=2))
    token = token_for()
    me = Driver(client, token)
    report_id = me.call("post", "/reports", {"name": "Types", "deliveryTargets": [{"type": "api", "mode": "async"}]}
                        )[1]["reportId"]
    for period in ("2026-01", "2026-02", "2026-03"):
        assert me.call("post", "/expenses", seed_body(period))[0] == 201
    assert me.call("post", f"/reports/{report_id}/generate", {"period": "2026-01"})[0] == 202
    assert me.call("post", f"/reports/{report_id}/generate", {"period": "2026-02"})[0] == 202
    assert me.call("post", f"/reports/{report_id}/generate", {"period": "2026-03"})[0] == 429  # this type's 2

    # Another type has an hour of its own: two imports, then its own 429.
    imports = [create.create_job(token.sub, None, f"2026-0{m}", job_type="lines_import", tenant=token.sub,
                                 start=False) for m in (1, 2)]
    assert [(j.type, j.trigger, j.report_id) for j in imports] == [("lines_import", "api", "lines-import")] * 2
    with pytest.raises(RateLimited) as refused:
        create.create_job(token.sub, None, "2026-03", job_type="lines_import", tenant=token.sub, start=False)
    assert "lines_import" in refused.value.detail
    windows = {t: Control.get(rate_key(token.sub, t), consistent_read=True).stamps.as_dict()
               for t in ("expense_report", "lines_import")}
    assert {t: len(stamps) for t, stamps in windows.items()} == {"expense_report": 2, "lines_import": 2}

    # The lock is per type too: an import-and-generate of the same report and month beside the live report job,
    # and one of it at a time.
    monkeypatch.undo()
    report = ReportConfig.get(token.sub, report_id)
    both = create.create_job(token.sub, report, "2026-01", job_type="import_and_report", start=False)
    assert [s.name for s in both.steps] == ["upload", "validate", "stage", "commit", "collect", "categorize",
                                            "assemble"]
    with pytest.raises(ActiveJobExists) as held:
        create.create_job(token.sub, report, "2026-01", job_type="import_and_report", start=False)
    assert held.value.extensions["existingJobId"] == both.job_id
    shown = me.call("get", f"/jobs/{both.job_id}")[1]
    assert (shown["type"], shown["typeLabel"]) == ("import_and_report", "Import and generate")
    for job in (*imports, both):  # no upload will start them: leave nothing live for a later sweep
        moves.cancel_queued(job)


# --- deliver: after completion, settled by the deliveries ---------------------------------------------------------


def test_a_report_with_a_webhook_ends_with_deliver_settled_by_its_deliveries(client, token_for):
    from tests.driver import Driver
    from tests.support import Receiver

    me = Driver(client, token_for(tenant=f"t-{uuid.uuid4().hex[:10]}"))  # its lines of the month are its own
    assert me.call("post", "/expenses", {"lines": expense_lines(6, vendors(3))})[0] == 201
    with Receiver(answers=[(410, {})]) as rx:
        hook = {"type": "webhook", "url": rx.url, "events": ["job.completed"]}
        report_id = me.call("post", "/reports", {"name": "Delivered", "deliveryTargets": [
            {"type": "api", "mode": "async"}, hook]})[1]["reportId"]
        first = me.call("post", f"/reports/{report_id}/generate", {"period": "2026-01"})[1]
        assert [s["name"] for s in first["steps"]] == ["collect", "categorize", "assemble", "deliver"]
        drain({first["jobId"]})
        gone = me.job(first["jobId"])  # the receiver answered 410: the job is Completed, its deliver step Failed
        assert gone["status"] == "Completed" and gone["deliveries"][0]["status"] == "Disabled"
        assert steps_of(gone) == [("collect", "Completed", 1), ("categorize", "Completed", 1),
                                  ("assemble", "Completed", 1), ("deliver", "Failed", 1)]
        assert gone["steps"][3]["errorMessage"].startswith("1 of 1 deliveries did not arrive: ")
        assert "410" in gone["steps"][3]["errorMessage"]

        # A person sends it again (the target is enabled again): deliver runs again, and this time arrives.
        status, body = me.call("post", f"/jobs/{first['jobId']}/deliveries/0/retry")
        assert status == 202 and steps_of(body)[3] == ("deliver", "Running", 2)
        drain({first["jobId"]})
        done = me.job(first["jobId"])
        assert done["deliveries"][0]["status"] == "Delivered" and len(rx.requests) == 2
        assert steps_of(done)[3] == ("deliver", "Completed", 2) and done["steps"][3]["errorMessage"] is None
        assert [m for m in step_moves(me, first["jobId"]) if m[0] == "deliver"] == [
            ("deliver", "Pending", "Running"), ("deliver", "Running", "Failed"), ("deliver", "Failed", "Running"),
            ("deliver", "Running", "Completed")]


def test_a_report_of_api_targets_only_has_no_deliver_step_and_a_webhook_not_wanting_completion_skips_it(
        client, token_for):
    from tests.driver import Driver

    me = Driver(client, token_for(tenant=f"t-{uuid.uuid4().hex[:10]}"))
    assert me.call("post", "/expenses", {"lines": expense_lines(3, vendors(2))})[0] == 201
    failures_only = {"type": "webhook", "url": "https://hooks.example.com/x", "events": ["job.failed"]}
    report_id = me.call("post", "/reports", {"name": "Failures only", "deliveryTargets": [
        {"type": "api", "mode": "async"}, failures_only]})[1]["reportId"]
    job_id = me.call("post", f"/reports/{report_id}/generate", {"period": "2026-01"})[1]["jobId"]
    drain({job_id})
    job = me.job(job_id)
    assert job["status"] == "Completed" and job["deliveries"] == []
    assert steps_of(job)[3] == ("deliver", "Skipped", 0)


def test_deliveries_planned_late_by_the_sweep_begin_the_deliver_step_then(client, token_for, monkeypatch):
    from chalicelib.delivery import service as delivery
    from tests.driver import Driver
    from tests.support import Receiver

    me = Driver(client, token_for(tenant=f"t-{uuid.uuid4().hex[:10]}"))
    assert me.call("post", "/expenses", {"lines": expense_lines(4, vendors(2))})[0] == 201
    with Receiver() as rx:
        report_id = me.call("post", "/reports", {"name": "Late", "deliveryTargets": [
            {"type": "api", "mode": "async"}, {"type": "webhook", "url": rx.url, "events": ["job.completed"]}]}
                            )[1]["reportId"]
        job_id = me.call("post", f"/reports/{report_id}/generate", {"period": "2026-01"})[1]["jobId"]
        real = delivery.plan

        def report_unreadable(*args, **kwargs):
            raise OSError("the reports table did not answer")

        monkeypatch.setattr(delivery, "plan", report_unreadable)
        drain({job_id})
        completed = me.job(job_id)  # Completed all the same; its deliveries wait for the sweep to plan them
        assert completed["status"] == "Completed" and completed["deliveries"] == []
        assert steps_of(completed)[3] == ("deliver", "Pending", 0)
        monkeypatch.setattr(delivery, "plan", real)
        wait_for(lambda: delivery.sweep() >= 0 and steps_of(me.job(job_id))[3] == ("deliver", "Running", 1), 10,
                 what="the sweep to plan the deliveries")
        drain({job_id})
        done = me.job(job_id)
        assert done["deliveries"][0]["status"] == "Delivered" and len(rx.requests) == 1
        assert steps_of(done)[3] == ("deliver", "Completed", 1)
