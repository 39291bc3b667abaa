"""Cost lanes against the simulator and moto: standard, flex (and its fallback), batch (collected by the poller,
partial results, expiry, cancel forwarded), the provider's prompt cache, and `usage` on the job."""

from __future__ import annotations

import dataclasses
import json
import uuid
from decimal import Decimal

import pytest

from chalicelib.categorize import prices
from chalicelib.settings import get_settings
from chalicelib.tables import Control, Job
from chalicelib.worker import batchlane
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import Ctx, deliver, drain, expense_lines, receive, vendors

MODEL = "gpt-4o-mini"


@pytest.fixture
def model_settings(sim):
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url, openai_model=MODEL,
                               line_batch_size=40, line_read_ahead=4, model_batch_size=10, model_concurrency=1)


@pytest.fixture
def api(client, token_for):
    return Api(client, token_for())


def generate(api: Api, lines: list[dict], body: dict | None = None, report: dict | None = None) -> str:
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    status, created = api.call("post", "/reports", {"reportId": report_id, "name": "Lanes",
                                                    "deliveryTargets": [{"type": "api", "mode": "async"}],
                                                    **(report or {})})
    assert status == 201, created
    assert api.call("post", "/expenses", {"lines": lines})[0] == 201
    status, job = api.call("post", f"/reports/{report_id}/generate", {"period": "2026-01", **(body or {})})
    assert status == 202, job
    return job["jobId"]


def priced(tokens: dict, lane: str) -> str:
    cost = prices.cost_nanos(MODEL, lane, tokens["prompt"], tokens["cached"], tokens["completion"])
    assert cost is not None
    return prices.usd(cost)


def test_standard_lane_counts_usage_and_cached_tokens_of_a_repeated_prefix(api, sim, model_settings):
    lines = expense_lines(120, vendors(30))
    job_id = generate(api, lines)
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    job = api.job(job_id)
    stats = sim.stats(include_log=False)
    assert job["lane"] == "standard"
    # One request a time (model_concurrency 1): the first misses the provider's cache, the next two hit it.
    assert stats["ok"] == 3 and stats["tokens"]["cached"] > 0
    assert job["usage"] == {"modelRequests": 3, "inputTokens": stats["tokens"]["prompt"],
                            "cachedTokens": stats["tokens"]["cached"], "outputTokens": stats["tokens"]["completion"],
                            "estimatedCostUsd": priced(stats["tokens"], "standard"), "flexFallbacks": 0}
    assert stats["tokens"]["cached"] >= 2 * 1024  # the stable part reaches the cacheable size


def test_flex_lane_is_priced_at_batch_rates(api, sim, model_settings):
    lines = expense_lines(40, vendors(20))
    job_id = generate(api, lines, {"lane": "flex"})
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    job = api.job(job_id)
    stats = sim.stats(include_log=False)
    assert job["lane"] == "flex" and job["usage"]["flexFallbacks"] == 0 and stats["flex_unavailable"] == 0
    assert job["usage"]["estimatedCostUsd"] == priced(stats["tokens"], "flex")
    assert Decimal(job["usage"]["estimatedCostUsd"]) < Decimal(priced(stats["tokens"], "standard"))


@pytest.mark.sim(pflex_unavailable=1.0)
def test_flex_without_capacity_falls_back_to_standard_and_counts_it(api, sim, model_settings):
    lines = expense_lines(40, vendors(20))
    job_id = generate(api, lines, report={"lane": "flex"})  # the report's lane
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    job = api.job(job_id)
    stats = sim.stats(include_log=False)
    assert job["lane"] == "flex"
    assert job["usage"]["flexFallbacks"] == stats["flex_unavailable"] == 2 == job["usage"]["modelRequests"]
    assert job["usage"]["estimatedCostUsd"] == priced(stats["tokens"], "standard")  # served (and billed) standard


