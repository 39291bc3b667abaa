"""Authorization matrix: every route x (no token, another user, a user without the report's role, a holder of
the report's role, the owner) gets the contract's answer; nobody else's data leaks; not-found and not-yours
look the same (body, data-store calls and timing class).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from dataclasses import dataclass

import pytest

from tests.hardening.common import assert_problem, count_store_calls, protected_routes
from tests.support import drain, seed_body

PERIOD = "2026-03"


@dataclass
class World:
    """One owner's report, lines and Completed job, and the callers who try to reach them."""

    report_id: str
    job_id: str
    line_id: str
    secrets: list[str]  # strings only the owner (and a role holder, for the report) may ever see
    callers: dict[str, dict[str, str]]


def _call(client, method: str, path: str, headers: dict[str, str], body: object = None):
    raw = json.dumps(body).encode() if body is not None else b""
    return client.http.request(method, path, headers={**headers, "Content-Type": "application/json"}, body=raw)


@pytest.fixture
def world(client, token_for) -> World:
    salt = uuid.uuid4().hex[:10]
    role = f"auditors-{salt}"
    # Everyone in the owner's tenant: a role grants access within its tenant only (tests/hardening/test_tenants.py
    # covers the callers of other tenants).
    tenant = f"tenant-{salt}"
    owner = token_for(sub=f"owner-{salt}", tenant=tenant)
    report_id = f"r-{salt}"
    vendor, line_id = f"SECRET VENDOR {salt.upper()}", f"tx-{salt}"
    report = {"reportId": report_id, "name": f"Board pay {salt}", "allowedRoles": [role],
              "deliveryTargets": [{"type": "api", "mode": "async"}]}
    assert _call(client, "POST", "/api/v1/reports", owner.headers, report).status_code == 201
    lines = {"lines": [{"lineId": line_id, "date": f"{PERIOD}-05", "vendor": vendor, "amount": "98765.43",
                        "currency": "USD", "description": f"bonus {salt}"}]}
    assert _call(client, "POST", "/api/v1/expenses", owner.headers, lines).status_code == 201
    created = _call(client, "POST", f"/api/v1/reports/{report_id}/generate", owner.headers, {"period": PERIOD})
    assert created.status_code == 202, created.body
    job_id = created.json_body["jobId"]
    drain({job_id})
    assert _call(client, "GET", f"/api/v1/jobs/{job_id}", owner.headers).json_body["status"] == "Completed"
    callers = {"no token": {}, "another user": token_for(tenant=tenant).headers,
               "user without the role": token_for(roles=("finance",), tenant=tenant).headers,
               "role holder": token_for(roles=(role,), tenant=tenant).headers, "owner": owner.headers}
    for who in ("role holder", "owner"):  # the month they generate (2026-05) has a line of theirs: else 422
        assert _call(client, "POST", "/api/v1/expenses", callers[who], seed_body("2026-05")).status_code == 201
    return World(report_id, job_id, line_id, [owner.sub, vendor, "98765.43", f"bonus {salt}", f"Board pay {salt}"],
                 callers)


def _routes(w: World) -> dict[tuple[str, str], tuple[str, str, object]]:
    """(METHOD, template) -> (method, concrete path, body) for the world's resources."""
    job = f"/api/v1/jobs/{w.job_id}"
    return {
        ("POST", "/api/v1/reports"): ("POST", "/api/v1/reports", {"name": "Mine", "deliveryTargets": [
            {"type": "api", "mode": "async"}]}),
        ("GET", "/api/v1/reports/{reportId}"): ("GET", f"/api/v1/reports/{w.report_id}", None),
        ("POST", "/api/v1/expenses"): ("POST", "/api/v1/expenses", {"lines": [
            {"date": "2026-04-01", "vendor": "Own Cafe", "amount": "1.00", "currency": "USD"}]}),
        ("GET", "/api/v1/expenses"): ("GET", f"/api/v1/expenses?period={PERIOD}", None),
        ("POST", "/api/v1/reports/{reportId}/generate"): ("POST", f"/api/v1/reports/{w.report_id}/generate",
                                                          {"period": "2026-05"}),
        ("GET", "/api/v1/jobs"): ("GET", "/api/v1/jobs?pageSize=100", None),
        ("GET", "/api/v1/jobs/{jobId}"): ("GET", job, None),
        ("DELETE", "/api/v1/jobs/{jobId}"): ("DELETE", job, None),
        ("POST", "/api/v1/jobs/{jobId}/retry"): ("POST", f"{job}/retry", None),
        ("GET", "/api/v1/jobs/{jobId}/result"): ("GET", f"{job}/result", None),
        ("GET", "/api/v1/jobs/{jobId}/events"): ("GET", f"{job}/events", None),
        ("PATCH", "/api/v1/jobs/{jobId}/lines/{lineId}"): ("PATCH", f"{job}/lines/{w.line_id}",
                                                           {"category": "Other"}),
        ("GET", "/api/v1/reports"): ("GET", "/api/v1/reports?pageSize=100", None),
        ("POST", "/api/v1/jobs/{jobId}/deliveries/{n}/retry"): ("POST", f"{job}/deliveries/0/retry", None),
        ("POST", "/api/v1/reports/{reportId}/webhook-secret/rotate"): (
            "POST", f"/api/v1/reports/{w.report_id}/webhook-secret/rotate", None),
        # Last: by the owner's turn, the owner's and the role holder's generates above have left active jobs.
        ("PATCH", "/api/v1/reports/{reportId}"): ("PATCH", f"/api/v1/reports/{w.report_id}", {"name": "Taken"}),
        ("DELETE", "/api/v1/reports/{reportId}"): ("DELETE", f"/api/v1/reports/{w.report_id}", None),
        # An import that generates the report afterwards needs what generate needs; each caller's own period.
        ("POST", "/api/v1/imports"): ("POST", "/api/v1/imports", {"format": "csv", "period": "2026-06",
                                                                  "reportId": w.report_id}),
        # After every read of the lines: each caller removes their own (only the owner has any).
        ("DELETE", "/api/v1/expenses"): ("DELETE", f"/api/v1/expenses?period={PERIOD}", None),
    }


