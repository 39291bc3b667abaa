"""The worker against a moto server and the provider simulator, through the real openai client."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from decimal import Decimal

import pytest

from chalicelib import faults
from chalicelib.settings import get_settings
from chalicelib.tables import LineResult
from tests.driver import Driver as Api  # the name these tests, and the modules importing it from here, use
from tests.support import Ctx, deliver, deliver_until, drain, expense_lines, receive, vendors, wait_for


@pytest.fixture
def model_settings(sim):
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               line_batch_size=40, line_read_ahead=4, model_batch_size=10, model_concurrency=3,
                               inline_wait_max_seconds=3.0)


def assert_every_line_once(api: Api, job_id: str, lines: list[dict]) -> dict:
    """Completed, and the report is the imported lines exactly: each once, as imported, in its totals once.

    Every figure is checked against the input and the report's own lines, never a counter against itself.
    """
    job = api.job(job_id)
    assert job["status"] == "Completed", job
    result = api.result(job_id)
    imported = {line["lineId"]: line for line in lines}
    reported = [line["lineId"] for line in result["lines"]]
    assert len(reported) == len(set(reported)) and set(reported) == set(imported)
    for line in result["lines"]:
        given = imported[line["lineId"]]
        assert (line["vendor"], line["amount"], line["currency"], line["date"]) == \
            (given["vendor"], given["amount"], given["currency"], given["date"])
    assert job["processedLines"] == job["totalLines"] == len(lines)
    flagged = [line for line in result["lines"] if line["needsReview"]]
    assert job["failedLines"] == result["needsReview"] == len(flagged)
    # Totals: every categorized line once, in its own category and currency, at its imported amount.
    expected: dict[tuple[str, str], list] = {}
    for line in result["lines"]:
        if not line["needsReview"]:
            bucket = expected.setdefault((line["category"], line["currency"]), [Decimal(0), 0])
            bucket[0] += Decimal(imported[line["lineId"]]["amount"])
            bucket[1] += 1
    assert {(t["category"], t["currency"]): [Decimal(t["amount"]), t["lines"]] for t in result["totals"]} == expected
    assert sum(t["lines"] for t in result["totals"]) + len(flagged) == len(lines)
    assert job["cachedLines"] == sum(line["source"] == "cache" for line in result["lines"])
    return result


def test_job_completes_with_every_line_once_in_few_model_requests(api, sim, model_settings):
    lines = expense_lines(300, vendors(90))
    job_id = api.start(lines)
    drain({job_id}, model_settings)
    result = assert_every_line_once(api, job_id, lines)
    assert result["needsReview"] == 0
    assert {line["source"] for line in result["lines"]} <= {"model", "cache"}
    # 90 distinct vendors, 10 per request: at most one request per vendor batch per line batch.
    assert sim.stats()["requests"] <= 300 // 40 * 4 + 4
    assert sum(t["lines"] for t in result["totals"]) == 300


@pytest.mark.parametrize("point, read_ahead", [
    *((p, 1) for p in faults.POINTS),
    # Read whole at the start (120 lines within 40 x 4): one batch, whose results and report go out together
    # and whose checkpoint is the Completed write (worker.completion.complete with the last batch). No continuation.
    *((p, 4) for p in faults.POINTS if p != "before_continuation_send"),
])
def test_crash_at_each_step_loses_nothing_and_counts_nothing_twice(api, model_settings, monkeypatch, point,
                                                                    read_ahead):
    lines = expense_lines(120, vendors(30))
    job_id = api.start(lines)
    crashed = []

    def crash_once(name: str) -> None:
        if name == point and not crashed:
            crashed.append(name)
            raise RuntimeError(f"injected crash at {name}")

    monkeypatch.setattr(faults, "point", crash_once)
    # A short budget forces a continuation after each batch, so every point is reached.
    settings = dataclasses.replace(model_settings, lambda_time_reserve_seconds=300, line_read_ahead=read_ahead)
    drain({job_id}, settings)
    assert crashed == [point]
    assert_every_line_once(api, job_id, lines)


def test_every_message_delivered_twice_gives_the_same_result(api, model_settings):
    lines = expense_lines(150, vendors(40))
    job_id = api.start(lines)
    settings = dataclasses.replace(model_settings, lambda_time_reserve_seconds=300)
    drain({job_id}, settings, twice=True)
    assert_every_line_once(api, job_id, lines)


def test_two_workers_on_one_job_at_once_never_double_count(api, model_settings, sim):
    sim.configure(latency=0.05)
    lines = expense_lines(200, vendors(60))
    job_id = api.start(lines)
    messages = receive({job_id})
    threads = [threading.Thread(target=deliver, args=(messages, Ctx(), model_settings)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)


def test_429_storm_completes_and_no_request_leaves_before_the_provider_allows(api, sim, model_settings):
    # A request already on its way when another thread's 429 left cannot know of it: the simulator treats arrivals
    # within `early_grace` of the 429 as in flight. 0.05 s (its default) is shorter than a loaded 2-core CI
    # machine's scheduling delay between a send and its arrival, so the grace here is 0.3 s of a 1 s window.
    sim.configure(rate_limit_burst=12, burst_retry_after=1.0, early_grace=0.3)
    lines = expense_lines(120, vendors(40))
    job_id = api.start(lines)
    # Delayed messages included: on a loaded machine a wait past INLINE_WAIT_MAX hands the job back with a delay,
    # and a drain of what is visible now would stop with the job still Processing.
    deliver_until({job_id}, lambda: api.job(job_id)["status"] in ("Completed", "Failed"), model_settings)
    assert_every_line_once(api, job_id, lines)
    stats = sim.stats()
    assert stats["rate_limited"] >= 12
    assert stats["early_retries"] == 0
    job = api.job(job_id)
    assert job["retryCount"] >= 12
    events = api.call("get", f"/jobs/{job_id}/events")[1]["items"]
    assert any(e["type"] == "rate_limited" for e in events)


def test_long_retry_after_requeues_with_delay_then_resumes(api, sim, model_settings):
    sim.configure(rate_limit_burst=1, burst_retry_after=30)
    lines = expense_lines(30, vendors(10))
    job_id = api.start(lines)
    deliver(receive({job_id}), Ctx(), model_settings)
    job = api.job(job_id)
    assert job["status"] == "Processing" and job["processedLines"] == 0
    assert receive({job_id}) == []  # the continuation is delayed, not visible yet
    events = api.call("get", f"/jobs/{job_id}/events")[1]["items"]
    delayed = [e for e in events if e["type"] == "rate_limited"]
    assert delayed and delayed[-1]["detail"]["requeuedWithDelaySeconds"] == 30
    # What SQS would hand over 30 s later:
    from chalicelib import worker
    worker.run_job(job_id, "rate_limited", Ctx(), model_settings)
    assert_every_line_once(api, job_id, lines)
    assert "resumed" in [e["type"] for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"]]


def test_malformed_and_partial_answers_end_as_flagged_lines_not_a_failed_job(api, sim, model_settings):
    sim.configure(pmalformed=0.3, pmissing=0.4, pbadcategory=0.2)
    lines = expense_lines(150, vendors(50))
    job_id = api.start(lines)
    drain({job_id}, model_settings)
    result = assert_every_line_once(api, job_id, lines)
    assert result["needsReview"] > 0
    flagged = [line for line in result["lines"] if line["needsReview"]]
    assert all(line["category"] is None for line in flagged)


@pytest.mark.parametrize("fault,words", [({"quota_exhausted": True}, "quota"), ({"auth_error": True}, "API key")])
def test_account_errors_fail_the_job_at_once_with_an_actionable_message(api, sim, model_settings, fault, words):
    sim.configure(**fault)
    job_id = api.start(expense_lines(20, vendors(5)))
    drain({job_id}, model_settings)
    job = api.job(job_id)
    assert job["status"] == "Failed"
    assert words in job["errorMessage"]
    assert sim.stats()["requests"] == 1


def test_server_errors_are_retried_three_times_then_the_lines_are_flagged(api, sim, model_settings):
    fast = ({"ErrorEquals": ["Provider.ServerError", "Provider.Timeout", "Provider.Connection"],
             "IntervalSeconds": 0.01, "BackoffRate": 2.0, "MaxAttempts": 3},)
    settings = dataclasses.replace(model_settings, retry_policy=fast)
    sim.configure(fail_first=1000, fail_status=500)
    lines = expense_lines(10, vendors(3))
    job_id = api.start(lines)
    drain({job_id}, settings)
    result = assert_every_line_once(api, job_id, lines)
    assert result["needsReview"] == 10
    assert sim.stats()["requests"] == 4  # the first attempt and 3 retries, then the lines are flagged
    assert api.job(job_id)["retryCount"] == 3


def test_cancel_stops_a_processing_job_within_10_seconds_and_keeps_done_lines(api, sim, model_settings):
    sim.configure(latency=0.3)
    # About 20 waves of 0.3 s or more: the cancel lands mid-job even when a loaded CI machine sees the first
    # checkpoint late (400 lines, 7 waves, once completed before the DELETE: 409).
    lines = expense_lines(1200, vendors(600))
    job_id = api.start(lines)
    messages = receive({job_id})
    worker = threading.Thread(target=deliver, args=(messages, Ctx(), model_settings))
    worker.start()
    wait_for(lambda: api.job(job_id)["processedLines"] > 0, 20, what="first checkpoint")
    asked = time.monotonic()
    status, body = api.call("delete", f"/jobs/{job_id}")
    assert status == 200 and body["status"] in ("CancellationRequested", "Cancelled")
    wait_for(lambda: api.job(job_id)["status"] == "Cancelled", 10, what="Cancelled")
    assert time.monotonic() - asked < 10
    worker.join(30)
    job = api.job(job_id)
    assert 0 < job["processedLines"] < 1200
    assert len(list(LineResult.query(job_id))) >= job["processedLines"]
    assert api.call("get", f"/jobs/{job_id}/result")[0] == 409


def test_retry_after_failure_redoes_nothing_that_was_done(api, sim, model_settings, monkeypatch):
    lines = expense_lines(160, vendors(160))  # every line its own vendor: no cache help for the rest
    job_id = api.start(lines)
    settings = dataclasses.replace(model_settings, lambda_time_reserve_seconds=300)
    checkpoints = []

    def quota_after_two_batches(name: str) -> None:
        if name == "after_checkpoint":
            checkpoints.append(name)
            if len(checkpoints) == 2:
                sim.configure(quota_exhausted=True)

    monkeypatch.setattr(faults, "point", quota_after_two_batches)
    drain({job_id}, settings)
    failed = api.job(job_id)
    assert failed["status"] == "Failed" and failed["processedLines"] == 80
    done_before = {r.line_id: (r.category, r.source) for r in LineResult.query(job_id)}
    asked_before = dict(sim.stats()["requests_by_vendor"])
    sim.configure(quota_exhausted=False)
    status, body = api.call("post", f"/jobs/{job_id}/retry")
    assert status == 202 and body["status"] == "Queued"
    drain({job_id}, settings)
    assert_every_line_once(api, job_id, lines)
    after = {r.line_id: (r.category, r.source) for r in LineResult.query(job_id)}
    assert all(after[k] == v for k, v in done_before.items() if k in after and v[0])
    asked_again = {v for v, n in sim.stats()["requests_by_vendor"].items() if n > asked_before.get(v, 0)}
    done_vendors = {line["vendor"].lower() for line in lines[:80]}
    assert not (asked_again & done_vendors)
    assert "retried" in [e["type"] for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"]]


def test_second_run_over_the_same_vendors_is_answered_from_the_cache(api, sim, model_settings):
    names = [v for v in vendors(30) if "ACME" not in v]  # vendors the model answers confidently (>= 0.8)
    first = api.start(expense_lines(100, names, "2026-03"), "2026-03")
    drain({first}, model_settings)
    sent = sim.stats()["requests"]
    second = api.start(expense_lines(100, names, "2026-04", prefix="ty"), "2026-04")
    drain({second}, model_settings)
    job = api.job(second)
    assert job["status"] == "Completed" and job["cachedLines"] == 100
    assert sim.stats()["requests"] == sent


def test_an_empty_period_the_schedule_generates_completes_with_an_empty_report_and_says_so(api):
    from datetime import UTC, datetime

    from chalicelib import schedules

    report_id = f"r-{uuid.uuid4().hex[:12]}"
    assert api.call("post", "/reports", {"reportId": report_id, "name": "Scheduled",
                                         "deliveryTargets": [{"type": "api", "mode": "async"}],
                                         "schedule": {"type": "monthly", "day": 27}})[0] == 201
    assert api.call("post", f"/reports/{report_id}/generate", {"period": "2025-06"})[0] == 422  # a user: refused
    schedules.run_due(datetime(2025, 7, 27, 0, 5, tzinfo=UTC))  # the schedule: its job, empty month or not
    [job_id] = [j["jobId"] for j in api.call("get", "/jobs")[1]["items"] if j["reportId"] == report_id]
    drain({job_id})
    job = api.job(job_id)
    assert (job["status"], job["trigger"], job["period"], job["totalLines"]) == ("Completed", "schedule", "2025-06", 0)
    assert job["statusMessage"] == "No expense lines for 2025-06; the report is empty"
    assert [(s["name"], s["status"]) for s in job["steps"]] == [
        ("collect", "Completed"), ("categorize", "Skipped"), ("assemble", "Completed")]
    result = api.result(job_id)
    assert (result["lines"], result["totals"], result["needsReview"]) == ([], [], 0)


def test_offline_rules_categorize_every_line(api):
    lines = expense_lines(50, vendors(20))
    job_id = api.start(lines)
    drain({job_id})
    result = assert_every_line_once(api, job_id, lines)
    assert {line["source"] for line in result["lines"]} == {"rules"}


@pytest.mark.parametrize("distinct, checkpoints", [(20, 1), (90, 3)])
def test_a_batch_grows_while_its_vendors_fit_one_wave_of_model_requests(api, model_settings, monkeypatch, distinct,
                                                                       checkpoints):
    # model_settings: 40 lines a batch, a wave of 3 requests x 10 vendors. 120 lines over 20 vendors need one
    # wave: one batch, one checkpoint. Over 90 vendors every 40 lines bring new ones: three batches.
    seen = []
    monkeypatch.setattr(faults, "point", lambda name: seen.append(name))
    lines = expense_lines(120, vendors(distinct))
    job_id = api.start(lines)
    drain({job_id}, model_settings)
    assert_every_line_once(api, job_id, lines)
    assert seen.count("after_checkpoint") == checkpoints


def test_the_report_built_from_what_the_worker_held_equals_one_read_back_from_the_table(api, model_settings,
                                                                                         monkeypatch):
    from chalicelib import results
    from chalicelib.tables import Job

    lines = expense_lines(150, vendors(12))
    lines[3]["description"] = '=HYPERLINK("x")'  # a formula cell, as the CSV escapes it
    job_id = api.start(lines)
    used = []
    assemble = results.assemble_counted

    def spy(*args, **kwargs):
        used.append(kwargs.get("written") is not None)
        return assemble(*args, **kwargs)

    monkeypatch.setattr(results, "assemble_counted", spy)  # the worker's one way to a report (completion.py)
    drain({job_id}, model_settings)  # one invocation did the whole job: the report came from memory
    monkeypatch.undo()
    assert used == [True]
    held = assert_every_line_once(api, job_id, lines)
    job = Job.get(job_id)
    key, needs_review = results.assemble(job, int(job.result_version) + 1)  # read back from the table
    body, _ = results.fetch(key, csv_format=False)
    table = json.loads(body)
    assert {k: v for k, v in table.items() if k != "generatedAt"} == {
        k: v for k, v in held.items() if k != "generatedAt"}
    held_csv, _ = results.fetch(job.result_key, csv_format=True)
    table_csv, _ = results.fetch(key, csv_format=True)
    assert held_csv == table_csv
