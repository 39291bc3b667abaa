"""A worker process killed (exit 137, no `finally`) between creating the provider's batch and recording it on the
job: the job's next invocation takes that batch back. The provider runs one batch for the job, not two (the first
would run, be billed, and never be collected nor cancelled), and every line is counted once."""

from __future__ import annotations

import dataclasses

import pytest

from chalicelib import reaper
from chalicelib.settings import get_settings
from chalicelib.tables import Control, Job
from chalicelib.worker import batchlane
from tests.e2e.test_delivery_kill import run_worker_until_killed
from tests.e2e.test_worker_kill import clear_strays, reap_until_requeued
from tests.integration.test_lanes import generate
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import drain, expense_lines, vendors, wait_for


def _killed_after_create(api: Api, aws_endpoint: str, sim) -> tuple[str, list[dict], dict]:
    """A batch-lane job whose worker died (exit 137) right after creating its batch: (job id, lines, the batch)."""
    lines = expense_lines(60, vendors(20))
    job_id = generate(api, lines, {"lane": "batch"})
    clear_strays(job_id)
    code = run_worker_until_killed(aws_endpoint, "after_batch_create", OPENAI_API_KEY="sk-test",
                                   OPENAI_BASE_URL=sim.url, MODEL_BATCH_SIZE="10")
    assert code == 137  # died abruptly, the batch created at the provider and not recorded on the job
    [orphan] = _batches_of(sim, job_id)
    job = Job.get(job_id, consistent_read=True)
    assert job.status == "Processing" and job.batch_id is None and job.lease_owner
    assert job.batch_intent == orphan["metadata"]["plan"]
    return job_id, lines, orphan


def _cancel_past_the_dead_worker(api: Api, job_id: str) -> None:
    """DELETE the job; the dead worker held its lease, so the reaper finishes the cancel."""
    assert api.call("delete", f"/jobs/{job_id}")[0] == 200
    quick = dataclasses.replace(get_settings(), stale_after_seconds=1)

    def cancelled() -> bool:
        reaper.reap(quick)
        return api.job(job_id)["status"] == "Cancelled"

    wait_for(cancelled, 10, interval=0.3, what="the reaper to finish the cancel")


def _batches_of(sim, job_id: str) -> list[dict]:
    return [b for b in sim.batches.batches.values() if (b.get("metadata") or {}).get("jobId") == job_id]


def _model_settings(sim):
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               model_batch_size=10)


@pytest.mark.sim(batch_delay=0.0)
def test_a_batch_created_by_a_killed_worker_is_taken_back_not_paid_for_twice(client, token_for, aws_endpoint, sim):
    api = Api(client, token_for())
    job_id, lines, orphan = _killed_after_create(api, aws_endpoint, sim)
    reap_until_requeued(api, job_id)
    settings = _model_settings(sim)
    drain({job_id}, settings)  # the next invocation: finds the batch by its metadata, and records it
    job = Job.get(job_id, consistent_read=True)
    assert (job.batch_id, job.batch_state, job.batch_intent) == (orphan["id"], "submitted", None)
    assert _batches_of(sim, job_id) == [orphan]  # no second batch
    assert api.job(job_id)["statusMessage"] == "Waiting on the provider's batch (2 requests for 20 vendors)"

    assert batchlane.poll(settings)["collected"] == 1
    drain({job_id}, settings)
    assert_every_line_once(api, job_id, lines)
    shown = api.job(job_id)
    assert shown["processedLines"] == 60 and shown["usage"]["modelRequests"] == 2  # the one batch's requests
    assert sim.stats(include_log=False)["requests"] == 0  # and no chat completion: the batch answered them all
    assert sim.batches.cancels == []


@pytest.mark.sim(batch_delay=3600.0, batch_cancel_answered=0.5)
@pytest.mark.parametrize("finished", [False, True], ids=["running", "finished"])
def test_the_batch_of_a_job_cancelled_before_it_was_recorded_is_cancelled_and_counted(client, token_for,
                                                                                      aws_endpoint, sim, finished):
    """No invocation of the job comes again to take the batch back: the poller (the job is listed from its intent)
    forwards the job's cancel to a running batch; once the batch has stopped, what it answered (half of it when
    cancelled running, all of it when it finished first) is counted on the job and kept in the tenant's cache, and
    the job is let go. A retry then asks only for the rest."""
    api = Api(client, token_for())
    job_id, lines, orphan = _killed_after_create(api, aws_endpoint, sim)
    settings = _model_settings(sim)
    assert batchlane.poll(settings) == {"waiting": 1, "collected": 0, "cancelling": 0, "cancelled": 0}  # alive
    assert sim.batches.cancels == []
    if finished:
        sim.configure(batch_delay=0.0)  # completed at its next read
    assert api.call("delete", f"/jobs/{job_id}")[0] == 200
    quick = dataclasses.replace(get_settings(), stale_after_seconds=1)

    def cancelled() -> bool:  # the dead worker held the lease: the reaper finishes the cancel
        reaper.reap(quick)
        return api.job(job_id)["status"] == "Cancelled"

    wait_for(cancelled, 10, interval=0.3, what="the reaper to finish the cancel")
    assert api.job(job_id)["usage"]["modelRequests"] == 0
    stopped = [] if finished else [orphan["id"]]
    if not finished:
        assert batchlane.poll(settings) == {"waiting": 0, "collected": 0, "cancelling": 1, "cancelled": 0}
        assert sim.batches.cancels == stopped
    assert batchlane.poll(settings) == {"waiting": 0, "collected": 0, "cancelling": 0, "cancelled": 1}
    answered = 2 if finished else 1  # of the batch's 2 requests (10 vendors each)
    shown = api.job(job_id)
    assert shown["status"] == "Cancelled" and shown["usage"]["modelRequests"] == answered  # billed, so counted
    assert shown["usage"]["inputTokens"] > 0 and shown["processedLines"] == 0
    assert job_id not in Control.get(batchlane.PENDING, consistent_read=True).stamps.as_dict()  # let go
    assert Job.get(job_id, consistent_read=True).batch_intent is None
    assert batchlane.poll(settings) == {"waiting": 0, "collected": 0, "cancelling": 0, "cancelled": 0}  # once
    assert api.job(job_id)["usage"]["modelRequests"] == answered
    assert sim.batches.cancels == stopped and _batches_of(sim, job_id) == [orphan]

    # Retried: the vendors the orphan answered come from the tenant's cache; only the rest goes to a new batch.
    sim.configure(batch_delay=0.0)
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
    drain({job_id}, settings)
    if finished:
        assert _batches_of(sim, job_id) == [orphan]  # every vendor cached: no batch at all
    else:
        [_, again] = _batches_of(sim, job_id)
        assert again["request_counts"]["total"] == 1  # the 10 vendors the cancelled batch did not answer
        assert batchlane.poll(settings)["collected"] == 1
        drain({job_id}, settings)
    assert_every_line_once(api, job_id, lines)
    done = api.job(job_id)
    assert done["status"] == "Completed" and done["processedLines"] == 60
    assert done["usage"]["modelRequests"] == 2  # every vendor asked once, over the two batches
    assert sim.stats(include_log=False)["requests"] == 0  # no chat completion