def _wait_on_batch(job_id: str, settings) -> Job:
    drain({job_id}, settings)  # the start message: the batch is sent, and the job waits on it
    job = Job.get(job_id, consistent_read=True)
    assert job.status == "Processing" and job.batch_state == "submitted" and not job.lease_owner
    assert job.status_message.startswith(batchlane.WAITING)
    assert not receive({job_id})  # no message while the batch runs: the poller owns the job
    return job


@pytest.mark.sim(batch_delay=0.0)
def test_batch_lane_end_to_end(api, sim, model_settings):
    lines = expense_lines(90, vendors(25))
    job_id = generate(api, lines, {"lane": "batch"})
    waiting = _wait_on_batch(job_id, model_settings)
    shown = api.job(job_id)
    assert shown["statusMessage"] == "Waiting on the provider's batch (3 requests for 25 vendors)"
    assert {s["name"]: s["status"] for s in shown["steps"]} == {"collect": "Completed", "categorize": "Running",
                                                               "assemble": "Pending"}
    assert batchlane.poll(model_settings)["collected"] == 1
    assert batchlane.poll(model_settings)["collected"] == 0  # collected once
    sent = receive({job_id})
    # The poller's message carries the job's tenant, like every job message: without it the job would run
    # outside fair shares (worker/fairness.turn runs a message without a tenant as it comes).
    assert [json.loads(m["Body"]) for m in sent] == [{"jobId": job_id, "reason": "batch_collected",
                                                      "tenant": Job.get(job_id).tenant or Job.get(job_id).owner_id}]
    deliver(sent, Ctx(), model_settings)
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    job = api.job(job_id)
    stats = sim.stats(include_log=False)
    assert stats["requests"] == 0  # no chat completion: every vendor was answered by the batch
    assert job["lane"] == "batch" and job["processedLines"] == 90 and job["cachedLines"] == 0
    assert job["usage"] == {"modelRequests": 3, "inputTokens": stats["tokens"]["prompt"],
                            "cachedTokens": stats["tokens"]["cached"], "outputTokens": stats["tokens"]["completion"],
                            "estimatedCostUsd": priced(stats["tokens"], "batch"), "flexFallbacks": 0}
    assert {line["source"] for line in api.result(job_id)["lines"]} == {"model"}
    assert sim.batches.batches[waiting.batch_id]["request_counts"] == {"total": 3, "completed": 3, "failed": 0}