# The contract's answer per route and caller. Job routes: a job belongs to whoever created it, so even a
# holder of the report's role gets 404 for the owner's job. Generate answers 403 (not 404) to a caller who
# may not generate the report: contract.md names that status for this route.
NOT_YOURS = {"another user": 404, "user without the role": 404, "role holder": 404}
EXPECTED = {
    ("POST", "/api/v1/reports"): {"another user": 201, "user without the role": 201, "role holder": 201,
                                  "owner": 201},
    ("GET", "/api/v1/reports/{reportId}"): {"another user": 404, "user without the role": 404,
                                            "role holder": 200, "owner": 200},
    ("POST", "/api/v1/expenses"): {"another user": 201, "user without the role": 201, "role holder": 201,
                                   "owner": 201},
    ("GET", "/api/v1/expenses"): {"another user": 200, "user without the role": 200, "role holder": 200,
                                  "owner": 200},
    ("POST", "/api/v1/reports/{reportId}/generate"): {"another user": 403, "user without the role": 403,
                                                      "role holder": 202, "owner": 202},
    ("GET", "/api/v1/jobs"): {"another user": 200, "user without the role": 200, "role holder": 200, "owner": 200},
    ("GET", "/api/v1/jobs/{jobId}"): {**NOT_YOURS, "owner": 200},
    ("DELETE", "/api/v1/jobs/{jobId}"): {**NOT_YOURS, "owner": 409},  # Completed: nothing to cancel
    ("POST", "/api/v1/jobs/{jobId}/retry"): {**NOT_YOURS, "owner": 409},
    ("GET", "/api/v1/jobs/{jobId}/result"): {**NOT_YOURS, "owner": 200},
    ("GET", "/api/v1/jobs/{jobId}/events"): {**NOT_YOURS, "owner": 200},
    ("PATCH", "/api/v1/jobs/{jobId}/lines/{lineId}"): {**NOT_YOURS, "owner": 200},
    ("GET", "/api/v1/reports"): {"another user": 200, "user without the role": 200, "role holder": 200,
                                 "owner": 200},
    # The owner's job was delivered to no one (an API-only report): it has no delivery 0.
    ("POST", "/api/v1/jobs/{jobId}/deliveries/{n}/retry"): {**NOT_YOURS, "owner": 404},
    # Owner only, like a PATCH; the owner's report has no webhook target, so no secret to rotate (409).
    ("POST", "/api/v1/reports/{reportId}/webhook-secret/rotate"): {"another user": 404, "user without the role": 404,
                                                                   "role holder": 403, "owner": 409},
    # Owner only: the role holder sees it (403), the others do not (404); the owner sent no If-Match (428).
    ("PATCH", "/api/v1/reports/{reportId}"): {"another user": 404, "user without the role": 404,
                                              "role holder": 403, "owner": 428},
    # The owner's and the role holder's generates (2026-05) are still Queued: 409.
    ("DELETE", "/api/v1/reports/{reportId}"): {"another user": 404, "user without the role": 404,
                                               "role holder": 403, "owner": 409},
    ("POST", "/api/v1/imports"): {"another user": 403, "user without the role": 403, "role holder": 202,
                                  "owner": 202},
    ("DELETE", "/api/v1/expenses"): {"another user": 204, "user without the role": 204, "role holder": 204,
                                     "owner": 204},
}


def test_the_matrix_covers_every_protected_route():
    assert set(EXPECTED) == set(protected_routes())