@pytest.mark.sim(batch_delay=3600.0, batch_cancel_answered=0.5)
def test_a_job_retried_before_the_poller_saw_its_cancelled_orphan_stop_takes_it_back_and_counts_it(
        client, token_for, aws_endpoint, sim):
    """Cancelled before its batch was recorded, the poller cancels the orphan; the user retries before a later poll
    sees the batch stopped (a minute at least; at OpenAI cancelling can take ten). The poller leaves a live job's
    intent alone, so the retried job's invocation takes the cancelled batch back: it is collected as the batch the
    job records (what it answered counted and cached), and the vendors it did not answer are asked on the
    standard lane. Nothing billed goes uncounted, no vendor is paid for twice, every line once."""
    api = Api(client, token_for())
    job_id, lines, orphan = _killed_after_create(api, aws_endpoint, sim)
    settings = _model_settings(sim)
    _cancel_past_the_dead_worker(api, job_id)
    assert batchlane.poll(settings)["cancelling"] == 1 and sim.batches.cancels == [orphan["id"]]
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202  # before the poller saw the batch stop
    assert batchlane.poll(settings)["waiting"] == 1  # live again: the poller leaves the intent to the job
    drain({job_id}, settings)  # takes the cancelled batch back: the job records it
    job = Job.get(job_id, consistent_read=True)
    assert (job.batch_id, job.batch_state, job.batch_intent) == (orphan["id"], "submitted", None)
    assert batchlane.poll(settings)["collected"] == 1  # what it answered: 1 request of 2
    drain({job_id}, settings)
    assert_every_line_once(api, job_id, lines)
    done = api.job(job_id)
    assert done["status"] == "Completed" and done["processedLines"] == 60
    assert sim.stats(include_log=False)["requests"] == 1  # the other 10 vendors, on the standard lane
    assert done["usage"]["modelRequests"] == 2  # the cancelled batch's answered request, and that one
    assert _batches_of(sim, job_id) == [orphan] and sim.batches.cancels == [orphan["id"]]


@pytest.mark.sim(batch_delay=3600.0)
def test_a_job_retried_while_the_poller_looks_for_its_orphan_keeps_the_batch_running(client, token_for,
                                                                                    aws_endpoint, sim, monkeypatch):
    """The poller reads the cancelled job, then asks the provider for its orphan (seconds at OpenAI); the user
    retries in between. The poller reads the job again before it cancels: the orphan is not cancelled, the
    retried job takes it back, and every vendor is answered by that one batch (none sent to the standard lane
    at twice the price)."""
    api = Api(client, token_for())
    job_id, lines, orphan = _killed_after_create(api, aws_endpoint, sim)
    settings = _model_settings(sim)
    _cancel_past_the_dead_worker(api, job_id)
    real_find = batchlane.provider_batch.find
    retried: list[int] = []

    def find_while_the_user_retries(*args, **kwargs):
        found = real_find(*args, **kwargs)
        if not retried:  # the poller's look, between its read of the job and its cancel
            retried.append(api.call("post", f"/jobs/{job_id}/retry")[0])
        return found

    monkeypatch.setattr(batchlane.provider_batch, "find", find_while_the_user_retries)
    assert batchlane.poll(settings)["waiting"] == 1
    assert retried == [202] and sim.batches.cancels == []  # the live job's batch runs on
    drain({job_id}, settings)  # the retried job takes the orphan back
    job = Job.get(job_id, consistent_read=True)
    assert (job.batch_id, job.batch_state, job.batch_intent) == (orphan["id"], "submitted", None)
    sim.configure(batch_delay=0.0)
    assert batchlane.poll(settings)["collected"] == 1
    drain({job_id}, settings)
    assert_every_line_once(api, job_id, lines)
    done = api.job(job_id)
    assert done["status"] == "Completed" and done["usage"]["modelRequests"] == 2  # the orphan's 2 requests
    assert sim.stats(include_log=False)["requests"] == 0 and sim.batches.cancels == []  # none on the standard lane
    assert _batches_of(sim, job_id) == [orphan]
