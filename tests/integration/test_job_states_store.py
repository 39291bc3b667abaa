"""The job and chunk state machines as the stores and the API apply them (moto). The machines themselves:
tests/unit/test_job_states.py."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import timedelta

from chalicelib.jobs.states import ChunkStatus, JobStatus, chunk_may_become

S, C = JobStatus, ChunkStatus


def test_every_chunk_write_follows_the_chunk_machine(aws_endpoint):
    """Through the real writes (jobs/chunks.py on moto): each status a chunk reaches is one its machine allows."""
    from chalicelib import clock
    from chalicelib.jobs import chunks
    from chalicelib.jobs.runner import Lease
    from chalicelib.settings import get_settings
    from chalicelib.tables import Job

    stamp = clock.iso(clock.now())
    # Not in the live-jobs index (no activeStatus): no reaper of another test sweeps it.
    job = Job(str(uuid.uuid4()), owner_id="chunk-machine", report_id="r", period="2026-01",
              status=S.PROCESSING.value, created_at=stamp, updated_at=stamp, heartbeat_at=stamp, trigger="api",
              lock_key=f"lock#chunk-machine#{uuid.uuid4()}", chunk_count=1, chunks_done=0,
              expires_at=clock.now() + timedelta(days=get_settings().retention_days))
    job.save()
    seen: list[ChunkStatus] = []

    def status() -> ChunkStatus:
        now = ChunkStatus(chunks.of(job.job_id)[0].status)
        if seen and now is not seen[-1]:  # a refused write leaves it where it was
            assert chunk_may_become(seen[-1], now), (seen, now)
        seen.append(now)
        return now

    assert chunks.create(job, [""]) == [0] and status() is C.PENDING
    mine, other = Lease("chunk-a", time.time() + 60), Lease("chunk-b", time.time() + 60)
    chunk = chunks.claim(job.job_id, 0, mine)
    assert chunk is not None and status() is C.RUNNING
    assert chunks.claim(job.job_id, 0, other) is None and status() is C.RUNNING  # held: a duplicate is dropped
    assert chunks.hand_back(chunk, mine, 0) and status() is C.PENDING
    chunk = chunks.claim(job.job_id, 0, other)
    assert chunk is not None and status() is C.RUNNING
    assert chunks.finish(job, chunk, other) and status() is C.DONE
    assert chunks.claim(job.job_id, 0, mine) is None and status() is C.DONE  # Done is final
    assert chunks.reset_unfinished(job) == [] and status() is C.DONE
    assert seen == [C.PENDING, C.RUNNING, C.RUNNING, C.PENDING, C.RUNNING, C.DONE, C.DONE, C.DONE]
    job.delete()


def test_allowed_actions_through_the_api(api, token_for, settings):
    """Every job answer carries allowedActions, and they change with the job as it moves."""
    from chalicelib.jobs import runner
    from chalicelib.jobs.states import transition
    from chalicelib.tables import Job
    from tests.support import drain, expense_lines, vendors

    def actions(job_id: str) -> list[str]:
        return api.job(job_id)["allowedActions"]

    job_id = api.start(expense_lines(3, vendors(2)))
    assert actions(job_id) == ["cancel"]  # Queued
    listed = {j["jobId"]: j for j in api.call("get", "/jobs?pageSize=100")[1]["items"]}
    assert listed[job_id]["allowedActions"] == ["cancel"]
    # Processing, with a live worker's lease: a cancel is asked of the worker.
    transition(Job.get(job_id, consistent_read=True), S.PROCESSING, "started",
               actions=[Job.lease_owner.set("test-worker"), Job.lease_until.set(time.time() + 300)])
    assert actions(job_id) == ["cancel"]
    status, body = api.call("delete", f"/jobs/{job_id}")
    assert (status, body["status"], body["allowedActions"]) == (200, "CancellationRequested", [])
    runner.cancel(Job.get(job_id, consistent_read=True))  # the worker completes the cancel
    assert actions(job_id) == ["retry"]
    assert api.call("get", f"/jobs/{job_id}/result")[0] == 409  # no "result": the API refuses it too
    status, body = api.call("post", f"/jobs/{job_id}/retry")
    assert (status, body["status"], body["allowedActions"]) == (202, "Queued", ["cancel"])
    drain({job_id}, dataclasses.replace(settings, openai_api_key=None))
    job = api.job(job_id)
    assert (job["status"], job["allowedActions"]) == ("Completed", ["result", "settle"])
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 409 and api.call("delete", f"/jobs/{job_id}")[0] == 409

    failed = api.start(expense_lines(2, vendors(1), period="2026-02"), period="2026-02")
    transition(Job.get(failed, consistent_read=True), S.FAILED, "failed")
    assert actions(failed) == ["retry"]
