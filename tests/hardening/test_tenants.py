"""Tenant isolation: two tenants, the full matrix.

A token's tenant is its `tenant` claim (or Cognito's `custom:tenant`); a token without one is a tenant of its
own. Nothing one tenant does may change another tenant's results (a settled line, a model answer), nothing in a
response may tell one tenant what another has (`source: "cache"`), report ids are unique within a tenant only,
and a role grants access within its own tenant only. Every test drives the real API in-process against the
session's moto server and runs the jobs with the real worker handler (tests.support.drain).
"""

from __future__ import annotations

import dataclasses
import json
import random
import string
import time
import uuid

import jwt
import pytest

from chalicelib.auth import principal_from_header
from chalicelib.categorize import pipeline, warmer
from chalicelib.categorize.types import Answer
from chalicelib.errors import Unauthorized
from chalicelib.settings import get_settings
from tests.driver import Driver
from tests.support import drain, expense_lines, seed_body, vendors

# No `Other`: a line the offline rules cannot place is flagged for review, the line a person settles.
NARROW = ["Airfare", "Lodging"]


def _letters(n: int = 8) -> str:
    # Letters only: normalize_vendor drops tokens with digits, and the salt must stay in the cache key.
    return "".join(random.choices(string.ascii_uppercase, k=n))


class Caller(Driver):
    """One user of one tenant, through the in-process Chalice client."""

    def report(self, report_id: str, categories: list[str] | None = None, roles: tuple[str, ...] = (),
               name: str = "Monthly") -> tuple[int, dict]:
        body = {"reportId": report_id, "name": name, "deliveryTargets": [{"type": "api", "mode": "async"}],
                "allowedRoles": list(roles)}
        if categories:
            body["categories"] = categories
        return self.call("post", "/reports", body)

    def lines(self, lines: list[dict]) -> None:
        assert self.call("post", "/expenses", {"lines": lines})[0] == 201

    def generate(self, report_id: str, period: str) -> str:
        status, body = self.call("post", f"/reports/{report_id}/generate", {"period": period})
        assert status == 202, body
        return body["jobId"]

    def run(self, report_id: str, period: str, settings=None) -> dict:
        """Generate, work the job to its end, return the Completed job's result."""
        job_id = self.generate(report_id, period)
        drain({job_id}, settings)
        job = self.call("get", f"/jobs/{job_id}")[1]
        assert job["status"] == "Completed", job
        status, result = self.call("get", f"/jobs/{job_id}/result")
        assert status == 200, result
        return {"job": job, **result}


@pytest.fixture
def tenants(client, token_for):
    """(tenant A's caller, tenant B's caller): fresh tenants with random names."""
    a, b = f"acme-{uuid.uuid4().hex[:8]}", f"globex-{uuid.uuid4().hex[:8]}"
    return Caller(client, token_for(tenant=a)), Caller(client, token_for(tenant=b))


@pytest.fixture
def model_settings(sim):
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               line_batch_size=40, model_batch_size=10, model_concurrency=2)


def _line(line_id: str, vendor: str, period: str = "2026-01", description: str = "misc") -> dict:
    return {"lineId": line_id, "date": f"{period}-10", "vendor": vendor, "amount": "12.34", "currency": "USD",
            "description": description}


# --- the vendor cache: poisoning and disclosure -------------------------------------------------------------


def test_a_line_settled_in_one_tenant_never_answers_another_tenants_job(tenants):
    a, b = tenants
    vendor = f"ZORBLAT {_letters()}"
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    assert a.report(report_id, NARROW)[0] == 201
    a.lines([_line("tx-1", vendor)])
    first = a.run(report_id, "2026-01")
    assert first["lines"][0]["needsReview"] is True  # the rules cannot place it: a person settles it
    status, settled = a.call("patch", f"/jobs/{first['jobId']}/lines/tx-1", {"category": "Lodging"})
    assert status == 200 and settled["source"] == "manual"

    # Positive control: tenant A's own next job is answered from the person's answer.
    a.lines([_line("tx-2", vendor, "2026-02")])
    again = a.run(report_id, "2026-02")
    assert (again["lines"][0]["source"], again["lines"][0]["category"]) == ("cache", "Lodging")

    # Tenant B, same taxonomy, same vendor: not A's person's answer.
    other_report = f"r-{uuid.uuid4().hex[:12]}"
    assert b.report(other_report, NARROW)[0] == 201
    b.lines([_line("tx-1", vendor)])
    other = b.run(other_report, "2026-01")
    line = other["lines"][0]
    assert line["source"] != "cache" and line["category"] != "Lodging", line
    assert line["needsReview"] is True and other["job"]["cachedLines"] == 0


