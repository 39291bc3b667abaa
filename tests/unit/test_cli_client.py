"""The CLI's polling loop without a server: Retry-After, If-None-Match/304, 429 and transient failures."""

from __future__ import annotations

import json
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
        self.answers, self.sent, self.bodies = answers, [], []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self.sent.append((method, url, dict(kwargs.get("headers") or {})))
        self.bodies.append(kwargs.get("json"))
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


def run_cli(monkeypatch: pytest.MonkeyPatch, session: Script, *argv: str) -> int:
    """`reports ARGV` against the scripted session."""
    import reports_cli.__main__ as cli

    monkeypatch.setattr(cli, "Client", lambda url, token: Client(url, token, session=session))
    return cli.main(["--api-url", "http://api.test", "--token", "tok", *argv])


DELIVERIES = [
    {"target": 1, "type": "webhook", "event": "job.completed", "destination": "https://hooks.example.com/r",
     "status": "Failed", "attempts": 8, "lastError": "HTTP 500 " + "x" * 200, "at": "2026-01-02T03:04:05Z",
     "nextAttemptAt": None},
    {"target": 2, "type": "email", "event": "job.completed", "destination": "cfo@example.com", "status": "Pending",
     "attempts": 1, "lastError": None, "at": None, "nextAttemptAt": "2026-01-02T03:05:00Z"},
]


def test_webhook_and_email_targets_parse_from_the_command_line() -> None:
    import argparse

    from reports_cli.targets import target, target_text

    assert target("webhook:https://h.example.com/x") == {
        "type": "webhook", "url": "https://h.example.com/x", "events": ["job.completed", "job.failed", "job.cancelled"]}
    assert target("webhook:job.progress,job.completed:https://h.example.com/x?a=1") == {
        "type": "webhook", "url": "https://h.example.com/x?a=1", "events": ["job.completed", "job.progress"]}
    assert target("email:cfo@example.com") == {"type": "email", "to": "cfo@example.com"}
    for text in ("webhook:https://h.example.com/x", "webhook:job.failed:https://h.example.com/x", "api:sync"):
        assert target_text(target(text)) == text
    for bad, said in (("webhook:job.done:https://h.example.com", "'job.done' is not an event"),
                      ("webhook:job.failed", "must be followed by :URL"), ("webhook:", "must be api:async"),
                      ("ftp:x", "must be api:async")):
        with pytest.raises(argparse.ArgumentTypeError, match=said):
            target(bad)


def test_status_shows_the_deliveries_numbered_as_retry_delivery_takes_them() -> None:
    from reports_cli.display import describe

    text = describe({**job("Completed", 10), "deliveries": DELIVERIES})
    assert "Deliveries (retry one: reports retry-delivery JOB_ID N)" in text
    head, failed, pending = text.splitlines()[-3:]
    assert head.split() == ["N", "TYPE", "DESTINATION", "EVENT", "STATUS", "ATTEMPTS", "AT", "LAST", "ERROR"]
    assert failed.split()[:7] == ["0", "webhook", "https://hooks.example.com/r", "job.completed", "Failed", "8",
                                  "2026-01-02T03:04:05Z"]
    assert failed.endswith("x...") and len(failed.split("HTTP 500 ")[1]) == 100 - len("HTTP 500 ")
    assert pending.split()[:8] == ["1", "email", "cfo@example.com", "job.completed", "Pending", "(next",
                                   "2026-01-02T03:05:00Z)", "1"]
    assert "Deliveries" not in describe(job("Completed", 10))  # none: no section


