"""Least privilege, checked against what the handlers really do.

Each test runs one deployed function's code paths against the moto server while recording every AWS API
call (botocore's `_make_api_call`, which boto3, PynamoDB and Powertools all go through), then checks both
ways against that function's `.chalice/policy-*.json`: every call is allowed, and every grant was used by
some call or is listed in NOT_EXERCISED with the reason. A new table access without a policy change fails
here, and so does a grant nothing needs any more.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import uuid
from datetime import timedelta
from unittest import mock

import pytest

from chalicelib import clock, credentials, deps, reaper, schedules, worker
from chalicelib.auth import tenant_scope
from chalicelib.categorize import seen
from chalicelib.jobs import chunks, create, runner
from chalicelib.lines import versions
from chalicelib.reports.service import DEFAULT_CATEGORIES
from chalicelib.settings import get_settings
from chalicelib.tables import Job, JobChunk
from tests import iam
from tests.integration.test_imports import Imports, rows, write
from tests.integration.test_worker import Api
from tests.support import Ctx, Receiver, deliver, drain, expense_lines, lambda_event, receive, vendors

_RUNTIME = "used by the Lambda service on the function's behalf, not by its code"
_EVENT_SOURCE = "used by the SQS event source mapping (polling, deleting, visibility) with the function's role"
NOT_EXERCISED: dict[tuple[str, str], str] = {
    ("logs:CreateLogStream", "*"): _RUNTIME,
    ("logs:PutLogEvents", "*"): _RUNTIME,
    ("xray:PutTraceSegments", "*"): _RUNTIME,
    ("xray:PutTelemetryRecords", "*"): _RUNTIME,
    ("sqs:ReceiveMessage", "*"): _EVENT_SOURCE,
    ("sqs:DeleteMessage", "*"): _EVENT_SOURCE,
    ("sqs:GetQueueAttributes", "*"): _EVENT_SOURCE,
    ("sqs:ChangeMessageVisibility", "*"): _EVENT_SOURCE,
    ("s3:AbortMultipartUpload", "*"): "s3transfer aborts a failed multipart upload of a report over 8 MB",
}
# Per function: (action, resource ending) grants that no scenario reaches, each with the code path that needs it.
NOT_EXERCISED_BY = {
    "api_handler": {
        # Powertools idempotency reads the record only when a refused conditional put did not return it.
        ("dynamodb:GetItem", "-idempotency"),
        # POST /imports signs a PUT URL (no call): the client's upload through it acts with this grant.
        ("s3:PutObject", "/imports/*"),
    },
}


def check(function: str, needed: set[tuple[str, str]]) -> None:
    prefix = get_settings().prefix
    granted = iam.grants(function, prefix)
    denied = sorted(n for n in needed if not iam.allowing(granted, *n))
    assert not denied, f"{iam.policy_path(function).name} does not allow: {denied}"
    used = {g for n in needed for g in iam.allowing(granted, *n)}
    rare = NOT_EXERCISED_BY.get(function, set())
    unused = sorted(g for g in set(granted) - used
                    if (g[0], "*") not in NOT_EXERCISED and not any(g[0] == a and g[1].endswith(r) for a, r in rare))
    assert not unused, f"{iam.policy_path(function).name} grants what no code path used: {unused}"


@pytest.fixture(scope="module")
def secret_params():
    """The stage's SSM parameters, as `aws ssm put-parameter` in docs/deploy.md creates them."""
    prefix, ssm = get_settings().prefix, deps.client("ssm")
    names = {"jwt": f"/{prefix}/jwt-secret", "openai": f"/{prefix}/openai-api-key"}
    ssm.put_parameter(Name=names["jwt"], Value=get_settings().jwt_secret, Type="SecureString", Overwrite=True)
    ssm.put_parameter(Name=names["openai"], Value="sk-test", Type="SecureString", Overwrite=True)
    credentials.reset()
    yield names
    credentials.reset()


@pytest.fixture
def model_settings(sim, secret_params):
    """The worker as deployed: the key from SSM, the shared limiter on, small batches."""
    return dataclasses.replace(get_settings(), openai_api_key=None, openai_api_key_param=secret_params["openai"],
                               openai_base_url=sim.url, openai_rpm=6000, line_batch_size=20, model_batch_size=10)


def _csv(n: int) -> str:
    rows = "".join(f"tx-{i},2026-01-{1 + i % 28:02d},Vendor {uuid.uuid4().hex[:6]},{i + 1}.00,USD,x\n"
                   for i in range(n))
    return "lineId,date,vendor,amount,currency,description\n" + rows


