"""Report configurations managed: list (paged, by reportId, visibility-filtered), PATCH with If-Match on an ETag,
DELETE (409 while a job is active; jobs and results stay readable), and the races: two PATCHes with one ETag,
a generate racing a delete. Bad input is checked twice: the answer names what is wrong, and nothing was stored.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chalicelib.errors import Conflict
from chalicelib.jobs.create import create_job
from chalicelib.reports import service
from chalicelib.tables import Job, ReportConfig
from tests.driver import Driver
from tests.support import drain, expense_lines, seed_body, vendors

ASYNC = [{"type": "api", "mode": "async"}]
PROBLEM = "application/problem+json"


class Caller(Driver):
    call = Driver.answer  # (status, body, headers): these tests read ETags and other headers

    def create(self, report_id: str | None = None, **fields) -> str:
        report_id = report_id or f"r-{uuid.uuid4().hex[:12]}"
        body = {"reportId": report_id, "name": "Monthly", "deliveryTargets": ASYNC, **fields}
        status, data, _ = self.call("post", "/reports", body)
        assert status == 201, data
        return report_id

    def etag(self, report_id: str) -> str:
        status, data, headers = self.call("get", f"/reports/{report_id}")
        assert status == 200, data
        return headers["ETag"]

    def list_all(self, size: int) -> list[list[str]]:
        pages, token = [], None
        while True:
            query = f"?pageSize={size}" + (f"&nextToken={token}" if token else "")
            status, data, _ = self.call("get", f"/reports{query}")
            assert status == 200, data
            pages.append([r["reportId"] for r in data["items"]])
            token = data["nextToken"]
            if token is None:
                return pages
            assert len(data["items"]) == size, "a page with a nextToken is full"


def _problem(status: int, data: dict, headers: dict, expected: int, slug: str) -> None:
    assert status == expected, data
    assert headers["Content-Type"] == PROBLEM
    assert data["type"] == f"urn:reports:problem:{slug}", data


@pytest.fixture
def tenant() -> str:
    return f"mgmt-{uuid.uuid4().hex[:8]}"


# --- list -----------------------------------------------------------------------------------------------------


def test_list_pages_by_report_id_with_only_what_the_caller_may_see(client, token_for, tenant):
    role = "finance"
    me = Caller(client, token_for(roles=(role,), tenant=tenant))
    colleague = Caller(client, token_for(roles=(role,), tenant=tenant))
    stranger_same_role = Caller(client, token_for(roles=(role,), tenant=f"other-{tenant}"))
    visible, invisible, colleagues_visible = [], [], []
    # Interleaved ids, with a run of invisible reports longer than one read page between visible ones, so the
    # filter drops whole pages of reads.
    for i in range(30):
        rid = f"r-{i:03d}-{uuid.uuid4().hex[:6]}"
        if i < 3 or i % 9 == 0:
            visible.append(me.create(rid))  # mine
        elif i % 9 == 4:
            visible.append(colleague.create(rid, allowedRoles=[role]))  # a colleague's, for my role
            colleagues_visible.append(rid)
        else:
            invisible.append(colleague.create(rid, allowedRoles=["board"]))  # a colleague's, not for me
    stranger_same_role.create(f"r-000-{uuid.uuid4().hex[:6]}", allowedRoles=[role])  # same role, other tenant
    for size in (1, 2, 3, 100):
        pages = me.list_all(size)
        assert [r for page in pages for r in page] == sorted(visible), size
        assert all(pages), "no empty page"
    # The colleague sees their own (visible to me or not), none of mine (I gave no role).
    assert [r for page in colleague.list_all(5) for r in page] == sorted(colleagues_visible + invisible)
    # Another tenant's user with the same role sees nothing of this tenant.
    assert not set(r for page in stranger_same_role.list_all(100) for r in page) & set(visible + invisible)


def test_list_items_are_the_report_representation(client, token_for):
    me = Caller(client, token_for())
    rid = me.create(schedule={"type": "monthly", "day": 3})
    status, data, _ = me.call("get", "/reports")
    assert status == 200 and data["nextToken"] is None
    assert data["items"] == [me.call("get", f"/reports/{rid}")[1]]


@pytest.mark.parametrize("query, field", [("pageSize=0", "pageSize"), ("pageSize=101", "pageSize"),
                                          ("pageSize=abc", "pageSize"), ("nextToken=%25%25", "nextToken"),
                                          ("nextToken=eyJ4IjoxfQ", "nextToken"),  # {"x":1}
                                          ("nextToken=eyJhZnRlciI6IiMifQ", "nextToken")])  # {"after":"#"}
def test_list_with_bad_paging_is_400_naming_the_field(client, token_for, query, field):
    status, data, headers = Caller(client, token_for()).call("get", f"/reports?{query}")
    _problem(status, data, headers, 400, "validation-failed")
    assert data["field"] == field


# --- GET ETag, PATCH ------------------------------------------------------------------------------------------


def test_get_has_a_strong_etag_and_answers_304_to_if_none_match(client, token_for):
    me = Caller(client, token_for())
    rid = me.create()
    tag = me.etag(rid)
    assert tag.startswith('"v1-') and not tag.startswith("W/")
    assert me.call("get", f"/reports/{rid}", headers={"If-None-Match": tag})[0] == 304


def test_patch_changes_the_fields_given_and_the_etag(client, token_for):
    me = Caller(client, token_for())
    rid = me.create(schedule={"type": "monthly", "day": 5}, allowedRoles=["a"])
    before = me.call("get", f"/reports/{rid}")[1]
    tag = me.etag(rid)
    change = {"name": "  Renamed ", "deliveryTargets": [{"type": "api", "mode": "async"},
                                                        {"type": "email", "to": "cfo@example.com"}],
              "allowedRoles": ["b", "c"], "categories": ["Travel", "Food"], "schedule": None}
    status, data, headers = me.call("patch", f"/reports/{rid}", change, {"If-Match": tag})
    assert status == 200, data
    before.pop("schedule")
    assert data == {**before, "name": "Renamed", "deliveryTargets": change["deliveryTargets"],
                    "allowedRoles": ["b", "c"], "categories": ["Travel", "Food"]} and "schedule" not in data
    assert headers["ETag"] != tag and headers["ETag"].startswith('"v2-')
    assert me.call("get", f"/reports/{rid}")[1] == data and me.etag(rid) == headers["ETag"]
    stored = ReportConfig.get(me.token.sub, rid, consistent_read=True)  # no tenant claim: the sub is the tenant
    assert (stored.version, stored.schedule, stored.schedule_day) == (2, None, None)
    # The old ETag is now stale: 412, nothing written.
    status, data, headers = me.call("patch", f"/reports/{rid}", {"name": "Again"}, {"If-Match": tag})
    _problem(status, data, headers, 412, "precondition-failed")
    assert me.call("get", f"/reports/{rid}")[1]["name"] == "Renamed"


def test_patch_without_if_match_is_428_and_changes_nothing(client, token_for):
    me = Caller(client, token_for())
    rid = me.create()
    tag = me.etag(rid)
    status, data, headers = me.call("patch", f"/reports/{rid}", {"name": "No precondition"})
    _problem(status, data, headers, 428, "precondition-required")
    assert "If-Match" in data["detail"]
    assert me.etag(rid) == tag


def test_patch_with_a_weak_or_unknown_etag_is_412(client, token_for):
    me = Caller(client, token_for())
    rid = me.create()
    tag = me.etag(rid)
    for stale in (f"W/{tag}", '"v1-0000"', '"nonsense"'):
        status, data, headers = me.call("patch", f"/reports/{rid}", {"name": "X"}, {"If-Match": stale})
        _problem(status, data, headers, 412, "precondition-failed")
    assert me.etag(rid) == tag


@pytest.mark.parametrize("body, field", [
    ({"reportId": "r-other-id"}, "reportId"), ({"ownerId": "someone-else"}, "ownerId"),
    ({"createdAt": "2020-01-01T00:00:00Z"}, "createdAt"), ({"name": ""}, "name"), ({"name": None}, "name"),
    ({"deliveryTargets": []}, "deliveryTargets"), ({"deliveryTargets": [{"type": "fax"}]}, "deliveryTargets[0]"),
    ({"categories": []}, "categories"), ({"allowedRoles": ["x", "x"]}, "allowedRoles"),
    ({"schedule": {"type": "monthly", "day": 31}}, "schedule"), ({"noSuchField": 1}, "noSuchField"),
])
def test_patch_with_bad_or_immutable_fields_is_400_naming_the_field_and_stores_nothing(client, token_for, body,
                                                                                      field):
    me = Caller(client, token_for())
    rid = me.create()
    before, tag = me.call("get", f"/reports/{rid}")[1], me.etag(rid)
    status, data, headers = me.call("patch", f"/reports/{rid}", {"name": "Would change", **body},
                                    {"If-Match": tag})
    _problem(status, data, headers, 400, "validation-failed")
    assert data["field"] == field, data
    assert me.call("get", f"/reports/{rid}")[1] == before and me.etag(rid) == tag


@pytest.mark.parametrize("body", [[], "name", {}])
def test_patch_body_that_is_not_an_object_with_a_field_is_400(client, token_for, body):
    me = Caller(client, token_for())
    rid = me.create()
    tag = me.etag(rid)
    status, data, headers = me.call("patch", f"/reports/{rid}", body, {"If-Match": tag})
    _problem(status, data, headers, 400, "validation-failed")
    assert me.etag(rid) == tag


def test_only_the_owner_may_patch_or_delete(client, token_for, tenant):
    owner = Caller(client, token_for(tenant=tenant))
    holder = Caller(client, token_for(roles=("audit",), tenant=tenant))
    colleague = Caller(client, token_for(tenant=tenant))
    outsider = Caller(client, token_for(roles=("audit",), tenant=f"x-{tenant}"))
    rid = owner.create(allowedRoles=["audit"])
    tag = owner.etag(rid)
    assert holder.etag(rid) == tag  # the holder reads it, and its ETag
    for who, expected, slug in ((holder, 403, "forbidden"), (colleague, 404, "not-found"),
                                (outsider, 404, "not-found")):
        status, data, headers = who.call("patch", f"/reports/{rid}", {"name": "Mine now"}, {"If-Match": tag})
        _problem(status, data, headers, expected, slug)
        status, data, headers = who.call("delete", f"/reports/{rid}")
        _problem(status, data, headers, expected, slug)
    assert owner.etag(rid) == tag
    missing = owner.call("patch", f"/reports/r-{uuid.uuid4().hex[:10]}", {"name": "x"}, {"If-Match": tag})
    _problem(*missing, 404, "not-found")


def test_concurrent_patches_with_one_etag_give_one_200_and_412s(api_stack, token_for):
    token = token_for()
    headers = {**token.headers, "Content-Type": "application/json"}
    rid = f"r-{uuid.uuid4().hex[:12]}"
    assert requests.post(f"{api_stack}/api/v1/reports", headers=headers, timeout=10, json={
        "reportId": rid, "name": "Race", "deliveryTargets": ASYNC}).status_code == 201
    tag = requests.get(f"{api_stack}/api/v1/reports/{rid}", headers=headers, timeout=10).headers["ETag"]
    n = 8
    barrier = threading.Barrier(n)

    def patch(i: int) -> requests.Response:
        barrier.wait(timeout=30)
        return requests.patch(f"{api_stack}/api/v1/reports/{rid}", headers={**headers, "If-Match": tag},
                              json={"name": f"Writer {i}"}, timeout=30)

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(patch, range(n)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] + [412] * (n - 1), codes
    winner = next(r for r in answers if r.status_code == 200)
    current = requests.get(f"{api_stack}/api/v1/reports/{rid}", headers=headers, timeout=10)
    assert current.json()["name"] == winner.json()["name"]
    assert current.headers["ETag"] == winner.headers["ETag"] and current.headers["ETag"].startswith('"v2-')


# --- DELETE ---------------------------------------------------------------------------------------------------


def test_delete_is_409_while_any_users_job_is_active_then_204_and_jobs_and_results_stay(client, token_for, tenant):
    owner = Caller(client, token_for(tenant=tenant))
    holder = Caller(client, token_for(roles=("finance",), tenant=tenant))
    rid = owner.create(allowedRoles=["finance"], categories=["Travel", "Other"])
    lines = expense_lines(3, vendors(3))
    for who in (owner, holder):
        assert who.call("post", "/expenses", {"lines": lines})[0] == 201
    # The role holder's job (not the owner's) is active: it counts.
    status, job, _ = holder.call("post", f"/reports/{rid}/generate", {"period": "2026-01"})
    assert status == 202, job
    status, data, headers = owner.call("delete", f"/reports/{rid}")
    _problem(status, data, headers, 409, "conflict")
    assert data["jobStatus"] == "Queued"
    assert owner.call("get", f"/reports/{rid}")[0] == 200
    # Not left marked: generating still works after the refused delete.
    status, mine, _ = owner.call("post", f"/reports/{rid}/generate", {"period": "2026-01"})
    assert status == 202, mine
    drain({job["jobId"], mine["jobId"]})
    status, body, _ = owner.call("delete", f"/reports/{rid}")
    assert (status, body) == (204, None)
    _problem(*owner.call("get", f"/reports/{rid}"), 404, "not-found")
    _problem(*owner.call("delete", f"/reports/{rid}"), 404, "not-found")
    assert rid not in [r["reportId"] for r in owner.call("get", "/reports?pageSize=100")[1]["items"]]
    _problem(*holder.call("post", f"/reports/{rid}/generate", {"period": "2026-02"}), 404, "not-found")
    # The jobs and their results stay readable, and a line can still be settled (it reads job.categories).
    for who, job_id in ((holder, job["jobId"]), (owner, mine["jobId"])):
        status, got, _ = who.call("get", f"/jobs/{job_id}")
        assert status == 200 and got["status"] == "Completed", got
        status, result, _ = who.call("get", f"/jobs/{job_id}/result")
        assert status == 200 and len(result["lines"]) == 3, result
        line_id = result["lines"][0]["lineId"]
        status, settled, _ = who.call("patch", f"/jobs/{job_id}/lines/{line_id}", {"category": "Travel"})
        assert status == 200, settled
        status, bad, headers = who.call("patch", f"/jobs/{job_id}/lines/{line_id}", {"category": "Lodging"})
        _problem(status, bad, headers, 400, "validation-failed")  # the job's own taxonomy, not the default


def test_delete_with_a_stale_if_match_is_412_and_deletes_nothing(client, token_for):
    me = Caller(client, token_for())
    rid = me.create()
    tag = me.etag(rid)
    assert me.call("patch", f"/reports/{rid}", {"name": "Changed"}, {"If-Match": tag})[0] == 200
    _problem(*me.call("delete", f"/reports/{rid}", headers={"If-Match": tag}), 412, "precondition-failed")
    assert me.call("get", f"/reports/{rid}")[0] == 200
    assert me.call("delete", f"/reports/{rid}", headers={"If-Match": me.etag(rid)})[0] == 204


def test_a_job_cannot_start_while_the_delete_checks_for_active_jobs(client, token_for, monkeypatch):
    """The named condition (report_accepts_jobs): a job created between the delete's mark and its check is
    refused by its own transaction, so the delete's check cannot miss it."""
    me = Caller(client, token_for())
    rid = me.create()
    report = ReportConfig.get(me.token.sub, rid, consistent_read=True)
    refused: list[Exception] = []
    check = service.active_job_status

    def generate_in_the_window(tenant: str, report_id: str):
        try:
            create_job(me.token.sub, report, "2026-01")
        except Conflict as err:
            refused.append(err)
        return check(tenant, report_id)

    monkeypatch.setattr(service, "active_job_status", generate_in_the_window)
    assert me.call("delete", f"/reports/{rid}")[0] == 204
    assert len(refused) == 1 and "being deleted" in refused[0].detail
    assert me.call("get", "/jobs")[1]["totalCount"] == 0