@pytest.mark.sim(batch_delay=60.0, batch_expire_after=0.0, batch_failed_ids=["r0"])
def test_batch_partial_results_and_expiry_go_back_to_the_standard_lane(api, sim, model_settings):
    lines = expense_lines(100, vendors(40))
    job_id = generate(api, lines, {"lane": "batch"})
    waiting = _wait_on_batch(job_id, model_settings)
    assert batchlane.poll(model_settings)["collected"] == 1
    batch = sim.batches.batches[waiting.batch_id]
    assert batch["status"] == "expired"
    # 4 requests: the first half (r0, r1) done by the expiry, r0 of them failed; r2 and r3 expired.
    assert batch["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    job = api.job(job_id)
    stats = sim.stats(include_log=False)
    assert stats["ok"] == 3  # the 30 vendors without an answer, asked on the standard lane (10 a request)
    assert job["usage"]["modelRequests"] == 1 + 3 and job["failedLines"] == 0
    assert job["usage"]["inputTokens"] == stats["tokens"]["prompt"]


@pytest.mark.sim(batch_delay=3600.0)
def test_cancel_while_waiting_is_final_forwarded_to_the_batch_and_a_retry_loses_no_line(api, sim, model_settings):
    lines = expense_lines(30, vendors(15))
    job_id = generate(api, lines, {"lane": "batch"})
    waiting = _wait_on_batch(job_id, model_settings)
    assert batchlane.poll(model_settings)["waiting"] == 1
    assert "in_progress" in Job.get(job_id).status_message
    status, cancelled = api.call("delete", f"/jobs/{job_id}")
    assert status == 200 and cancelled["status"] == "Cancelled"  # no worker holds it: final at once
    assert batchlane.poll(model_settings)["cancelling"] == 1
    assert sim.batches.cancels == [waiting.batch_id]  # the cancel, forwarded to the provider's batch
    assert batchlane.poll(model_settings)["cancelled"] == 1  # the batch stopped: the job waits on it no more
    assert sim.batches.cancels == [waiting.batch_id] and sim.batches.batches[waiting.batch_id]["status"] == \
        "cancelled"
    job = api.job(job_id)
    assert job["status"] == "Cancelled" and job["processedLines"] == 0 and job["usage"]["modelRequests"] == 0
    assert batchlane.poll(model_settings) == {"waiting": 0, "collected": 0, "cancelling": 0, "cancelled": 0}
    # Retried: a new batch, collected, and every line once.
    sim.configure(batch_delay=0.0)
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
    resubmitted = _wait_on_batch(job_id, model_settings)
    assert resubmitted.batch_id != waiting.batch_id
    assert batchlane.poll(model_settings)["collected"] == 1
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    assert api.job(job_id)["usage"]["modelRequests"] == 2  # 15 vendors, 10 a request, in the second batch


@pytest.mark.sim(batch_delay=3600.0)  # running when the poller reads it, however slow the machine
def test_a_job_retried_while_the_poller_reads_its_batch_keeps_the_batch_running(api, sim, model_settings,
                                                                                 monkeypatch):
    """The poller reads the cancelled job, then the provider's batch (seconds at OpenAI); the user retries in
    between. The poller reads the job again before it forwards the cancel: the batch runs on, the retried job
    goes on waiting on it, and its answers are every vendor's (none sent to the standard lane at twice the price)."""
    lines = expense_lines(30, vendors(15))
    job_id = generate(api, lines, {"lane": "batch"})
    waiting = _wait_on_batch(job_id, model_settings)
    status, cancelled = api.call("delete", f"/jobs/{job_id}")
    assert status == 200 and cancelled["status"] == "Cancelled"  # no worker holds it: final at once
    real_api = batchlane._api
    retried: list[int] = []

    def api_while_the_user_retries(settings):
        client = real_api(settings)
        real_retrieve = client.batches.retrieve

        def retrieve(*args, **kwargs):
            found = real_retrieve(*args, **kwargs)
            if not retried:  # the poller's read of the batch, between its read of the job and its cancel
                retried.append(api.call("post", f"/jobs/{job_id}/retry")[0])
            return found

        client.batches.retrieve = retrieve
        return client

    monkeypatch.setattr(batchlane, "_api", api_while_the_user_retries)
    assert batchlane.poll(model_settings)["waiting"] == 1
    assert retried == [202] and sim.batches.cancels == []  # the live job's batch runs on
    drain({job_id}, model_settings)  # the retried job's invocation finds it waiting on that batch
    assert Job.get(job_id, consistent_read=True).batch_id == waiting.batch_id
    sim.configure(batch_delay=0.0)
    assert batchlane.poll(model_settings)["collected"] == 1
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    done = api.job(job_id)
    assert done["status"] == "Completed" and done["usage"]["modelRequests"] == 2  # 15 vendors, 10 a request
    assert sim.stats(include_log=False)["requests"] == 0 and sim.batches.cancels == []


@pytest.mark.sim(batch_delay=0.0)
def test_a_fanned_out_batch_job_works_its_chunks_from_the_collected_answers(api, sim, model_settings):
    fanout = dataclasses.replace(model_settings, fanout_threshold_lines=100, chunk_lines=60, line_batch_size=25)
    lines = expense_lines(300, vendors(40))
    job_id = generate(api, lines, {"lane": "batch"})
    _wait_on_batch(job_id, fanout)
    assert batchlane.poll(fanout)["collected"] == 1
    drain({job_id}, fanout)
    assert_every_line_once(api, job_id, lines)
    job = api.job(job_id)
    assert int(Job.get(job_id).chunk_count) == 5
    assert sim.stats(include_log=False)["requests"] == 0  # every chunk answered from the batch
    assert job["usage"]["modelRequests"] == 4 and job["processedLines"] == 300


def test_an_unknown_lane_is_400_and_creates_nothing(api):
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    status, body = api.call("post", "/reports", {"reportId": report_id, "name": "Lanes", "lane": "cheap",
                                                 "deliveryTargets": [{"type": "api", "mode": "async"}]})
    assert status == 400 and body["field"] == "lane"
    assert api.call("get", f"/reports/{report_id}")[0] == 404
    assert api.call("post", "/reports", {"reportId": report_id, "name": "Lanes",
                                         "deliveryTargets": [{"type": "api", "mode": "async"}]})[0] == 201
    assert api.call("post", "/expenses", {"lines": expense_lines(3, vendors(2))})[0] == 201
    status, body = api.call("post", f"/reports/{report_id}/generate", {"period": "2026-01", "lane": "cheap"})
    assert status == 400 and body["field"] == "lane"
    assert api.call("get", "/jobs")[1]["totalCount"] == 0


def test_usage_of_requests_answered_before_a_long_rate_limit_wait_is_counted_with_the_hand_back(
        api, sim, model_settings):
    from chalicelib import worker

    # Unpaced (no limits to learn: three requests out at once), so that two are answered while one meets the 429;
    # a fleet learning its limits sends one probe first, and its 429 would hold the other two.
    settings = dataclasses.replace(model_settings, model_concurrency=3, openai_limit_learn=False)
    sim.configure(rate_limit_burst=1, burst_retry_after=30)  # one of the three requests: 429, retry in 30 s
    lines = expense_lines(30, vendors(30))
    job_id = generate(api, lines)
    deliver(receive({job_id}), Ctx(), settings)
    waiting = api.job(job_id)
    assert waiting["status"] == "Processing" and waiting["processedLines"] == 0
    assert waiting["usage"]["modelRequests"] == 2  # the two answered: written with the hand-back, not lost
    worker.run_job(job_id, "rate_limited", Ctx(), settings)  # what SQS hands over 30 s later
    assert_every_line_once(api, job_id, lines)
    stats = sim.stats(include_log=False)
    assert api.job(job_id)["usage"]["modelRequests"] == stats["ok"] == 3
    assert api.job(job_id)["usage"]["inputTokens"] == stats["tokens"]["prompt"]


@pytest.mark.sim(batch_delay=0.0)
def test_a_waiting_job_the_poller_lost_is_listed_again_by_the_reapers_message(api, sim, model_settings):
    from chalicelib import worker
    from chalicelib.tables import Control
    from tests.support import Ctx

    lines = expense_lines(20, vendors(8))
    job_id = generate(api, lines, {"lane": "batch"})
    _wait_on_batch(job_id, model_settings)
    # The submitter died between recording the batch on the job and listing it for the poller:
    Control(batchlane.PENDING).update(actions=[Control.stamps[job_id].remove()])
    assert batchlane.poll(model_settings)["collected"] == 0
    worker.run_job(job_id, "reaped", Ctx(), model_settings)  # the reaper re-enqueues the stale job
    assert Job.get(job_id, consistent_read=True).batch_state == "submitted"  # no second batch
    assert batchlane.poll(model_settings)["collected"] == 1
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)


