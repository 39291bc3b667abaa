"""The OpenAPI document: valid, in step with the routes Chalice registers, and true of real responses.

The document is generated (`make openapi`: chalicelib/api/spec.py, from the pydantic models of
chalicelib/api/models.py); tests/unit/test_openapi_generated.py holds the file to what that writes.

Requests go through `chalice.test.Client(app)` in process. The tables, queue and bucket come from the stack
that tests/conftest.py deploys when AWS_ENDPOINT_URL is set; without it, this module deploys
infra/template.yaml into moto's in-process `mock_aws`. Every test uses fresh user and report ids.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlsplit
from uuid import uuid4

import pytest
from chalice.test import Client
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app import app
from chalicelib import deps
from chalicelib.api import middleware
from chalicelib.auth import mint_token
from chalicelib.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
DOC = json.loads((ROOT / "chalicelib" / "api" / "openapi.json").read_text())
PROBLEM = "application/problem+json"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# (METHOD, path) of operations documented before they are built. Remove an entry when its route exists:
# test_documented_operations_are_registered_or_planned fails until you do.
NOT_YET_IMPLEMENTED: frozenset[tuple[str, str]] = frozenset()

REGISTRY = Registry().with_resource("urn:openapi", Resource.from_contents(DOC, default_specification=DRAFT202012))
FORMATS = FormatChecker()


@FORMATS.checks("uri")
def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme) and (bool(parts.netloc) or parts.scheme == "urn")


@FORMATS.checks("uri-reference")
def _is_uri_reference(value: object) -> bool:
    return not isinstance(value, str) or " " not in value


# --- environment ------------------------------------------------------------------------------------------


@pytest.fixture
def api():
    return Client(app, stage_name="pytest", project_dir=str(ROOT)).http


def user(roles: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(get_settings(), sub=str(uuid4()), roles=roles or [])}


def send(api, method: str, path: str, headers: dict[str, str], body: Any = None, content_type: str | None = None):
    raw = b"" if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    if body is not None or content_type:
        headers = {**headers, "Content-Type": content_type or "application/json"}
    return api.request(method, path, headers=headers, body=raw)


def new_report(api, headers: dict[str, str], **fields: Any) -> str:
    report_id = f"r-{uuid4().hex[:12]}"
    body = {"reportId": report_id, "name": "Monthly expenses", "deliveryTargets": [{"type": "api", "mode": "async"}],
            **fields}
    assert send(api, "POST", "/api/v1/reports", headers, body).status_code == 201
    return report_id


def new_job(api, headers: dict[str, str], period: str = "2026-01", **report_fields: Any) -> dict[str, Any]:
    report_id = new_report(api, headers, **report_fields)
    response = send(api, "POST", f"/api/v1/reports/{report_id}/generate", headers, {"period": period})
    assert response.status_code == 202, response.body
    return response.json_body


def run_worker(job_id: str) -> None:
    """Process the job in process, with the offline rules only (never a model)."""
    from chalicelib import worker

    settings = get_settings()
    try:
        deps.client("s3").head_bucket(Bucket=settings.results_bucket)
    except Exception:  # any answer but success means there is nowhere to put results
        pytest.fail(f"results bucket {settings.results_bucket!r} is missing: tests/conftest.py deploys it, "
                    "so a Completed job could not store its result")
    context = SimpleNamespace(get_remaining_time_in_millis=lambda: 300_000, aws_request_id=f"test-{uuid4()}")
    worker.run_job(job_id, "start", context, settings=dataclasses.replace(settings, openai_api_key=None))


def completed_job(api, headers: dict[str, str]) -> dict[str, Any]:
    csv = ("lineId,date,vendor,amount,currency,description\n"
           "tx-1,2026-01-15,UBER *TRIP 8841,23.50,USD,ride to airport\n"
           "tx-2,2026-01-16,DELTA AIR 0062345,412.00,USD,flight\n")
    assert send(api, "POST", "/api/v1/expenses", headers, csv, "text/csv").status_code == 201
    job = new_job(api, headers)
    run_worker(job["jobId"])
    return job


# --- the document against a response ---------------------------------------------------------------------


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _node(pointer: str) -> Any:
    node: Any = DOC
    for part in pointer.split("/")[1:]:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(pointer: str) -> tuple[str, Any]:
    node = _node(pointer)
    while isinstance(node, dict) and "$ref" in node:
        pointer = node["$ref"].removeprefix("#")
        node = _node(pointer)
    return pointer, node


def schema_errors(pointer: str, instance: Any) -> list[str]:
    """Errors of `instance` against the schema at `pointer` in the document ($refs resolved in the document)."""
    validator = Draft202012Validator({"$ref": "urn:openapi#" + quote(pointer, safe="/~")}, registry=REGISTRY,
                                     format_checker=FORMATS)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)]


def component_errors(name: str, instance: Any) -> list[str]:
    return schema_errors(_pointer("components", "schemas", name), instance)


def check(response, method: str, path: str) -> Any:
    """Assert `response` is a documented answer of `method path`; return its body (JSON parsed)."""
    operation = _pointer("paths", path, method.lower())
    status = str(response.status_code)
    documented = _node(operation)["responses"]
    assert status in documented, f"{method} {path} answered {status} ({response.body[:300]!r}), not documented"
    pointer, spec = _deref(operation + _pointer("responses", status))
    headers = {k.lower(): v for k, v in response.headers.items()}
    for name in spec.get("headers", {}):
        header_pointer, header = _deref(pointer + _pointer("headers", name))
        if header.get("required"):
            assert name.lower() in headers, f"{method} {path} {status} lacks the documented header {name}"
        if name.lower() in headers:
            problems = schema_errors(header_pointer + "/schema", headers[name.lower()])
            assert not problems, f"{method} {path} {status} header {name}: {problems}"
    content = spec.get("content")
    if not content:
        assert not response.body, f"{method} {path} {status} is documented without a body"
        return None
    # API Gateway's proxy integration sends application/json when the Lambda response names no Content-Type.
    media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    assert media in content, f"{method} {path} {status} answered {media}; documented {sorted(content)}"
    if response.status_code >= 400:
        assert media == PROBLEM, f"{method} {path} {status} error is {media}, not {PROBLEM}"
    if not media.endswith("json"):
        text = response.body.decode("utf-8")
        assert not schema_errors(pointer + _pointer("content", media, "schema"), text)
        return text
    body = json.loads(response.body)
    problems = schema_errors(pointer + _pointer("content", media, "schema"), body)
    assert not problems, f"{method} {path} {status} body does not match the document: {problems}"
    if media == PROBLEM:
        assert body["status"] == response.status_code
    return body


# --- the document itself ----------------------------------------------------------------------------------


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in DOC["paths"].items()
            for method, op in item.items() if method in HTTP_METHODS]


def _registered() -> set[tuple[str, str]]:
    return {(method, path) for path, methods in app.routes.items() for method in methods if method != "OPTIONS"}


def test_document_is_valid_openapi_3_1():
    validate(DOC)
    assert DOC["openapi"].startswith("3.1")


def test_served_document_is_the_file(api):
    response = api.get("/openapi.json")
    assert check(response, "GET", "/openapi.json") == DOC


def test_every_registered_route_is_documented_with_its_methods():
    documented = {(method, path) for method, path, _ in _operations()}
    assert _registered() - documented == set()


def test_documented_operations_are_registered_or_planned():
    documented = {(method, path) for method, path, _ in _operations()}
    built_but_listed = NOT_YET_IMPLEMENTED & _registered()
    assert not built_but_listed, f"remove {sorted(built_but_listed)} from NOT_YET_IMPLEMENTED: they are built"
    assert documented - _registered() == set(NOT_YET_IMPLEMENTED)


def test_operation_ids_are_present_and_unique():
    ids = [op.get("operationId") for _, _, op in _operations()]
    assert None not in ids
    assert len(ids) == len(set(ids))


def test_exactly_the_public_routes_need_no_token():
    public = {path for _, path, op in _operations() if op.get("security") == []}
    assert public == set(middleware.PUBLIC_PATHS) == {"/", "/health", "/health/ready", "/openapi.json"}
    assert DOC["security"] == [{"bearerAuth": []}]
    scheme = DOC["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")


def test_every_protected_operation_documents_401_with_www_authenticate():
    for method, path, op in _operations():
        if op.get("security") == []:
            continue
        pointer, response = _deref(_pointer("paths", path, method.lower(), "responses", "401"))
        assert "WWW-Authenticate" in response.get("headers", {}), f"{method} {path}"


def test_every_error_response_is_problem_json():
    for method, path, op in _operations():
        for status in op["responses"]:
            if int(status) < 400:
                continue
            _, response = _deref(_pointer("paths", path, method.lower(), "responses", status))
            assert list(response["content"]) == [PROBLEM], f"{method} {path} {status}"
            assert response["content"][PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}


def test_rate_limit_and_unavailable_answers_document_retry_after():
    for method, path, op in _operations():
        for status in {"429", "503"} & set(op["responses"]):
            _, response = _deref(_pointer("paths", path, method.lower(), "responses", status))
            assert response["headers"]["Retry-After"], f"{method} {path} {status}"


@pytest.mark.parametrize("name", ["ReportConfigInput", "ExpenseLineInput", "ExpenseImport", "GenerateRequest",
                                  "LinePatch", "ApiDeliveryTarget", "EmailDeliveryTarget", "WebhookDeliveryTarget",
                                  "Schedule"])
def test_request_bodies_refuse_unknown_fields_as_the_code_does(name):
    assert DOC["components"]["schemas"][name]["additionalProperties"] is False


def test_schemas_hold_the_validation_rules_of_the_code():
    from chalicelib.lines import validation
    from chalicelib.reports import service

    schemas = DOC["components"]["schemas"]
    assert schemas["ReportId"]["pattern"] == service.REPORT_ID.pattern
    assert schemas["LineId"]["pattern"] == validation.LINE_ID.pattern
    assert schemas["Currency"]["pattern"] == validation.CURRENCY.pattern
    assert schemas["Amount"]["pattern"] == validation.AMOUNT.pattern
    assert schemas["ExpenseImport"]["properties"]["lines"]["maxItems"] == get_settings().max_import_lines
    assert schemas["Schedule"]["properties"]["day"] == {"type": "integer", "minimum": 1, "maximum": 28}
    assert schemas["JobStatus"]["enum"] == ["Queued", "Processing", "CancellationRequested", "Completed", "Failed",
                                            "Cancelled"]


def test_examples_in_the_document_match_their_schemas():
    for name, schema in DOC["components"]["schemas"].items():
        if "example" in schema:
            assert not component_errors(name, schema["example"]), name
    contract_job = {
        "jobId": "9b2f6a1e-8c1d-4c55-9a51-2f0f5f3f8d11", "reportId": "report-123", "period": "2026-01",
        "type": "expense_report", "status": "Processing", "statusMessage": "Categorized 120 of 300 lines",
        "progressPercent": 40, "totalLines": 300, "processedLines": 120, "failedLines": 2, "cachedLines": 64,
        "retryCount": 1, "trigger": "api", "createdAt": "2026-01-31T10:00:00Z", "startedAt": "2026-01-31T10:00:01Z",
        "updatedAt": "2026-01-31T10:00:09Z", "completedAt": None, "estimatedCompletionAt": "2026-01-31T10:00:30Z",
        "errorMessage": None, "statusUrl": "https://api.example.com/api/v1/jobs/9b2f6a1e-8c1d-4c55-9a51-2f0f5f3f8d11",
        "resultUrl": None, "allowedActions": ["cancel"], "deliveries": []}
    assert not component_errors("Job", contract_job)
    assert component_errors("Job", {**contract_job, "status": "Running"})
    assert component_errors("Job", {**contract_job, "createdAt": "yesterday"})
    assert component_errors("Job", {k: v for k, v in contract_job.items() if k != "deliveries"})


def test_webhooks_are_documented_per_event_with_the_code_s_events_and_headers():
    from chalicelib.delivery import webhook

    assert list(DOC["webhooks"]) == list(webhook.EVENTS)
    assert DOC["components"]["schemas"]["WebhookEvent"]["enum"] == list(webhook.EVENTS)
    for event, item in DOC["webhooks"].items():
        post = item["post"]
        names = {_deref(p["$ref"].removeprefix("#"))[1]["name"] for p in post["parameters"]}
        assert names == {"webhook-id", "webhook-timestamp", "webhook-signature", "user-agent"}, event
        example = post["requestBody"]["content"]["application/json"]["example"]
        assert example["type"] == event
        assert not schema_errors(_pointer("webhooks", event, "post", "requestBody", "content", "application/json",
                                          "schema"), example), event
    agent = DOC["components"]["parameters"]["WebhookUserAgent"]["schema"]["const"]
    assert agent == webhook.USER_AGENT
    secret = webhook.new_secret()
    assert not component_errors("WebhookSecret", secret)
    signature = webhook.sign([secret, webhook.new_secret()], webhook.new_message_id(), 1767225600, b"{}")
    assert not schema_errors("/components/parameters/WebhookSignature/schema", signature)
    assert not schema_errors("/components/parameters/WebhookId/schema", webhook.new_message_id())


# --- real responses against the document ------------------------------------------------------------------


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


def test_generate_rate_limit_and_store_failure_match_the_document(api, monkeypatch):
    from chalicelib.jobs import create

    owner = user()
    report_id = new_report(api, owner)
    path, template = f"/api/v1/reports/{report_id}/generate", "/api/v1/reports/{reportId}/generate"

    def broken_queue(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("queue down")

    with monkeypatch.context() as patch:
        patch.setattr(create, "enqueue", broken_queue)
        check(send(api, "POST", path, owner, {"period": "2030-01"}), "POST", template)  # 503
    # The limit itself (20) is held by test_contract_statuses; here only the shape of the answer matters.
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
    assert [e["type"] for e in events["items"]] == ["created", "cancelled"]
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
    job = completed_job(api, owner)
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
