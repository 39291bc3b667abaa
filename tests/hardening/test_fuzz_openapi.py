"""Fuzzing from the OpenAPI document: every operation, with a valid token and without, against `chalice local`.

schemathesis generates valid and invalid requests from chalicelib/api/openapi.json (the document the stack
serves at /openapi.json, checked to be the same document below). Every answer must be documented (status, headers,
content type, schema), never a 5xx, and every error must be problem+json.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import drain, expense_lines, vendors

DOC_PATH = Path(__file__).resolve().parents[2] / "chalicelib" / "api" / "openapi.json"
# schemathesis's default phases (examples, coverage with its default unexpected methods, TRACE and QUERY among
# them, and fuzzing): every method reaches the app through `chalice local` (local.stack.harden_chalice_local).
schema = schemathesis.openapi.from_path(DOC_PATH)
# Without a token every answer is the middleware's 401, whatever the input: a few random examples suffice.
anonymous = schemathesis.openapi.from_path(DOC_PATH, config=schemathesis.Config.from_dict(
    {"phases": {"coverage": {"enabled": False}, "examples": {"enabled": False}}}))
PUBLIC = {("GET", "/"), ("GET", "/health"), ("GET", "/health/ready"), ("GET", "/openapi.json")}
PROBLEM = "application/problem+json"
# Bounded and derandomized for CI (the same examples every run), and no example database left in the tree.
FUZZ = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
FUZZ_ANONYMOUS = settings(FUZZ, max_examples=10)


def _problem_json(ctx, response, case) -> bool | None:
    """Every 4xx/5xx is RFC 9457 problem+json with type, title, status and detail."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith(PROBLEM), f"{response.status_code} answered with {content_type!r}"
    body = json.loads(response.content)
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == response.status_code, body
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, _problem_json]


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


@dataclass
class Seeded:
    """One user's report, expense line and Completed job, so that fuzzed requests also reach real resources."""

    token: Any
    values: dict[str, str]


@pytest.fixture(scope="module")
def seeded(api_stack, token_for) -> Seeded:
    token = token_for(roles=("finance",))
    headers = {**token.headers, "Content-Type": "application/json"}
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    body = {"reportId": report_id, "name": "Fuzz", "deliveryTargets": [{"type": "api", "mode": "async"}]}
    assert requests.post(f"{api_stack}/api/v1/reports", json=body, headers=headers, timeout=10).status_code == 201
    lines = expense_lines(5, vendors(5))
    assert requests.post(f"{api_stack}/api/v1/expenses", json={"lines": lines}, headers=headers,
                         timeout=10).status_code == 201
    job = requests.post(f"{api_stack}/api/v1/reports/{report_id}/generate", json={"period": "2026-01"},
                        headers=headers, timeout=10).json()
    drain({job["jobId"]})
    return Seeded(token, {"reportId": report_id, "jobId": job["jobId"], "lineId": lines[0]["lineId"]})


_turn = itertools.count()


def _caller(case, seeded: Seeded, token_for) -> dict[str, str]:
    """Every other example with ids in its path names the seeded user's own report, job and line, as that user;
    the others are sent by a fresh user (so one user's data does not pile up across examples)."""
    if case.path_parameters and next(_turn) % 2 == 0:
        case.path_parameters = {k: seeded.values.get(k, v) for k, v in case.path_parameters.items()}
        return seeded.token.headers
    return token_for(roles=("finance",)).headers


def test_served_document_is_the_fuzzed_document(api_stack):
    served = requests.get(f"{api_stack}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == json.loads(DOC_PATH.read_text())


@schema.parametrize()
@FUZZ
def test_every_operation_with_a_valid_token_is_documented_and_never_5xx(case, api_stack, seeded, session, token_for):
    headers = _caller(case, seeded, token_for)
    case.call_and_validate(base_url=api_stack, session=session, headers=headers, timeout=30, checks=CHECKS)


@anonymous.parametrize()
@FUZZ_ANONYMOUS
def test_every_operation_without_a_token_is_401_problem_json(case, api_stack, session):
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    response = case.call(base_url=api_stack, session=session, timeout=30)
    case.validate_response(response, checks=CHECKS)
    if (case.method.upper(), case.path) not in PUBLIC:
        assert response.status_code == 401, (response.status_code, response.text[:300])
        assert response.headers["www-authenticate"][0].startswith("Bearer")
