"""Generating a report (/reports/{reportId}/generate): 202, 409, 429, 503, idempotency.
The contract (docs/api.md) status by status; bad input is checked twice: the answer names what is wrong, and
nothing was stored."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any
from uuid import UUID, uuid4

import jwt
import pytest

from chalicelib.settings import Settings, get_settings
from tests.integration.contract.common import (
    NOT_ASYNC,
    generate,
    jobs_of,
    move,
    new_job,
    new_report,
    problem,
    seed,
    user,
)


def this_month() -> str:
    return time.strftime("%Y-%m", time.gmtime())

# --- generate ---------------------------------------------------------------------------------------------


def test_generate_is_202_with_location_retry_after_and_a_queued_job(api):
    owner = user()
    report_id = new_report(api, owner)
    seed(api, owner)
    response = generate(api, owner, report_id, {"period": "2026-01"}, Host="reports.example.com")
    assert response.status_code == 202
    job = response.json_body
    assert UUID(job["jobId"]).version == 4
    assert job["statusUrl"] == f"https://reports.example.com/api/v1/jobs/{job['jobId']}"
    assert response.headers["Location"] == job["statusUrl"]
    assert int(response.headers["Retry-After"]) >= 1
    assert (job["status"], job["reportId"], job["period"], job["trigger"]) == ("Queued", report_id, "2026-01", "api")
    assert job["resultUrl"] is None and job["createdAt"].endswith("Z")
    assert api.get(f"/api/v1/jobs/{job['jobId']}", headers=owner).json_body["status"] == "Queued"


def test_status_url_follows_forwarded_proto(api):
    owner = user()
    seed(api, owner, this_month())
    response = generate(api, owner, new_report(api, owner), None, Host="localhost:8000",
                        **{"X-Forwarded-Proto": "http"})
    assert response.json_body["statusUrl"].startswith("http://localhost:8000/api/v1/jobs/")


def test_generate_without_body_is_for_the_current_utc_month(api):
    owner = user()
    report_id = new_report(api, owner)
    month = this_month()
    seed(api, owner, month)
    assert generate(api, owner, report_id).json_body["period"] == month
    problem(generate(api, owner, report_id, {}), 409)  # {} is the same request: the month's job is active


@pytest.mark.parametrize(("body", "field"), [
    ({"period": "2026-13"}, "period"), ({"period": "2026-1"}, "period"), ({"period": "202601"}, "period"),
    ({"period": 202601}, "period"), ({"period": "2026-01", "force": True}, "force"),  # the unknown member is named
    (["2026-01"], "period"), ("2026-01", "period")])
def test_invalid_period_is_400_and_creates_no_job(api, body, field):
    owner = user()
    report_id = new_report(api, owner)
    assert problem(generate(api, owner, report_id, json.dumps(body)), 400)["field"] == field
    assert problem(generate(api, owner, report_id, "period=2026-01"), 400)["detail"] == "The body is not valid JSON."
    assert jobs_of(api, owner)["totalCount"] == 0


@pytest.mark.parametrize("targets", [[{"type": "api", "mode": "sync"}], [{"type": "email", "to": "a@example.com"}]])
def test_generate_for_report_without_async_api_target_is_409(api, targets):
    owner = user()
    report_id = new_report(api, owner, deliveryTargets=targets)
    assert problem(generate(api, owner, report_id, {"period": "2026-01"}), 409)["detail"] == NOT_ASYNC
    assert jobs_of(api, owner)["totalCount"] == 0


def test_duplicate_active_job_is_409_with_existing_job_id(api):
    owner = user()
    report_id = new_report(api, owner)
    first = new_job(api, owner, report_id=report_id)
    body = problem(generate(api, owner, report_id, {"period": "2026-01"}), 409)
    assert body["existingJobId"] == first["jobId"]
    move(first["jobId"], "Processing")
    assert problem(generate(api, owner, report_id, {"period": "2026-01"}), 409)["existingJobId"] == first["jobId"]
    assert jobs_of(api, owner)["totalCount"] == 1


def test_more_than_20_jobs_an_hour_is_429_with_retry_after(api, monkeypatch):
    from chalicelib.jobs import create

    assert Settings().jobs_per_hour == 20  # the contract's limit is the default
    # Creating 20 jobs costs seconds; the window logic is the same for any limit, so use 3.
    monkeypatch.setattr(create, "get_settings", lambda: dataclasses.replace(get_settings(), jobs_per_hour=3))
    owner = user()
    report_id = new_report(api, owner)
    first = new_job(api, owner, "2025-01", report_id)
    assert api.delete(f"/api/v1/jobs/{first['jobId']}", headers=owner).status_code == 200  # still counts
    for period in ("2025-02", "2025-03", "2025-04"):
        seed(api, owner, period)
    for period in ("2025-02", "2025-03"):
        assert generate(api, owner, report_id, {"period": period}).status_code == 202
    response = generate(api, owner, report_id, {"period": "2025-04"})
    assert "3 jobs" in problem(response, 429)["detail"]
    assert 3500 <= int(response.headers["Retry-After"]) <= 3601
    assert jobs_of(api, owner)["totalCount"] == 3
    assert new_job(api, user(), "2025-04")  # another user has a window of their own


@pytest.mark.parametrize("down", ["queue", "job store"])
def test_a_queue_or_job_store_failure_is_503_and_leaves_no_job(api, monkeypatch, down):
    from pynamodb.exceptions import PynamoDBException

    from chalicelib.jobs import create

    owner = user()
    report_id = new_report(api, owner)
    seed(api, owner)

    def failing(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("queue down") if down == "queue" else PynamoDBException("store down")

    with monkeypatch.context() as patch:
        patch.setattr(create, "enqueue" if down == "queue" else "_write", failing)
        response = generate(api, owner, report_id, {"period": "2026-01"})
        problem(response, 503)
        assert int(response.headers["Retry-After"]) >= 1
    assert jobs_of(api, owner) == {"items": [], "page": 1, "pageSize": 100, "totalCount": 0, "nextToken": None}
    assert generate(api, owner, report_id, {"period": "2026-01"}).status_code == 202  # no lock left behind


def test_idempotency_key_replay_returns_first_response_and_creates_nothing(api):
    owner = user()
    report_id = new_report(api, owner)
    seed(api, owner)
    key = {"Idempotency-Key": f"k-{uuid4()}"}
    first = generate(api, owner, report_id, {"period": "2026-01"}, **key)
    assert first.status_code == 202
    assert api.delete(f"/api/v1/jobs/{first.json_body['jobId']}", headers=owner).status_code == 200
    again = generate(api, owner, report_id, {"period": "2026-01"}, **key)
    assert (again.status_code, again.json_body) == (202, first.json_body)  # the first response, Queued as it was
    assert again.headers["Location"] == first.headers["Location"]
    assert jobs_of(api, owner)["totalCount"] == 1


def test_idempotency_key_with_other_body_is_422(api):
    owner = user()
    report_id = new_report(api, owner)
    seed(api, owner)
    key = {"Idempotency-Key": f"k-{uuid4()}"}
    assert generate(api, owner, report_id, {"period": "2026-01"}, **key).status_code == 202
    problem(generate(api, owner, report_id, {"period": "2026-02"}, **key), 422)
    problem(generate(api, owner, new_report(api, owner), {"period": "2026-01"}, **key), 422)
    assert jobs_of(api, owner)["totalCount"] == 1


def test_idempotency_keys_belong_to_one_user(api):
    owner, holder = user(), user(roles=["finance"])
    report_id = new_report(api, owner, allowedRoles=["finance"])
    seed(api, owner)
    seed(api, holder)  # the job works the lines of whoever generates it
    key = {"Idempotency-Key": f"k-{uuid4()}"}
    mine = generate(api, owner, report_id, {"period": "2026-01"}, **key)
    theirs = generate(api, holder, report_id, {"period": "2026-01"}, **key)
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json_body["jobId"] != theirs.json_body["jobId"]


@pytest.mark.parametrize("key", ["x" * 256, "clé"])
def test_invalid_idempotency_key_is_400_and_creates_no_job(api, key):
    owner = user()
    response = generate(api, owner, new_report(api, owner), {"period": "2026-01"}, **{"Idempotency-Key": key})
    assert problem(response, 400)["field"] == "Idempotency-Key"
    assert jobs_of(api, owner)["totalCount"] == 0


# --- bugs these tests found, now fixed -----------------------------------------------


def test_period_with_a_trailing_newline_is_400_and_creates_no_job(api):
    owner = user()
    problem(generate(api, owner, new_report(api, owner), {"period": "2026-01\n"}), 400)
    assert jobs_of(api, owner)["totalCount"] == 0


def test_falsy_period_is_400_and_creates_no_job(api):
    owner = user()
    report_id = new_report(api, owner)
    for period in ("", 0, False):
        problem(generate(api, owner, report_id, {"period": period}), 400)
    assert jobs_of(api, owner)["totalCount"] == 0


# --- a period without lines -------------------------------------------------------------------------------------


def test_a_period_without_lines_is_422_no_lines_creates_no_job_and_takes_nothing_from_the_hour(api, monkeypatch):
    from chalicelib.jobs import create
    from chalicelib.jobs.states import lock_key, rate_key
    from chalicelib.tables import Control

    monkeypatch.setattr(create, "get_settings", lambda: dataclasses.replace(get_settings(), jobs_per_hour=2))
    owner = user()
    report_id = new_report(api, owner)
    for _ in range(3):  # more empty requests than the hour allows jobs: none of them counts
        body = problem(generate(api, owner, report_id, {"period": "2026-03"}), 422)
        assert body["type"] == "urn:reports:problem:no-lines"
        assert "No expense lines for 2026-03" in body["detail"]
    assert jobs_of(api, owner)["totalCount"] == 0  # nothing stored: no job, no lock, no rate window entry
    me = jwt.decode(owner["Authorization"].split()[1], options={"verify_signature": False})["sub"]
    for key in (lock_key(me, report_id, "2026-03"), rate_key(me, "expense_report")):
        with pytest.raises(Control.DoesNotExist):
            Control.get(key, consistent_read=True)
    seed(api, owner, "2026-03")
    seed(api, owner, "2026-04")
    assert generate(api, owner, report_id, {"period": "2026-03"}).status_code == 202
    assert generate(api, owner, report_id, {"period": "2026-04"}).status_code == 202  # the hour's 2, both left
    seed(api, owner, "2026-05")
    problem(generate(api, owner, report_id, {"period": "2026-05"}), 429)
