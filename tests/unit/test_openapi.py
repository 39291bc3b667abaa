"""The OpenAPI document: valid, in step with the routes Chalice registers, and true of real responses.

The document is generated (`make openapi`: chalicelib/api/spec.py, from the pydantic models of
chalicelib/api/models.py); tests/unit/test_openapi_generated.py holds the file to what that writes.

Requests go through `chalice.test.Client(app)` in process. The tables, queue and bucket come from the stack
that tests/conftest.py deploys when AWS_ENDPOINT_URL is set; without it, this module deploys
infra/template.yaml into moto's in-process `mock_aws`. Every test uses fresh user and report ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from chalice.test import Client
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app import app
from chalicelib.api import middleware
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
        "resultUrl": None, "allowedActions": ["cancel"], "deliveries": [],
        # The Additions: the type's label and the steps (the contract's own step example).
        "typeLabel": "Generate report",
        "steps": [{"name": "categorize", "status": "Running", "startedAt": "2026-01-31T10:00:01Z", "completedAt": None,
                   "attempts": 1, "progressPercent": 40, "errorMessage": None}]}
    assert not component_errors("Job", contract_job)
    assert component_errors("Job", {**contract_job, "steps": [{**contract_job["steps"][0], "status": "Done"}]})
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


