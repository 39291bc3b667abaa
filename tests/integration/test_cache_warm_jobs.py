"""The nightly warm run as tracked jobs: one `cache_warm` job per tenant, its counts, and who sees it."""

from __future__ import annotations

import dataclasses
import itertools
import random
import string
import uuid

import pytest

from chalicelib import worker
from chalicelib.auth import tenant_key, tenant_scope
from chalicelib.categorize import cache, seen, warm_jobs
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.reports.service import DEFAULT_CATEGORIES
from chalicelib.settings import get_settings
from tests.driver import Driver
from tests.support import Ctx


@pytest.fixture
def model_settings(sim):
    return dataclasses.replace(get_settings(), openai_api_key="sk-test", openai_base_url=sim.url,
                               model_batch_size=10)


def _letters(n: int = 8) -> str:
    return "".join(random.choices(string.ascii_lowercase, k=n))


def _seed(tenant: str, refreshed: int, failed: int, skipped: int, model: str) -> list[str]:
    """Seen vendors of the tenant (claim `tenant`): some the simulator is sure of, some whose rows it always
    spoils (flagged: failed), some already cached fresh (skipped). Returns the failing vendors' names."""
    salt = _letters()
    sure = [f"Marriott {salt} {_letters(4)}" for _ in range(refreshed)]
    spoiled = [f"Hilton {salt} {_letters(4)}" for _ in range(failed)]
    fresh = [f"Hyatt {salt} {_letters(4)}" for _ in range(skipped)]
    key = tenant_key(tenant, "anyone")
    seen.record_seen(DEFAULT_CATEGORIES, {normalize_vendor(v): (v, "stay") for v in sure + spoiled + fresh},
                     tenant=key)
    cache.remember_many(DEFAULT_CATEGORIES, [(normalize_vendor(v), "Lodging", 0.95) for v in fresh], model,
                        tenant=key)
    return spoiled


def _warm_jobs(caller: Driver) -> list[dict]:
    status, body = caller.call("get", "/jobs?pageSize=100")
    assert status == 200, body
    return [j for j in body["items"] if j["type"] == "cache_warm"]


def test_a_warm_run_makes_one_job_per_tenant_with_exact_counts_seen_by_its_admins_only(
        client, token_for, sim, model_settings):
    a, b = f"acme-{_letters()}", f"globex-{_letters()}"
    model = model_settings.openai_model
    spoiled = _seed(a, refreshed=5, failed=2, skipped=3, model=model) + _seed(b, refreshed=2, failed=1, skipped=1,
                                                                                model=model)
    sim.configure(badrow_vendors=",".join(spoiled))

    outcome = worker.warm_cache(Ctx(), model_settings)
    assert outcome["after"] is None and not outcome["skipped"], outcome

    admin_a = Driver(client, token_for(tenant=a, roles=["admin"]))
    admin_b = Driver(client, token_for(tenant=b, roles=["admin"]))
    member_a = Driver(client, token_for(tenant=a, roles=["finance"]))
    (job_a,), (job_b,) = _warm_jobs(admin_a), _warm_jobs(admin_b)
    assert {job_a["jobId"], job_b["jobId"]} <= set(outcome["jobs"])
    assert job_a["warm"] == {"vendorsRefreshed": 5, "vendorsFailed": 2, "vendorsSkipped": 3}, job_a
    assert job_b["warm"] == {"vendorsRefreshed": 2, "vendorsFailed": 1, "vendorsSkipped": 1}, job_b
    for job, due in ((job_a, 7), (job_b, 3)):
        assert (job["status"], job["trigger"], job["totalLines"], job["processedLines"]) == (
            "Completed", "schedule", due, due), job
        assert (job["allowedActions"], job["resultUrl"]) == ([], None), job

    # Tenant isolation: B's admin never sees A's job, A's other members see none, nothing says it exists.
    assert admin_b.call("get", f"/jobs/{job_a['jobId']}")[0] == 404
    assert member_a.call("get", f"/jobs/{job_a['jobId']}")[0] == 404
    assert member_a.call("delete", f"/jobs/{job_a['jobId']}")[0] == 404
    assert _warm_jobs(member_a) == []
    assert admin_a.call("get", f"/jobs/{job_a['jobId']}")[1]["warm"] == job_a["warm"]
    assert admin_a.call("get", f"/jobs/{job_a['jobId']}/events")[0] == 200
    # Never retried (the next run refreshes what it left): 409 for its admin, 404 for anyone else.
    assert admin_a.call("post", f"/jobs/{job_a['jobId']}/retry")[0] == 409
    assert member_a.call("post", f"/jobs/{job_a['jobId']}/retry")[0] == 404

    # A second night: the refreshed vendors are fresh now (skipped); only the failed ones are due again.
    sim.configure(badrow_vendors="")
    worker.warm_cache(Ctx(), model_settings)
    newest = _warm_jobs(admin_a)[0]
    assert newest["jobId"] != job_a["jobId"]
    assert newest["warm"] == {"vendorsRefreshed": 2, "vendorsFailed": 0, "vendorsSkipped": 8}, newest


