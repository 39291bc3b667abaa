"""Authentication and roles: 401, 403 and the public routes.
The contract (docs/api.md) status by status; bad input is checked twice: the answer names what is wrong, and
nothing was stored."""

from __future__ import annotations

import time
import warnings
from uuid import uuid4

import jwt
import pytest

from app import app
from chalicelib.api import middleware
from chalicelib.settings import get_settings
from tests.integration.contract.common import claims_token, generate, jobs_of, new_report, problem, seed, user

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
    seed(api, holder)  # a job works the lines of whoever generates it
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
