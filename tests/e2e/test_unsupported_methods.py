"""Through `chalice local` (what `make run` serves): a method no route declares is a 405 problem+json with Allow,
an unknown path is a 404 problem+json, whatever the method, and neither is ever a 5xx or an HTML page.

http.client sends the request line as given, so TRACE, CONNECT and made-up methods reach the server as a client
would send them (requests/urllib3 treat some of them specially).
"""

from __future__ import annotations

import http.client
import json
import uuid
from urllib.parse import urlsplit

import pytest

from tests.hardening.common import DOC, assert_problem

JOB = f"/api/v1/jobs/{uuid.uuid4()}"


def _declared(template: str) -> set[str]:
    return {m.upper() for m in DOC["paths"][template] if m in ("get", "put", "post", "delete", "patch")}


UNSUPPORTED = [
    ("TRACE", JOB, "/api/v1/jobs/{jobId}"),
    ("PUT", JOB, "/api/v1/jobs/{jobId}"),
    ("PATCH", JOB, "/api/v1/jobs/{jobId}"),
    ("POST", JOB, "/api/v1/jobs/{jobId}"),
    ("CONNECT", JOB, "/api/v1/jobs/{jobId}"),
    ("QUERY", "/api/v1/expenses", "/api/v1/expenses"),
    ("PROPFIND", "/api/v1/reports", "/api/v1/reports"),
    ("TRACE", "/api/v1/jobs", "/api/v1/jobs"),
    ("PUT", f"{JOB}/lines/tx-1", "/api/v1/jobs/{jobId}/lines/{lineId}"),
    ("TRACE", "/health", "/health"),
    ("DELETE", "/openapi.json", "/openapi.json"),
]


class Conn:
    """One keep-alive connection to the stack: every answer must leave it usable for the next request."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
             ) -> tuple[int, dict[str, str], bytes]:
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def conn(api_stack):
    c = Conn(api_stack)
    yield c
    c.close()


@pytest.mark.parametrize("method,path,template", UNSUPPORTED, ids=[f"{m} {t}" for m, _, t in UNSUPPORTED])
def test_a_method_the_route_does_not_declare_is_405_problem_json_with_allow(conn, token_for, method, path, template):
    token = token_for()
    headers = {**token.headers, "X-Probe": "<script>echo-me</script>"}
    status, got, body = conn.send(method, path, headers)
    problem = assert_problem(status, got, body, 405)
    assert {m.strip() for m in got["Allow"].split(",")} == _declared(template)
    assert b"echo-me" not in body and token.encode() not in body and method.encode() not in body
    assert problem["title"] == "Method not allowed"
    status, _, _ = conn.send("GET", "/health", {})  # the connection is still in step
    assert status == 200


def test_head_on_a_get_route_is_405_with_allow_and_no_body(conn, token_for):
    status, got, body = conn.send("HEAD", JOB, token_for().headers)
    assert status == 405 and body == b""  # a HEAD answer has no body, or the next answer would be read wrong
    assert {m.strip() for m in got["Allow"].split(",")} == _declared("/api/v1/jobs/{jobId}")
    assert got["Content-Type"].startswith("application/problem+json")
    status, _, body = conn.send("GET", "/health", {})
    assert status == 200 and json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize("method", ["GET", "POST", "TRACE", "CONNECT", "PROPFIND", "DELETE"])
@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/jobs", "/api/v1/jobs/x/y/z", "/nope.php"])
@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no-token"])
def test_an_unknown_path_is_404_problem_json_for_every_method(conn, token_for, method, path, with_token):
    token = token_for()
    headers = {**(token.headers if with_token else {}), "X-Probe": "<script>echo-me</script>"}
    status, got, body = conn.send(method, path, headers, b'{"a": 1}' if method == "POST" else None)
    assert_problem(status, got, body, 404)
    assert b"echo-me" not in body and token.encode() not in body and b"Authorization" not in body
    status, _, _ = conn.send("GET", "/health", {})
    assert status == 200


def test_a_line_id_past_the_sort_key_limit_is_400_through_chalice_local(conn, token_for):
    status, got, body = conn.send("PATCH", f"{JOB}/lines/{'x' * 1100}",
                                  {**token_for().headers, "Content-Type": "application/json"},
                                  b'{"category": "Other"}')
    assert assert_problem(status, got, body, 400)["field"] == "lineId"