def test_an_admin_cancels_a_running_warm_job_and_the_run_stops_asking_for_that_tenant(client, token_for):
    tenant = f"initech-{_letters()}"
    job = warm_jobs.open_job(tenant_key(tenant, "x"), due=10, skipped=0, continuing=False)
    assert job is not None and job.status == "Processing"
    admin = Driver(client, token_for(tenant=tenant, roles=["admin"]))
    assert admin.job(job.job_id)["allowedActions"] == ["cancel"]
    status, body = admin.call("delete", f"/jobs/{job.job_id}")
    assert (status, body["status"]) == (200, "Cancelled"), body
    assert warm_jobs.record(job, 3, 0) is False  # the run's next group finds it cancelled and stops
    assert admin.job(job.job_id)["warm"]["vendorsRefreshed"] == 0


def test_a_reaped_warm_job_fails_instead_of_running_as_a_report(client, token_for):
    tenant = f"umbrella-{_letters()}"
    job = warm_jobs.open_job(tenant_key(tenant, "x"), due=4, skipped=1, continuing=False)
    assert job is not None
    worker.run_job(job.job_id, "reaped", Ctx())  # the reaper's message for a run that died
    admin = Driver(client, token_for(tenant=tenant, roles=["admin"]))
    seen_job = admin.job(job.job_id)
    assert (seen_job["status"], seen_job["errorMessage"]) == ("Failed", warm_jobs.STOPPED), seen_job


def test_an_admins_list_pages_through_own_and_tenant_jobs_newest_first(client, token_for):
    tenant = f"hooli-{_letters()}"
    admin = Driver(client, token_for(tenant=tenant, roles=["admin"]))
    own = [admin.start([{"lineId": f"tx-{uuid.uuid4().hex[:6]}", "date": "2026-01-02", "vendor": "Delta Air",
                         "amount": "1.00", "currency": "USD"}]) for _ in range(2)]
    warm = warm_jobs.open_job(tenant_key(tenant, "x"), due=1, skipped=0, continuing=False)
    assert warm is not None
    own.append(admin.start([{"lineId": "tx-last", "date": "2026-01-02", "vendor": "Delta Air", "amount": "1.00",
                             "currency": "USD"}]))
    expected = [own[2], warm.job_id, own[1], own[0]]
    status, first = admin.call("get", "/jobs?pageSize=2")
    assert status == 200 and first["totalCount"] == 4, first
    status, second = admin.call("get", f"/jobs?pageSize=2&nextToken={first['nextToken']}")
    assert [j["jobId"] for j in first["items"] + second["items"]] == expected
    assert second["nextToken"] is None
    assert [j["jobId"] for j in admin.call("get", "/jobs?pageSize=2&page=2")[1]["items"]] == expected[2:]
    member = Driver(client, token_for(tenant=tenant))
    assert warm.job_id not in [j["jobId"] for j in member.call("get", "/jobs?pageSize=100")[1]["items"]]


def test_a_continuation_goes_on_with_the_same_tenant_job(client, token_for, sim, model_settings):
    salt = _letters()
    # Keys begin with the tenant's scope (a hash): a tenant whose scope sorts first is warmed first.
    tenant = next(t for t in (f"warm-{salt}-{n}" for n in itertools.count())
                  if tenant_scope(tenant_key(t, "x")) < "0004")
    _seed(tenant, refreshed=12, failed=0, skipped=0, model=model_settings.openai_model)
    sim.configure(latency=0.4)  # groups of 2 vendors, 0.4 s each: the 1 s budget ends after a few
    slow = dataclasses.replace(model_settings, model_batch_size=2, model_concurrency=1)
    outcome = worker.warm_cache(Ctx(remaining_ms=2_000), slow)
    assert outcome["after"], outcome
    admin = Driver(client, token_for(tenant=tenant, roles=["admin"]))
    (running,) = _warm_jobs(admin)
    assert running["status"] == "Processing" and 0 < running["processedLines"] < 12, running
    sim.configure(latency=0.0)
    while outcome["after"]:  # what the continuation message would do
        outcome = worker.warm_cache(Ctx(), model_settings, after=outcome["after"])
    (done,) = _warm_jobs(admin)
    assert done["jobId"] == running["jobId"]
    assert (done["status"], done["processedLines"], done["warm"]) == (
        "Completed", 12, {"vendorsRefreshed": 12, "vendorsFailed": 0, "vendorsSkipped": 0}), done