def generate(api: Api, report: str, key: str) -> str | None:
    response = api.client.http.post(f"/api/v1/reports/{report}/generate", body=json.dumps({"period": "2026-01"}),
                                    headers={**api.headers, "Idempotency-Key": key})
    return json.loads(response.body).get("jobId") if response.status_code == 202 else None


def test_api_handler_policy_allows_what_the_routes_do_and_no_more(api, secret_params, monkeypatch):
    settings = dataclasses.replace(get_settings(), jwt_secret_param=secret_params["jwt"])
    done_id = api.start(expense_lines(5, vendors(3)))
    worker.run_job(done_id, "start", Ctx(), dataclasses.replace(get_settings(), openai_api_key=None))
    with Receiver(default=410) as gone:  # a job whose webhook delivery was disabled, to be retried below
        hooked = f"r-{uuid.uuid4().hex[:12]}"
        targets = [{"type": "api", "mode": "async"}, {"type": "webhook", "url": gone.url, "events": ["job.completed"]}]
        assert api.call("post", "/reports", {"reportId": hooked, "name": "H", "deliveryTargets": targets})[0] == 201
        disabled_id = generate(api, hooked, str(uuid.uuid4()))
        drain({disabled_id})
    assert api.job(disabled_id)["deliveries"][0]["status"] == "Disabled"
    with iam.recording() as needed:
        # Delivery: a retry enables the target again and queues the attempt; a secret is rotated.
        assert api.call("post", f"/jobs/{disabled_id}/deliveries/0/retry")[0] == 202
        assert api.call("post", f"/reports/{hooked}/webhook-secret/rotate")[0] == 200
        credentials.jwt_secret(settings)  # the HS256 secret, as a deployed stage reads it
        assert api.client.http.get("/health/ready").status_code == 200  # table, queue and bucket answer
        report = f"r-{uuid.uuid4().hex[:12]}"
        assert api.call("post", "/reports", {"reportId": report, "name": "T",
                                             "deliveryTargets": [{"type": "api", "mode": "async"}]})[0] == 201
        assert api.call("get", f"/reports/{report}")[0] == 200
        # Report management: list, change (If-Match on the ETag), delete.
        spare = f"r-{uuid.uuid4().hex[:12]}"
        assert api.call("post", "/reports", {"reportId": spare, "name": "Spare",
                                             "deliveryTargets": [{"type": "api", "mode": "async"}]})[0] == 201
        assert api.call("get", "/reports?pageSize=5")[0] == 200
        etag = api.client.http.get(f"/api/v1/reports/{spare}", headers=api.headers).headers["ETag"]
        assert api.client.http.patch(f"/api/v1/reports/{spare}", body=json.dumps({"name": "Renamed"}),
                                     headers={**api.headers, "If-Match": etag}).status_code == 200
        response = api.client.http.post("/api/v1/expenses", body=_csv(3),
                                        headers={**api.headers, "Content-Type": "text/csv"})
        assert response.status_code == 201, response.body
        assert api.call("get", "/expenses?period=2026-01")[0] == 200
        job_id = generate(api, report, key := str(uuid.uuid4()))
        # Deleting a report looks at the active jobs (one is: the job just created).
        assert api.client.http.delete(f"/api/v1/reports/{spare}", headers=api.headers).status_code == 204
        assert generate(api, report, key) == job_id  # replayed from the idempotency record
        assert generate(api, report, str(uuid.uuid4())) is None  # 409: an active job exists; the record is dropped
        assert api.call("get", f"/jobs/{job_id}")[0] == 200
        assert api.call("get", "/jobs?pageSize=5")[0] == 200
        assert api.call("get", f"/jobs/{job_id}/events")[0] == 200
        assert api.call("delete", f"/jobs/{job_id}")[0] == 200
        assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
        assert api.call("get", f"/jobs/{done_id}/result")[0] == 200
        assert api.client.http.get(f"/api/v1/jobs/{done_id}/result?format=csv", headers=api.headers).status_code == 200
        line = api.call("get", f"/jobs/{done_id}/result")[1]["lines"][0]
        assert api.call("patch", f"/jobs/{done_id}/lines/{line['lineId']}", {"category": line["category"]})[0] == 200
        # Imports: one created (its upload URL signed), a period's lines deleted (and one refused: a job reads it).
        assert api.call("post", "/imports", {"format": "csv", "period": "2026-03"})[0] == 202
        assert api.call("delete", "/expenses?period=2026-01")[0] == 409
        assert api.call("delete", "/expenses?period=2026-04")[0] == 204
        with monkeypatch.context() as m:  # the queue refuses the message: the create is undone
            m.setattr(create, "enqueue", mock.Mock(side_effect=RuntimeError("queue down")))
            assert api.call("post", "/expenses", {"lines": expense_lines(1, vendors(1), period="2026-02")})[0] == 201
            assert api.call("post", f"/reports/{report}/generate", {"period": "2026-02"})[0] == 503
    check("api_handler", needed)


