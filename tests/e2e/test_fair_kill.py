"""A worker process killed (exit 137, no `finally`) while it works a tenant's job, with fair shares on: the
tenant's running entry lapses within FAIR_RUNNING_TTL_SECONDS, not after the invocation's Lambda time."""

from __future__ import annotations

import time
import uuid

from chalicelib import deps
from chalicelib.auth import tenant_key
from chalicelib.fair import demand
from tests.e2e.test_delivery_kill import run_worker_until_killed
from tests.integration.test_fair_shares import running_lapses
from tests.integration.test_worker import Api
from tests.support import expense_lines, receive, vendors, wait_for

TTL = 4.0


def test_a_killed_workers_running_entry_lapses_within_the_ttl(client, token_for, aws_endpoint):
    claim = f"t-{uuid.uuid4().hex[:8]}"
    api = Api(client, token_for(tenant=claim))
    tenant = tenant_key(claim, "")
    job_id = api.start(expense_lines(150, vendors(30)))  # batches of 100 and 50: killed after the first checkpoint
    for message in receive({job_id}):  # clears strays of earlier tests; ours goes back on the queue
        deps.client("sqs").change_message_visibility(QueueUrl=deps.work_queue_url(),
                                                     ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)

    assert run_worker_until_killed(aws_endpoint, "after_checkpoint", FAIR_SHARES="1",
                                   FAIR_RUNNING_TTL_SECONDS=str(TTL)) == 137
    killed = time.monotonic()
    assert api.job(job_id)["processedLines"] == 100  # it died mid-job, after its first checkpoint
    # Nobody ended the entry: it is still stored (as read raw: no read of the fleet has pruned it yet) ...
    assert len(running_lapses(tenant)) == 1
    # ... until its TTL runs out; the Lambda time (the local poller's 15 minutes) would have kept it far longer.
    wait_for(lambda: tenant not in demand.read().running, timeout=TTL + 2.0,
             what="the killed invocation's running entry lapsed")
    assert time.monotonic() - killed <= TTL + 2.0
