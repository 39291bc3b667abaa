"""Every status code of the API contract (docs/api.md), route by route, through chalice.test.Client.

Bad input is checked twice: the answer names what is wrong, and nothing of the request was stored.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import jwt
import pytest
from chalice.test import Client

from app import app
from chalicelib import deps
from chalicelib.api import middleware
from chalicelib.auth import mint_token
from chalicelib.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = "application/problem+json"
MiB = 1024 * 1024
NOT_ASYNC = "Report is not configured for asynchronous generation."


@pytest.fixture
def api():
    return Client(app, stage_name="pytest", project_dir=str(ROOT)).http


# --- helpers ----------------------------------------------------------------------------------------------


# Roles grant access within a tenant only, and a token without a tenant claim is a tenant of one: the users
# here share one tenant, so one user's role can reach another's report (tests/hardening/test_tenants.py).
TENANT = "contract-tests"


def claims_token(**claims: Any) -> str:
    settings = get_settings()
    base = {"sub": str(uuid4()), "exp": int(time.time()) + 600, "tenant": TENANT}
    if settings.jwt_issuer:
        base["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        base["aud"] = settings.jwt_audience
    return jwt.encode({**base, **claims}, settings.jwt_secret, algorithm="HS256")


def user(roles: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(get_settings(), sub=str(uuid4()), roles=roles or [],
                                                    tenant=TENANT)}


def send(api, method: str, path: str, headers: dict[str, str], body: Any = None, content_type: str | None = None):
    raw = b"" if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    if body is not None or content_type:
        headers = {**headers, "Content-Type": content_type or "application/json"}
    return api.request(method, path, headers=headers, body=raw)


def new_report(api, headers: dict[str, str], **fields: Any) -> str:
    report_id = f"r-{uuid4().hex[:12]}"
    body = {"reportId": report_id, "name": "Monthly expenses", "deliveryTargets": [{"type": "api", "mode": "async"}],
            **fields}
    response = send(api, "POST", "/api/v1/reports", headers, body)
    assert response.status_code == 201, response.body
    return report_id


def generate(api, headers: dict[str, str], report_id: str, body: Any = None, **extra_headers: str):
    return send(api, "POST", f"/api/v1/reports/{report_id}/generate", {**headers, **extra_headers}, body)


def new_job(api, headers: dict[str, str], period: str = "2026-01", report_id: str | None = None) -> dict:
    response = generate(api, headers, report_id or new_report(api, headers), {"period": period})
    assert response.status_code == 202, response.body
    return response.json_body


def jobs_of(api, headers: dict[str, str]) -> dict[str, Any]:
    response = api.get("/api/v1/jobs?pageSize=100", headers=headers)
    assert response.status_code == 200
    return response.json_body


def lines_of(api, headers: dict[str, str], period: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/expenses?period={period}&pageSize=1000", headers=headers)
    assert response.status_code == 200
    return response.json_body["items"]


def problem(response, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 answer with `status`; return its body."""
    assert response.status_code == status, (response.status_code, response.body[:400])
    assert response.headers["Content-Type"].startswith(PROBLEM)
    body = response.json_body
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status and body["detail"]
    assert "Traceback" not in response.body.decode()
    return body


def move(job_id: str, *statuses: str) -> None:
    """Drive a job through the state machine as the worker would (Processing, Failed...)."""
    from chalicelib.jobs.states import JobStatus, transition
    from chalicelib.tables import Job

    events = {"Processing": "started", "Failed": "failed", "Cancelled": "cancelled", "Completed": "completed"}
    for status in statuses:
        # A worker starts a job holding its lease (a cancel then asks the worker; with none, the API completes it).
        lease = [Job.lease_owner.set("test-worker"), Job.lease_until.set(time.time() + 300)] \
            if status == "Processing" else []
        transition(Job.get(job_id, consistent_read=True), JobStatus(status), events[status], actions=lease)