def test_scheduled_jobs_take_the_batch_lane_unless_their_report_names_one(api):
    from datetime import UTC, datetime

    from chalicelib import schedules

    reports = {}
    for lane in (None, "flex"):
        report_id = f"r-{uuid.uuid4().hex[:12]}"
        assert api.call("post", "/reports", {"reportId": report_id, "name": "Scheduled", "schedule": {
            "type": "monthly", "day": 27}, "deliveryTargets": [{"type": "api", "mode": "async"}],
            **({"lane": lane} if lane else {})})[0] == 201
        reports[report_id] = lane
    assert schedules.run_due(datetime(2026, 5, 27, 0, 5, tzinfo=UTC))["created"] >= 2
    jobs = {j["reportId"]: j for j in api.call("get", "/jobs?pageSize=100")[1]["items"]}
    assert {r: jobs[r]["lane"] for r in reports} == {r: lane or "batch" for r, lane in reports.items()}
    assert all(jobs[r]["trigger"] == "schedule" for r in reports)
    # The same report generated through the API: its own lane, else standard.
    assert api.call("post", "/expenses", {"lines": expense_lines(2, vendors(2), period="2026-03")})[0] == 201
    for report_id, lane in reports.items():
        status, job = api.call("post", f"/reports/{report_id}/generate", {"period": "2026-03"})
        assert status == 202 and job["lane"] == (lane or "standard")


