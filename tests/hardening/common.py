"""Helpers shared by the hardening suites: the protected routes, a data-store call counter, problem+json."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import botocore.client

ROOT = Path(__file__).resolve().parents[2]
DOC = json.loads((ROOT / "chalicelib" / "api" / "openapi.json").read_text())
PUBLIC = {("GET", "/"), ("GET", "/health"), ("GET", "/health/ready"), ("GET", "/openapi.json")}
PROBLEM = "application/problem+json"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")

# A body each protected route would accept from its owner: a route that skipped authentication would go on
# to the data stores with it.
_BODIES = {
    ("POST", "/api/v1/reports"): {"name": "Hostile", "deliveryTargets": [{"type": "api", "mode": "async"}]},
    ("POST", "/api/v1/expenses"): {"lines": [{"date": "2026-01-02", "vendor": "Cafe", "amount": "1.00",
                                              "currency": "USD"}]},
    ("POST", "/api/v1/reports/{reportId}/generate"): {"period": "2026-01"},
    ("PATCH", "/api/v1/jobs/{jobId}/lines/{lineId}"): {"category": "Other"},
    ("PATCH", "/api/v1/reports/{reportId}"): {"name": "Hostile"},
    ("POST", "/api/v1/imports"): {"format": "csv", "mode": "merge", "period": "2026-01"},
}


def protected_routes() -> list[tuple[str, str]]:
    """(METHOD, path template) of every documented operation that needs a token."""
    out = []
    for path, operations in DOC["paths"].items():
        for method in operations:
            if method in HTTP_METHODS and (method.upper(), path) not in PUBLIC:
                out.append((method.upper(), path))
    return sorted(out)


def request_for(method: str, template: str, **ids: str) -> tuple[str, str | None]:
    """A concrete path (plausible ids unless given) and JSON body for one route."""
    values = {"reportId": f"r-{uuid.uuid4().hex[:12]}", "jobId": str(uuid.uuid4()), "lineId": "tx-000001", "n": "0",
              **ids}
    path = template.format(**values)
    if template == "/api/v1/expenses" and method in ("GET", "DELETE"):
        path += "?period=2026-01"
    body = _BODIES.get((method, template))
    return path, json.dumps(body) if body is not None else None


def assert_problem(status: int, headers: dict[str, str], body: str | bytes, expected: int) -> dict[str, Any]:
    """An RFC 9457 answer with `expected` status; its body."""
    assert status == expected, (status, body[:300])
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    assert content_type.startswith(PROBLEM), content_type
    problem = json.loads(body)
    assert {"type", "title", "status", "detail"} <= set(problem) and problem["status"] == expected, problem
    return problem


class StoreCalls:
    """AWS API calls (DynamoDB, SQS, S3, SSM...) made by this thread while recording."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def services(self) -> set[str]:
        return {service for service, _ in self.calls}


@contextmanager
def count_store_calls() -> Iterator[StoreCalls]:
    """Record every botocore call of this thread: PynamoDB, boto3 and Powertools all go through here."""
    seen = StoreCalls()
    me = threading.get_ident()
    original = botocore.client.BaseClient._make_api_call

    def counting(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if threading.get_ident() == me:
            seen.calls.append((client.meta.service_model.service_name, operation))
        return original(client, operation, params)

    botocore.client.BaseClient._make_api_call = counting
    try:
        yield seen
    finally:
        botocore.client.BaseClient._make_api_call = original
