"""Jobs (/jobs): polling, listing, cancel and retry.
The contract (docs/api.md) status by status; bad input is checked twice: the answer names what is wrong, and
nothing was stored."""

from __future__ import annotations

from uuid import uuid4

import pytest

from tests.integration.contract.common import jobs_of, move, new_job, new_report, problem, send, user

# --- jobs -------------------------------------------------------------------------------------------------


def test_get_job_304_with_if_none_match(api):
    owner = user()
    job = new_job(api, owner)
    path = f"/api/v1/jobs/{job['jobId']}"
    active = api.get(path, headers=owner)
    tag = active.headers["ETag"]
    assert tag.startswith('"') and int(active.headers["Retry-After"]) >= 1  # poll interval while not terminal
    for header in (tag, f'"nope", {tag}', f"W/{tag}", "*"):
        unchanged = api.get(path, headers={**owner, "If-None-Match": header})
        assert (unchanged.status_code, unchanged.body, unchanged.headers["ETag"]) == (304, b"", tag), header
    assert api.get(path, headers={**owner, "If-None-Match": '"other"'}).status_code == 200
    api.delete(path, headers=owner)
    done = api.get(path, headers={**owner, "If-None-Match": tag})
    assert (done.status_code, done.json_body["status"]) == (200, "Cancelled")
    assert "Retry-After" not in done.headers and done.headers["ETag"] != tag


def test_unknown_job_is_404(api):
    owner = user()
    for job_id in (str(uuid4()), "not-a-job", "x" * 200):
        problem(api.get(f"/api/v1/jobs/{job_id}", headers=owner), 404)


def test_another_users_job_is_404_on_every_job_route(api):
    owner, other = user(), user()
    job = new_job(api, owner)
    base = f"/api/v1/jobs/{job['jobId']}"
    for method, path, body in [("GET", base, None), ("DELETE", base, None), ("GET", f"{base}/events", None),
                               ("GET", f"{base}/result", None), ("POST", f"{base}/retry", None),
                               ("PATCH", f"{base}/lines/tx-1", {"category": "Other"})]:
        problem(send(api, method, path, other, body), 404)
    assert api.get(base, headers=owner).json_body["status"] == "Queued"
    assert jobs_of(api, other)["totalCount"] == 0


def test_jobs_list_is_newest_first_with_total_count_and_next_token(api):
    owner = user()
    report_id = new_report(api, owner)
    ids = [new_job(api, owner, period, report_id)["jobId"] for period in ("2026-01", "2026-02", "2026-03")]
    first = api.get("/api/v1/jobs?pageSize=2", headers=owner).json_body
    assert [j["jobId"] for j in first["items"]] == ids[::-1][:2]
    assert (first["page"], first["pageSize"], first["totalCount"]) == (1, 2, 3) and first["nextToken"]
    second = api.get(f"/api/v1/jobs?pageSize=2&nextToken={first['nextToken']}", headers=owner).json_body
    assert [j["jobId"] for j in second["items"]] == ids[:1]
    assert (second["page"], second["totalCount"], second["nextToken"]) == (2, 3, None)
    by_page = api.get("/api/v1/jobs?pageSize=2&page=2", headers=owner).json_body
    assert [j["jobId"] for j in by_page["items"]] == ids[:1]
    default = api.get("/api/v1/jobs", headers=owner).json_body
    assert (default["pageSize"], default["page"], len(default["items"]), default["nextToken"]) == (20, 1, 3, None)


def test_jobs_list_filters_by_status(api):
    owner = user()
    report_id = new_report(api, owner)
    cancelled = new_job(api, owner, "2026-01", report_id)
    queued = new_job(api, owner, "2026-02", report_id)
    api.delete(f"/api/v1/jobs/{cancelled['jobId']}", headers=owner)
    for status, expected in (("Queued", queued), ("Cancelled", cancelled)):
        listed = api.get(f"/api/v1/jobs?status={status}", headers=owner).json_body
        assert ([j["jobId"] for j in listed["items"]], listed["totalCount"]) == ([expected["jobId"]], 1)


@pytest.mark.parametrize("query,field", [("pageSize=0", "pageSize"), ("pageSize=101", "pageSize"),
                                         ("pageSize=-1", "pageSize"), ("pageSize=twenty", "pageSize"),
                                         ("pageSize=", "pageSize"), ("page=0", "page"), ("page=10001", "page"),
                                         ("page=x", "page"), ("status=Running", "status"),
                                         ("nextToken=bm90LWEtdG9rZW4", "nextToken")])
def test_jobs_page_size_out_of_range_is_400(api, query, field):
    assert problem(api.get(f"/api/v1/jobs?{query}", headers=user()), 400)["field"] == field


