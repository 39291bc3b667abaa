"""The problem-type registry through `chalice local` (what `make run` serves): the error paths of
tests/unit/test_problem_types.py, plus what only the real server answers (unknown paths, any method), all
registered problem types; and GET /health/ready answers ready against the moto server."""

from __future__ import annotations

import http.client
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.unit.test_problem_types import EXPECTED, Answer, check_problems, walk


def over_http(base: str) -> Any:
    parts = urlsplit(base)

    def send(method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        # http.client sends any method as given (TRACE, made-up ones), and a fresh connection each time.
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    return send


def test_every_error_path_of_the_local_server_answers_a_registered_problem_type(api_stack, token_for):
    seen = check_problems(walk(over_http(api_stack), token_for))
    assert EXPECTED <= seen, f"not reached: {sorted(EXPECTED - seen)}"


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "TRACE"])
@pytest.mark.parametrize("path", ["/api/v1/job", "/nope", "/api/v1/jobs/x/y/z"])
def test_an_unknown_path_is_a_registered_not_found(api_stack, token_for, method, path):
    send = over_http(api_stack)
    answer = Answer(f"{method} {path}", *send(method, path, token_for().headers, None))
    assert answer.status == 404
    assert check_problems([answer]) == {"not-found"}


def test_ready_answers_ready_against_the_moto_server(api_stack):
    # Polled, as a load balancer polls it: one probe may time out (1 s) while a loaded CI machine's moto server
    # is slow; a healthy stack must answer ready within the deadline, and a broken one never does.
    deadline = time.monotonic() + 20
    while (response := requests.get(f"{api_stack}/health/ready", timeout=10)).status_code != 200:
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        time.sleep(0.2)  # the pause between polls, not a stand-in for an event
    assert response.json() == {"status": "ready", "checks": {"table": "ok", "queue": "ok", "bucket": "ok"}}