def test_generate_racing_delete_never_leaves_an_active_job_of_a_deleted_report(api_stack, token_for):
    token = token_for()
    headers = {**token.headers, "Content-Type": "application/json"}
    outcomes = set()
    for month in range(1, 7):  # a line in each period the races generate (no lines: 422 `no-lines`)
        assert requests.post(f"{api_stack}/api/v1/expenses", headers=headers, json=seed_body(f"2025-{month:02d}"),
                             timeout=10).status_code == 201
    for _ in range(6):
        rid = f"r-{uuid.uuid4().hex[:12]}"
        assert requests.post(f"{api_stack}/api/v1/reports", headers=headers, timeout=10, json={
            "reportId": rid, "name": "Race", "deliveryTargets": ASYNC}).status_code == 201
        n = 6
        barrier = threading.Barrier(n + 1)

        def generate(i: int, rid: str = rid, barrier: threading.Barrier = barrier) -> requests.Response:
            barrier.wait(timeout=30)
            return requests.post(f"{api_stack}/api/v1/reports/{rid}/generate", headers=headers,
                                 json={"period": f"2025-{i + 1:02d}"}, timeout=30)

        def delete(rid: str = rid, barrier: threading.Barrier = barrier) -> requests.Response:
            barrier.wait(timeout=30)
            return requests.delete(f"{api_stack}/api/v1/reports/{rid}", headers=token.headers, timeout=30)

        with ThreadPoolExecutor(n + 1) as pool:
            deleting = pool.submit(delete)
            generating = [pool.submit(generate, i) for i in range(n)]
            deleted, generated = deleting.result(), [f.result() for f in generating]
        codes = [r.status_code for r in generated]
        assert set(codes) <= {202, 404, 409}, [(r.status_code, r.text[:200]) for r in generated]
        assert deleted.status_code in (204, 409), deleted.text
        active = service.active_job_status(token.sub, rid)
        exists = requests.get(f"{api_stack}/api/v1/reports/{rid}", headers=headers, timeout=10).status_code
        if deleted.status_code == 204:
            assert 202 not in codes and active is None and exists == 404, codes
        else:
            assert 202 in codes and active == "Queued" and exists == 200, codes
        outcomes.add(deleted.status_code)
        drain({r.json()["jobId"] for r in generated if r.status_code == 202})
    assert outcomes  # which side wins is the race's; the invariant above holds for each round


