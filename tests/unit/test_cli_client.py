"""The CLI's polling loop without a server: Retry-After, If-None-Match/304, 429 and transient failures."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from chalicelib.jobs.states import allowed_actions
from reports_cli.__main__ import csv_chunks, status_code
from reports_cli.client import ApiError, Client, retry_after_seconds
from reports_cli.display import outcome, table


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    out = requests.Response()
    out.status_code = status
    out.headers.update(headers or {})
    if body is not None:
        import json

        out._content = json.dumps(body).encode()
        out.headers.setdefault("Content-Type", "application/json")
    else:
        out._content = b""
    out.url = "http://api.test/api/v1/jobs/j-1"
    return out


class Script(requests.Session):
    """A session that answers from a list and records what was sent."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__()
        self.answers, self.sent = answers, []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self.sent.append((method, url, dict(kwargs.get("headers") or {})))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def job(status: str, done: int = 0) -> dict[str, Any]:
    return {"jobId": "j-1", "status": status, "processedLines": done, "totalLines": 10, "progressPercent": done * 10,
            "failedLines": 0, "allowedActions": [a.value for a in allowed_actions(status)]}


def test_wait_honours_retry_after_sends_if_none_match_and_keeps_the_body_on_304() -> None:
    session = Script([
        response(200, job("Processing", 2), {"ETag": '"a"', "Retry-After": "3"}),
        response(304, None, {"ETag": '"a"', "Retry-After": "3"}),
        response(429, {"title": "Too many requests", "status": 429, "detail": "slow down"}, {"Retry-After": "7"}),
        requests.ConnectionError("Connection refused"),
        response(503, {"title": "Service unavailable", "status": 503, "detail": "try again"}, {"Retry-After": "1"}),
        response(200, job("Processing", 6), {"ETag": '"b"', "Retry-After": "2"}),
        response(200, job("Completed", 10), {"ETag": '"c"'}),
    ])
    seen, slept = [], []
    final = Client("http://api.test/", "tok", session=session).wait("j-1", seen.append, sleep=slept.append)
    assert final["status"] == "Completed" and [j["processedLines"] for j in seen] == [2, 6, 10]
    assert slept == [3, 3, 7, 2, 1, 2]  # Retry-After each time; 2 ** failures after a transport error
    inm = [headers.get("If-None-Match") for _, _, headers in session.sent]
    assert inm == [None, '"a"', '"a"', '"a"', '"a"', '"a"', '"b"']
    assert all(url == "http://api.test/api/v1/jobs/j-1" for _, url, _ in session.sent)
    assert session.headers["Authorization"] == "Bearer tok"


def test_wait_gives_up_on_a_client_error_and_after_repeated_transport_failures() -> None:
    gone = Script([response(404, {"title": "Not found", "status": 404, "detail": "Job 'j-1' was not found."},
                            {"Content-Type": "application/problem+json"})])
    with pytest.raises(ApiError) as caught:
        Client("http://api.test", "t", session=gone).wait("j-1", sleep=lambda s: None)
    assert str(caught.value) == "404 Not found: Job 'j-1' was not found." and caught.value.status == 404

    down = Script([requests.ConnectionError("Connection refused")] * 6)
    with pytest.raises(ApiError, match="cannot reach the API at http://api.test"):
        Client("http://api.test", "t", session=down).wait("j-1", sleep=lambda s: None)


