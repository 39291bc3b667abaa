"""A worker process killed (exit 137, no `finally`) in the middle of a delivery: nothing is lost or sent twice."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from chalicelib import clock, deps, messages, reaper
from chalicelib.delivery import service as delivery
from chalicelib.tables import Job
from local.stack import free_port
from tests.integration.test_worker import Api
from tests.support import Receiver, drain, expense_lines, receive, vendors

ROOT = Path(__file__).resolve().parents[2]


def run_worker_until_killed(aws_endpoint: str, point: str, **extra: str) -> int:
    """A local worker process armed to exit (137, no `finally`) at `point`; its exit code. `extra`: more env."""
    env = {**os.environ, "COMPONENTS": "worker", "CHALICE_STAGE": "pytest", "AWS_ENDPOINT_URL": aws_endpoint,
           "PORT": str(free_port()), "WORKER_CRASH_AT": point, **extra}
    worker = subprocess.Popen([sys.executable, "-m", "local.stack"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()


def stored(job_id: str) -> Job:
    return Job.get(job_id, consistent_read=True)


@pytest.mark.parametrize("point", ["after_final_status", "after_delivery_claim"])
def test_a_worker_killed_mid_delivery_leaves_it_to_be_sent_exactly_once(client, token_for, aws_endpoint, point):
    api = Api(client, token_for(tenant=f"t-{uuid.uuid4().hex[:8]}"))
    with Receiver() as rx:
        report_id = f"r-{uuid.uuid4().hex[:12]}"
        assert api.call("post", "/reports", {"reportId": report_id, "name": "Killed", "deliveryTargets": [
            {"type": "api", "mode": "async"},
            {"type": "webhook", "url": rx.url, "events": ["job.completed"]}]})[0] == 201
        assert api.call("post", "/expenses", {"lines": expense_lines(10, vendors(3))})[0] == 201
        job_id = api.call("post", f"/reports/{report_id}/generate", {"period": "2026-01"})[1]["jobId"]
        for message in receive({job_id}):  # clears strays of earlier tests; ours goes back on the queue
            deps.client("sqs").change_message_visibility(QueueUrl=deps.work_queue_url(),
                                                         ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)

        assert run_worker_until_killed(aws_endpoint, point) == 137
        job = api.job(job_id)
        [d] = job["deliveries"]
        assert job["status"] == "Completed" and (d["status"], d["attempts"]) == ("Pending", 0)
        assert rx.requests == []
        item = stored(job_id).deliveries[0]

        if point == "after_final_status":
            # Died between the final status and queuing: the outbox mark stays, and the reaper queues it.
            assert stored(job_id).active_status == "Delivering" and receive({job_id}) == []
            assert reaper.reap()["deliveries"] == 0  # not overdue yet: a live writer may still be queuing it
            overdue = int(clock.now().timestamp()) - delivery.OVERDUE_SECONDS - 60
            Job(job_id).update(actions=[Job.deliveries[0].next_at.set(overdue)])
            assert reaper.reap()["deliveries"] == 1
        else:
            # Died holding the attempt's lease. SQS redelivers the message (here: the same body, sent again);
            # while the lease lives, a copy is dropped and the receiver gets nothing.
            assert int(item.lease_until) > 0
            redelivered = messages.Deliver(job_id, 0, item.id, 1)
            messages.send(redelivered)
            drain({job_id})
            assert rx.requests == []
            # The dead attempt's lease runs out (15 s timeout + 30 s margin; here, moved back); the next
            # redelivery takes it over.
            Job(job_id).update(actions=[Job.deliveries[0].lease_until.set(int(clock.now().timestamp()) - 1)])
            messages.send(redelivered)
        drain({job_id})
        [d] = api.job(job_id)["deliveries"]
        assert (d["status"], d["attempts"]) == ("Delivered", 1)
        assert len(rx.requests) == 1 and rx.requests[0]["headers"]["webhook-id"] == item.id