# --- the per-process cache ------------------------------------------------------------------------------------


def test_a_patch_is_seen_by_generate_at_once_in_the_same_process(client, token_for):
    me = Caller(client, token_for())
    rid = me.create(categories=["Old"])
    for period in ("2026-01", "2026-02"):
        assert me.call("post", "/expenses", seed_body(period))[0] == 201
    status, first, _ = me.call("post", f"/reports/{rid}/generate", {"period": "2026-01"})  # keeps the report
    assert status == 202
    assert me.call("patch", f"/reports/{rid}", {"categories": ["New"]}, {"If-Match": me.etag(rid)})[0] == 200
    status, second, _ = me.call("post", f"/reports/{rid}/generate", {"period": "2026-02"})
    assert status == 202
    assert Job.get(first["jobId"]).categories == ["Old"] and Job.get(second["jobId"]).categories == ["New"]
    drain({first["jobId"], second["jobId"]})


def test_another_process_sees_a_change_within_the_keep_time_and_a_delete_at_once(client, token_for, api_stack,
                                                                                  monkeypatch):
    me = Caller(client, token_for())
    headers = {**me.token.headers, "Content-Type": "application/json"}
    rid = me.create(categories=["Old"])
    for period in ("2026-01", "2026-02", "2026-03", "2026-04"):
        assert me.call("post", "/expenses", seed_body(period))[0] == 201
    status, first, _ = me.call("post", f"/reports/{rid}/generate", {"period": "2026-01"})  # kept here
    assert status == 202
    # Changed through another process (chalice local): this one's kept copy is at most _KEEP_SECONDS old.
    tag = me.etag(rid)
    assert requests.patch(f"{api_stack}/api/v1/reports/{rid}", headers={**headers, "If-Match": tag},
                          json={"categories": ["New"]}, timeout=10).status_code == 200
    real = service.time.monotonic
    monkeypatch.setattr(service.time, "monotonic", lambda: real() + service._KEEP_SECONDS + 0.1)
    status, second, _ = me.call("post", f"/reports/{rid}/generate", {"period": "2026-02"})
    assert status == 202 and Job.get(second["jobId"]).categories == ["New"]
    monkeypatch.undo()
    drain({first["jobId"], second["jobId"]})
    # Kept here again; deleted through the other process: generate here is refused at once (404), no job.
    status, third, _ = me.call("post", f"/reports/{rid}/generate", {"period": "2026-03"})
    assert status == 202
    drain({third["jobId"]})
    assert (me.token.sub, rid) in service._FOUND
    assert requests.delete(f"{api_stack}/api/v1/reports/{rid}", headers=me.token.headers,
                           timeout=10).status_code == 204
    _problem(*me.call("post", f"/reports/{rid}/generate", {"period": "2026-04"}), 404, "not-found")
    assert me.call("get", "/jobs")[1]["totalCount"] == 3


