"""One problem-type registry (chalicelib/api/problem_types.py): every error answer's `type` is in it.

The registry itself (unique slugs, every AppError subclass registered, the OpenAPI document listing the same
types), then the API's error paths walked in process: every documented operation without a token, with a bad
token, with unknown ids, with a bad body, a wrong media type, an oversized body, bad paging and an undeclared
method, plus the domain errors (conflicts, 403, idempotency, rate limit, not ready). Every answer at or above
400 is problem+json whose `type` is registered, with the registered title and status.
tests/e2e/test_problem_types_local.py walks the same paths through `chalice local`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import chalicelib
from chalicelib.api import problem_types
from chalicelib.errors import AppError
from tests.support import seed_body

ROOT = Path(__file__).resolve().parents[2]
DOC = json.loads((ROOT / "chalicelib" / "api" / "openapi.json").read_text())
PROBLEM = "application/problem+json"
METHODS = ("get", "put", "post", "delete", "patch")

# (method, path, headers, body) -> (status, headers, body bytes)
Send = Callable[[str, str, dict[str, str], bytes | None], tuple[int, dict[str, str], bytes]]


# --- the registry -------------------------------------------------------------------------------------------


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_all_subclasses(sub)}
    return out


def test_registry_names_each_type_once_with_a_title_and_an_error_status():
    slugs = [t.slug for t in problem_types.TYPES]
    assert len(slugs) == len(set(slugs)), "a slug is registered twice"
    titles = [t.title for t in problem_types.TYPES]
    assert len(titles) == len(set(titles)), "two types share a title"
    for t in problem_types.TYPES:
        assert t.slug == t.slug.lower() and t.slug.replace("-", "").isalpha(), t.slug
        assert 400 <= t.status <= 599 and t.title and t.description, t
        assert t.uri == f"urn:reports:problem:{t.slug}"


def test_every_app_error_subclass_is_registered_with_its_status_and_title():
    for module in pkgutil.walk_packages(chalicelib.__path__, "chalicelib."):  # subclasses live beside their use
        if module.name not in ("chalicelib.worker",):
            importlib.import_module(module.name)
    classes = {AppError, *_all_subclasses(AppError)}
    assert len(classes) >= 14
    for cls in classes:
        entry = problem_types.BY_SLUG.get(cls.slug)
        assert entry is not None, f"{cls.__name__}.slug {cls.slug!r} is not registered"
        assert (cls.status, cls.title) == (entry.status, entry.title), cls.__name__
    used = {cls.slug for cls in classes}
    by_status_only = {problem_types.for_status(s).slug for s in (400, 404, 405, 413, 415, 500)}
    assert {t.slug for t in problem_types.TYPES} == used | by_status_only, "a registered type nothing answers"


def test_an_unregistered_slug_fails_at_class_creation():
    with pytest.raises(TypeError, match="not in chalicelib/api/problem_types.py"):
        type("Bogus", (AppError,), {"slug": "bogus"})


@pytest.mark.parametrize("status, slug", [(400, "validation-failed"), (401, "unauthorized"), (403, "forbidden"),
                                          (404, "not-found"), (405, "method-not-allowed"), (409, "conflict"),
                                          (413, "payload-too-large"), (415, "unsupported-media-type"),
                                          (429, "rate-limited"), (500, "internal-error"), (502, "internal-error"),
                                          (503, "service-unavailable"), (504, "internal-error")])
def test_chalices_own_errors_map_to_registered_types_by_status(status, slug):
    from chalice import Response

    from chalicelib.api import problems

    answer = problems.normalize(Response(body={"Code": "X", "Message": "m"}, status_code=status))
    body = json.loads(answer.body)
    assert answer.headers["Content-Type"] == PROBLEM
    assert (body["type"], body["status"]) == (f"urn:reports:problem:{slug}", status)
    assert body["title"] == problem_types.get(slug).title


def test_openapi_lists_the_registry():
    listed = DOC["x-problem-types"]
    assert [(t["slug"], t["type"], t["status"], t["title"]) for t in listed] == [
        (t.slug, t.uri, t.status, t.title) for t in problem_types.TYPES]
    problem_type = DOC["components"]["schemas"]["Problem"]["properties"]["type"]
    assert problem_type["enum"] == [t.uri for t in problem_types.TYPES]
    for example in _examples(DOC):
        assert example in problem_types.URIS, f"the document shows an unregistered type {example}"


def _examples(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "type" and isinstance(v, str) and v.startswith("urn:")] + [
            x for v in node.values() for x in _examples(v)]
    if isinstance(node, list):
        return [x for v in node for x in _examples(v)]
    return []


# --- the error paths ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    what: str
    status: int
    headers: dict[str, str]
    body: bytes


def check_problems(answers: list[Answer]) -> set[str]:
    """Assert every error answer is a registered problem; return the slugs seen."""
    seen: set[str] = set()
    for a in answers:
        if a.status < 400:
            continue
        if not a.body and a.what.startswith("HEAD "):
            continue
        media = {k.lower(): v for k, v in a.headers.items()}.get("content-type", "")
        assert media.split(";")[0].strip() == PROBLEM, f"{a.what}: {a.status} {media} {a.body[:200]!r}"
        body = json.loads(a.body)
        assert body["type"] in problem_types.URIS, f"{a.what}: unregistered type {body['type']}"
        entry = problem_types.get(body["type"].removeprefix(problem_types.PREFIX))
        assert (body["status"], body["title"]) == (a.status, entry.title), f"{a.what}: {body}"
        assert entry.status == a.status, f"{a.what}: {entry.slug} is registered as {entry.status}, answered {a.status}"
        seen.add(entry.slug)
    return seen


def _concrete(template: str) -> str:
    return (template.replace("{reportId}", f"r-{uuid.uuid4().hex[:12]}").replace("{jobId}", str(uuid.uuid4()))
            .replace("{lineId}", "tx-1"))


def walk(send: Send, token_for: Callable[..., Any]) -> list[Answer]:
    """Every documented operation with the usual mistakes, and the domain errors; every answer."""
    answers: list[Answer] = []
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    owner, other = token_for(tenant=tenant), token_for(tenant=tenant)  # one tenant: 403, not 404

    def go(what: str, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None,
           content_type: str | None = None) -> Answer:
        raw = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        h = dict(headers or {})
        if raw is not None:
            h["Content-Type"] = content_type or "application/json"
        status, got, data = send(method, path, h, raw)
        answer = Answer(f"{what}: {method} {path}", status, got, data)
        answers.append(answer)
        return answer

    for template, item in DOC["paths"].items():
        declared = {m for m in item if m in METHODS}
        for method in sorted(declared):
            op, path, verb = item[method], _concrete(template), method.upper()
            takes_body = "requestBody" in op
            if op.get("security") != []:
                go("no token", verb, path, body={} if takes_body else None)
                go("bad token", verb, path, {"Authorization": "Bearer not-a-token"}, {} if takes_body else None)
                go("unknown ids / empty body", verb, path, owner.headers, {} if takes_body else None)
                go("paging out of range", verb, f"{path}?pageSize=0&page=0", owner.headers,
                   {} if takes_body else None)
            if takes_body:
                go("unknown field", verb, path, owner.headers, {"noSuchField": 1})
                go("not JSON", verb, path, owner.headers, b"{", "application/json")
                go("wrong media type", verb, path, owner.headers, b"<x/>", "application/xml")
                if template == "/api/v1/expenses":
                    go("too large", verb, path, owner.headers, b"x" * (6 * 1024 * 1024 + 1), "text/csv")
        for method in sorted(set(METHODS) - declared):
            go("undeclared method", method.upper(), _concrete(template), owner.headers)

    # The domain's own errors, on a report and a job of `owner`.
    report = f"r-{uuid.uuid4().hex[:12]}"
    created = {"reportId": report, "name": "Monthly", "deliveryTargets": [{"type": "api", "mode": "async"}],
               "allowedRoles": ["finance"]}
    assert go("create", "POST", "/api/v1/reports", owner.headers, created).status == 201
    go("report id taken", "POST", "/api/v1/reports", owner.headers, created)
    generate = f"/api/v1/reports/{report}/generate"
    go("another user's report", "POST", generate, other.headers, {"period": "2026-01"})
    go("another tenant's report", "POST", generate, token_for().headers, {"period": "2026-01"})
    go("a period without lines", "POST", generate, owner.headers, {"period": "2026-01"})
    assert go("a line", "POST", "/api/v1/expenses", owner.headers, seed_body("2026-01")).status == 201
    first = go("generate", "POST", generate, {**owner.headers, "Idempotency-Key": "k-1"}, {"period": "2026-01"})
    assert first.status == 202, first
    go("key reused with another body", "POST", generate, {**owner.headers, "Idempotency-Key": "k-1"},
       {"period": "2026-02"})
    go("active job exists", "POST", generate, owner.headers, {"period": "2026-01"})
    job = json.loads(first.body)["jobId"]
    assert go("cancel", "DELETE", f"/api/v1/jobs/{job}", owner.headers).status == 200
    go("cancel twice", "DELETE", f"/api/v1/jobs/{job}", owner.headers)
    go("result of a cancelled job", "GET", f"/api/v1/jobs/{job}/result", owner.headers)
    go("malformed line id", "PATCH", f"/api/v1/jobs/{job}/lines/{'x' * 2000}", owner.headers, {"category": "Other"})
    sync = {**created, "reportId": f"r-{uuid.uuid4().hex[:12]}", "deliveryTargets": [{"type": "api", "mode": "sync"}]}
    assert go("create sync", "POST", "/api/v1/reports", owner.headers, sync).status == 201
    go("not async", "POST", f"/api/v1/reports/{sync['reportId']}/generate", owner.headers, {"period": "2026-01"})
    go("bad period", "GET", "/api/v1/expenses?period=2026-13", owner.headers)
    return answers


EXPECTED = {"validation-failed", "unauthorized", "forbidden", "not-found", "method-not-allowed", "conflict",
            "active-job-exists", "not-async-report", "payload-too-large",
            "unsupported-media-type", "idempotency-key-reused", "no-lines"}


