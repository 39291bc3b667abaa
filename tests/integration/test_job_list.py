"""The job list: pages newest first, by number or by token, and an exact totalCount kept by counters
(chalicelib/jobs/counts.py) rather than by walking every job of the user."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from chalicelib import clock
from chalicelib.jobs import create
from chalicelib.settings import get_settings
from tests.support import seed_body, seed_jobs


def _list(client, headers: dict, query: str = "") -> dict:
    response = client.http.get(f"/api/v1/jobs{query}", headers=headers)
    assert response.status_code == 200, response.body
    return response.json_body


def _generate(client, headers: dict, period: str) -> dict:
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    body = {"reportId": report_id, "name": "List", "deliveryTargets": [{"type": "api", "mode": "async"}]}
    assert client.http.post("/api/v1/reports", headers=headers, body=_json(body)).status_code == 201
    # A line in the period: a period without lines is not generated (422 `no-lines`).
    assert client.http.post("/api/v1/expenses", headers=headers, body=_json(seed_body(period))).status_code == 201
    return client.http.post(f"/api/v1/reports/{report_id}/generate", headers=headers,
                            body=_json({"period": period}))


def _json(body: dict) -> str:
    import json

    return json.dumps(body)


@pytest.fixture
def user(token_for):
    token = token_for()
    return token.sub, {**token.headers, "Content-Type": "application/json"}


def test_total_count_follows_creates_cancels_and_a_create_that_was_undone(client, user, monkeypatch):
    _, headers = user
    jobs = [_generate(client, headers, f"2026-0{m}").json_body for m in (1, 2, 3)]
    assert client.http.delete(f"/api/v1/jobs/{jobs[0]['jobId']}", headers=headers).json_body["status"] == "Cancelled"

    def queue_down(*args, **kwargs):
        raise RuntimeError("queue unavailable")

    monkeypatch.setattr(create, "enqueue", queue_down)
    assert _generate(client, headers, "2026-04").status_code == 503  # undone: no job, no count
    monkeypatch.undo()
    listed = _list(client, headers)
    assert listed["totalCount"] == 3 == len(listed["items"])
    assert _list(client, headers, "?status=Queued")["totalCount"] == 2
    assert _list(client, headers, "?status=Cancelled")["totalCount"] == 1
    assert _list(client, headers, "?status=Completed") == {"items": [], "page": 1, "pageSize": 20, "totalCount": 0,
                                                          "nextToken": None}


@pytest.mark.parametrize("size", [7, 20])
def test_pages_by_number_and_by_token_walk_every_job_once_newest_first(client, user, size):
    owner, headers = user
    ids = list(reversed(seed_jobs(owner, 57)))  # newest first
    processing = [job_id for n, job_id in enumerate(reversed(ids)) if n % 4 == 0][::-1]
    for status, expected in ((None, ids), ("Processing", processing)):
        query = f"?pageSize={size}" + (f"&status={status}" if status else "")
        by_number, by_token, token, page = [], [], None, 1
        while True:
            numbered = _list(client, headers, f"{query}&page={page}")
            assert numbered["totalCount"] == len(expected) and numbered["page"] == page
            if not numbered["items"]:
                break
            by_number += [job["jobId"] for job in numbered["items"]]
            page += 1
        while True:
            chained = _list(client, headers, query + (f"&nextToken={token}" if token else ""))
            assert chained["totalCount"] == len(expected)
            by_token += [job["jobId"] for job in chained["items"]]
            token = chained["nextToken"]
            if token is None:
                break
        assert by_number == by_token == expected


def test_a_far_page_by_number_skips_by_keys_and_matches_the_token_walk(client, user):
    owner, headers = user
    ids = list(reversed(seed_jobs(owner, 620)))
    far = _list(client, headers, "?pageSize=100&page=6")  # 500 jobs before it: read whole
    farther = _list(client, headers, "?pageSize=100&page=7")  # 600 before it: skipped by keys first
    assert [job["jobId"] for job in far["items"]] == ids[500:600]
    assert [job["jobId"] for job in farther["items"]] == ids[600:] and farther["nextToken"] is None
    assert _list(client, headers, "?pageSize=100&page=8")["items"] == []


def test_jobs_on_the_day_the_window_starts_count_only_while_they_live(client, user, monkeypatch):
    owner, headers = user
    retention = get_settings().retention_days
    # Noon today, so the hours around the window's start are all on one day.
    now = clock.now().replace(hour=12, minute=0, second=0, microsecond=0)
    monkeypatch.setattr(clock, "now", lambda: now)
    # Created on the oldest day of the window: one expired an hour ago, one expires in an hour.
    seed_jobs(owner, 1, start=now - timedelta(days=retention, hours=1))
    seed_jobs(owner, 1, start=now - timedelta(days=retention, hours=-1))
    recent = seed_jobs(owner, 3, start=now - timedelta(minutes=5))
    listed = _list(client, headers, "?pageSize=100")
    assert listed["totalCount"] == 4 == len(listed["items"])
    assert [job["jobId"] for job in listed["items"]][:3] == list(reversed(recent))


def test_a_transition_cancelled_by_a_conflicting_transaction_is_written_again_and_counted_once(client, user,
                                                                                                monkeypatch):
    """Real DynamoDB cancels a transaction that meets another one on an item (here the user's day count, which
    every create and transition of that day writes); moto never does, so the conflict is injected."""
    import botocore.client
    from botocore.exceptions import ClientError

    from chalicelib.jobs.states import JobStatus, transition
    from chalicelib.tables import Job

    _, headers = user
    job_id = _generate(client, headers, "2026-05").json_body["jobId"]
    original, conflicts = botocore.client.BaseClient._make_api_call, []

    def conflict_once(self, operation, params):
        if operation == "TransactWriteItems" and not conflicts:
            conflicts.append(operation)
            reasons = [{"Code": "None"}] * (len(params["TransactItems"]) - 1) + [{"Code": "TransactionConflict"}]
            raise ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                               "CancellationReasons": reasons}, operation)
        return original(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", conflict_once)
    job = transition(Job.get(job_id, consistent_read=True), JobStatus.CANCELLED, "cancelled", {"by": "test"})
    monkeypatch.undo()
    assert conflicts and job.status == "Cancelled"
    assert _list(client, headers, "?status=Cancelled")["totalCount"] == 1
    assert _list(client, headers, "?status=Queued")["totalCount"] == 0