def test_problem_details_become_one_line_with_the_useful_extensions() -> None:
    conflict = response(409, {"title": "Conflict", "status": 409, "detail": "An active job exists.",
                              "existingJobId": "j-9"})
    assert str(ApiError.from_response(conflict)) == "409 Conflict: An active job exists. (existing job j-9)"
    limited = response(429, {"title": "Too many requests", "status": 429, "detail": "Slow down."},
                       {"Retry-After": "42"})
    assert str(ApiError.from_response(limited)) == "429 Too many requests: Slow down. (retry in 42 s)"
    line = response(400, {"title": "Invalid request", "status": 400, "detail": "amount: not a decimal.",
                          "field": "amount", "line": 3})
    assert str(ApiError.from_response(line)) == "400 Invalid request: amount: not a decimal. (line 3)"
    html = response(502)
    html.reason = "Bad Gateway"
    assert str(ApiError.from_response(html)) == "502 Bad Gateway from http://api.test/api/v1/jobs/j-1"
    assert retry_after_seconds(response(503, None, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0


def test_exit_codes_outcome_lines_table_and_csv_chunks() -> None:
    assert [status_code(job(s)) for s in ("Completed", "Failed", "Cancelled", "Processing")] == [0, 1, 3, 0]
    assert outcome({**job("Failed"), "errorMessage": "quota"}) == "Failed: quota"
    assert outcome(job("Completed", 10)) == "Completed: 10 lines. Result: reports result j-1"
    lines = table([job("Processing", 4)]).splitlines()
    assert lines[1].split() == ["j-1", "None", "None", "Processing", "4/10", "0"]
    text = "lineId,vendor\n" + "".join(f'{i},"a\nb"\n' for i in range(5))
    chunks = csv_chunks(text, size=2)
    assert len(chunks) == 3 and all(c.startswith("lineId,vendor\n") for c in chunks) and '"a\nb"' in chunks[2]
    assert csv_chunks("lineId\n1\n", size=2) == ["lineId\n1\n"]


def test_update_report_reads_the_etag_first_and_sends_it_as_if_match() -> None:
    updated = {"reportId": "r-1", "name": "New"}
    session = Script([response(200, {"reportId": "r-1", "name": "Old"}, {"ETag": '"v3-abc"'}),
                      response(200, updated, {"ETag": '"v4-def"'})])
    client = Client("http://api.test", "tok", session=session)
    assert client.update_report("r-1", {"name": "New"}) == updated
    (m1, u1, h1), (m2, u2, h2) = session.sent
    assert (m1, u1) == ("GET", "http://api.test/api/v1/reports/r-1")
    assert (m2, u2, h2["If-Match"]) == ("PATCH", "http://api.test/api/v1/reports/r-1", '"v3-abc"')


def test_update_report_with_a_given_etag_sends_it_and_a_412_is_an_api_error() -> None:
    problem = {"type": "urn:reports:problem:precondition-failed", "title": "Precondition failed", "status": 412,
               "detail": "The report has changed since this ETag was read."}
    session = Script([response(412, problem)])
    with pytest.raises(ApiError) as caught:
        Client("http://api.test", "tok", session=session).update_report("r/1", {"name": "x"}, '"v1-old"')
    assert caught.value.status == 412 and "changed since" in str(caught.value)
    assert session.sent == [("PATCH", "http://api.test/api/v1/reports/r%2F1", {"If-Match": '"v1-old"'})]


def test_list_and_delete_reports_send_what_the_api_takes() -> None:
    session = Script([response(200, {"items": [], "nextToken": "t2"}), response(204), response(204)])
    client = Client("http://api.test", "tok", session=session)
    assert client.list_reports(5, "t1") == {"items": [], "nextToken": "t2"}
    assert client.delete_report("r-1") is None
    client.delete_report("r-1", '"v2-x"')
    assert [(m, u, h) for m, u, h in session.sent[1:]] == [
        ("DELETE", "http://api.test/api/v1/reports/r-1", {}),
        ("DELETE", "http://api.test/api/v1/reports/r-1", {"If-Match": '"v2-x"'})]


def test_report_table_and_update_report_usage() -> None:
    from reports_cli.__main__ import main, target
    from reports_cli.display import report_table

    out = report_table([{"reportId": "r-1", "name": "Monthly", "ownerId": "u-1", "allowedRoles": ["fin"],
                         "deliveryTargets": [{"type": "api", "mode": "async"}, {"type": "email", "to": "a@b.co"}],
                         "categories": ["A", "B"], "schedule": {"type": "monthly", "day": 3}}])
    head, row = out.splitlines()
    assert head.split() == ["REPORT", "NAME", "OWNER", "TARGETS", "ROLES", "CATEGORIES", "SCHEDULE"]
    assert row.split() == ["r-1", "Monthly", "u-1", "api:async,email:a@b.co", "fin", "2", "monthly", "day", "3"]
    assert target("email:a@b.co") == {"type": "email", "to": "a@b.co"}
    with pytest.raises(SystemExit) as caught:  # nothing to change: a usage error before any request
        main(["--api-url", "http://127.0.0.1:9", "--token", "t", "update-report", "r-1"])
    assert caught.value.code == 2
