"""A worker process killed mid-job: the reaper re-enqueues the job and a fresh worker finishes it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from chalicelib import deps, reaper
from chalicelib.settings import get_settings
from local.stack import free_port
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import drain, expense_lines, receive, vendors, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_killed_worker_process_is_reaped_and_its_job_finished_exactly_once(client, token_for, aws_endpoint):
    api = Api(client, token_for())
    lines = expense_lines(200, vendors(60))
    job_id = api.start(lines)
    for message in receive({job_id}):  # clears strays of earlier tests; ours goes back on the queue
        deps.client("sqs").change_message_visibility(QueueUrl=deps.work_queue_url(),
                                                     ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    env = {**os.environ, "COMPONENTS": "worker", "CHALICE_STAGE": "pytest", "AWS_ENDPOINT_URL": aws_endpoint,
           "PORT": str(free_port()), "LINE_BATCH_SIZE": "50", "LINE_READ_AHEAD": "1",
           "WORKER_CRASH_AT": "after_checkpoint"}
    worker = subprocess.Popen([sys.executable, "-m", "local.stack"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == 137  # the process died abruptly at its first checkpoint, holding the job's lease
    job = api.job(job_id)
    assert job["status"] == "Processing" and job["processedLines"] == 50

    quick = dataclasses.replace(get_settings(), stale_after_seconds=1)

    def reaped() -> bool:
        reaper.reap(quick)
        return "reaped" in [e["type"] for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"]]

    wait_for(reaped, 10, interval=0.3, what="the reaper to re-enqueue the job")
    drain({job_id})  # a fresh worker, resuming from the checkpoint
    assert_every_line_once(api, job_id, lines)
