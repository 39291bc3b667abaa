"""Races: cancel vs the worker's last batch, retry vs the reaper, two creates with one Idempotency-Key, a
checkpoint vs a reap. Each ends in one true state with exact counts.

Interleavings are forced at the worker's named fault points (chalicelib.faults), so each race is run the
same way every time; the Idempotency-Key race is real concurrency against `chalice local`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from datetime import timedelta

import pytest
import requests

from chalicelib import clock, faults, reaper
from chalicelib.jobs import actions
from chalicelib.jobs.states import JobStatus
from chalicelib.settings import get_settings
from chalicelib.tables import Job, LineResult
from tests.integration.test_worker import Api, assert_every_line_once
from tests.support import drain, expense_lines, seed_body, vendors

TERMINAL_EVENTS = {"completed", "cancelled", "failed"}


@pytest.fixture
def api(client, token_for):
    return Api(client, token_for())


@pytest.fixture
def small_batches():
    return dataclasses.replace(get_settings(), line_batch_size=10)


def _events(api: Api, job_id: str) -> list[str]:
    return [e["type"] for e in api.call("get", f"/jobs/{job_id}/events")[1]["items"]]


def _stored_results(job_id: str) -> int:
    return sum(1 for _ in LineResult.query(job_id, consistent_read=True))


def _at_nth(monkeypatch, point: str, n: int, action) -> list:
    """Run `action` once, the `n`th time the worker passes `point`."""
    passed: list[str] = []

    def hook(name: str) -> None:
        if name == point:
            passed.append(name)
            if len(passed) == n:
                action()

    monkeypatch.setattr(faults, "point", hook)
    return passed


# --- cancel vs the last batch -------------------------------------------------------------------------------


@pytest.mark.parametrize("point, read_ahead, nth", [
    ("after_model_call", 1, 3), ("after_result_writes", 1, 3), ("after_checkpoint", 1, 3),
    # Read whole at the start (30 lines within 10 x 4): one batch, whose checkpoint would be the Completed write.
    ("after_model_call", 4, 1), ("after_result_writes", 4, 1),
])
def test_cancel_racing_the_last_batch_ends_cancelled_with_every_done_line_counted_once(
        api, small_batches, monkeypatch, point, read_ahead, nth):
    lines = expense_lines(30, vendors(10))
    job_id = api.start(lines)
    answers = []
    _at_nth(monkeypatch, point, nth, lambda: answers.append(api.call("delete", f"/jobs/{job_id}")))
    small_batches = dataclasses.replace(small_batches, line_read_ahead=read_ahead)
    drain({job_id}, small_batches)
    assert [a[0] for a in answers] == [200] and answers[0][1]["status"] == "CancellationRequested"
    job = api.job(job_id)
    assert job["status"] == "Cancelled"
    # The batch in flight when the cancel came is finished and counted, then the worker stops.
    assert job["processedLines"] == _stored_results(job_id) == 30
    events = _events(api, job_id)
    assert events.count("cancel_requested") == 1 and [e for e in events if e in TERMINAL_EVENTS] == ["cancelled"]
    assert api.call("get", f"/jobs/{job_id}/result")[0] == 409
    # Retried, it resumes from its checkpoint and counts nothing twice.
    monkeypatch.setattr(faults, "point", lambda name: None)
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
    drain({job_id}, small_batches)
    assert_every_line_once(api, job_id, lines)


def test_cancel_racing_report_assembly_ends_cancelled_and_never_completed(api, small_batches, monkeypatch):
    from chalicelib import results

    lines = expense_lines(30, vendors(10))
    job_id = api.start(lines)
    assemble, answers = results.assemble_counted, []

    def cancel_then_assemble(*args, **kwargs):
        if not answers:
            answers.append(api.call("delete", f"/jobs/{job_id}"))
        return assemble(*args, **kwargs)

    monkeypatch.setattr(results, "assemble_counted", cancel_then_assemble)
    drain({job_id}, small_batches)
    assert answers[0][0] == 200
    job = api.job(job_id)
    assert job["status"] == "Cancelled" and job["resultUrl"] is None
    assert job["processedLines"] == _stored_results(job_id) == 30
    assert [e for e in _events(api, job_id) if e in TERMINAL_EVENTS] == ["cancelled"]


def test_cancel_after_the_last_transition_is_409_and_the_job_stays_completed(api):
    lines = expense_lines(12, vendors(4))
    job_id = api.start(lines)
    drain({job_id})
    status, body = api.call("delete", f"/jobs/{job_id}")
    assert status == 409 and body["jobStatus"] == "Completed"
    assert_every_line_once(api, job_id, lines)


# --- retry vs the reaper ------------------------------------------------------------------------------------


def _age(job_id: str, seconds: int) -> None:
    """Make a job look as if it last changed `seconds` ago (what a job failed yesterday looks like)."""
    then = clock.iso(clock.now() - timedelta(seconds=seconds))
    Job(job_id).update(actions=[Job.heartbeat_at.set(then), Job.updated_at.set(then)])


def _stopped_job(api: Api, lines: list[dict], monkeypatch, small_batches) -> str:
    job_id = api.start(lines)
    _at_nth(monkeypatch, "after_checkpoint", 1, lambda: api.call("delete", f"/jobs/{job_id}"))
    drain({job_id}, small_batches)
    monkeypatch.setattr(faults, "point", lambda name: None)
    assert api.job(job_id)["status"] == "Cancelled"
    return job_id


def _worker_dies_after_first_checkpoint(api: Api, job_id: str, monkeypatch, settings) -> None:
    _at_nth(monkeypatch, "after_checkpoint", 1, lambda: (_ for _ in ()).throw(SystemExit("worker killed")))
    with pytest.raises(SystemExit):  # the message stays in flight (invisible for 1800 s), as after a SIGKILL
        drain({job_id}, settings)
    monkeypatch.setattr(faults, "point", lambda name: None)
    assert api.job(job_id)["status"] == "Processing"


def test_a_job_retried_long_after_it_stopped_is_not_mistaken_for_a_stale_one(api, small_batches, monkeypatch):
    lines = expense_lines(30, vendors(10))
    job_id = _stopped_job(api, lines, monkeypatch, small_batches)
    _age(job_id, 3600)
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
    reaper.reap(dataclasses.replace(get_settings(), stale_after_seconds=300))
    assert "reaped" not in _events(api, job_id)
    drain({job_id}, small_batches)
    assert_every_line_once(api, job_id, lines)


def test_retry_and_reaper_at_once_complete_the_job_exactly_once(api, small_batches, monkeypatch):
    lines = expense_lines(30, vendors(10))
    job_id = _stopped_job(api, lines, monkeypatch, small_batches)
    _age(job_id, 3600)
    eager = dataclasses.replace(get_settings(), stale_after_seconds=0)
    owner = Job.get(job_id).owner_id
    outcomes: list = []
    threads = [threading.Thread(target=lambda: outcomes.append(actions.retry_job(owner, job_id).status)),
               threading.Thread(target=lambda: outcomes.append(reaper.reap(eager)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 2  # neither side raised
    drain({job_id}, small_batches)
    assert_every_line_once(api, job_id, lines)
    events = _events(api, job_id)
    assert events.count("retried") == 1 and events.count("completed") == 1


def test_a_reaper_with_a_stale_view_never_fails_a_job_the_user_retried_meanwhile(api, small_batches, monkeypatch):
    lines = expense_lines(30, vendors(10))
    job_id = api.start(lines)
    # Its worker died after the first checkpoint, three times over: Processing with reap_count 3.
    _worker_dies_after_first_checkpoint(api, job_id, monkeypatch, small_batches)
    Job(job_id).update(actions=[Job.reap_count.set(3)])
    _age(job_id, 3600)
    cutoff = clock.iso(clock.now())
    sweep = reaper.stale_jobs(JobStatus.PROCESSING, cutoff)  # the reaper's read...
    assert job_id in {j.job_id for j in sweep}
    # ...then, before its write, the job fails (dead letter) and its owner retries it.
    reaper.dead_letter(json.dumps({"jobId": job_id}), "5")
    assert api.call("post", f"/jobs/{job_id}/retry")[0] == 202
    mine = [j for j in sweep if j.job_id == job_id]
    monkeypatch.setattr(reaper, "stale_jobs", lambda status, cut: mine if status is JobStatus.PROCESSING else [])
    reaper.reap(dataclasses.replace(get_settings(), stale_after_seconds=0))
    assert api.job(job_id)["status"] == "Queued"


def test_a_reaped_job_waiting_behind_a_backlog_is_sent_again_not_failed(api, small_batches, monkeypatch):
    lines = expense_lines(30, vendors(10))
    job_id = api.start(lines)
    _worker_dies_after_first_checkpoint(api, job_id, monkeypatch, small_batches)
    eager = dataclasses.replace(get_settings(), stale_after_seconds=0)
    for _ in range(4):  # every worker is busy: the re-sent message is not taken up before the next sweeps
        _age(job_id, 3600)
        reaper.reap(eager)
    assert api.job(job_id)["status"] == "Processing"
    drain({job_id}, small_batches)
    assert_every_line_once(api, job_id, lines)


# --- a checkpoint vs a reap --------------------------------------------------------------------------------


def test_a_reap_that_wins_against_a_checkpoint_loses_nothing_and_counts_nothing_twice(api, small_batches,
                                                                                      monkeypatch):
    lines = expense_lines(30, vendors(10))
    job_id = api.start(lines)
    eager = dataclasses.replace(get_settings(), stale_after_seconds=0)
    reaps: list = []
    _at_nth(monkeypatch, "after_result_writes", 2, lambda: reaps.append(reaper.reap(eager)))
    drain({job_id}, small_batches)
    assert reaps and reaps[0]["requeued"] >= 1
    assert_every_line_once(api, job_id, lines)
    events = _events(api, job_id)
    assert events.count("reaped") == 1 and events.count("completed") == 1
    assert api.job(job_id)["processedLines"] == _stored_results(job_id) == 30


def test_a_checkpoint_that_wins_against_a_reap_makes_the_reap_a_no_op(api, small_batches, monkeypatch):
    lines = expense_lines(30, vendors(10))
    job_id = api.start(lines)
    eager = dataclasses.replace(get_settings(), stale_after_seconds=0)
    seen: list = []
    outcome: list = []
    sweep = reaper.stale_jobs

    def hook(name: str) -> None:
        if name == "after_result_writes" and not seen:  # the reaper's read, before the checkpoint...
            seen.extend(j for j in sweep(JobStatus.PROCESSING, clock.iso(clock.now())) if j.job_id == job_id)
        elif name == "after_checkpoint" and seen and not outcome:  # ...its conditional write, after it
            monkeypatch.setattr(reaper, "stale_jobs",
                                lambda status, cut: list(seen) if status is JobStatus.PROCESSING else [])
            outcome.append(reaper.reap(eager))
            monkeypatch.setattr(reaper, "stale_jobs", sweep)

    monkeypatch.setattr(faults, "point", hook)
    deliveries = drain({job_id}, small_batches)
    # (Its delivery sweep is left out: other tests' finished jobs in this moto server may have deliveries due.)
    assert [{k: v for k, v in o.items() if k != "deliveries"} for o in outcome] == [
        {"requeued": 0, "failed": 0, "cancelled": 0, "skipped": 1, "linesDeleted": 0}]
    assert deliveries == 1  # nothing was re-enqueued: the live worker kept its lease and finished
    assert_every_line_once(api, job_id, lines)
    assert "reaped" not in _events(api, job_id)


# --- two creates with one Idempotency-Key -------------------------------------------------------------------


def _http_setup(api_stack: str, token) -> tuple[dict[str, str], str]:
    headers = {**token.headers, "Content-Type": "application/json"}
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    body = {"reportId": report_id, "name": "Race", "deliveryTargets": [{"type": "api", "mode": "async"}]}
    assert requests.post(f"{api_stack}/api/v1/reports", json=body, headers=headers, timeout=10).status_code == 201
    for month in range(1, 7):  # a line in each month the races generate (a month without lines: 422 `no-lines`)
        assert requests.post(f"{api_stack}/api/v1/expenses", json=seed_body(f"2026-{month:02d}"), headers=headers,
                             timeout=10).status_code == 201
    return headers, report_id


def _at_once(n: int, send) -> list[requests.Response]:
    barrier, out, lock = threading.Barrier(n), [], threading.Lock()

    def one(i: int) -> None:
        barrier.wait(10)
        response = send(i)
        with lock:
            out.append(response)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _jobs(api_stack: str, headers: dict[str, str]) -> list[dict]:
    return requests.get(f"{api_stack}/api/v1/jobs?pageSize=100", headers=headers, timeout=10).json()["items"]


def test_concurrent_creates_with_one_idempotency_key_create_one_job(api_stack, token_for):
    headers, report_id = _http_setup(api_stack, token_for())
    key = f"key-{uuid.uuid4()}"
    url = f"{api_stack}/api/v1/reports/{report_id}/generate"
    answers = _at_once(8, lambda i: requests.post(url, json={"period": "2026-01"}, timeout=30,
                                                  headers={**headers, "Idempotency-Key": key}))
    assert {r.status_code for r in answers} <= {202, 409}, [(r.status_code, r.text[:200]) for r in answers]
    accepted = {r.json()["jobId"] for r in answers if r.status_code == 202}
    assert len(accepted) == 1
    for r in answers:
        if r.status_code == 409:  # still in progress: the contract's problem+json, never a second job
            assert r.headers["Content-Type"].startswith("application/problem+json")
            assert "existingJobId" not in r.json() or r.json()["existingJobId"] in accepted
    assert [j["jobId"] for j in _jobs(api_stack, headers)] == list(accepted)
    replay = requests.post(url, json={"period": "2026-01"}, headers={**headers, "Idempotency-Key": key}, timeout=10)
    assert replay.status_code == 202 and replay.json()["jobId"] in accepted


def test_concurrent_creates_with_one_idempotency_key_and_different_bodies_create_one_job(api_stack, token_for):
    headers, report_id = _http_setup(api_stack, token_for())
    key = f"key-{uuid.uuid4()}"
    url = f"{api_stack}/api/v1/reports/{report_id}/generate"
    answers = _at_once(6, lambda i: requests.post(url, json={"period": f"2026-0{i + 1}"}, timeout=30,
                                                  headers={**headers, "Idempotency-Key": key}))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(202) == 1 and set(codes) <= {202, 409, 422}, codes
    assert len(_jobs(api_stack, headers)) == 1


# --- concurrent settles of one flagged line -----------------------------------------------------------------


def test_concurrent_settles_of_one_flagged_line_take_it_off_the_counts_once(api_stack, token_for):
    token = token_for()
    headers = {**token.headers, "Content-Type": "application/json"}
    base = f"{api_stack}/api/v1"
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    # No `Other` in the taxonomy: the offline rules flag every line they cannot place.
    body = {"reportId": report_id, "name": "Settle race", "categories": ["Airfare", "Lodging"],
            "deliveryTargets": [{"type": "api", "mode": "async"}]}
    assert requests.post(f"{base}/reports", json=body, headers=headers, timeout=10).status_code == 201
    lines = [{"lineId": f"tx-{n}", "date": "2026-01-05", "vendor": f"Zorblat Quux {chr(65 + n)}", "amount": "9.99",
              "currency": "USD", "description": "misc"} for n in range(3)]
    lines.append({"lineId": "tx-air", "date": "2026-01-06", "vendor": "Delta Air", "amount": "400.00",
                  "currency": "USD", "description": "flight"})
    assert requests.post(f"{base}/expenses", json={"lines": lines}, headers=headers, timeout=10).status_code == 201
    created = requests.post(f"{base}/reports/{report_id}/generate", json={"period": "2026-01"}, headers=headers,
                            timeout=10)
    job_id = created.json()["jobId"]
    drain({job_id})
    job = requests.get(f"{base}/jobs/{job_id}", headers=headers, timeout=10).json()
    assert job["status"] == "Completed" and job["failedLines"] == 3, job

    answers = _at_once(8, lambda i: requests.patch(f"{base}/jobs/{job_id}/lines/tx-0", json={"category": "Lodging"},
                                                   headers=headers, timeout=30))
    assert [r.status_code for r in answers] == [200] * 8, [(r.status_code, r.text[:200]) for r in answers]

    job = requests.get(f"{base}/jobs/{job_id}", headers=headers, timeout=10).json()
    result = requests.get(f"{base}/jobs/{job_id}/result", headers=headers, timeout=10).json()
    flagged = sum(1 for line in result["lines"] if line["needsReview"])
    # Against the report's own lines, not the counter against itself: two lines are still flagged.
    assert flagged == 2
    assert job["failedLines"] == result["needsReview"] == flagged, (job, result["needsReview"])
    stored = Job.get(job_id, consistent_read=True)
    assert int(stored.needs_review) == int(stored.failed_lines) == flagged
    assert "2 need review" in job["statusMessage"]
