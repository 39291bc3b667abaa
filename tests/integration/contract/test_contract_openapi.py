"""Every route answers as chalicelib/api/openapi.json documents it, through chalice.test.Client against moto. The
document itself: tests/unit/test_openapi.py."""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import uuid4

from chalicelib.auth import mint_token
from chalicelib.settings import get_settings
from tests.integration.contract.common import completed_job, new_job, new_report, seed, send
from tests.unit.test_openapi import check

RIDE_AND_FLIGHT = ("lineId,date,vendor,amount,currency,description\n"
                   "tx-1,2026-01-15,UBER *TRIP 8841,23.50,USD,ride to airport\n"
                   "tx-2,2026-01-16,DELTA AIR 0062345,412.00,USD,flight\n")


def user(roles: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(get_settings(), sub=str(uuid4()), roles=roles or [])}


def test_public_routes_match_the_document(api, monkeypatch):
    assert check(api.get("/health"), "GET", "/health") == {"status": "ok"}
    ready = check(api.get("/health/ready"), "GET", "/health/ready")
    assert ready == {"status": "ready", "checks": {"table": "ok", "queue": "ok", "bucket": "ok"}}
    from chalicelib.api import meta

    missing = dataclasses.replace(get_settings(), results_bucket=f"no-such-bucket-{uuid4().hex[:8]}")
    monkeypatch.setattr(meta, "get_settings", lambda: missing)
    assert check(api.get("/health/ready"), "GET", "/health/ready")["checks"]["bucket"] == "missing"  # 503
    assert "<" in check(api.get("/"), "GET", "/")


def test_report_routes_match_the_document(api):
    owner = user()
    body = {"name": "Monthly expenses", "deliveryTargets": [{"type": "api", "mode": "async"},
                                                           {"type": "email", "to": "finance@example.com"}],
            "allowedRoles": ["finance"], "categories": ["Airfare", "Lodging"],
            "schedule": {"type": "monthly", "day": 1}}
    created = check(send(api, "POST", "/api/v1/reports", owner, body), "POST", "/api/v1/reports")
    path = f"/api/v1/reports/{created['reportId']}"
    assert check(api.get(path, headers=owner), "GET", "/api/v1/reports/{reportId}") == created
    check(send(api, "POST", "/api/v1/reports", owner, {**body, "reportId": created["reportId"]}),
          "POST", "/api/v1/reports")  # 409
    check(send(api, "POST", "/api/v1/reports", owner, {"name": ""}), "POST", "/api/v1/reports")  # 400
    check(send(api, "POST", "/api/v1/reports", owner, "<report/>", "application/xml"), "POST", "/api/v1/reports")
    check(send(api, "POST", "/api/v1/reports", owner, "x" * (6 * 1024 * 1024 + 1)), "POST", "/api/v1/reports")
    check(api.get(path, headers=user()), "GET", "/api/v1/reports/{reportId}")  # 404
    check(api.get(path), "GET", "/api/v1/reports/{reportId}")  # 401


def test_webhook_report_and_delivery_routes_match_the_document(api):
    owner, reader = user(), user(["finance"])
    hook = {"type": "webhook", "url": "https://hooks.example.com/reports", "events": ["job.completed"]}
    body = {"name": "Hooked", "deliveryTargets": [{"type": "api", "mode": "async"}, hook],
            "allowedRoles": ["finance"]}
    created = check(send(api, "POST", "/api/v1/reports", owner, body), "POST", "/api/v1/reports")
    assert created["webhookSecret"].startswith("whsec_")
    path = f"/api/v1/reports/{created['reportId']}"
    read = check(api.get(path, headers=owner), "GET", "/api/v1/reports/{reportId}")
    assert "webhookSecret" not in read
    bad = {**body, "deliveryTargets": [{**hook, "url": "https://10.0.0.1/hook"}]}
    assert check(send(api, "POST", "/api/v1/reports", owner, bad), "POST", "/api/v1/reports")["field"] == \
        "deliveryTargets[0].url"
    rotate = "/api/v1/reports/{reportId}/webhook-secret/rotate"
    rotated = check(send(api, "POST", f"{path}/webhook-secret/rotate", owner), "POST", rotate)
    assert rotated["webhookSecret"] != created["webhookSecret"] and rotated["previousSecretExpiresAt"]
    check(send(api, "POST", f"{path}/webhook-secret/rotate", reader), "POST", rotate)  # 403
    check(send(api, "POST", f"{path}/webhook-secret/rotate", user()), "POST", rotate)  # 404
    plain = new_report(api, owner)
    check(send(api, "POST", f"/api/v1/reports/{plain}/webhook-secret/rotate", owner), "POST", rotate)  # 409
    check(send(api, "POST", f"{path}/webhook-secret/rotate", {}), "POST", rotate)  # 401
    job = new_job(api, owner)
    retry = "/api/v1/jobs/{jobId}/deliveries/{n}/retry"
    assert check(send(api, "POST", f"/api/v1/jobs/{job['jobId']}/deliveries/x/retry", owner), "POST",
                 retry)["field"] == "n"  # 400
    check(send(api, "POST", f"/api/v1/jobs/{job['jobId']}/deliveries/0/retry", owner), "POST", retry)  # 404
    check(send(api, "POST", f"/api/v1/jobs/{job['jobId']}/deliveries/0/retry", {}), "POST", retry)  # 401