def run_worker(job_id: str) -> None:
    from chalicelib import worker

    settings = get_settings()
    try:
        deps.client("s3").head_bucket(Bucket=settings.results_bucket)
    except Exception:
        pytest.fail(f"results bucket {settings.results_bucket!r} is missing: tests/conftest.py deploys it, "
                    "so a Completed job could not store its result")
    context = SimpleNamespace(get_remaining_time_in_millis=lambda: 300_000, aws_request_id=f"test-{uuid4()}")
    worker.run_job(job_id, "start", context, settings=dataclasses.replace(settings, openai_api_key=None))


def completed_job(api, headers: dict[str, str]) -> dict[str, Any]:
    csv = ("lineId,date,vendor,amount,currency,description\n"
           "tx-1,2026-01-15,UBER *TRIP 8841,23.50,USD,ride to airport\n"
           "tx-2,2026-01-16,Hilton Garden Inn,210.00,USD,hotel\n")
    assert send(api, "POST", "/api/v1/expenses", headers, csv, "text/csv").status_code == 201
    job = new_job(api, headers)
    run_worker(job["jobId"])
    return job


LINE = {"lineId": "tx-1", "date": "2026-01-15", "vendor": "UBER *TRIP 8841", "amount": "23.50", "currency": "USD",
        "description": "ride to airport"}


# --- authentication ---------------------------------------------------------------------------------------


def test_generate_without_token_is_401_problem_json_with_www_authenticate(api):
    owner = user()
    report_id = new_report(api, owner)
    response = generate(api, {}, report_id, {"period": "2026-01"})
    problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert jobs_of(api, owner)["totalCount"] == 0


def _alg_none_token() -> str:
    return jwt.encode({"sub": "mallory", "exp": int(time.time()) + 600}, None, algorithm="none")


