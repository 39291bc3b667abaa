"""Every error path of the API answers a registered problem type, through chalice.test.Client against moto. The
registry: tests/unit/test_problem_types.py."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from tests.support import seed_body
from tests.unit.test_problem_types import EXPECTED, Answer, Send, check_problems, walk


def in_process(client: Any) -> Send:
    def send(method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        response = client.http.request(method, path, headers=headers, body=body or b"")
        raw = response.body if isinstance(response.body, bytes) else (response.body or "").encode()
        return response.status_code, dict(response.headers), raw

    return send


def test_every_error_path_answers_a_registered_problem_type(client, token_for):
    answers = walk(in_process(client), token_for)
    seen = check_problems(answers)
    assert EXPECTED <= seen, f"not reached: {sorted(EXPECTED - seen)}"


def test_rate_limit_and_not_ready_are_registered_problem_types(client, token_for, monkeypatch):
    from chalicelib.api import meta
    from chalicelib.jobs import create
    from chalicelib.settings import get_settings

    owner, send = token_for(), in_process(client)
    report = f"r-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"reportId": report, "name": "M", "deliveryTargets": [{"type": "api", "mode": "async"}]})
    json_headers = {**owner.headers, "Content-Type": "application/json"}
    assert send("POST", "/api/v1/reports", json_headers, body.encode())[0] == 201
    for period in ("2030-01", "2030-02"):  # a period without lines is not generated (422 `no-lines`)
        assert send("POST", "/api/v1/expenses", json_headers, json.dumps(seed_body(period)).encode())[0] == 201
    monkeypatch.setattr(create, "get_settings", lambda: dataclasses.replace(get_settings(), jobs_per_hour=1))
    answers = []
    for period in ("2030-01", "2030-02"):
        answers.append(Answer("generate", *send("POST", f"/api/v1/reports/{report}/generate", json_headers,
                                                 json.dumps({"period": period}).encode())))
    missing = dataclasses.replace(get_settings(), results_bucket=f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    monkeypatch.setattr(meta, "get_settings", lambda: missing)
    answers.append(Answer("not ready", *send("GET", "/health/ready", {}, None)))
    assert [a.status for a in answers] == [202, 429, 503]
    assert check_problems(answers) == {"rate-limited", "service-unavailable"}
