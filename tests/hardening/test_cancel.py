"""A cancel is final (Cancelled, counts true) within seconds in every state: queued, running, waiting out a 429
inline or in the queue, fanned out into chunks, or with no worker holding the job at all.

Where a worker is busy, each test checks the order of events, not a stopwatch: the job is Cancelled while that
worker is still blocked (on a slow provider, in a 429 wait), so the cancel did not wait for it.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest

from chalicelib.jobs import chunks, runner
from chalicelib.settings import get_settings
from chalicelib.tables import ExpenseLine, LineResult
from tests.integration.test_worker import Api
from tests.support import Ctx, deliver, drain, expense_lines, receive, vendors, wait_for

# The bound the tests hold a cancel to while a worker is blocked for longer than that.
FINAL_WITHIN = 4.0
BLOCKED_FOR = 7.0


@pytest.fixture
def model(sim):
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               line_batch_size=20, line_read_ahead=1, model_batch_size=20, model_concurrency=1,
                               # Learning sends one request alone until the limits are known: with the provider
                               # blocked for BLOCKED_FOR, the chunks' requests would not all be in flight at once.
                               openai_limit_learn=False)


def in_background(messages: list, settings) -> threading.Thread:
    worker = threading.Thread(target=deliver, args=(messages, Ctx(), settings), daemon=True)
    worker.start()
    return worker


def counted_lines(api: Api, job_id: str) -> int:
    """Lines up to the job's checkpoint (a whole job's cursor), from the imported lines themselves."""
    from chalicelib.tables import Job

    job = Job.get(job_id, consistent_read=True)
    if not job.cursor:
        return 0
    key = f"{job.owner_id}#{job.period}"
    return sum(1 for line in ExpenseLine.query(key, consistent_read=True) if line.line_id <= job.cursor)


def cancel_while(api: Api, job_id: str, worker: threading.Thread, requested: str) -> dict:
    answer = api.call("delete", f"/jobs/{job_id}")
    assert answer[0] == 200 and answer[1]["status"] == requested, answer
    wait_for(lambda: api.job(job_id)["status"] == "Cancelled", FINAL_WITHIN, interval=0.1,
             what="the cancel to be final")
    assert worker.is_alive(), "the worker was no longer blocked: this test did not show that the cancel skips it"
    stopped = api.job(job_id)
    worker.join(30)
    after = api.job(job_id)  # the blocked batch came back after the cancel: it counts nowhere
    assert (after["status"], after["processedLines"], after["failedLines"]) == \
        ("Cancelled", stopped["processedLines"], stopped["failedLines"])
    return after


def test_a_cancel_is_final_while_the_batch_waits_on_a_slow_provider(api, sim, model):
    sim.configure(latency=BLOCKED_FOR)
    lines = expense_lines(60, vendors(60))
    job_id = api.start(lines)
    worker = in_background(receive({job_id}), model)
    wait_for(lambda: sim.stats()["requests"] >= 1, 10, what="the first model request")
    job = cancel_while(api, job_id, worker, "CancellationRequested")
    assert job["processedLines"] == counted_lines(api, job_id) == 0


def test_a_cancel_is_final_while_the_worker_sits_out_a_429_inline(api, sim, model):
    sim.configure(rate_limit_burst=1, burst_retry_after=BLOCKED_FOR)
    job_id = api.start(expense_lines(60, vendors(60)))
    worker = in_background(receive({job_id}), dataclasses.replace(model, inline_wait_max_seconds=30))
    wait_for(lambda: sim.stats()["rate_limited"] >= 1, 10, what="the 429")
    job = cancel_while(api, job_id, worker, "CancellationRequested")
    assert job["processedLines"] == counted_lines(api, job_id)


def test_a_cancel_is_final_at_once_while_the_job_waits_in_the_queue_for_a_429(api, sim, model):
    sim.configure(rate_limit_burst=1, burst_retry_after=120)
    job_id = api.start(expense_lines(60, vendors(60)))
    deliver(receive({job_id}), Ctx(), dataclasses.replace(model, inline_wait_max_seconds=1))
    assert api.job(job_id)["status"] == "Processing"  # handed back to the queue with a delay, no lease held
    status, job = api.call("delete", f"/jobs/{job_id}")
    assert (status, job["status"], job["processedLines"]) == (200, "Cancelled", counted_lines(api, job_id))


def test_a_cancel_is_final_at_once_between_two_invocations_and_the_continuation_changes_nothing(api):
    lines = expense_lines(60, vendors(20))
    job_id = api.start(lines)
    short = dataclasses.replace(get_settings(), line_batch_size=20, line_read_ahead=1,
                                lambda_time_reserve_seconds=300)  # one batch, then a continuation
    deliver(receive({job_id}), Ctx(), short)
    status, job = api.call("delete", f"/jobs/{job_id}")
    assert (status, job["status"], job["processedLines"]) == (200, "Cancelled", 20)
    drain({job_id}, short)  # the continuation finds the job Cancelled
    after = api.job(job_id)
    assert (after["status"], after["processedLines"]) == ("Cancelled", 20) == ("Cancelled", counted_lines(api, job_id))
    assert sum(1 for _ in LineResult.query(job_id, consistent_read=True)) == 20


def test_a_cancel_is_final_while_chunks_wait_on_a_slow_provider(api, sim, model):
    # fair_shares off: the test needs all 3 chunk messages at once, not a tenant's window of them
    fanout = dataclasses.replace(model, fanout_threshold_lines=50, chunk_lines=40, fair_shares=False)
    job_id = api.start(expense_lines(120, vendors(120)))
    deliver(receive({job_id}), Ctx(), fanout)  # split into 3 chunks
    sim.configure(latency=BLOCKED_FOR)
    parts = receive({job_id})
    assert len(parts) == 3
    workers = [in_background([m], fanout) for m in parts]
    wait_for(lambda: sim.stats()["requests"] >= 3, 10, what="every chunk's first model request")
    job = cancel_while(api, job_id, workers[0], "CancellationRequested")
    for worker in workers:
        worker.join(30)
    assert job["processedLines"] == sum(int(c.processed) for c in chunks.of(job_id)) == 0


def test_the_last_chunk_finishing_after_a_cancel_request_completes_the_cancel(api, model, monkeypatch):
    fanout = dataclasses.replace(get_settings(), fanout_threshold_lines=50, chunk_lines=40, line_batch_size=40)
    job_id = api.start(expense_lines(80, vendors(20)))
    deliver(receive({job_id}), Ctx(), fanout)
    real_finish = chunks.finish
    requested = []

    def cancel_then_finish(*args):
        if len(requested) == 1:  # the second (last) chunk: a cancel arrives just before it is counted done
            requested.append(api.call("delete", f"/jobs/{job_id}")[1]["status"])
        else:
            requested.append("first")
        return real_finish(*args)

    monkeypatch.setattr(chunks, "finish", cancel_then_finish)
    drain({job_id}, fanout)
    assert requested == ["first", "CancellationRequested"]
    job = api.job(job_id)
    assert (job["status"], job["processedLines"]) == ("Cancelled", 80)


@pytest.mark.parametrize("fanned_out", [False, True], ids=["whole job", "chunk"])
def test_a_cancel_requested_just_before_a_429_hand_back_is_completed_by_the_worker(api, sim, model, monkeypatch,
                                                                                   fanned_out):
    settings = dataclasses.replace(model, inline_wait_max_seconds=1,
                                   **({"fanout_threshold_lines": 50, "chunk_lines": 40} if fanned_out else {}))
    job_id = api.start(expense_lines(60, vendors(60)))
    messages = receive({job_id})
    if fanned_out:
        deliver(messages, Ctx(), settings)  # the split
        messages = receive({job_id})[:1]
    sim.configure(rate_limit_burst=1, burst_retry_after=120)  # the batch goes back to the queue for 2 minutes
    module = chunks if fanned_out else runner
    real_hand_back, asked = module.hand_back, []

    def cancel_then_hand_back(*args, **kwargs):
        asked.append(api.call("delete", f"/jobs/{job_id}")[1]["status"])  # the lease is still live: asked of us
        return real_hand_back(*args, **kwargs)

    monkeypatch.setattr(module, "hand_back", cancel_then_hand_back)
    deliver(messages, Ctx(), settings)
    assert asked == ["CancellationRequested"]
    job = api.job(job_id)
    assert (job["status"], job["processedLines"]) == ("Cancelled", 0)


def test_a_cancel_written_just_after_the_worker_let_the_job_go_is_completed_by_the_api(api, sim, model, monkeypatch):
    from chalicelib.jobs import service

    job_id = api.start(expense_lines(60, vendors(60)))
    sim.configure(rate_limit_burst=1, burst_retry_after=120)
    deliver(receive({job_id}), Ctx(), dataclasses.replace(model, inline_wait_max_seconds=1))
    real_worked_now, looks = service._worked_now, []

    def live_at_first_look(job):  # the API looked while the worker still held the lease...
        looks.append(job.job_id)
        return True if len(looks) == 1 else real_worked_now(job)

    monkeypatch.setattr(service, "_worked_now", live_at_first_look)
    status, job = api.call("delete", f"/jobs/{job_id}")  # ...and writes after the worker let it go
    assert (status, job["status"]) == (200, "Cancelled") and len(looks) == 2