def test_process_work_policy_allows_what_the_worker_does_and_no_more(api, model_settings, tmp_path):
    job_id = api.start(expense_lines(30, vendors(12)))
    # An import merged into the lines the jobs above read (its file arrives before the recording starts).
    importing = Imports(api.client, api.token)
    upload = importing.begin(period="2026-01")
    importing.upload(upload, write(tmp_path / "import.csv", rows(30, "2026-01")))
    big_id = api.start(expense_lines(60, vendors(8)))
    fanout = dataclasses.replace(model_settings, fanout_threshold_lines=40, chunk_lines=25)
    receiver, gone = Receiver().__enter__(), Receiver(default=410).__enter__()
    report = f"r-{uuid.uuid4().hex[:12]}"
    assert api.call("post", "/reports", {"reportId": report, "name": "Delivered", "deliveryTargets": [
        {"type": "api", "mode": "async"}, {"type": "email", "to": "finance@example.com"},
        {"type": "webhook", "url": receiver.url, "events": ["job.completed", "job.progress"]},
        {"type": "webhook", "url": gone.url, "events": ["job.completed"]}]})[0] == 201
    delivered = generate(api, report, str(uuid.uuid4()))
    with iam.recording() as needed:
        # one drain: receive() deletes the messages of jobs it was not given. The delivered job's email and webhook
        # go out from the worker too (SES on the sender's identity, the report's secret).
        drain({job_id, big_id, delivered, upload["jobId"]}, fanout)
        deps.client("sqs").send_message(QueueUrl=deps.work_queue_url(), MessageBody=json.dumps({"kind": "warm"}))
        deliver(_warm_messages(), Ctx(), model_settings)
    receiver.__exit__(None, None, None)
    gone.__exit__(None, None, None)
    assert api.job(job_id)["status"] == api.job(big_id)["status"] == api.job(upload["jobId"])["status"] == "Completed"
    # The 410 disables its target on the report: the worker writes the report item too.
    assert [d["status"] for d in api.job(delivered)["deliveries"]] == ["Delivered", "Delivered", "Disabled"]
    check("process_work", needed)


def _warm_messages() -> list[dict]:
    sqs, url = deps.client("sqs"), deps.work_queue_url()
    for _ in range(20):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        warm = [m for m in got if json.loads(m["Body"]).get("kind") == "warm"]
        if warm:
            return warm
    raise AssertionError("the warm message never arrived")


def test_handle_dead_letters_policy_allows_what_the_handler_does_and_no_more(api):
    job_id = api.start(expense_lines(2, vendors(2)))
    message = {"MessageId": str(uuid.uuid4()), "ReceiptHandle": "r", "Body": json.dumps({"jobId": job_id}),
               "Attributes": {"ApproximateReceiveCount": "5"}}
    with iam.recording() as needed:
        out = worker.handle_dead_letters(lambda_event([message]), Ctx())
    assert out["batchItemFailures"] == [] and api.job(job_id)["status"] == "Failed"
    check("handle_dead_letters", needed)


def test_reap_stale_jobs_policy_allows_what_the_reaper_does_and_no_more(api, model_settings):
    queued = api.start(expense_lines(2, vendors(2)))
    cancelling = api.start(expense_lines(2, vendors(2)))
    assert runner.claim(cancelling, runner.Lease("dead-worker", time.time() + 60), "start") is not None
    assert api.call("delete", f"/jobs/{cancelling}")[1]["status"] == "CancellationRequested"
    fanned = api.start(expense_lines(60, vendors(8)))
    deliver(receive({fanned}), Ctx(), dataclasses.replace(model_settings, fanout_threshold_lines=40, chunk_lines=25))
    old = clock.iso(clock.now() - timedelta(hours=1))
    for job_id in (queued, cancelling, fanned):
        Job(job_id).update(actions=[Job.heartbeat_at.set(old)])
    for chunk in chunks.of(fanned):
        chunk.update(actions=[JobChunk.heartbeat_at.set(old)])
    # An import whose file never came; a replaced version of a period's lines, due; one still read by a job.
    waiting = Imports(api.client, api.token).begin(period="2026-05")["jobId"]
    Job(waiting).update(actions=[Job.heartbeat_at.set(old)])
    owner = Job.get(queued).owner_id
    assert api.call("post", "/expenses", {"lines": expense_lines(3, vendors(2), period="2026-06")})[0] == 201
    assert api.call("delete", "/expenses?period=2026-06")[0] == 204
    versions.garbage(owner, "2026-06", versions.UNVERSIONED, time.time() - 1).save()
    Job(queued).update(actions=[Job.lines_version.set("vpinned")])
    versions.garbage(owner, "2026-01", "vpinned", time.time() - 1).save()
    with iam.recording() as needed:
        counts = reaper.reap()
    assert counts["requeued"] >= 2 and counts["cancelled"] >= 1, counts
    check("reap_stale_jobs", needed)