def test_a_model_answer_in_one_tenant_never_shows_as_cache_to_another(tenants, model_settings, sim):
    a, b = tenants
    names = [v for v in vendors(12) if "ACME" not in v]  # vendors the simulator answers confidently (>= 0.8)
    lines = expense_lines(len(names), names)
    report_a, report_b = f"r-{uuid.uuid4().hex[:12]}", f"r-{uuid.uuid4().hex[:12]}"
    assert a.report(report_a)[0] == 201 and b.report(report_b)[0] == 201
    a.lines(lines)
    first = a.run(report_a, "2026-01", model_settings)
    assert {line["source"] for line in first["lines"]} == {"model"}

    # Positive control: the answers were cached, for tenant A.
    a.lines(expense_lines(len(names), names, "2026-02", prefix="ty"))
    again = a.run(report_a, "2026-02", model_settings)
    assert {line["source"] for line in again["lines"]} == {"cache"}

    asked = sim.stats()["requests"]
    b.lines(lines)
    other = b.run(report_b, "2026-01", model_settings)
    assert {line["source"] for line in other["lines"]} == {"model"}, "tenant B was told what tenant A paid"
    assert other["job"]["cachedLines"] == 0
    assert sim.stats()["requests"] > asked  # B's answers are its own model requests


# --- the warmer: one tenant per model request ---------------------------------------------------------------


def test_the_warmer_never_puts_two_tenants_vendors_or_descriptions_in_one_request(tenants, monkeypatch):
    a, b = tenants
    shared, only_a = f"QUIXOTIC {_letters()}", f"PERNICKETY {_letters()}"
    mine = {shared.lower(), only_a.lower()}
    for caller, secret in ((a, "acme board dinner"), (b, "globex merger")):
        report_id = f"r-{uuid.uuid4().hex[:12]}"
        assert caller.report(report_id, NARROW)[0] == 201
        vendors_here = [shared, only_a] if caller is a else [shared]
        caller.lines([_line(f"tx-{n}", v, description=secret) for n, v in enumerate(vendors_here)])
        caller.run(report_id, "2026-01")

    requests: list[tuple[object, list]] = []

    def ask_model(backend, items, categories, job_id=None, background=None, **kwargs):
        requests.append((kwargs.get("tenant"), list(items)))
        return [Answer(i.id, "Lodging", 0.95, "model", False) for i in items]

    monkeypatch.setattr(pipeline, "ask_model", ask_model)
    backend = pipeline.ModelBackend(api=None, model=f"warm-{uuid.uuid4().hex[:6]}", loop=None, batch_size=25,
                                    concurrency=4)
    outcome = warmer.warm(backend, budget_seconds=120)
    assert not outcome["skipped"]
    ours = [(tenant, [i for i in items if i.vendor.lower() in mine]) for tenant, items in requests]
    ours = [(tenant, items) for tenant, items in ours if items]
    descriptions = [{i.description for i in items} for _, items in ours]
    assert all(len(d) == 1 for d in descriptions), f"one request carried two tenants' descriptions: {descriptions}"
    asked = sorted((i.description, i.vendor) for _, items in ours for i in items)
    # Each tenant's own note, with its own description: A's two vendors, B's one, never merged.
    assert asked == sorted([("acme board dinner", shared), ("acme board dinner", only_a),
                            ("globex merger", shared)]), asked
    assert len({tenant for tenant, _ in ours}) == 2 and None not in {tenant for tenant, _ in ours}


# --- report configurations ----------------------------------------------------------------------------------