def _hs384_token() -> str:
    """Signed with the right secret but another algorithm than the configured one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT finds the secret short for HS384; irrelevant here
        return jwt.encode({"sub": "u", "exp": int(time.time()) + 600}, get_settings().jwt_secret, algorithm="HS384")


@pytest.mark.parametrize("authorization", [
    pytest.param("Basic dXNlcjpwYXNz", id="not-bearer"),
    pytest.param("Bearer", id="no-token"),
    pytest.param("Bearer not.a.jwt", id="malformed"),
    pytest.param("Bearer " + jwt.encode({"sub": "u", "exp": int(time.time()) + 600}, "another-secret-" * 3,
                                        algorithm="HS256"), id="bad-signature"),
    pytest.param("Bearer " + claims_token(exp=int(time.time()) - 60), id="expired"),
    pytest.param("Bearer " + _alg_none_token(), id="alg-none"),
    pytest.param("Bearer " + _hs384_token(), id="wrong-algorithm"),
    pytest.param("Bearer " + jwt.encode({"exp": int(time.time()) + 600}, get_settings().jwt_secret,
                                        algorithm="HS256"), id="no-sub"),
    pytest.param("Bearer " + jwt.encode({"sub": "u"}, get_settings().jwt_secret, algorithm="HS256"), id="no-exp"),
])
def test_bad_tokens_are_401_with_www_authenticate(api, authorization):
    response = api.get("/api/v1/jobs", headers={"Authorization": authorization})
    problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_every_protected_route_without_token_is_401(api):
    for path, methods in app.routes.items():
        if path in middleware.PUBLIC_PATHS:
            continue
        concrete = path.replace("{reportId}", "report-x").replace("{jobId}", str(uuid4())).replace("{lineId}", "l")
        for method in set(methods) - {"OPTIONS"}:
            response = api.request(method, concrete, headers={}, body=b"")
            problem(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)


def test_public_routes_need_no_token(api):
    assert api.get("/health").json_body == {"status": "ok"}
    assert api.get("/openapi.json").json_body["openapi"].startswith("3.1")
    page = api.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")


def test_role_list_and_jwt_roles_claim(api):
    owner = user()
    report_id = new_report(api, owner, allowedRoles=["finance"])
    for claims in ({"roles": ["finance"]}, {"cognito:groups": ["finance"]}, {"roles": ["audit", "finance"]}):
        holder = {"Authorization": "Bearer " + claims_token(**claims)}
        assert api.get(f"/api/v1/reports/{report_id}", headers=holder).status_code == 200, claims
    for claims in ({"roles": ["audit"]}, {"roles": "finance"}, {}):
        outsider = {"Authorization": "Bearer " + claims_token(**claims)}
        problem(api.get(f"/api/v1/reports/{report_id}", headers=outsider), 404)
        problem(generate(api, outsider, report_id, {"period": "2026-01"}), 403)
        assert jobs_of(api, outsider)["totalCount"] == 0


def test_role_holder_can_generate_anothers_report(api):
    owner, holder = user(), user(roles=["finance"])
    report_id = new_report(api, owner, allowedRoles=["finance"])
    response = generate(api, holder, report_id, {"period": "2026-01"})
    assert response.status_code == 202
    assert [j["jobId"] for j in jobs_of(api, holder)["items"]] == [response.json_body["jobId"]]
    assert jobs_of(api, owner)["totalCount"] == 0


def test_generate_for_report_user_cannot_generate_is_403(api):
    owner, stranger = user(), user(roles=["sales"])
    report_id = new_report(api, owner, allowedRoles=["finance"])
    body = problem(generate(api, stranger, report_id, {"period": "2026-01"}), 403)
    assert "allowedRoles" in body["detail"]
    assert jobs_of(api, stranger)["totalCount"] == 0 and jobs_of(api, owner)["totalCount"] == 0


# --- report configurations --------------------------------------------------------------------------------


def test_create_report_is_201_with_owner_created_at_and_default_taxonomy(api):
    owner_sub = str(uuid4())
    owner = {"Authorization": "Bearer " + mint_token(get_settings(), sub=owner_sub)}
    response = send(api, "POST", "/api/v1/reports", owner,
                    {"name": "Monthly", "deliveryTargets": [{"type": "api", "mode": "async"}]})
    assert response.status_code == 201
    body = response.json_body
    assert body["reportId"].startswith("report-") and UUID(body["reportId"][7:]).version == 4
    assert body["ownerId"] == owner_sub and body["createdAt"].endswith("Z")
    assert body["categories"][0] == "Airfare" and body["categories"][-1] == "Other" and len(body["categories"]) == 10
    assert response.headers["Location"] == f"/api/v1/reports/{body['reportId']}"
    assert api.get(response.headers["Location"], headers=owner).json_body == body


def test_report_id_conflict_is_409(api):
    owner = user()
    report_id = new_report(api, owner, name="First")
    again = {"reportId": report_id, "name": "Second", "deliveryTargets": [{"type": "api", "mode": "sync"}]}
    problem(send(api, "POST", "/api/v1/reports", owner, again), 409)
    problem(send(api, "POST", "/api/v1/reports", user(), again), 409)
    assert api.get(f"/api/v1/reports/{report_id}", headers=owner).json_body["name"] == "First"


@pytest.mark.parametrize("change,field", [
    ({"reportId": "X"}, "reportId"),
    ({"reportId": "-abc"}, "reportId"),
    ({"name": "  "}, "name"),
    ({"name": None}, "name"),
    ({"deliveryTargets": []}, "deliveryTargets"),
    ({"deliveryTargets": [{"type": "api", "mode": "later"}]}, "deliveryTargets[0]"),
    ({"deliveryTargets": [{"type": "email", "to": "not-an-address"}]}, "deliveryTargets[0].to"),
    ({"deliveryTargets": [{"type": "api", "mode": "async", "extra": 1}]}, "deliveryTargets[0]"),
    ({"allowedRoles": "finance"}, "allowedRoles"),
    ({"categories": []}, "categories"),
    ({"categories": ["Airfare", "Airfare"]}, "categories"),
    ({"schedule": {"type": "monthly", "day": 29}}, "schedule"),
    ({"schedule": {"type": "monthly", "day": 0}}, "schedule"),
    ({"schedule": {"type": "weekly", "day": 1}}, "schedule"),
    ({"owner": "someone-else"}, "owner"),
])
def test_invalid_report_config_is_400_naming_the_field_and_stores_nothing(api, change, field):
    owner = user()
    report_id = f"r-{uuid4().hex[:12]}"
    body = {"reportId": report_id, "name": "Monthly", "deliveryTargets": [{"type": "api", "mode": "async"}], **change}
    assert problem(send(api, "POST", "/api/v1/reports", owner, body), 400)["field"] == field
    problem(api.get(f"/api/v1/reports/{report_id}", headers=owner), 404)


@pytest.mark.parametrize("raw", ["", "[]", "{\"name\": ", "NaN", "[" * 50 + "]" * 50])
def test_report_body_that_is_not_a_json_object_is_400(api, raw):
    problem(send(api, "POST", "/api/v1/reports", user(), raw, "application/json"), 400)


def test_report_with_wrong_content_type_is_415_and_stores_nothing(api):
    owner = user()
    report_id = f"r-{uuid4().hex[:12]}"
    body = json.dumps({"reportId": report_id, "name": "x", "deliveryTargets": [{"type": "api", "mode": "async"}]})
    for content_type in ("text/csv", "application/xml", "text/plain"):
        problem(send(api, "POST", "/api/v1/reports", owner, body, content_type), 415)
    problem(api.get(f"/api/v1/reports/{report_id}", headers=owner), 404)


def test_unknown_report_is_404(api):
    owner = user()
    missing = f"r-{uuid4().hex[:12]}"
    problem(api.get(f"/api/v1/reports/{missing}", headers=owner), 404)
    problem(generate(api, owner, missing, {"period": "2026-01"}), 404)
    problem(api.get("/api/v1/reports/NOT%20AN%20ID", headers=owner), 404)
    assert jobs_of(api, owner)["totalCount"] == 0


def test_another_users_report_is_404_on_read(api):
    report_id = new_report(api, user())
    problem(api.get(f"/api/v1/reports/{report_id}", headers=user()), 404)


# --- expense lines ----------------------------------------------------------------------------------------


def test_json_import_is_201_with_count_and_periods(api):
    owner = user()
    lines = [LINE, {**LINE, "lineId": "tx-2", "date": "2026-02-03", "amount": "-5.0001"}]
    response = send(api, "POST", "/api/v1/expenses", owner, {"lines": lines})
    assert response.status_code == 201
    assert response.json_body == {"imported": 2, "periods": ["2026-01", "2026-02"]}
    assert lines_of(api, owner, "2026-01") == [LINE]
    assert lines_of(api, owner, "2026-02")[0]["amount"] == "-5.0001"


def test_json_import_names_line_and_field(api):
    owner = user()
    lines = [LINE, {**LINE, "lineId": "tx-2", "currency": "usd"}]
    body = problem(send(api, "POST", "/api/v1/expenses", owner, {"lines": lines}), 400)
    assert (body["line"], body["field"]) == ("lines[1]", "currency")
    assert body["detail"].startswith("Line 2 of lines (counting from 1): currency must be"), body["detail"]
    assert lines_of(api, owner, "2026-01") == []


@pytest.mark.parametrize("change,field", [
    ({"amount": 23.12345}, "amount"),  # a JSON number, but with more digits than the service keeps
    ({"amount": True}, "amount"),
    ({"amount": "23,50"}, "amount"),
    ({"amount": "1e3"}, "amount"),
    ({"date": "2026-02-30"}, "date"),
    ({"date": "15/01/2026"}, "date"),
    ({"vendor": ""}, "vendor"),
    ({"currency": "US"}, "currency"),
    ({"lineId": "has space"}, "lineId"),
    ({"category": "Airfare"}, "category"),
])
def test_invalid_line_is_400_naming_the_field_and_stores_nothing(api, change, field):
    owner = user()
    lines = [LINE, {**LINE, "lineId": "tx-2", **change}]
    body = problem(send(api, "POST", "/api/v1/expenses", owner, {"lines": lines}), 400)
    assert (body["line"], body["field"]) == ("lines[1]", field)
    assert lines_of(api, owner, "2026-01") == []


def test_csv_with_one_bad_line_stores_nothing(api):
    owner = user()
    csv = ("lineId,date,vendor,amount,currency,description\n"
           "tx-1,2026-01-15,UBER,23.50,USD,ride\n"
           "tx-2,2026-01-16,LYFT,twelve,USD,ride\n"
           "tx-3,2026-01-17,DELTA,400.00,USD,flight\n")
    body = problem(send(api, "POST", "/api/v1/expenses", owner, csv, "text/csv"), 400)
    assert (body["line"], body["field"]) == ("row 3", "amount")
    assert lines_of(api, owner, "2026-01") == []


@pytest.mark.parametrize("csv", [
    "",
    "lineId,date,vendor,amount,currency\n",
    "date,vendor,amount\n2026-01-15,UBER,1.00\n",
    "date,vendor,amount,currency,tip\n2026-01-15,UBER,1.00,USD,2\n",
    "date,vendor,amount,currency\n2026-01-15,UBER,1.00,USD,extra\n",
])
def test_csv_with_bad_shape_is_400_and_stores_nothing(api, csv):
    owner = user()
    problem(send(api, "POST", "/api/v1/expenses", owner, csv, "text/csv"), 400)
    assert lines_of(api, owner, "2026-01") == []


def test_csv_without_line_ids_mints_uuid4_line_ids(api):
    owner = user()
    csv = "date,vendor,amount,currency\n2026-01-15,UBER,23.50,USD\n2026-01-16,LYFT,9.00,USD\n"
    response = send(api, "POST", "/api/v1/expenses", owner, csv, "text/csv; charset=utf-8")
    assert response.status_code == 201 and response.json_body == {"imported": 2, "periods": ["2026-01"]}
    stored = lines_of(api, owner, "2026-01")
    assert len(stored) == 2 and all(UUID(line["lineId"]).version == 4 for line in stored)


def test_reimporting_a_line_id_replaces_the_line(api):
    owner = user()
    assert send(api, "POST", "/api/v1/expenses", owner, {"lines": [LINE]}).status_code == 201
    assert send(api, "POST", "/api/v1/expenses", owner, {"lines": [{**LINE, "amount": "99.00"}]}).status_code == 201
    assert lines_of(api, owner, "2026-01") == [{**LINE, "amount": "99.00"}]


def test_import_over_5000_lines_is_400_and_stores_nothing(api):
    owner = user()
    lines = [{**LINE, "lineId": f"tx-{i}"} for i in range(get_settings().max_import_lines + 1)]
    assert problem(send(api, "POST", "/api/v1/expenses", owner, {"lines": lines}), 400)["field"] == "lines"
    assert lines_of(api, owner, "2026-01") == []
    assert Settings().max_import_lines == 5000


@pytest.mark.parametrize("body", [{"lines": []}, {"lines": [LINE], "extra": 1}, {"rows": [LINE]}, [LINE],
                                  {"lines": [LINE, LINE]}])
def test_import_body_of_wrong_shape_is_400(api, body):
    owner = user()
    problem(send(api, "POST", "/api/v1/expenses", owner, body), 400)
    assert lines_of(api, owner, "2026-01") == []


def test_import_with_unsupported_content_type_is_415(api):
    owner = user()
    problem(send(api, "POST", "/api/v1/expenses", owner, json.dumps({"lines": [LINE]}), "text/plain"), 415)
    problem(send(api, "POST", "/api/v1/expenses", owner, "<lines/>", "application/xml"), 415)
    assert lines_of(api, owner, "2026-01") == []


def test_oversized_body_is_413_and_stores_nothing(api):
    owner = user()
    report_id = new_report(api, owner)
    big_csv = "date,vendor,amount,currency\n" + "2026-01-15,UBER,1.00,USD\n" * (6 * MiB // 25 + 1)
    problem(send(api, "POST", "/api/v1/expenses", owner, big_csv, "text/csv"), 413)
    assert lines_of(api, owner, "2026-01") == []
    padded = json.dumps({"period": "2026-01"}) + " " * (6 * MiB)
    problem(send(api, "POST", f"/api/v1/reports/{report_id}/generate", owner, padded), 413)
    assert jobs_of(api, owner)["totalCount"] == 0


@pytest.mark.parametrize("query,field", [("", "period"), ("?period=2026-13", "period"), ("?period=2026-1", "period"),
                                         ("?period=2026-01&pageSize=0", "pageSize"),
                                         ("?period=2026-01&pageSize=1001", "pageSize"),
                                         ("?period=2026-01&pageSize=ten", "pageSize"),
                                         ("?period=2026-01&nextToken=garbage", "nextToken")])
def test_list_expenses_with_bad_query_is_400(api, query, field):
    assert problem(api.get(f"/api/v1/expenses{query}", headers=user()), 400)["field"] == field


def test_list_expenses_pages_with_next_token_and_shows_only_the_callers_lines(api):
    owner = user()
    lines = [{**LINE, "lineId": f"tx-{i}"} for i in range(3)]
    assert send(api, "POST", "/api/v1/expenses", owner, {"lines": lines}).status_code == 201
    first = api.get("/api/v1/expenses?period=2026-01&pageSize=2", headers=owner).json_body
    assert [line["lineId"] for line in first["items"]] == ["tx-0", "tx-1"] and first["nextToken"]
    rest = api.get(f"/api/v1/expenses?period=2026-01&pageSize=2&nextToken={first['nextToken']}",
                   headers=owner).json_body
    assert [line["lineId"] for line in rest["items"]] == ["tx-2"] and rest["nextToken"] is None
    assert lines_of(api, user(), "2026-01") == []
    assert len(lines_of(api, owner, "2026-01")) == 3  # default pageSize (100) holds them all


# --- generate ---------------------------------------------------------------------------------------------


def test_generate_is_202_with_location_retry_after_and_a_queued_job(api):
    owner = user()
    report_id = new_report(api, owner)
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
    response = generate(api, owner, new_report(api, owner), None, Host="localhost:8000",
                        **{"X-Forwarded-Proto": "http"})
    assert response.json_body["statusUrl"].startswith("http://localhost:8000/api/v1/jobs/")


def test_generate_without_body_is_for_the_current_utc_month(api):
    owner = user()
    report_id = new_report(api, owner)
    month = time.strftime("%Y-%m", time.gmtime())
    assert generate(api, owner, report_id).json_body["period"] == month
    problem(generate(api, owner, report_id, {}), 409)  # {} is the same request: the month's job is active


@pytest.mark.parametrize("body", [{"period": "2026-13"}, {"period": "2026-1"}, {"period": "202601"},
                                  {"period": 202601}, {"period": "2026-01", "force": True}, ["2026-01"], "2026-01"])
def test_invalid_period_is_400_and_creates_no_job(api, body):
    owner = user()
    report_id = new_report(api, owner)
    assert problem(generate(api, owner, report_id, json.dumps(body)), 400)["field"] == "period"
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
    for period in ("2025-02", "2025-03"):
        assert generate(api, owner, report_id, {"period": period}).status_code == 202
    response = generate(api, owner, report_id, {"period": "2025-04"})
    assert "3 jobs" in problem(response, 429)["detail"]
    assert 3500 <= int(response.headers["Retry-After"]) <= 3601
    assert jobs_of(api, owner)["totalCount"] == 3
    assert new_job(api, user(), "2025-04")  # another user has a window of their own


def test_queue_failure_is_503_and_leaves_no_job(api, monkeypatch):
    from chalicelib.jobs import create

    owner = user()
    report_id = new_report(api, owner)

    def queue_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("queue down")

    with monkeypatch.context() as patch:
        patch.setattr(create, "enqueue", queue_down)
        response = generate(api, owner, report_id, {"period": "2026-01"})
        problem(response, 503)
        assert int(response.headers["Retry-After"]) >= 1
    assert jobs_of(api, owner) == {"items": [], "page": 1, "pageSize": 100, "totalCount": 0, "nextToken": None}
    assert generate(api, owner, report_id, {"period": "2026-01"}).status_code == 202  # no lock left behind


def test_job_store_failure_is_503_and_leaves_no_job(api, monkeypatch):
    from pynamodb.exceptions import PynamoDBException

    from chalicelib.jobs import create

    owner = user()
    report_id = new_report(api, owner)

    def store_down(*args: Any, **kwargs: Any) -> None:
        raise PynamoDBException("store down")

    with monkeypatch.context() as patch:
        patch.setattr(create, "_write", store_down)
        problem(generate(api, owner, report_id, {"period": "2026-01"}), 503)
    assert jobs_of(api, owner)["totalCount"] == 0


def test_idempotency_key_replay_returns_first_response_and_creates_nothing(api):
    owner = user()
    report_id = new_report(api, owner)
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
    key = {"Idempotency-Key": f"k-{uuid4()}"}
    assert generate(api, owner, report_id, {"period": "2026-01"}, **key).status_code == 202
    problem(generate(api, owner, report_id, {"period": "2026-02"}, **key), 422)
    problem(generate(api, owner, new_report(api, owner), {"period": "2026-01"}, **key), 422)
    assert jobs_of(api, owner)["totalCount"] == 1


def test_idempotency_keys_belong_to_one_user(api):
    owner, holder = user(), user(roles=["finance"])
    report_id = new_report(api, owner, allowedRoles=["finance"])
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


def test_result_and_line_settlement_of_an_unfinished_job_are_409(api):
    owner = user()
    job = new_job(api, owner)
    assert problem(api.get(f"/api/v1/jobs/{job['jobId']}/result", headers=owner), 409)["jobStatus"] == "Queued"
    problem(send(api, "PATCH", f"/api/v1/jobs/{job['jobId']}/lines/tx-1", owner, {"category": "Other"}), 409)


def test_completed_job_result_is_200_as_json_and_csv(api):
    owner = user()
    job = completed_job(api, owner)
    polled = api.get(f"/api/v1/jobs/{job['jobId']}", headers=owner).json_body
    assert (polled["status"], polled["progressPercent"], polled["resultUrl"]) == (
        "Completed", 100, f"{job['statusUrl']}/result")
    result = api.get(f"/api/v1/jobs/{job['jobId']}/result", headers=owner)
    assert result.status_code == 200 and result.headers["ETag"]
    body = result.json_body
    assert (body["jobId"], body["period"]) == (job["jobId"], "2026-01")
    categories = {line["lineId"]: line["category"] for line in body["lines"]}
    assert categories == {"tx-1": "Ground Transportation", "tx-2": "Lodging"}
    assert api.get(f"/api/v1/jobs/{job['jobId']}/result",
                   headers={**owner, "If-None-Match": result.headers["ETag"]}).status_code == 304
    csv = api.get(f"/api/v1/jobs/{job['jobId']}/result?format=csv", headers=owner)
    assert csv.status_code == 200 and csv.headers["Content-Type"].startswith("text/csv")
    assert csv.body.decode().splitlines()[0].startswith("lineId,date,vendor,amount,currency")
    assert problem(api.get(f"/api/v1/jobs/{job['jobId']}/result?format=pdf", headers=owner), 400)
    problem(api.delete(f"/api/v1/jobs/{job['jobId']}", headers=owner), 409)
    problem(api.post(f"/api/v1/jobs/{job['jobId']}/retry", headers=owner), 409)


def test_settling_a_line_is_200_and_the_result_follows(api):
    owner = user()
    job = completed_job(api, owner)
    path = f"/api/v1/jobs/{job['jobId']}/lines/tx-1"
    assert problem(send(api, "PATCH", path, owner, {"category": "Spaceflight"}), 400)["field"] == "category"
    assert problem(send(api, "PATCH", path, owner, {"category": "Lodging", "note": "x"}), 400)
    problem(send(api, "PATCH", f"/api/v1/jobs/{job['jobId']}/lines/tx-404", owner, {"category": "Other"}), 404)
    response = send(api, "PATCH", path, owner, {"category": "Lodging"})
    assert response.status_code == 200
    assert {k: response.json_body[k] for k in ("lineId", "category", "source", "needsReview")} == {
        "lineId": "tx-1", "category": "Lodging", "source": "manual", "needsReview": False}
    result = api.get(f"/api/v1/jobs/{job['jobId']}/result", headers=owner).json_body
    assert [t for t in result["totals"] if t["category"] == "Lodging"] == [
        {"category": "Lodging", "currency": "USD", "amount": "233.50", "lines": 2}]


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
    monkeypatch.setattr(service, "get_job", lambda owner_id, job_id: stale.pop() if stale
                        else real_get_job(owner_id, job_id))
    response = api.delete(f"/api/v1/jobs/{job['jobId']}", headers=owner)
    assert (response.status_code, response.json_body["status"]) == (200, "CancellationRequested")


def test_period_with_a_trailing_newline_is_400_and_creates_no_job(api):
    owner = user()
    problem(generate(api, owner, new_report(api, owner), {"period": "2026-01\n"}), 400)
    assert jobs_of(api, owner)["totalCount"] == 0


@pytest.mark.parametrize("change", [{"currency": "USD\n"}, {"lineId": "tx-1\n"}])
def test_line_fields_with_a_trailing_newline_are_400_and_store_nothing(api, change):
    owner = user()
    problem(send(api, "POST", "/api/v1/expenses", owner, {"lines": [{**LINE, **change}]}), 400)
    assert lines_of(api, owner, "2026-01") == []


def test_report_id_with_a_trailing_newline_is_400_and_stores_nothing(api):
    owner = user()
    body = {"reportId": f"r-{uuid4().hex[:8]}\n", "name": "x", "deliveryTargets": [{"type": "api", "mode": "async"}]}
    problem(send(api, "POST", "/api/v1/reports", owner, body), 400)
    problem(api.get(f"/api/v1/reports/{body['reportId'].strip()}", headers=owner), 404)


def test_categories_that_repeat_after_trimming_are_400(api):
    owner = user()
    body = {"name": "x", "deliveryTargets": [{"type": "api", "mode": "async"}], "categories": ["Lodging", "Lodging "]}
    assert problem(send(api, "POST", "/api/v1/reports", owner, body), 400)["field"] == "categories"


def test_falsy_period_is_400_and_creates_no_job(api):
    owner = user()
    report_id = new_report(api, owner)
    for period in ("", 0, False):
        problem(generate(api, owner, report_id, {"period": period}), 400)
    assert jobs_of(api, owner)["totalCount"] == 0


def test_a_content_type_header_on_a_bodyless_request_is_ignored(api):
    owner = user()
    assert api.get("/health", headers={"Content-Type": "text/plain"}).status_code == 200
    assert api.get("/api/v1/jobs", headers={**owner, "Content-Type": "text/plain"}).status_code == 200


def test_csv_with_a_utf8_byte_order_mark_is_accepted(api):
    owner = user()
    csv = "\ufefflineId,date,vendor,amount,currency\ntx-1,2026-01-15,UBER,23.50,USD\n"
    assert send(api, "POST", "/api/v1/expenses", owner, csv, "text/csv").status_code == 201
