"""Work handed from one invocation to the next is never dropped, planned twice or counted twice.

Messages are handed to a second thread while their sender is still in its send call (tests.support.HandOff):
the interleaving a busy queue produces, where the receiver starts before the sender returned.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from chalicelib import faults
from chalicelib.jobs import chunks, runner
from chalicelib.settings import get_settings
from chalicelib.tables import Job, LineResult
from tests.integration.test_worker import assert_every_line_once
from tests.support import Ctx, HandOff, deliver, deliver_until, drain, expense_lines, receive, vendors


def test_a_continuation_received_while_its_sender_is_still_running_is_worked_not_dropped(api):
    lines = expense_lines(60, vendors(20))
    job_id = api.start(lines)
    # A budget already spent: one batch per invocation, then a continuation for the next.
    # fair_shares off: waiting entries other tests left behind would have the continuations deferred (tests/fair)
    # instead of handed over, which is what this test is about.
    short = dataclasses.replace(get_settings(), line_batch_size=10, line_read_ahead=1,
                                lambda_time_reserve_seconds=300, fair_shares=False)
    with HandOff(short) as handoff:
        drain({job_id}, short)
    assert handoff.handed >= 5  # every continuation went straight to another worker
    assert_every_line_once(api, job_id, lines)


def test_chunks_received_while_the_planner_is_still_running_are_assembled_without_the_reaper(api):
    lines = expense_lines(150, vendors(30))
    job_id = api.start(lines)
    fanout = dataclasses.replace(get_settings(), fanout_threshold_lines=100, chunk_lines=50, line_batch_size=25,
                                 fair_shares=False)  # every chunk sent at once, not a tenant's window
    with HandOff(fanout) as handoff:
        drain({job_id}, fanout)
    assert handoff.handed == 3
    assert_every_line_once(api, job_id, lines)


def test_a_retry_after_a_cancel_during_the_split_plans_once_and_counts_each_line_once(api, monkeypatch):
    lines = expense_lines(150, vendors(30))
    job_id = api.start(lines)
    fanout = dataclasses.replace(get_settings(), fanout_threshold_lines=100, chunk_lines=50, line_batch_size=25,
                                 fair_shares=False)  # every chunk sent at once, not a tenant's window
    real_plan = chunks.plan
    cancelled = []

    def cancel_first(*args):
        if not cancelled:
            cancelled.append(api.call("delete", f"/jobs/{job_id}")[1]["status"])
        return real_plan(*args)

    monkeypatch.setattr(chunks, "plan", cancel_first)
    deliver(receive({job_id}), Ctx(), fanout)
    assert cancelled == ["CancellationRequested"] and api.job(job_id)["status"] == "Cancelled"
    # Lines arrive meanwhile, sorting between the first plan's bounds: a second plan splits the month elsewhere.
    more = [dict(line, lineId=line["lineId"] + "-b") for line in expense_lines(40, vendors(10), prefix="tx")]
    assert api.call("post", "/expenses", {"lines": more})[0] == 201
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
    drain({job_id}, fanout)
    assert_every_line_once(api, job_id, lines + more)


def test_completion_refuses_counts_that_disagree_with_the_report(api, monkeypatch):
    lines = expense_lines(30, vendors(10))
    job_id = api.start(lines)
    small = dataclasses.replace(get_settings(), line_batch_size=10, line_read_ahead=1)
    passed = []

    def double_count(name: str) -> None:  # a line counted twice, as overlapping chunks once did
        if name == "after_checkpoint" and not passed:
            passed.append(name)
            Job(job_id).update(actions=[Job.processed_lines.add(1)])

    monkeypatch.setattr(faults, "point", double_count)
    drain({job_id}, small)
    job = api.job(job_id)
    assert job["status"] == "Failed", job
    assert "counted 31 lines but its report holds 30" in job["errorMessage"]


def test_a_retry_rechecks_flagged_lines_a_batch_per_checkpoint_within_the_invocation_budget(api, sim, monkeypatch):
    lines = expense_lines(100, vendors(100))
    job_id = api.start(lines)
    model = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                                line_batch_size=20, line_read_ahead=1, model_batch_size=20, model_concurrency=1)
    sim.configure(fail_first=100_000, fail_status=400)  # every request refused: each line flagged for review
    passed = []

    def cancel_at_third(name: str) -> None:
        if name == "after_checkpoint":
            passed.append(name)
            if len(passed) == 3:
                api.call("delete", f"/jobs/{job_id}")

    monkeypatch.setattr(faults, "point", cancel_at_third)
    drain({job_id}, model)
    stopped = api.job(job_id)
    assert (stopped["status"], stopped["processedLines"], stopped["failedLines"]) == ("Cancelled", 60, 60)
    monkeypatch.undo()
    sim.configure(fail_first=0)
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
    spent = dataclasses.replace(model, lambda_time_reserve_seconds=300)  # the budget is gone from the start
    deliver(receive({job_id}), Ctx(), spent)
    # One batch of the 60 flagged lines was asked again, checkpointed, and the rest handed to a continuation.
    assert api.job(job_id)["failedLines"] == 40
    continuation = receive({job_id})
    assert len(continuation) == 1
    deliver(continuation, Ctx(), spent)
    drain({job_id}, spent)
    result = assert_every_line_once(api, job_id, lines)
    assert result["needsReview"] == 0


def test_overlapping_waits_of_two_chunks_count_once_toward_the_ceiling(api):
    job_id = api.start(expense_lines(5, vendors(5)))
    now = time.time()
    assert runner.note_wait(job_id, 30, now + 30) == pytest.approx(30)
    assert runner.note_wait(job_id, 30, now + 30) == pytest.approx(0, abs=0.01)  # another chunk, the same window
    assert runner.note_wait(job_id, 30, now + 50) == pytest.approx(20)  # only the part past the first counts
    assert float(Job.get(job_id, consistent_read=True).rate_limited_seconds) == pytest.approx(50)


def test_a_fanned_out_job_under_a_permanent_429_fails_at_the_rate_limit_ceiling(api, sim):
    lines = expense_lines(150, vendors(150))
    job_id = api.start(lines)
    sim.configure(rate_limit_burst=1_000_000, burst_retry_after=2.0)
    model = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                                fanout_threshold_lines=100, chunk_lines=50, line_batch_size=25,
                                inline_wait_max_seconds=0.5, rate_limit_ceiling_seconds=5.0)
    deliver_until({job_id}, lambda: api.job(job_id)["status"] == "Failed", model, timeout=60)
    job = api.job(job_id)
    assert "rate-limiting" in job["errorMessage"] and job["processedLines"] == 0
    assert not any(True for _ in LineResult.query(job_id))
    # The chunks' waits reached the job (they were lost before): one event per wait sat out in the queue.
    waits = [e for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"] if e["type"] == "rate_limited"]
    assert waits and all("requeuedWithDelaySeconds" in e["detail"] for e in waits)


def test_a_retried_fanned_out_job_whose_recheck_spans_invocations_still_resends_its_unfinished_chunks(api, sim):
    lines = expense_lines(150, vendors(150))
    job_id = api.start(lines)
    model = dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                                fanout_threshold_lines=100, chunk_lines=50, line_batch_size=25, line_read_ahead=1,
                                model_batch_size=25, model_concurrency=1,
                                fair_shares=False)  # all 3 chunk messages at once, not a tenant's window
    sim.configure(fail_first=100_000, fail_status=400)  # every line flagged for review
    deliver(receive({job_id}), Ctx(), model)  # the split
    parts = receive({job_id})
    assert len(parts) == 3
    deliver(parts[:1], Ctx(), model)  # one chunk done (50 flagged lines), two waiting in the queue
    assert api.call("delete", f"/jobs/{job_id}")[1]["status"] == "Cancelled"
    deliver(parts[1:], Ctx(), model)  # they find the job Cancelled: only the retry can send them again
    assert api.job(job_id)["processedLines"] == 50
    sim.configure(fail_first=0)
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
    spent = dataclasses.replace(model, lambda_time_reserve_seconds=300)  # a recheck batch per invocation
    drain({job_id}, spent)
    result = assert_every_line_once(api, job_id, lines)
    assert result["needsReview"] == 0
