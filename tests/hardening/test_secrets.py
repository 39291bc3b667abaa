"""Secrets: bearer tokens, the OpenAI key and the JWT secret never appear in logs or in any response.

One run in-process (caplog at DEBUG for every logger, plus whatever reaches this process's stdout/stderr) and
one through `chalice local` and a `python -m local.stack` worker process (their whole output). Both use fresh
random secrets, succeed, and also take the failing paths: 401s (including the secret itself, or the OpenAI key,
sent as a bearer token), a provider answering 500s, and a provider refusing the key (the job fails).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests

from chalicelib.api import middleware
from chalicelib.auth import mint_token
from chalicelib.settings import get_settings
from local.stack import ChaliceLocal, free_port
from tests.support import drain, expense_lines, vendors, wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Secrets:
    jwt_secret: str
    openai_key: str
    tokens: list[str] = dataclasses.field(default_factory=list)

    def all(self) -> list[str]:
        # A token's signature alone is as good as a leak of the token.
        return [self.jwt_secret, self.openai_key, *self.tokens, *(t.rsplit(".", 1)[-1] for t in self.tokens)]

    def token(self, settings, **claims: object) -> str:
        if claims:
            token = jwt.encode({"sub": f"user-{uuid.uuid4()}", "exp": int(time.time()) + 600, **claims},
                               self.jwt_secret, algorithm="HS256")
        else:
            token = mint_token(settings, f"user-{uuid.uuid4()}", ["finance"])
        self.tokens.append(token)
        return token

    def hostile_headers(self, settings) -> list[str]:
        """Authorization values that must each be a 401, and none of them echoed or logged."""
        wrong = jwt.encode({"sub": "x", "exp": int(time.time()) + 600}, "another-secret-" * 3, algorithm="HS256")
        self.tokens.append(wrong)
        expired = self.token(settings, exp=int(time.time()) - 3600)
        return [f"Bearer {self.jwt_secret}", f"Bearer {self.openai_key}", f"Bearer {wrong}", f"Bearer {expired}",
                f"Basic {self.jwt_secret}", self.jwt_secret]

    def assert_absent(self, where: str, text: str | bytes) -> None:
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        found = [s[:12] + "..." for s in self.all() if s in text]
        assert not found, f"secrets found in {where}: {found}"


def _fresh_secrets() -> Secrets:
    return Secrets(jwt_secret="jwt-" + secrets.token_urlsafe(32), openai_key="sk-test-" + secrets.token_hex(20))


FAST_RETRIES = ({"ErrorEquals": ["Provider.ServerError", "Provider.Timeout", "Provider.Connection"],
                 "IntervalSeconds": 0.01, "BackoffRate": 2.0, "MaxAttempts": 2},)


def test_secrets_never_reach_in_process_logs_or_any_response(client, sim, caplog, capfd, monkeypatch):
    keys = _fresh_secrets()
    settings = dataclasses.replace(get_settings(), jwt_secret=keys.jwt_secret, openai_api_key=keys.openai_key,
                                   openai_base_url=sim.url, retry_policy=FAST_RETRIES, line_batch_size=20)
    monkeypatch.setattr(middleware, "get_settings", lambda: settings)
    caplog.set_level(logging.DEBUG)
    token = keys.token(settings)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    seen: list[tuple[str, object]] = []

    def call(method: str, path: str, body: object = None, auth: dict[str, str] | None = None):
        response = client.http.request(method, f"/api/v1{path}", headers=auth or headers,
                                       body=json.dumps(body).encode() if body is not None else b"")
        seen.append((f"{method} {path} -> {response.status_code}", response.body + str(response.headers).encode()))
        return response

    report_id = f"r-{uuid.uuid4().hex[:12]}"
    assert call("POST", "/reports", {"reportId": report_id, "name": "Secrets",
                                     "deliveryTargets": [{"type": "api", "mode": "async"}]}).status_code == 201
    for period in ("2026-01", "2026-02"):
        assert call("POST", "/expenses", {"lines": expense_lines(30, vendors(10), period)}).status_code == 201
    # A provider that answers 500s half the time: retried, then lines flagged.
    sim.configure(p500=0.5)
    first = call("POST", f"/reports/{report_id}/generate", {"period": "2026-01"}).json_body["jobId"]
    drain({first}, settings)
    assert call("GET", f"/jobs/{first}").json_body["status"] == "Completed"
    call("GET", f"/jobs/{first}/result")
    call("GET", f"/jobs/{first}/result?format=csv")
    call("GET", f"/jobs/{first}/events")
    # A provider that refuses the key: the job fails with an actionable message, not the key.
    sim.configure(p500=0.0, auth_error=True)
    second = call("POST", f"/reports/{report_id}/generate", {"period": "2026-02"}).json_body["jobId"]
    drain({second}, settings)
    failed = call("GET", f"/jobs/{second}").json_body
    assert failed["status"] == "Failed" and "API key" in failed["errorMessage"]
    call("GET", f"/jobs/{second}/events")
    # Failing paths of the API: 401s of every kind, 404, 400.
    for value in keys.hostile_headers(settings):
        response = call("GET", "/jobs", auth={"Authorization": value})
        assert response.status_code == 401
    call("GET", f"/jobs/{uuid.uuid4()}")
    call("POST", "/expenses", {"lines": [{"vendor": keys.openai_key}]})

    assert any("rejected token" in r.getMessage() for r in caplog.records)  # the capture does see the app's logs
    keys.assert_absent("log records", "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records))
    out, err = capfd.readouterr()
    keys.assert_absent("stdout/stderr", out + err)
    for where, body in seen:
        keys.assert_absent(where, body)


class Processes:
    def __init__(self) -> None:
        self.procs: list = []

    def stop(self) -> None:
        for proc in self.procs:
            if isinstance(proc, ChaliceLocal):
                proc.stop(timeout=5)
            elif proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.stop()


def test_secrets_never_reach_the_api_or_worker_process_output(aws_endpoint, sim, tmp_path, processes):
    keys = _fresh_secrets()
    env = {**os.environ, "JWT_SECRET": keys.jwt_secret, "OPENAI_API_KEY": keys.openai_key,
           "OPENAI_BASE_URL": sim.url, "MODEL_RETRY_POLICY": json.dumps(list(FAST_RETRIES)),
           "LOG_LEVEL": "DEBUG", "POWERTOOLS_LOG_LEVEL": "DEBUG", "WORKER_WAIT_SECONDS": "1", "PYTHONUNBUFFERED": "1"}
    api = ChaliceLocal(free_port(), env, stage="pytest", log_path=tmp_path / "api.log")
    processes.procs.append(api)
    api.start_and_wait(deadline_seconds=30)
    worker_log = open(tmp_path / "worker.log", "wb")
    processes.procs.append(subprocess.Popen(
        [sys.executable, "-m", "local.stack"], cwd=ROOT, stdout=worker_log, stderr=subprocess.STDOUT,
        env={**env, "COMPONENTS": "worker", "CHALICE_STAGE": "pytest", "AWS_ENDPOINT_URL": aws_endpoint,
             "PORT": str(free_port())}))
    worker_log.close()
    settings = dataclasses.replace(get_settings(), jwt_secret=keys.jwt_secret)
    token = keys.token(settings)
    headers = {"Authorization": f"Bearer {token}"}
    bodies: list[bytes] = []

    def call(method: str, path: str, body: object = None, auth: dict[str, str] | None = None) -> requests.Response:
        response = requests.request(method, f"{api.url}/api/v1{path}", json=body, headers=auth or headers, timeout=15)
        bodies.append(response.content + str(response.headers).encode())
        return response

    def status(job_id: str) -> str:
        return call("GET", f"/jobs/{job_id}").json()["status"]

    report_id = f"r-{uuid.uuid4().hex[:12]}"
    assert call("POST", "/reports", {"reportId": report_id, "name": "Secrets",
                                     "deliveryTargets": [{"type": "api", "mode": "async"}]}).status_code == 201
    for period in ("2026-01", "2026-02"):
        assert call("POST", "/expenses", {"lines": expense_lines(20, vendors(5), period)}).status_code == 201
    sim.configure(p500=0.5)
    first = call("POST", f"/reports/{report_id}/generate", {"period": "2026-01"}).json()["jobId"]
    wait_for(lambda: status(first) == "Completed", 60, interval=0.2, what="the first job to complete")
    sim.configure(p500=0.0, auth_error=True)
    second = call("POST", f"/reports/{report_id}/generate", {"period": "2026-02"}).json()["jobId"]
    wait_for(lambda: status(second) == "Failed", 60, interval=0.2, what="the second job to fail")
    for value in keys.hostile_headers(settings):
        assert call("GET", "/jobs", auth={"Authorization": value}).status_code == 401
    call("GET", f"/jobs/{second}/events")
    processes.stop()

    api_log, worker_out = (tmp_path / "api.log").read_text(errors="replace"), \
        (tmp_path / "worker.log").read_text(errors="replace")
    assert "/api/v1/jobs" in api_log and "rejected token" in api_log  # the API's own log lines are captured
    assert "Local stack ready" in worker_out and sim.stats()["requests"] > 0
    keys.assert_absent("chalice local output", api_log)
    keys.assert_absent("worker process output", worker_out)
    for body in bodies:
        keys.assert_absent("an HTTP response", body)
