"""Create is race-free and leaves no orphans: concurrent creates over HTTP against `chalice local`."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chalicelib import deps
from chalicelib.jobs import create
from chalicelib.jobs.states import lock_key, rate_key
from chalicelib.tables import Control, Job
from tests.support import seed_body


def _report(base: str, headers: dict) -> str:
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    response = requests.post(f"{base}/api/v1/reports", headers=headers, timeout=10, json={
        "reportId": report_id, "name": "Race", "deliveryTargets": [{"type": "api", "mode": "async"}]})
    assert response.status_code == 201, response.text
    return report_id


def _seed(base: str, headers: dict, *periods: str) -> None:
    """A line in each period: a period without lines is not generated (422 `no-lines`)."""
    for period in periods:
        assert requests.post(f"{base}/api/v1/expenses", headers=headers, json=seed_body(period),
                             timeout=10).status_code == 201


def _generate(base: str, headers: dict, report_id: str, period: str) -> requests.Response:
    return requests.post(f"{base}/api/v1/reports/{report_id}/generate", headers=headers,
                         json={"period": period}, timeout=30)


def test_20_concurrent_creates_for_one_report_and_period_give_exactly_one_202(api_stack, token_for):
    token = token_for()
    report_id = _report(api_stack, token.headers)
    _seed(api_stack, token.headers, "2026-01")
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: _generate(api_stack, token.headers, report_id, "2026-01"), range(20)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 19
    winner = next(r.json()["jobId"] for r in answers if r.status_code == 202)
    assert {r.json()["existingJobId"] for r in answers if r.status_code == 409} == {winner}
    assert all(r.headers["Content-Type"] == "application/problem+json" for r in answers if r.status_code == 409)
    listed = requests.get(f"{api_stack}/api/v1/jobs", headers=token.headers, timeout=10).json()
    assert listed["totalCount"] == 1


def test_25_concurrent_creates_by_one_user_accept_exactly_20(api_stack, token_for):
    token = token_for()
    report_id = _report(api_stack, token.headers)
    periods = [f"20{20 + i // 12:02d}-{1 + i % 12:02d}" for i in range(25)]
    _seed(api_stack, token.headers, *periods)
    with ThreadPoolExecutor(25) as pool:
        answers = list(pool.map(lambda p: _generate(api_stack, token.headers, report_id, p), periods))
    codes = [r.status_code for r in answers]
    assert codes.count(202) == 20 and codes.count(429) == 5, codes
    assert all(int(r.headers["Retry-After"]) > 0 for r in answers if r.status_code == 429)
    listed = requests.get(f"{api_stack}/api/v1/jobs?pageSize=100", headers=token.headers, timeout=10).json()
    assert listed["totalCount"] == 20


def test_sqs_failure_during_create_is_503_and_leaves_no_job_lock_or_counter(client, token_for, monkeypatch):
    token = token_for()
    headers = {**token.headers, "Content-Type": "application/json"}
    body = {"reportId": f"r-{uuid.uuid4().hex[:12]}", "name": "x",
            "deliveryTargets": [{"type": "api", "mode": "async"}]}
    response = client.http.post("/api/v1/reports", headers=headers, body=json.dumps(body))
    report_id = response.json_body["reportId"]
    assert client.http.post("/api/v1/expenses", headers=headers, body=json.dumps(seed_body())).status_code == 201
    real_url = deps.work_queue_url()
    monkeypatch.setattr(deps, "work_queue_url", lambda: real_url.rsplit("/", 1)[0] + "/no-such-queue")
    answer = client.http.post(f"/api/v1/reports/{report_id}/generate", headers=headers, body='{"period": "2026-01"}')
    assert answer.status_code == 503
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert "no job was created" in answer.json_body["detail"]
    assert client.http.get("/api/v1/jobs", headers=headers).json_body["totalCount"] == 0
    assert list(Job.by_owner.query(token.sub)) == []
    with pytest.raises(Control.DoesNotExist):
        Control.get(lock_key(token.sub, report_id, "2026-01"), consistent_read=True)
    window = Control.get(rate_key(token.sub, "expense_report"), consistent_read=True)
    assert create._live_stamps(window, time.time()) == {}
    monkeypatch.undo()
    again = client.http.post(f"/api/v1/reports/{report_id}/generate", headers=headers, body='{"period": "2026-01"}')
    assert again.status_code == 202  # nothing was left behind to block the same request