def test_cancel_queued_job_is_cancelled_at_once(api):
    owner = user()
    job = new_job(api, owner)
    response = api.delete(f"/api/v1/jobs/{job['jobId']}", headers=owner)
    assert response.status_code == 200 and response.json_body["status"] == "Cancelled"
    assert api.get(f"/api/v1/jobs/{job['jobId']}", headers=owner).json_body["status"] == "Cancelled"


def test_cancel_processing_job_requests_cancellation(api):
    owner = user()
    job = new_job(api, owner)
    move(job["jobId"], "Processing")
    for _ in range(2):  # asking again changes nothing
        response = api.delete(f"/api/v1/jobs/{job['jobId']}", headers=owner)
        assert (response.status_code, response.json_body["status"]) == (200, "CancellationRequested")
    events = api.get(f"/api/v1/jobs/{job['jobId']}/events", headers=owner).json_body["items"]
    assert [e["type"] for e in events] == ["created", "started", "cancel_requested"]


@pytest.mark.parametrize("status", ["Cancelled", "Failed"])
def test_cancel_terminal_job_is_409(api, status):
    owner = user()
    job = new_job(api, owner)
    move(job["jobId"], status)
    assert problem(api.delete(f"/api/v1/jobs/{job['jobId']}", headers=owner), 409)["jobStatus"] == status


@pytest.mark.parametrize("status", ["Cancelled", "Failed"])
def test_retry_cancelled_or_failed_job_is_202_queued_again(api, status):
    owner = user()
    job = new_job(api, owner)
    move(job["jobId"], status)
    response = api.post(f"/api/v1/jobs/{job['jobId']}/retry", headers=owner)
    assert response.status_code == 202 and response.json_body["status"] == "Queued"
    assert response.headers["Location"] == job["statusUrl"] and int(response.headers["Retry-After"]) >= 1
    assert response.json_body["errorMessage"] is None
    events = api.get(f"/api/v1/jobs/{job['jobId']}/events", headers=owner).json_body["items"]
    assert [e["type"] for e in events] == ["created", status.lower(), "retried"]  # the audit trail, oldest first
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert all(isinstance(e["detail"], dict) for e in events)


@pytest.mark.parametrize("steps", [[], ["Processing"]])
def test_retry_of_an_active_job_is_409(api, steps):
    owner = user()
    job = new_job(api, owner)
    move(job["jobId"], *steps)
    problem(api.post(f"/api/v1/jobs/{job['jobId']}/retry", headers=owner), 409)


# --- bugs these tests found, now fixed -----------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/jobs?pageSize=%C2%B2", "/api/v1/jobs?page=%C2%B2",
                                  "/api/v1/expenses?period=2026-01&pageSize=%C2%B2"])
def test_page_size_with_a_non_ascii_digit_is_400_not_500(api, path):
    problem(api.get(path, headers=user()), 400)


def test_retry_while_another_job_of_the_period_is_active_is_409_with_existing_job_id(api):
    owner = user()
    report_id = new_report(api, owner)
    old = new_job(api, owner, report_id=report_id)
    api.delete(f"/api/v1/jobs/{old['jobId']}", headers=owner)
    current = new_job(api, owner, report_id=report_id)  # the period is free again once the old job is terminal
    body = problem(api.post(f"/api/v1/jobs/{old['jobId']}/retry", headers=owner), 409)
    assert body["existingJobId"] == current["jobId"]
    assert api.get(f"/api/v1/jobs/{old['jobId']}", headers=owner).json_body["status"] == "Cancelled"


def test_cancel_racing_the_worker_still_cancels(api, monkeypatch):
    from chalicelib.jobs import service
    from chalicelib.tables import Job

    owner = user()
    job = new_job(api, owner)
    stale = [Job.get(job["jobId"], consistent_read=True)]  # what the API reads: Queued...
    move(job["jobId"], "Processing")  # ...then the worker claims the job before the API writes
    real_get_job = service.get_job
    monkeypatch.setattr(service, "get_job", lambda owner_id, job_id, also=None: stale.pop() if stale
                        else real_get_job(owner_id, job_id, also))
    response = api.delete(f"/api/v1/jobs/{job['jobId']}", headers=owner)
    assert (response.status_code, response.json_body["status"]) == (200, "CancellationRequested")


def test_a_content_type_header_on_a_bodyless_request_is_ignored(api):
    owner = user()
    assert api.get("/health", headers={"Content-Type": "text/plain"}).status_code == 200
    assert api.get("/api/v1/jobs", headers={**owner, "Content-Type": "text/plain"}).status_code == 200
