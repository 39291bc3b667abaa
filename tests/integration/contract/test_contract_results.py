"""Results (/jobs/{jobId}/result) and settling a flagged line (/jobs/{jobId}/lines/{lineId}).
The contract (docs/api.md) status by status; bad input is checked twice: the answer names what is wrong, and
nothing was stored."""

from __future__ import annotations

from tests.integration.contract.common import completed_job, new_job, problem, send, user


def test_result_and_line_settlement_of_an_unfinished_job_are_409(api):
    owner = user()
    job = new_job(api, owner)
    assert problem(api.get(f"/api/v1/jobs/{job['jobId']}/result", headers=owner), 409)["jobStatus"] == "Queued"
    problem(send(api, "PATCH", f"/api/v1/jobs/{job['jobId']}/lines/tx-1", owner, {"category": "Other"}), 409)


def test_completed_job_result_is_200_as_json_and_csv(api):
    owner = user()
    job = completed_job(api, owner)
    polled = api.get(f"/api/v1/jobs/{job['jobId']}", headers=owner).json_body
    assert (polled["status"], polled["progressPercent"], polled["resultUrl"]) == (
        "Completed", 100, f"{job['statusUrl']}/result")
    result = api.get(f"/api/v1/jobs/{job['jobId']}/result", headers=owner)
    assert result.status_code == 200 and result.headers["ETag"]
    body = result.json_body
    assert (body["jobId"], body["period"]) == (job["jobId"], "2026-01")
    categories = {line["lineId"]: line["category"] for line in body["lines"]}
    assert categories == {"tx-1": "Ground Transportation", "tx-2": "Lodging"}
    assert api.get(f"/api/v1/jobs/{job['jobId']}/result",
                   headers={**owner, "If-None-Match": result.headers["ETag"]}).status_code == 304
    csv = api.get(f"/api/v1/jobs/{job['jobId']}/result?format=csv", headers=owner)
    assert csv.status_code == 200 and csv.headers["Content-Type"].startswith("text/csv")
    assert csv.body.decode().splitlines()[0].startswith("lineId,date,vendor,amount,currency")
    assert problem(api.get(f"/api/v1/jobs/{job['jobId']}/result?format=pdf", headers=owner), 400)
    problem(api.delete(f"/api/v1/jobs/{job['jobId']}", headers=owner), 409)
    problem(api.post(f"/api/v1/jobs/{job['jobId']}/retry", headers=owner), 409)


def test_settling_a_line_is_200_and_the_result_follows(api):
    owner = user()
    job = completed_job(api, owner)
    path = f"/api/v1/jobs/{job['jobId']}/lines/tx-1"
    assert problem(send(api, "PATCH", path, owner, {"category": "Spaceflight"}), 400)["field"] == "category"
    assert problem(send(api, "PATCH", path, owner, {"category": "Lodging", "note": "x"}), 400)
    problem(send(api, "PATCH", f"/api/v1/jobs/{job['jobId']}/lines/tx-404", owner, {"category": "Other"}), 404)
    response = send(api, "PATCH", path, owner, {"category": "Lodging"})
    assert response.status_code == 200
    assert {k: response.json_body[k] for k in ("lineId", "category", "source", "needsReview")} == {
        "lineId": "tx-1", "category": "Lodging", "source": "manual", "needsReview": False}
    result = api.get(f"/api/v1/jobs/{job['jobId']}/result", headers=owner).json_body
    assert [t for t in result["totals"] if t["category"] == "Lodging"] == [
        {"category": "Lodging", "currency": "USD", "amount": "233.50", "lines": 2}]