def _cancelled_job(owner: Caller) -> tuple[str, dict]:
    """A new report of `owner` and a job of it, cancelled while Queued: (reportId, the job)."""
    rid = owner.create()
    assert owner.call("post", "/expenses", {"lines": expense_lines(3, vendors(3))})[0] == 201
    status, job, _ = owner.call("post", f"/reports/{rid}/generate", {"period": "2026-01"})
    assert status == 202, job
    assert owner.call("delete", f"/jobs/{job['jobId']}")[1]["status"] == "Cancelled"
    return rid, job


def test_a_stopped_job_of_a_deleted_report_cannot_be_retried(client, token_for, tenant):
    owner = Caller(client, token_for(tenant=tenant))
    rid, job = _cancelled_job(owner)
    assert owner.call("delete", f"/reports/{rid}")[0] == 204
    status, data, headers = owner.call("post", f"/jobs/{job['jobId']}/retry")
    _problem(status, data, headers, 409, "conflict")
    assert "report was deleted" in data["detail"]
    assert owner.call("get", f"/jobs/{job['jobId']}")[1]["status"] == "Cancelled"


def test_a_patch_arriving_while_a_delete_checks_the_jobs_is_refused_not_lost(client, token_for, monkeypatch):
    from chalicelib.reports import service

    me = Caller(client, token_for())
    rid = me.create()
    tag = me.etag(rid)
    real_check, patched = service.active_job_status, []

    def patch_meanwhile(tenant, report_id):
        # The delete has marked the report; a PATCH with a current ETag comes in now.
        patched.append(me.call("patch", f"/reports/{rid}", {"name": "Renamed"}, {"If-Match": tag})[:2])
        return real_check(tenant, report_id)

    monkeypatch.setattr(service, "active_job_status", patch_meanwhile)
    status, body, _ = me.call("delete", f"/reports/{rid}")
    assert (status, body) == (204, None)
    (patch_status, problem), = patched
    assert patch_status == 409 and "being deleted" in problem["detail"]  # not a 200 whose change then vanished


def test_a_retry_that_read_the_report_before_a_delete_marked_it_is_refused(client, token_for, tenant, monkeypatch):
    from chalicelib.reports import service

    owner = Caller(client, token_for(tenant=tenant))
    rid, job = _cancelled_job(owner)
    real_still_there, looks = service.still_there, []

    def deleted_right_after_the_look(tenant_key, report_id):
        looks.append(report_id)
        if len(looks) == 1:  # the retry saw the report; the delete marks it and finds no active job
            seen = real_still_there(tenant_key, report_id)
            assert owner.call("delete", f"/reports/{rid}")[0] == 204
            return seen
        return real_still_there(tenant_key, report_id)

    monkeypatch.setattr(service, "still_there", deleted_right_after_the_look)
    status, data, headers = owner.call("post", f"/jobs/{job['jobId']}/retry")
    _problem(status, data, headers, 409, "conflict")
    assert owner.call("get", f"/jobs/{job['jobId']}")[1]["status"] == "Cancelled"
