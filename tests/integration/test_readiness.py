"""GET /health is liveness (no AWS call); GET /health/ready checks that the job table, the work queue and the
results bucket answer, in parallel and within a short timeout, and names the failing part otherwise.

In process (chalice.test.Client) against this process's moto server; a part is made to fail by pointing the
settings the route reads at a bucket, queue or table that does not exist, at a closed port, or at a socket
that accepts connections and never answers. The same route through `chalice local` is in
tests/e2e/test_problem_types_local.py.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib.api import meta, problem_types
from chalicelib.settings import Settings, get_settings
from local.stack import free_port
from tests import iam
from tests.hardening.common import count_store_calls

PARTS = ("table", "queue", "bucket")


def _ready(client: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    response = client.http.get("/health/ready")  # no token: a public route, like /health
    return response.status_code, dict(response.headers), json.loads(response.body)


def _pointing_at(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> Settings:
    settings = dataclasses.replace(get_settings(), **changes)
    monkeypatch.setattr(meta, "get_settings", lambda: settings)
    return settings


@pytest.fixture
def patient_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the tests of what a probe finds, not how fast: the product's 1 s probe timeout failed one on a loaded
    CI machine, where the moto server took over a second for a GetQueueAttributes ("timeout", not "missing").
    The hung-dependency test below keeps the product's timeouts."""
    monkeypatch.setattr(meta, "PROBE_TIMEOUT_SECONDS", 15.0)
    monkeypatch.setattr(meta, "READY_DEADLINE_SECONDS", 30.0)


def _assert_not_ready(status: int, headers: dict[str, str], body: dict[str, Any]) -> dict[str, str]:
    assert status == 503, body
    assert headers["Content-Type"] == "application/problem+json"
    assert int(headers["Retry-After"]) >= 1 and headers["Cache-Control"] == "no-store"
    assert body["type"] == problem_types.get("service-unavailable").uri and body["status"] == 503
    assert set(body["checks"]) == set(PARTS)
    return body["checks"]


def test_ready_when_the_table_the_queue_and_the_bucket_answer(client, patient_probes):
    with iam.recording() as calls:  # every thread: the checks run in parallel
        status, headers, body = _ready(client)
    assert status == 200, body
    assert body == {"status": "ready", "checks": {"table": "ok", "queue": "ok", "bucket": "ok"}}
    assert headers["Cache-Control"] == "no-store"
    settings = get_settings()
    queue = settings.work_queue_url.rsplit("/", 1)[-1]
    assert {(action, resource.rsplit(":", 1)[-1].rsplit("/", 1)[-1]) for action, resource in calls} == {
        ("dynamodb:GetItem", settings.table("jobs")), ("sqs:GetQueueAttributes", queue),
        ("s3:ListBucket", settings.results_bucket)}


@pytest.mark.parametrize("part", PARTS)
def test_a_missing_part_is_a_503_naming_it(client, monkeypatch, patient_probes, part):
    missing = f"no-such-{uuid.uuid4().hex[:8]}"
    settings = get_settings()
    change = {"table": {"prefix": missing},
              "queue": {"work_queue_url": f"{settings.work_queue_url.rsplit('/', 1)[0]}/{missing}"},
              "bucket": {"results_bucket": missing}}[part]
    _pointing_at(monkeypatch, **change)
    status, headers, body = _ready(client)
    checks = _assert_not_ready(status, headers, body)
    assert checks == {p: ("missing" if p == part else "ok") for p in PARTS}
    named = {"table": "the table (missing)", "queue": "the queue (missing)", "bucket": "the bucket (missing)"}
    assert named[part] in body["detail"]
    assert all(named[p] not in body["detail"] for p in PARTS if p != part)


def test_an_unreachable_endpoint_is_a_503_naming_every_part(client, monkeypatch, patient_probes):
    _pointing_at(monkeypatch, aws_endpoint_url=f"http://127.0.0.1:{free_port()}")
    checks = _assert_not_ready(*_ready(client))
    assert checks == {p: "unreachable" for p in PARTS}


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers a byte."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_hung_dependency_times_out_quickly_and_the_parts_are_checked_in_parallel(client, monkeypatch,
                                                                                   silent_endpoint):
    _pointing_at(monkeypatch, aws_endpoint_url=silent_endpoint)
    started = time.monotonic()
    checks = _assert_not_ready(*_ready(client))
    elapsed = time.monotonic() - started
    assert checks == {p: "timeout" for p in PARTS}
    # Each probe waits at most READY_DEADLINE_SECONDS, with no retry; one after another they would take 3x.
    assert elapsed < meta.READY_DEADLINE_SECONDS + 1.0, f"{elapsed:.2f} s"


def test_probe_clients_are_separate_from_the_request_clients_and_never_retry():
    from chalicelib import deps

    probe = meta._probe_client("s3", get_settings())
    assert probe is not deps.client("s3")
    config = probe.meta.config
    assert config.connect_timeout <= 2 and config.read_timeout <= 2
    assert config.retries["total_max_attempts"] == 1


def test_health_is_liveness_and_makes_no_aws_call(client, token_for):
    with count_store_calls() as seen:
        response = client.http.get("/health")
    assert response.status_code == 200 and json.loads(response.body) == {"status": "ok"}
    assert seen.calls == []
    with count_store_calls() as control:  # the counter does see the calls of a route that makes them
        assert client.http.get("/api/v1/jobs", headers=token_for().headers).status_code == 200
    assert control.calls
