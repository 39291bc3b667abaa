"""A worker process killed mid-job: the reaper re-enqueues the job and a fresh worker finishes it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib import deps, reaper
from chalicelib.settings import get_settings
from local.stack import free_port
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import drain, expense_lines, receive, vendors, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("point, env, counted", [
    # Holding the lease, its first checkpoint just written.
    ("after_checkpoint", {}, 50),
    # Mid-checkpoint: the batch's results are written, the checkpoint that counts them is not.
    ("after_result_writes", {}, 0),
    # Mid-fan-out: the plan is recorded, no chunk of it made or sent.
    ("after_plan", {"FANOUT_THRESHOLD_LINES": "100", "CHUNK_LINES": "50"}, 0),
])
def test_killed_worker_process_is_reaped_and_its_job_finished_exactly_once(client, token_for, aws_endpoint, point,
                                                                           env, counted):
    api = Api(client, token_for())
    lines = expense_lines(200, vendors(60))
    job_id = api.start(lines)
    for message in receive({job_id}):  # clears strays of earlier tests; ours goes back on the queue
        deps.client("sqs").change_message_visibility(QueueUrl=deps.work_queue_url(),
                                                     ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    env = {**os.environ, "COMPONENTS": "worker", "CHALICE_STAGE": "pytest", "AWS_ENDPOINT_URL": aws_endpoint,
           "PORT": str(free_port()), "LINE_BATCH_SIZE": "50", "LINE_READ_AHEAD": "1", "WORKER_CRASH_AT": point, **env}
    worker = subprocess.Popen([sys.executable, "-m", "local.stack"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == 137  # the process died abruptly (no `finally` ran), holding the job's lease
    job = api.job(job_id)
    assert job["status"] == "Processing" and job["processedLines"] == counted

    quick = dataclasses.replace(get_settings(), stale_after_seconds=1)

    def reaped() -> bool:
        reaper.reap(quick)
        return "reaped" in [e["type"] for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"]]

    wait_for(reaped, 10, interval=0.3, what="the reaper to re-enqueue the job")
    drain({job_id})  # a fresh worker, resuming from the checkpoint (or the recorded plan)
    assert_every_line_once(api, job_id, lines)
