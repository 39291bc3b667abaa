"""A worker process killed mid-job: the reaper re-enqueues the job and a fresh worker finishes it (from the step
the dead one was in)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib import deps, reaper
from chalicelib.settings import get_settings
from local.stack import free_port
from tests.e2e.test_delivery_kill import run_worker_until_killed
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import drain, expense_lines, receive, vendors, wait_for

ROOT = Path(__file__).resolve().parents[2]


def clear_strays(job_id: str) -> None:
    """Receive what earlier tests left on the queue (dropped); the job's own message goes back, visible at once."""
    for message in receive({job_id}):
        deps.client("sqs").change_message_visibility(QueueUrl=deps.work_queue_url(),
                                                     ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)


def reap_until_requeued(api: Api, job_id: str) -> None:
    """Run the reaper (a job is stale after 1 s here) until it has re-enqueued the dead worker's job."""
    quick = dataclasses.replace(get_settings(), stale_after_seconds=1)

    def reaped() -> bool:
        reaper.reap(quick)
        return "reaped" in [e["type"] for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"]]

    wait_for(reaped, 10, interval=0.3, what="the reaper to re-enqueue the job")


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
    clear_strays(job_id)
    code = run_worker_until_killed(aws_endpoint, point, LINE_BATCH_SIZE="50", LINE_READ_AHEAD="1", **env)
    assert code == 137  # the process died abruptly (no `finally` ran), holding the job's lease
    job = api.job(job_id)
    assert job["status"] == "Processing" and job["processedLines"] == counted

    reap_until_requeued(api, job_id)
    drain({job_id})  # a fresh worker, resuming from the checkpoint (or the recorded plan)
    assert_every_line_once(api, job_id, lines)


@pytest.mark.sim(latency=0.25)
def test_a_worker_killed_mid_categorize_is_resumed_in_its_step_and_collect_is_not_redone(client, token_for,
                                                                                        aws_endpoint, sim):
    """A real SIGKILL of the worker process while it waits on the model: the job resumes in `categorize` (attempts
    2), `collect` is not done again, and the report holds every line once."""
    api = Api(client, token_for())
    lines = expense_lines(300, vendors(300))  # every line its own vendor: every batch asks the model
    job_id = api.start(lines)
    clear_strays(job_id)
    model = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": sim.url, "MODEL_BATCH_SIZE": "10",
             "MODEL_CONCURRENCY": "1"}
    env = {**os.environ, "COMPONENTS": "worker", "CHALICE_STAGE": "pytest", "AWS_ENDPOINT_URL": aws_endpoint,
           "PORT": str(free_port()), "LINE_BATCH_SIZE": "50", "LINE_READ_AHEAD": "1", **model}
    worker = subprocess.Popen([sys.executable, "-m", "local.stack"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Mid-categorize: a batch checkpointed, the next one waiting on the model (5 requests of 0.25 s each).
        wait_for(lambda: api.job(job_id)["processedLines"] >= 50, 60, interval=0.05,
                 what="the worker's first checkpoint")
        worker.send_signal(signal.SIGKILL)
        code = worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == -signal.SIGKILL
    killed = api.job(job_id)
    assert killed["status"] == "Processing" and 50 <= killed["processedLines"] < len(lines)
    assert [(s["name"], s["status"], s["attempts"]) for s in killed["steps"]] == [
        ("collect", "Completed", 1), ("categorize", "Running", 1), ("assemble", "Pending", 0)]

    reap_until_requeued(api, job_id)
    settings = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                                   line_batch_size=50, line_read_ahead=1, model_batch_size=10)
    drain({job_id}, settings)  # a fresh worker takes the job up where the dead one left it
    assert_every_line_once(api, job_id, lines)
    done = api.job(job_id)
    assert [(s["name"], s["status"], s["attempts"]) for s in done["steps"]] == [
        ("collect", "Completed", 1), ("categorize", "Completed", 2), ("assemble", "Completed", 1)]
    moves = [(e["detail"]["step"], e["detail"]["from"], e["detail"]["to"], e["detail"]["attempts"])
             for e in api.call("get", f"/jobs/{job_id}/events?pageSize=1000")[1]["items"] if e["type"] == "step"]
    assert [m for m in moves if m[0] == "collect"] == [("collect", "Pending", "Completed", 1)]  # not redone
    assert [m for m in moves if m[0] == "categorize"] == [
        ("categorize", "Pending", "Running", 1), ("categorize", "Running", "Running", 2),
        ("categorize", "Running", "Completed", 2)]


@pytest.mark.sim(latency=0.3)
def test_a_worker_killed_once_its_prefetch_is_answered_loses_no_line_and_pays_the_prefetch_once(
        client, token_for, aws_endpoint, sim):
    """A real SIGKILL (exit 137, no `finally`) of a paced worker just after its prefetch (the next batch's first
    request, worker/prefetch.py) was answered: nothing of it was counted, so the job resumes from its checkpoint
    and the report holds every line once; the prefetch's answers reached the vendor cache before the kill, so no
    vendor is asked twice except those of the batch the kill cut short."""
    api = Api(client, token_for())
    lines = expense_lines(60, vendors(60))  # every line its own vendor: every batch asks the model
    job_id = api.start(lines)
    clear_strays(job_id)
    paced = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": sim.url, "OPENAI_RPM": "600", "MODEL_BATCH_SIZE": "5",
             "MODEL_CONCURRENCY": "1", "LINE_BATCH_SIZE": "5", "LINE_READ_AHEAD": "4"}
    assert run_worker_until_killed(aws_endpoint, "after_prefetch_answer", **paced) == 137
    killed = api.job(job_id)
    assert killed["status"] == "Processing" and killed["processedLines"] < len(lines)

    reap_until_requeued(api, job_id)
    settings = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                                   openai_rpm=600, model_batch_size=5, model_concurrency=1, line_batch_size=5,
                                   line_read_ahead=4)
    drain({job_id}, settings)
    assert_every_line_once(api, job_id, lines)
    asked = sim.stats()["requests_by_vendor"]
    assert len(asked) == 60
    # At most the killed batch's own request (5 vendors, its answers held for the next batch's start) again.
    assert sum(n - 1 for n in asked.values()) <= 5
