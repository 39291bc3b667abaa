"""A report job's type and steps through the API, the worker and the audit trail; a retry resumes at the first
step not finished (moto server, the provider simulator through the real openai client)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chalicelib import reaper, results
from chalicelib.settings import get_settings
from tests.integration.test_worker import assert_every_line_once
from tests.support import Ctx, deliver, drain, expense_lines, receive, vendors, wait_for


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