@pytest.mark.sim(latency=1.5)
def test_a_flex_request_may_take_longer_than_the_clients_timeout(api, sim, model_settings):
    # Flex queues requests (OpenAI advises timeouts of up to 15 minutes): a flex request waits as long as the
    # invocation can, where a standard one gives up at OPENAI_TIMEOUT_SECONDS.
    settings = dataclasses.replace(model_settings, openai_timeout_seconds=0.5)
    lines = expense_lines(10, vendors(5))
    job_id = generate(api, lines, {"lane": "flex"})
    drain({job_id}, settings)
    assert_every_line_once(api, job_id, lines)
    job = api.job(job_id)
    assert job["failedLines"] == 0 and job["retryCount"] == 0 and job["usage"]["modelRequests"] == 1


@pytest.mark.sim(batch_delay=3600.0)
def test_find_takes_back_only_a_batch_of_the_same_job_and_plan(sim):
    """The provider's list, newest first and a page at a time, searched by metadata: the newest batch of the job's
    plan (a cancelled one too: what it answered is billed, and its job collects it), not one of another job or of
    another plan of the job, nor one older than the lookback, nor one of a status the caller skips."""
    import time

    from chalicelib.categorize import batch as provider_batch
    from chalicelib.categorize import provider
    from chalicelib.categorize.types import Item

    api = provider.client("sk-test", sim.url, 10.0)
    line = provider_batch.request_line("r0", MODEL, [Item("v0", "ACME", "")], ["Travel", "Meals"], "k")

    def create(job: str, plan: str) -> str:
        return provider_batch.submit(api, [line], {"jobId": job, "plan": plan})

    first = create("j1", "p1")
    other_job = create("j2", "p1")
    other_plan = create("j1", "p2")
    cancelled = create("j1", "p1")
    api.batches.cancel(cancelled)
    now = time.time()
    assert provider_batch.find(api, {"jobId": "j1", "plan": "p1"}, now).id == cancelled  # the newest
    assert provider_batch.find(api, {"jobId": "j1", "plan": "p1"}, now, skip=("cancelling", "cancelled")).id == first
    assert provider_batch.find(api, {"jobId": "j1", "plan": "p2"}, now).id == other_plan
    assert provider_batch.find(api, {"jobId": "j3", "plan": "p1"}, now) is None
    assert provider_batch.find(api, {"jobId": "j1", "plan": "p1"},
                               now + provider_batch.FIND_LOOKBACK_SECONDS + 60) is None
    # Two to a page: the SDK follows `has_more` / `after` through all four, newest first.
    assert api.batches.list(limit=2).has_more
    assert [b.id for b in api.batches.list(limit=2)] == [cancelled, other_plan, other_job, first]