def test_every_route_gives_each_caller_the_contracts_answer_and_no_one_elses_data(client, world):
    routes = _routes(world)
    for caller in ("no token", "another user", "user without the role", "role holder", "owner"):
        for route, (method, path, body) in routes.items():
            response = _call(client, method, path, world.callers[caller], body)
            expected = 401 if caller == "no token" else EXPECTED[route][caller]
            where = f"{caller}: {method} {path}"
            assert response.status_code == expected, (where, response.body[:300])
            if expected >= 400:
                assert_problem(response.status_code, response.headers, response.body, expected)
            if caller in ("no token", "another user", "user without the role") or (
                    caller == "role holder" and route not in (("GET", "/api/v1/reports/{reportId}"),
                                                              ("GET", "/api/v1/reports"))):
                leaked = [s for s in world.secrets if s.encode() in response.body]
                assert not leaked, f"{where} leaked {leaked}"
            if route == ("GET", "/api/v1/jobs") and caller not in ("owner", "no token"):
                assert world.job_id not in {j["jobId"] for j in response.json_body["items"]}, where
            if route == ("GET", "/api/v1/expenses") and caller not in ("owner", "no token"):
                assert response.json_body["items"] == [], where
            if route == ("GET", "/api/v1/reports") and caller not in ("no token",):
                listed = [r["reportId"] for r in response.json_body["items"]]
                assert (world.report_id in listed) == (caller in ("owner", "role holder")), where
    # Nobody but the owner changed the job: still Completed, cancelled or retried by no one.
    owner = world.callers["owner"]
    events = _call(client, "GET", f"/api/v1/jobs/{world.job_id}/events", owner).json_body["items"]
    # (the steps' own transitions, `step` events, are the worker's: none is a caller's action)
    assert [e["type"] for e in events if e["type"] != "step"] == ["created", "started", "completed"]


def test_the_owners_job_routes_answer_with_the_owners_data(client, world):
    owner = world.callers["owner"]
    result = _call(client, "GET", f"/api/v1/jobs/{world.job_id}/result", owner)
    assert result.status_code == 200 and world.secrets[1] in result.json_body["lines"][0]["vendor"]
    assert world.secrets[2].encode() in _call(client, "GET", f"/api/v1/expenses?period={PERIOD}", owner).body


def _swap(body: bytes, asked: str, placeholder: str = "<id>") -> bytes:
    return body.replace(asked.encode(), placeholder.encode())


JOB_ROUTES = [("GET", "{}"), ("DELETE", "{}"), ("POST", "{}/retry"), ("GET", "{}/result"), ("GET", "{}/events"),
              ("PATCH", "{}/lines/tx-1")]


@pytest.mark.parametrize("method,suffix", JOB_ROUTES)
def test_anothers_job_and_a_missing_job_are_indistinguishable(client, world, token_for, method, suffix):
    stranger = token_for().headers
    missing = str(uuid.uuid4())
    body = {"category": "Other"} if method == "PATCH" else None
    answers, calls = [], []
    for job_id in (world.job_id, missing):
        path = "/api/v1/jobs/" + suffix.format(job_id)
        with count_store_calls() as store:
            response = _call(client, method, path, stranger, body)
        answers.append((response.status_code, _swap(response.body, job_id),
                        {k: v for k, v in response.headers.items() if k.lower() not in ("date", "etag")}))
        calls.append(store.calls)
    assert answers[0] == answers[1]
    assert answers[0][0] == 404
    assert calls[0] == calls[1], "not-yours and not-found take different paths through the data stores"


def test_anothers_report_and_a_missing_report_are_indistinguishable_on_read(client, world, token_for):
    stranger = token_for().headers
    missing = f"r-{uuid.uuid4().hex[:12]}"
    answers, calls = [], []
    for report_id in (world.report_id, missing):
        with count_store_calls() as store:
            response = _call(client, "GET", f"/api/v1/reports/{report_id}", stranger)
        answers.append((response.status_code, _swap(response.body, report_id)))
        calls.append(store.calls)
    assert answers[0] == answers[1] and answers[0][0] == 404
    assert calls[0] == calls[1]


def _median_ms(client, path: str, headers: dict[str, str], samples: list[float]) -> None:
    started = time.perf_counter()
    response = client.http.get(path, headers=headers)
    samples.append((time.perf_counter() - started) * 1000)
    assert response.status_code == 404


@pytest.mark.parametrize("kind", ["job", "report"])
def test_not_found_and_not_yours_are_in_the_same_timing_class(client, world, token_for, kind):
    stranger = token_for().headers
    yours = f"/api/v1/jobs/{world.job_id}" if kind == "job" else f"/api/v1/reports/{world.report_id}"
    missing = f"/api/v1/jobs/{uuid.uuid4()}" if kind == "job" else f"/api/v1/reports/r-{uuid.uuid4().hex[:12]}"
    not_yours, not_found = [], []
    for _ in range(3):  # warm both paths first
        _median_ms(client, yours, stranger, [])
        _median_ms(client, missing, stranger, [])
    for _ in range(30):  # interleaved, so drift in the machine's load hits both alike
        _median_ms(client, yours, stranger, not_yours)
        _median_ms(client, missing, stranger, not_found)
    a, b = statistics.median(not_yours), statistics.median(not_found)
    # Coarse on purpose: the same order of magnitude and both quick, not an exact comparison.
    assert max(a, b) / min(a, b) < 3, (a, b)
    assert max(a, b) < 500, (a, b)
