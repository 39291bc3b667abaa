"""The one API test driver: one user's side of the API through the suite's in-process client (tests/conftest.py
`client`: chalice.test.Client, the app in this process, moto behind it).

`Driver(client, token)` sends as the token's user. `send` is a raw request (any path, body as given, any
headers); `call` is `/api/v1{path}` with a JSON body, answering (status, JSON body or None); `answer` is the same
with the response headers as a third item. `start`, `job` and `result` are the steps most job tests take. A test
module that needs more steps subclasses it (its scenario helpers only, never its own transport); the `api`
fixture is a fresh user's Driver.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


class Driver:
    """One user's side of the API, through the in-process Chalice client."""

    def __init__(self, client: Any, token: str) -> None:
        self.client, self.token = client, token
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def send(self, method: str, path: str, body: object = None, content_type: str = "application/json",
             **headers: str) -> Any:
        """The chalice test client's response to `method path`: a str or bytes body goes as given (a str as UTF-8,
        lone surrogates kept), anything else as JSON."""
        raw = body if isinstance(body, (bytes, str)) else (json.dumps(body) if body is not None else "")
        raw = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        return self.client.http.request(method.upper(), path, body=raw,
                                        headers={**self.headers, "Content-Type": content_type, **headers})

    def answer(self, method: str, path: str, body: object = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body or None, headers) of `/api/v1{path}`; `body` is always sent as JSON."""
        raw = json.dumps(body).encode() if body is not None else b""
        response = self.send(method, f"/api/v1{path}", raw, **(headers or {}))
        return response.status_code, json.loads(response.body) if response.body else None, response.headers

    def call(self, method: str, path: str, body: object = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """(status, JSON body or None) of `/api/v1{path}`; `body` is always sent as JSON."""
        status, data, _ = self.answer(method, path, body, headers)
        return status, data

    def job(self, job_id: str) -> dict:
        return self.call("get", f"/jobs/{job_id}")[1]

    def start(self, lines: list[dict], period: str = "2026-01") -> str:
        """A fresh report with an async API target, the lines imported, a job generated for `period`: its id."""
        report_id = f"r-{uuid.uuid4().hex[:12]}"
        assert self.call("post", "/reports", {"reportId": report_id, "name": "Test",
                                              "deliveryTargets": [{"type": "api", "mode": "async"}]})[0] == 201
        for start in range(0, len(lines), 5000):
            assert self.call("post", "/expenses", {"lines": lines[start:start + 5000]})[0] == 201
        status, body = self.call("post", f"/reports/{report_id}/generate", {"period": period})
        assert status == 202, body
        return body["jobId"]

    def result(self, job_id: str) -> dict:
        status, body = self.call("get", f"/jobs/{job_id}/result")
        assert status == 200, body
        return body