def test_one_report_id_in_two_tenants_is_two_reports(tenants, client, token_for):
    a, b = tenants
    report_id = f"report-{uuid.uuid4().hex[:8]}"
    assert a.report(report_id, name="Acme monthly")[0] == 201
    status, body = b.report(report_id, name="Globex monthly")
    assert status == 201, body
    assert a.call("get", f"/reports/{report_id}")[1]["name"] == "Acme monthly"
    assert b.call("get", f"/reports/{report_id}")[1]["name"] == "Globex monthly"
    assert a.report(report_id)[0] == 409  # still unique within a tenant

    # A tenant named like a user's sub is not that user's own tenant.
    loner = Caller(client, token_for(sub=f"solo-{uuid.uuid4().hex[:8]}"))
    namesake = Caller(client, token_for(tenant=loner.token.sub))
    assert loner.report(report_id, name="Solo")[0] == 201
    assert namesake.report(report_id, name="Namesake")[0] == 201
    assert loner.call("get", f"/reports/{report_id}")[1]["name"] == "Solo"

    # Each tenant's generate runs its own configuration over its own lines.
    a.lines([_line("tx-1", "Delta Air")])
    b.lines([_line("tx-1", "Marriott Hotel"), _line("tx-2", "Hilton Garden Inn")])
    ran_a, ran_b = a.run(report_id, "2026-01"), b.run(report_id, "2026-01")
    assert [line["vendor"] for line in ran_a["lines"]] == ["Delta Air"]
    assert sorted(line["vendor"] for line in ran_b["lines"]) == ["Hilton Garden Inn", "Marriott Hotel"]


# --- one sub, two tenants: two users ------------------------------------------------------------------------


def test_the_same_sub_in_two_tenants_sees_nothing_of_the_other(client, token_for):
    sub = f"alice-{uuid.uuid4().hex[:8]}"
    a = Caller(client, token_for(sub=sub, tenant=f"acme-{uuid.uuid4().hex[:8]}"))
    b = Caller(client, token_for(sub=sub, tenant=f"globex-{uuid.uuid4().hex[:8]}"))
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    assert a.report(report_id, NARROW)[0] == 201
    a.lines([_line("tx-1", f"ZORBLAT {_letters()}", description="acme secret")])
    done = a.run(report_id, "2026-01")
    job_id = done["jobId"]
    key = f"key-{uuid.uuid4()}"
    a.lines(seed_body("2026-02")["lines"])  # a month without lines is not generated (422 `no-lines`)
    queued = a.call("post", f"/reports/{report_id}/generate", {"period": "2026-02"}, {"Idempotency-Key": key})
    assert queued[0] == 202

    assert b.call("get", "/jobs?pageSize=100")[1]["totalCount"] == 0
    assert b.call("get", "/expenses?period=2026-01")[1]["items"] == []
    for method, path, body in (("get", f"/jobs/{job_id}", None), ("get", f"/jobs/{job_id}/result", None),
                               ("get", f"/jobs/{job_id}/events", None), ("delete", f"/jobs/{job_id}", None),
                               ("post", f"/jobs/{job_id}/retry", None),
                               ("patch", f"/jobs/{job_id}/lines/tx-1", {"category": "Lodging"}),
                               ("get", f"/reports/{report_id}", None),
                               ("post", f"/reports/{report_id}/generate", {"period": "2026-01"})):
        status, answer = b.call(method, path, body)
        assert status == 404, (method, path, status, answer)
        assert "acme secret" not in json.dumps(answer)

    # B's own report with the same id, generated for the period A's job holds active, with A's
    # Idempotency-Key: B's own new job (not A's lock, not A's replay).
    assert b.report(report_id, NARROW)[0] == 201
    b.lines(seed_body("2026-02")["lines"])
    mine = b.call("post", f"/reports/{report_id}/generate", {"period": "2026-02"}, {"Idempotency-Key": key})
    assert mine[0] == 202, mine
    assert mine[1]["jobId"] != queued[1]["jobId"]
    assert [j["jobId"] for j in b.call("get", "/jobs")[1]["items"]] == [mine[1]["jobId"]]
    assert a.call("get", f"/jobs/{mine[1]['jobId']}")[0] == 404
    assert a.call("get", f"/jobs/{job_id}")[0] == 200


# --- roles --------------------------------------------------------------------------------------------------