def test_expense_routes_match_the_document(api):
    owner = user()
    lines = {"lines": [{"lineId": "tx-1", "date": "2026-01-15", "vendor": "UBER *TRIP 8841", "amount": "23.50",
                        "currency": "USD", "description": "ride to airport"}]}
    check(send(api, "POST", "/api/v1/expenses", owner, lines), "POST", "/api/v1/expenses")
    csv = "date,vendor,amount,currency\n2026-02-01,Hilton,310.00,EUR\n2026-02-02,Delta,99.9,USD\n"
    assert check(send(api, "POST", "/api/v1/expenses", owner, csv, "text/csv"), "POST", "/api/v1/expenses") == {
        "imported": 2, "periods": ["2026-02"]}
    page = check(api.get("/api/v1/expenses?period=2026-02&pageSize=1", headers=owner), "GET", "/api/v1/expenses")
    assert len(page["items"]) == 1 and page["nextToken"]
    check(api.get(f"/api/v1/expenses?period=2026-02&nextToken={page['nextToken']}", headers=owner),
          "GET", "/api/v1/expenses")
    bad = check(send(api, "POST", "/api/v1/expenses", owner, {"lines": [{**lines["lines"][0], "amount": "12,50"}]}),
                "POST", "/api/v1/expenses")
    assert (bad["line"], bad["field"]) == ("lines[0]", "amount")
    check(send(api, "POST", "/api/v1/expenses", owner, "a", "text/plain"), "POST", "/api/v1/expenses")  # 415
    check(api.get("/api/v1/expenses?period=2026-2", headers=owner), "GET", "/api/v1/expenses")  # 400
    check(api.get("/api/v1/expenses?period=2026-02"), "GET", "/api/v1/expenses")  # 401


def test_generate_matches_the_document(api):
    owner = user()
    report_id = new_report(api, owner)
    seed(api, owner, "2026-01")
    path, template = f"/api/v1/reports/{report_id}/generate", "/api/v1/reports/{reportId}/generate"
    job = check(send(api, "POST", path, {**owner, "Idempotency-Key": "k1"}, {"period": "2026-01"}),
                "POST", template)
    assert job["status"] == "Queued"
    check(send(api, "POST", path, {**owner, "Idempotency-Key": "k1"}, {"period": "2026-01"}), "POST", template)
    check(send(api, "POST", path, {**owner, "Idempotency-Key": "k1"}, {"period": "2026-02"}), "POST", template)
    conflict = check(send(api, "POST", path, owner, {"period": "2026-01"}), "POST", template)
    assert conflict["existingJobId"] == job["jobId"]
    check(send(api, "POST", path, owner, {"period": "2026-13"}), "POST", template)  # 400
    check(send(api, "POST", path, owner, "period=2026-01", "text/plain"), "POST", template)  # 415
    check(send(api, "POST", path, user(), {"period": "2026-01"}), "POST", template)  # 403
    check(send(api, "POST", f"/api/v1/reports/r-{uuid4().hex}/generate", owner), "POST", template)  # 404
    sync_only = new_report(api, owner, deliveryTargets=[{"type": "api", "mode": "sync"}])
    check(send(api, "POST", f"/api/v1/reports/{sync_only}/generate", owner), "POST", template)  # 409
    check(send(api, "POST", path, {}, {"period": "2026-01"}), "POST", template)  # 401
    empty = check(send(api, "POST", path, owner, {"period": "2026-05"}), "POST", template)  # 422: no lines
    assert empty["type"] == "urn:reports:problem:no-lines"


