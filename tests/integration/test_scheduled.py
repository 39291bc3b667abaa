"""Scheduled health: reaper, dead letters, cache warmer, scheduled reports and retention."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import clock, deps, faults, reaper, schedules, worker
from chalicelib.jobs import runner
from chalicelib.jobs.states import JobStatus, transition
from chalicelib.settings import get_settings
from chalicelib.tables import Job
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import Ctx, deliver, drain, expense_lines, receive, vendors, wait_for


@pytest.fixture
def api(client, token_for):
    return Api(client, token_for())


@pytest.fixture
def model_settings(sim):
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               line_batch_size=20, model_batch_size=10)


def age(job_id: str, seconds: float) -> None:
    """Make the job look as if its last heartbeat was `seconds` ago."""
    then = clock.iso(clock.now() - timedelta(seconds=seconds))
    Job(job_id).update(actions=[Job.heartbeat_at.set(then)])


def events(api: Api, job_id: str) -> list[dict]:
    return api.call("get", f"/jobs/{job_id}/events")[1]["items"]


def stuck_processing_job(api: Api, monkeypatch, n: int = 60) -> tuple[str, list[dict]]:
    """A job left Processing by a worker that died after its first checkpoint (lease still held)."""
    lines = expense_lines(n, vendors(10))
    job_id = api.start(lines)

    def die(name: str) -> None:
        if name == "after_checkpoint":
            raise SystemExit("worker died")

    monkeypatch.setattr(faults, "point", die)
    messages = receive({job_id})
    with pytest.raises(SystemExit):
        worker.run_job(job_id, "start", Ctx(), dataclasses.replace(get_settings(), line_batch_size=20,
                                                                    line_read_ahead=1))
    monkeypatch.undo()
    for m in messages:  # the dead invocation's message: SQS would hold it for the visibility timeout
        deps.client("sqs").delete_message(QueueUrl=deps.work_queue_url(), ReceiptHandle=m["ReceiptHandle"])
    job = api.job(job_id)
    assert job["status"] == "Processing" and job["processedLines"] == 20
    return job_id, lines


def test_reaper_requeues_a_stale_job_and_a_fresh_worker_finishes_it(api, monkeypatch):
    job_id, lines = stuck_processing_job(api, monkeypatch)
    assert reaper.reap()["requeued"] == 0  # fresh heartbeat: left alone
    age(job_id, 400)
    assert reaper.reap()["requeued"] == 1
    drain({job_id})
    assert_every_line_once(api, job_id, lines)
    assert "reaped" in [e["type"] for e in events(api, job_id)]


def test_concurrent_reapers_enqueue_once(api, monkeypatch):
    job_id, _ = stuck_processing_job(api, monkeypatch)
    age(job_id, 400)
    results = []
    threads = [threading.Thread(target=lambda: results.append(reaper.reap())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(r["requeued"] for r in results) == 1
    assert len(receive({job_id})) == 1
    assert [e["type"] for e in events(api, job_id)].count("reaped") == 1


def test_three_reaps_without_progress_fail_the_job_with_a_reason(api, monkeypatch):
    job_id, _ = stuck_processing_job(api, monkeypatch)
    for n in range(4):
        # A worker took the job (its lease) and died before its next checkpoint...
        assert runner.take_lease(Job.get(job_id), runner.Lease(f"dead-{n}", 0))
        age(job_id, 400)
        if n == 3:
            break
        assert reaper.reap()["requeued"] == 1  # ...so the reaper sends it again
        receive({job_id})
    assert reaper.reap()["failed"] == 1
    job = api.job(job_id)
    assert job["status"] == "Failed" and "stopped making progress" in job["errorMessage"]


def test_a_job_making_slow_progress_is_not_reaped(api, sim, model_settings):
    # Ten batches of 20 lines, each waiting 0.5 s on the model: several sweeps see it mid-run, none stale.
    sim.configure(latency=0.5)
    lines = expense_lines(200, vendors(200))
    job_id = api.start(lines)
    quick = dataclasses.replace(model_settings, stale_after_seconds=2)
    t = threading.Thread(target=drain, args=({job_id}, quick))
    t.start()
    sweeps = 0
    while t.is_alive():
        reaper.reap(quick)  # other tests' idle jobs may be swept; this one must not be
        sweeps += 1
        t.join(0.5)
    # At least two sweeps saw the job live (how many depends on the machine's load: a sweep under load is slow).
    assert sweeps >= 2
    assert_every_line_once(api, job_id, lines)
    assert "reaped" not in [e["type"] for e in events(api, job_id)]


def test_stale_queued_job_is_requeued_and_stale_cancellation_is_finished(api):
    lines = expense_lines(5, vendors(3))
    queued = api.start(lines)
    receive({queued})  # its message is lost
    age(queued, 400)
    assert reaper.reap()["requeued"] >= 1
    assert len(receive({queued})) == 1
    job = Job.get(queued)
    transition(job, JobStatus.PROCESSING, "started")
    api.call("delete", f"/jobs/{queued}")
    age(queued, 400)
    reaper.reap()
    assert api.job(queued)["status"] == "Cancelled"


def test_poison_message_reaches_the_dlq_and_its_job_becomes_failed(api, monkeypatch):
    job_id = api.start(expense_lines(5, vendors(2)))
    # The handler's own name for it: handle_record calls run_job from chalicelib.worker.handler.
    monkeypatch.setattr(worker.handler, "run_job", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("poison")))
    sqs = deps.client("sqs")
    dlq = sqs.get_queue_url(QueueName=f"{get_settings().prefix}-work-dlq")["QueueUrl"]
    for _ in range(5):
        messages = wait_for(lambda: receive({job_id}), 5, what="redelivery")
        deliver(messages)
    assert receive({job_id}) == []  # moved after its 5th receive
    dead = wait_for(lambda: sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages"), 5,
                    what="dead letter")
    monkeypatch.undo()
    from tests.support import lambda_event
    out = worker.handle_dead_letters(lambda_event(dead), Ctx())
    assert out["batchItemFailures"] == []
    job = api.job(job_id)
    assert job["status"] == "Failed" and "dead-letter" in job["errorMessage"]
    assert any(e["type"] == "failed" and e["detail"].get("deadLetter") for e in events(api, job_id))


def test_after_a_warm_run_a_new_job_makes_no_model_requests_for_those_vendors(api, sim, model_settings):
    names = [v for v in vendors(24) if "ACME" not in v]
    offline = api.start(expense_lines(48, names, "2026-05"), "2026-05")
    drain({offline})  # rules, offline: vendors are noted as seen, nothing cached from the model
    outcome = worker.warm_cache(Ctx(), model_settings)
    assert outcome["warmed"] >= len(names) and outcome["after"] is None  # other tests' vendors too
    sent = sim.stats()["requests"]
    again = api.start(expense_lines(48, names, "2026-06", prefix="tz"), "2026-06")
    drain({again}, model_settings)
    assert api.job(again)["cachedLines"] == 48
    assert sim.stats()["requests"] == sent
    before = dict(sim.stats()["requests_by_vendor"])
    worker.warm_cache(Ctx(), model_settings)  # a second night: the cached vendors are not asked again
    after = sim.stats()["requests_by_vendor"]
    assert all(after.get(v.lower(), 0) == before.get(v.lower(), 0) for v in names)


def test_scheduled_report_is_created_once_on_its_day_and_never_twice(api):
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    assert api.call("post", "/reports", {"reportId": report_id, "name": "Scheduled",
                                         "deliveryTargets": [{"type": "api", "mode": "async"}],
                                         "schedule": {"type": "monthly", "day": 15}})[0] == 201
    not_today = datetime(2026, 3, 14, 0, 5, tzinfo=UTC)
    assert schedules.run_due(not_today)["created"] == 0
    due = datetime(2026, 3, 15, 0, 5, tzinfo=UTC)
    assert schedules.run_due(due)["created"] >= 1
    schedules.run_due(due)
    jobs = [j for j in api.call("get", "/jobs?pageSize=100")[1]["items"] if j["reportId"] == report_id]
    assert len(jobs) == 1
    assert jobs[0]["trigger"] == "schedule" and jobs[0]["period"] == "2026-02"


def test_an_expired_job_reads_as_404_before_dynamodb_deletes_it(api):
    job_id = api.start(expense_lines(2, vendors(1)))
    Job(job_id).update(actions=[Job.expires_at.set(clock.now() - timedelta(seconds=1))])
    assert api.call("get", f"/jobs/{job_id}")[0] == 404
    assert job_id not in [j["jobId"] for j in api.call("get", "/jobs")[1]["items"]]


def test_a_vendor_is_noted_as_seen_once_a_day_however_many_times_jobs_meet_it():
    from chalicelib.categorize import cache, seen
    from chalicelib.reports.service import DEFAULT_CATEGORIES
    from chalicelib.tables import VendorSeen

    vendor, other = (v.lower() for v in vendors(2))
    tenant = "tenant-seen-once"  # notes are a tenant's (tests/hardening/test_tenants.py)
    seen.record_seen(DEFAULT_CATEGORIES, {vendor: ("RAW ONE", "first")}, tenant=tenant)
    seen.record_seen(DEFAULT_CATEGORIES, {vendor: ("RAW TWO", "second"), other: ("RAW OTHER", "")}, tenant=tenant)
    first = VendorSeen.get(f"seen#{cache.key(DEFAULT_CATEGORIES, vendor, tenant=tenant)}", consistent_read=True)
    assert (first.vendor, first.description, first.seen_day) == ("RAW ONE", "first", clock.now().strftime("%Y-%m-%d"))
    assert VendorSeen.get(f"seen#{cache.key(DEFAULT_CATEGORIES, other, tenant=tenant)}").vendor == "RAW OTHER"
    # Noted on an earlier day: written again today.
    first.update(actions=[VendorSeen.seen_day.set("2020-01-01")])
    seen.record_seen(DEFAULT_CATEGORIES, {vendor: ("RAW THREE", "third")}, tenant=tenant)
    again = VendorSeen.get(f"seen#{cache.key(DEFAULT_CATEGORIES, vendor, tenant=tenant)}", consistent_read=True)
    assert (again.vendor, again.seen_day) == ("RAW THREE", clock.now().strftime("%Y-%m-%d"))