def test_run_scheduled_reports_policy_allows_what_the_handler_does_and_no_more(api, monkeypatch):
    # A fixed day of the month (schedules take days 1-28), not today's: the test runs the same on any date, and
    # no other test schedules a report on day 23.
    today = clock.now().replace(day=23, hour=12, minute=0, second=0, microsecond=0)

    def scheduled_report() -> None:
        body = {"reportId": f"r-{uuid.uuid4().hex[:12]}", "name": "Monthly", "schedule": {"type": "monthly",
                "day": today.day}, "deliveryTargets": [{"type": "api", "mode": "async"}]}
        assert api.call("post", "/reports", body)[0] == 201

    scheduled_report()
    with iam.recording() as needed:
        assert schedules.run_due(today)["created"] == 1
    scheduled_report()  # its create is undone (the queue refuses the message) and deferred to the next run
    monkeypatch.setattr(create, "enqueue", mock.Mock(side_effect=RuntimeError("queue down")))
    with iam.recording() as deferred:
        assert schedules.run_due(today)["deferred"] == 1
    check("run_scheduled_reports", needed | deferred)


def test_warm_vendor_cache_policy_allows_what_the_warmer_does_and_no_more(api, model_settings, sim):
    drain({api.start(expense_lines(60, vendors(60)))}, dataclasses.replace(model_settings, openai_api_key_param=None))
    # Due vendors are taken in key order, from every test's jobs: these sort first, and the model is sure of
    # them, so the first group writes answers through (other tests' vendors may be ones it is unsure of).
    salt = uuid.uuid4().hex[:6]
    # Keys begin with the tenant's scope (a hash): a tenant whose scope sorts first puts these first.
    first = next(t for t in (f"warm-{salt}-{n}" for n in itertools.count()) if tenant_scope(t) < "0004")
    seen.record_seen(DEFAULT_CATEGORIES, {f"aaaa delta air {salt} {n}": (f"AAAA DELTA AIR {salt} *{n}", "")
                                          for n in range(4)}, tenant=first)
    credentials.reset()  # a cold function: the key is read from SSM
    sim.configure(latency=1.2)  # the first group outlasts the 1 s budget: the rest goes on in a continuation message
    with iam.recording() as needed:
        outcome = worker.warm_cache(Ctx(remaining_ms=2_000), model_settings)
    assert outcome["asked"] and outcome["after"], outcome
    check("warm_vendor_cache", needed)


def test_poll_provider_batches_policy_allows_what_the_poller_does_and_no_more(api, model_settings, sim):
    from chalicelib.worker import batchlane

    sim.configure(batch_delay=0.0)
    collected, cancelled = (generate_on_lane(api, expense_lines(20, vendors(6)), "batch") for _ in range(2))
    drain({collected, cancelled}, model_settings)  # both wait on their batches
    assert api.call("delete", f"/jobs/{cancelled}")[1]["status"] == "Cancelled"
    credentials.reset()  # a cold function: the key is read from SSM
    with iam.recording() as needed:
        # One collected; the other's batch (done already: delay 0) counted on the cancelled job and let go.
        counts = batchlane.poll(model_settings)
    assert counts["collected"] >= 1 and counts["cancelled"] >= 1, counts
    check("poll_provider_batches", needed)


def generate_on_lane(api: Api, lines: list[dict], lane: str) -> str:
    report = f"r-{uuid.uuid4().hex[:12]}"
    assert api.call("post", "/reports", {"reportId": report, "name": "Lane", "lane": lane,
                                         "deliveryTargets": [{"type": "api", "mode": "async"}]})[0] == 201
    assert api.call("post", "/expenses", {"lines": lines})[0] == 201
    status, job = api.call("post", f"/reports/{report}/generate", {"period": "2026-01"})
    assert status == 202, job
    return job["jobId"]