@pytest.mark.sim(batch_delay=3600.0)
def test_an_invocation_that_took_back_the_batch_its_job_records_does_not_cancel_it(api, sim, model_settings):
    """Two invocations of one job: the first records the batch; the second (whose lease is not, or no longer, the
    job's), which loaded the job between the first's intent and its record, finds the same batch by its metadata,
    and its own write is refused. It must leave the batch alone: it is the job's."""
    import time
    import types

    from chalicelib.jobs.store.lease import Lease

    lines = expense_lines(30, vendors(15))
    job_id = generate(api, lines, {"lane": "batch"})
    stale = Job.get(job_id, consistent_read=True)
    waiting = _wait_on_batch(job_id, model_settings)
    stale.batch_intent = waiting.batch_plan_key  # as loaded between the intent and the record
    second = types.SimpleNamespace(job=stale, settings=model_settings, backend=object(),
                                   lease=Lease(f"second-{uuid.uuid4().hex[:8]}", time.time() + 60))
    assert batchlane.submit(second)  # it stops: the job waits on its batch
    assert sim.batches.cancels == []
    assert [b["id"] for b in sim.batches.batches.values()] == [waiting.batch_id]  # taken back, not made again
    job = Job.get(job_id, consistent_read=True)
    assert (job.batch_id, job.batch_state) == (waiting.batch_id, "submitted")


def test_a_leftover_intent_with_no_batch_at_the_provider_is_cleared_and_the_job_works_on(api, sim, model_settings):
    """An invocation wrote the intent and died before the create (or the batch was cancelled): with every vendor
    cached meanwhile there is nothing to send; the intent goes, so later invocations do not read the provider's
    list again, and the job is worked from the cache."""
    from chalicelib.categorize import cache
    from chalicelib.categorize.normalize import normalize_vendor

    names = vendors(5)
    lines = expense_lines(20, names)
    job_id = generate(api, lines, {"lane": "batch"})
    job = Job.get(job_id, consistent_read=True)
    Job(job_id).update(actions=[Job.batch_intent.set(f"results/batches/{job_id}/1/plan.json")])
    categories = list(job.categories)
    cache.remember_many(categories, [(normalize_vendor(v), categories[0], 0.99) for v in names], MODEL,
                        tenant=job.tenant or job.owner_id)
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    done = Job.get(job_id, consistent_read=True)
    assert done.status == "Completed" and done.batch_intent is None and done.batch_id is None
    assert sim.batches.batches == {} and sim.stats(include_log=False)["requests"] == 0


@pytest.mark.sim(batch_delay=3600.0)
def test_a_failed_list_keeps_a_stopped_jobs_intended_batch_watched(api, sim, model_settings, monkeypatch):
    """The poller looks for the batch a stopped job intended; the provider's list fails once: the job stays
    listed (it is not let go with its batch running), and the next poll cancels the batch."""
    import types

    from chalicelib.categorize import batch as provider_batch
    from chalicelib.categorize import provider
    from chalicelib.categorize.types import Item

    job_id = generate(api, expense_lines(10, vendors(3)), {"lane": "batch"})
    assert api.call("delete", f"/jobs/{job_id}")[0] == 200  # queued: final at once
    real = provider.client("sk-test", sim.url, 10.0)
    plan = f"results/batches/{job_id}/1/plan.json"
    line = provider_batch.request_line("r0", MODEL, [Item("v0", "ACME", "")], ["Travel", "Meals"], "k")
    orphan = provider_batch.submit(real, [line], {"jobId": job_id, "plan": plan})
    Job(job_id).update(actions=[Job.batch_intent.set(plan)])
    batchlane.list_pending(job_id)
    failures = [ConnectionError("the provider's list is unreachable")]

    def listing(**kwargs):
        if failures:
            raise failures.pop()
        return real.batches.list(**kwargs)

    flaky = types.SimpleNamespace(batches=types.SimpleNamespace(list=listing, cancel=real.batches.cancel))
    monkeypatch.setattr(batchlane, "_api", lambda settings: flaky)
    batchlane.poll(model_settings)
    assert sim.batches.cancels == []
    assert job_id in Control.get(batchlane.PENDING, consistent_read=True).stamps.as_dict()  # still watched
    batchlane.poll(model_settings)
    assert sim.batches.cancels == [orphan]
