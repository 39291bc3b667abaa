"""Helpers of the API contract tests (tests/integration/contract): users, requests, jobs moved through their states."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import jwt
import pytest

from chalicelib import deps
from chalicelib.auth import mint_token
from chalicelib.settings import get_settings
from tests.support import seed_body

ROOT = Path(__file__).resolve().parents[3]


PROBLEM = "application/problem+json"


MiB = 1024 * 1024


NOT_ASYNC = "Report is not configured for asynchronous generation."


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


def seed(api, headers: dict[str, str], period: str = "2026-01") -> None:
    """One line in `period` for the caller: a period without lines is not generated (422 `no-lines`)."""
    assert send(api, "POST", "/api/v1/expenses", headers, seed_body(period)).status_code == 201


def new_job(api, headers: dict[str, str], period: str = "2026-01", report_id: str | None = None) -> dict:
    if not api.get(f"/api/v1/expenses?period={period}&pageSize=1", headers=headers).json_body["items"]:
        seed(api, headers, period)  # only when the test imported none of its own
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


RIDE_AND_HOTEL = ("lineId,date,vendor,amount,currency,description\n"
                  "tx-1,2026-01-15,UBER *TRIP 8841,23.50,USD,ride to airport\n"
                  "tx-2,2026-01-16,Hilton Garden Inn,210.00,USD,hotel\n")


def completed_job(api, headers: dict[str, str], csv: str = RIDE_AND_HOTEL) -> dict[str, Any]:
    """A job over `csv`'s lines (January 2026), worked to its end with the offline rules."""
    assert send(api, "POST", "/api/v1/expenses", headers, csv, "text/csv").status_code == 201
    job = new_job(api, headers)
    run_worker(job["jobId"])
    return job


LINE = {"lineId": "tx-1", "date": "2026-01-15", "vendor": "UBER *TRIP 8841", "amount": "23.50", "currency": "USD",
        "description": "ride to airport"}