def test_generate_rate_limit_and_store_failure_match_the_document(api, monkeypatch):
    from chalicelib.jobs import create

    owner = user()
    report_id = new_report(api, owner)
    seed(api, owner, "2030-01")
    seed(api, owner, "2030-02")
    path, template = f"/api/v1/reports/{report_id}/generate", "/api/v1/reports/{reportId}/generate"

    def broken_queue(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("queue down")

    with monkeypatch.context() as patch:
        patch.setattr(create, "enqueue", broken_queue)
        check(send(api, "POST", path, owner, {"period": "2030-01"}), "POST", template)  # 503
    # The limit itself (20) is held by contract/test_contract_generate.py; here only the shape of the answer matters.
    monkeypatch.setattr(create, "get_settings", lambda: dataclasses.replace(get_settings(), jobs_per_hour=1))
    assert send(api, "POST", path, owner, {"period": "2030-01"}).status_code == 202
    assert check(send(api, "POST", path, owner, {"period": "2030-02"}), "POST", template)["status"] == 429


def test_job_routes_match_the_document(api):
    owner = user()
    job = new_job(api, owner)
    path = f"/api/v1/jobs/{job['jobId']}"
    first = api.get(path, headers=owner)
    assert check(first, "GET", "/api/v1/jobs/{jobId}") == job
    check(api.get(path, headers={**owner, "If-None-Match": first.headers["ETag"]}), "GET", "/api/v1/jobs/{jobId}")
    listed = check(api.get("/api/v1/jobs?pageSize=1", headers=owner), "GET", "/api/v1/jobs")
    assert listed["items"] == [job]
    check(api.get("/api/v1/jobs?status=Queued&page=2", headers=owner), "GET", "/api/v1/jobs")
    check(api.get("/api/v1/jobs?pageSize=0", headers=owner), "GET", "/api/v1/jobs")  # 400
    check(api.get("/api/v1/jobs"), "GET", "/api/v1/jobs")  # 401
    assert check(api.delete(path, headers=owner), "DELETE", "/api/v1/jobs/{jobId}")["status"] == "Cancelled"
    check(api.delete(path, headers=owner), "DELETE", "/api/v1/jobs/{jobId}")  # 409
    events = check(api.get(f"{path}/events", headers=owner), "GET", "/api/v1/jobs/{jobId}/events")
    # The cancel settled the queued job's three Pending steps in the same write: one `step` event each.
    assert [e["type"] for e in events["items"]] == ["created", "cancelled", "step", "step", "step"]
    assert [(e["detail"]["step"], e["detail"]["to"]) for e in events["items"][2:]] == [
        ("collect", "Cancelled"), ("categorize", "Cancelled"), ("assemble", "Cancelled")]
    check(api.get(f"{path}/result", headers=owner), "GET", "/api/v1/jobs/{jobId}/result")  # 409
    check(send(api, "PATCH", f"{path}/lines/tx-1", owner, {"category": "Other"}),
          "PATCH", "/api/v1/jobs/{jobId}/lines/{lineId}")  # 409
    check(send(api, "POST", f"{path}/retry", owner), "POST", "/api/v1/jobs/{jobId}/retry")  # 202
    check(send(api, "POST", f"{path}/retry", owner), "POST", "/api/v1/jobs/{jobId}/retry")  # 409
    for method, template in [("GET", "/api/v1/jobs/{jobId}"), ("DELETE", "/api/v1/jobs/{jobId}"),
                             ("GET", "/api/v1/jobs/{jobId}/events"), ("GET", "/api/v1/jobs/{jobId}/result"),
                             ("POST", "/api/v1/jobs/{jobId}/retry")]:
        concrete = template.replace("{jobId}", job["jobId"])
        assert check(send(api, method, concrete, user()), method, template)["status"] == 404
        assert check(send(api, method, concrete, {}), method, template)["status"] == 401


def test_result_routes_match_the_document(api, monkeypatch):
    from chalicelib import results

    owner = user()
    job = completed_job(api, owner, RIDE_AND_FLIGHT)
    path, template = f"/api/v1/jobs/{job['jobId']}/result", "/api/v1/jobs/{jobId}/result"
    polled = check(api.get(f"/api/v1/jobs/{job['jobId']}", headers=owner), "GET", "/api/v1/jobs/{jobId}")
    assert polled["status"] == "Completed" and polled["resultUrl"] == f"{polled['statusUrl']}/result"
    full = api.get(path, headers=owner)
    result = check(full, "GET", template)
    assert {line["lineId"] for line in result["lines"]} == {"tx-1", "tx-2"}
    check(api.get(path, headers={**owner, "If-None-Match": full.headers["ETag"]}), "GET", template)  # 304
    assert check(api.get(f"{path}?format=csv", headers=owner), "GET", template).startswith("lineId,date,")
    check(api.get(f"{path}?format=xml", headers=owner), "GET", template)  # 400
    patch_template = "/api/v1/jobs/{jobId}/lines/{lineId}"
    line = check(send(api, "PATCH", f"/api/v1/jobs/{job['jobId']}/lines/tx-1", owner, {"category": "Lodging"}),
                 "PATCH", patch_template)
    assert (line["source"], line["needsReview"], line["category"]) == ("manual", False, "Lodging")
    check(send(api, "PATCH", f"/api/v1/jobs/{job['jobId']}/lines/tx-1", owner, {"category": "Nope"}),
          "PATCH", patch_template)  # 400
    check(send(api, "PATCH", f"/api/v1/jobs/{job['jobId']}/lines/tx-9", owner, {"category": "Other"}),
          "PATCH", patch_template)  # 404
    check(send(api, "PATCH", f"/api/v1/jobs/{job['jobId']}/lines/tx-1", owner, "Other", "text/plain"),
          "PATCH", patch_template)  # 415
    small = dataclasses.replace(get_settings(), result_inline_max_bytes=10)
    monkeypatch.setattr(results, "get_settings", lambda: small)
    assert check(api.get(path, headers=owner), "GET", template) is None  # 303 to a presigned URL