def test_create_report_with_a_webhook_prints_its_secret_once_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    created = {"reportId": "r-1", "categories": ["A"], "webhookSecret": "whsec_abc"}
    session = Script([response(201, created)])
    code = run_cli(monkeypatch, session, "create-report", "r-1", "--target", "api:async",
                   "--target", "webhook:job.failed:https://h.example.com/x", "--target", "email:a@b.co")
    out = capsys.readouterr()
    assert code == 0 and out.out.splitlines() == ["Created report r-1 (1 categories)", "Webhook secret: whsec_abc"]
    assert "shown this once: copy it now, it is not shown again" in out.err
    assert session.bodies[0]["deliveryTargets"] == [
        {"type": "api", "mode": "async"},
        {"type": "webhook", "url": "https://h.example.com/x", "events": ["job.failed"]},
        {"type": "email", "to": "a@b.co"}]

    session = Script([response(201, {"reportId": "r-2", "categories": ["A"]})])  # no webhook: no secret, as before
    assert run_cli(monkeypatch, session, "create-report", "r-2") == 0
    out = capsys.readouterr()
    assert out.out == "Created report r-2 (1 categories)\n" and out.err == ""
    assert session.bodies[0]["deliveryTargets"] == [{"type": "api", "mode": "async"}]


def test_update_report_adding_the_first_webhook_prints_the_secret_in_its_json(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    updated = {"reportId": "r-1", "webhookSecret": "whsec_new"}
    session = Script([response(200, updated)])
    code = run_cli(monkeypatch, session, "update-report", "r-1", "--if-match", '"v1-a"', "--json",
                   "--target", "webhook:https://h.example.com/x")
    out = capsys.readouterr()
    assert code == 0 and json.loads(out.out)["webhookSecret"] == "whsec_new" and "not shown again" in out.err
    assert session.sent[0][:2] == ("PATCH", "http://api.test/api/v1/reports/r-1")


def test_rotate_secret_prints_just_the_secret_and_when_the_old_one_stops(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    session = Script([response(200, {"webhookSecret": "whsec_2", "previousSecretExpiresAt": "2026-01-03T00:00:00Z"})])
    assert run_cli(monkeypatch, session, "rotate-secret", "r/1", "-q") == 0
    out = capsys.readouterr()
    assert out.out == "whsec_2\n" and "not shown again" in out.err and "until 2026-01-03T00:00:00Z" in out.err
    assert session.sent[0][:2] == ("POST", "http://api.test/api/v1/reports/r%2F1/webhook-secret/rotate")

    refused = {"title": "Conflict", "status": 409, "detail": "This report has no webhook target."}
    assert run_cli(monkeypatch, Script([response(409, refused)]), "rotate-secret", "r-1") == 4
    assert capsys.readouterr().err == "reports: error: 409 Conflict: This report has no webhook target.\n"


def test_retry_delivery_posts_to_the_delivery_and_says_what_it_is_now(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    again = [{**DELIVERIES[0], "status": "Pending", "attempts": 0, "lastError": None}]
    session = Script([response(202, {**job("Completed", 10), "deliveries": again})])
    assert run_cli(monkeypatch, session, "retry-delivery", "j-1", "0") == 0
    out = capsys.readouterr()
    assert out.out == "j-1: delivery 0 (webhook to https://hooks.example.com/r) is Pending\n"
    assert "reports status j-1" in out.err
    assert session.sent[0][:2] == ("POST", "http://api.test/api/v1/jobs/j-1/deliveries/0/retry")

    busy = {"title": "Conflict", "status": 409, "detail": "Delivery 0 is still being attempted."}
    assert run_cli(monkeypatch, Script([response(409, busy)]), "retry-delivery", "j-1", "0") == 4
    assert "409 Conflict: Delivery 0 is still being attempted." in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        run_cli(monkeypatch, Script([]), "retry-delivery", "j-1", "first")
    assert caught.value.code == 2


def test_status_shows_the_lane_and_what_the_model_requests_cost() -> None:
    from reports_cli.display import describe

    usage = {"modelRequests": 10, "inputTokens": 21300, "cachedTokens": 16640, "outputTokens": 3460,
             "estimatedCostUsd": "0.001555", "flexFallbacks": 2}
    text = describe({**job("Completed", 10), "lane": "flex", "usage": usage})
    assert "Lane       flex" in text
    assert ("Usage      10 model requests, 21,300 input tokens (78% cached), 3,460 output; about 0.001555 USD; "
            "2 sent standard (no flex capacity)") in text
    assert "Usage" not in describe({**job("Queued", 10), "usage": {**usage, "modelRequests": 0}})