def test_a_role_in_one_tenant_reaches_nothing_in_another(client, token_for):
    role = f"finance-{uuid.uuid4().hex[:6]}"
    tenant_a, tenant_b = f"acme-{uuid.uuid4().hex[:8]}", f"globex-{uuid.uuid4().hex[:8]}"
    owner = Caller(client, token_for(tenant=tenant_b))
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    assert owner.report(report_id, roles=(role,), name="Globex payroll")[0] == 201
    owner.lines([_line("tx-1", "Delta Air", description="globex secret")])
    job_id = owner.run(report_id, "2026-01")["jobId"]

    # Positive control: the role works inside its tenant.
    colleague = Caller(client, token_for(roles=(role,), tenant=tenant_b))
    assert colleague.call("get", f"/reports/{report_id}")[0] == 200
    colleague.lines(seed_body("2026-03")["lines"])
    assert colleague.call("post", f"/reports/{report_id}/generate", {"period": "2026-03"})[0] == 202

    outsider = Caller(client, token_for(roles=(role,), tenant=tenant_a))
    status, body = outsider.call("get", f"/reports/{report_id}")
    assert status == 404 and "Globex payroll" not in json.dumps(body)
    # Generate: the report does not exist in the outsider's tenant, so 404 (403 is for a report of one's own
    # tenant that one may not generate).
    assert outsider.call("post", f"/reports/{report_id}/generate", {"period": "2026-01"})[0] == 404
    for method, path in (("get", f"/jobs/{job_id}"), ("get", f"/jobs/{job_id}/result"),
                         ("get", f"/jobs/{job_id}/events")):
        status, body = outsider.call(method, path)
        assert status == 404 and "globex secret" not in json.dumps(body), (path, status)
    assert outsider.call("get", "/jobs?pageSize=100")[1]["totalCount"] == 0


# --- the claim ----------------------------------------------------------------------------------------------


def _principal(**claims: object):
    settings = get_settings()
    body = {"sub": "alice", "exp": int(time.time()) + 600, **claims}
    return principal_from_header("Bearer " + jwt.encode(body, settings.jwt_secret, algorithm="HS256"), settings)


def test_cognitos_custom_tenant_is_the_same_tenant_as_the_tenant_claim(client, settings):
    sub, tenant = f"bob-{uuid.uuid4().hex[:8]}", f"initech-{uuid.uuid4().hex[:8]}"
    plain = Caller(client, _Bearer(jwt.encode({"sub": sub, "tenant": tenant, "exp": int(time.time()) + 600},
                                              settings.jwt_secret, algorithm="HS256")))
    cognito = Caller(client, _Bearer(jwt.encode({"sub": sub, "custom:tenant": tenant, "exp": int(time.time()) + 600},
                                                settings.jwt_secret, algorithm="HS256")))
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    assert plain.report(report_id)[0] == 201
    assert cognito.call("get", f"/reports/{report_id}")[0] == 200
    assert _principal(tenant="acme") == _principal(**{"custom:tenant": "acme"})


class _Bearer(str):
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self}"}


def test_tenant_keys_read_back_one_way_only():
    # A `#` in a tenant or a sub cannot make two users one: tenant "a#b" + sub "c" is not tenant "a" + sub "b#c".
    pairs = [("a#b", "c"), ("a", "b#c"), ("a%23b", "c"), ("a", "%23b#c")]
    owners = {_principal(tenant=t, sub=s).user_id for t, s in pairs}
    tenants = {_principal(tenant=t, sub=s).tenant for t, s in pairs}
    assert len(owners) == 4 and len(tenants) == 3
    # A token without a tenant is a tenant of its own: its sub, unchanged (the keys it had before tenants).
    loner = _principal(sub="acme")
    assert (loner.user_id, loner.tenant) == ("acme", "acme")
    assert _principal(tenant="acme").tenant != loner.tenant


@pytest.mark.parametrize("claims, reason", [
    ({"sub": "tenant#acme#alice"}, "sub"),  # would spell a member of tenant "acme"
    ({"tenant": ""}, "tenant"),
    ({"tenant": "   "}, "tenant"),
    ({"tenant": 42}, "tenant"),
    ({"tenant": ["acme"]}, "tenant"),
    ({"tenant": "x" * 129}, "tenant"),
    ({"tenant": "acme\n"}, "tenant"),
    ({"tenant": "acme", "custom:tenant": "globex"}, "two different tenants"),
])
def test_a_token_with_an_unusable_tenant_is_refused(claims, reason):
    with pytest.raises(Unauthorized) as refused:
        _principal(**claims)
    assert reason in refused.value.detail
