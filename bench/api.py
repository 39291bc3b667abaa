"""The caller's side of the API, in-process (chalice.test.Client) or over HTTP (requests, keep-alive).

Imported only after bench.env.prepare_environment() and Run.start_aws(): it imports chalicelib.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import requests
from chalice.test import Client

from bench.env import ROOT, STAGE
from chalicelib.auth import mint_token
from chalicelib.jobs.states import ACTIVE, TERMINAL, in_order
from chalicelib.settings import Settings, get_settings

ASYNC_TARGETS = [{"type": "api", "mode": "async"}]
TERMINAL_STATES = {s.value for s in TERMINAL}


class ApiError(RuntimeError):
    """The API answered something a benchmark cannot go on with."""


def bearer(sub: str) -> dict[str, str]:
    """Headers of a fresh token for user `sub`."""
    token = mint_token(get_settings(), sub, [], ttl_seconds=6 * 3600)
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def new_user(label: str) -> tuple[str, dict[str, str]]:
    sub = f"bench-{label}-{uuid.uuid4().hex[:10]}"
    return sub, bearer(sub)


class Api:
    """call(method, path, headers, body) -> (status, parsed JSON body or None)."""

    name = "api"

    def call(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
        raise NotImplementedError

    def expect(self, status: int, method: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
        got, answer = self.call(method, path, headers, body)
        if got != status:
            raise ApiError(f"{self.name} {method.upper()} {path}: expected {status}, got {got}: {answer}")
        return answer

    def create_report(self, headers: dict[str, str]) -> str:
        report_id = f"bench-{uuid.uuid4().hex[:16]}"
        self.expect(201, "post", "/api/v1/reports", headers,
                    {"reportId": report_id, "name": "Bench report", "deliveryTargets": ASYNC_TARGETS})
        return report_id

    def import_lines(self, headers: dict[str, str], lines: list[dict[str, str]]) -> None:
        self.expect(201, "post", "/api/v1/expenses", headers, {"lines": lines})

    def generate(self, headers: dict[str, str], report_id: str, period: str) -> dict[str, Any]:
        return self.expect(202, "post", f"/api/v1/reports/{report_id}/generate", headers, {"period": period})

    def job(self, headers: dict[str, str], job_id: str) -> dict[str, Any]:
        return self.expect(200, "get", f"/api/v1/jobs/{job_id}", headers)

    def wait_terminal(self, headers: dict[str, str], job_id: str, interval: float = 0.05,
                      timeout: float = 180.0) -> dict[str, Any]:
        """Poll the job every `interval` s until it is terminal; ApiError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(headers, job_id)
            if job["status"] in TERMINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise ApiError(f"job {job_id} still {job['status']} after {timeout:.0f} s: {job['statusMessage']}")
            time.sleep(interval)


class InProcessApi(Api):
    """The app in this process through chalice.test.Client (single-threaded use: it swaps os.environ)."""

    name = "in-process"

    def __init__(self) -> None:
        from app import app

        self.client = Client(app, stage_name=STAGE, project_dir=str(ROOT))

    def call(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
        raw = json.dumps(body) if body is not None else b""
        response = self.client.http.request(method.upper(), path, headers=headers, body=raw)
        return response.status_code, json.loads(response.body) if response.body else None


class HttpApi(Api):
    """A `chalice local` over HTTP with one keep-alive session."""

    name = "HTTP"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()

    def call(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body) if body is not None else None
        response = self.session.request(method.upper(), self.base_url + path, headers=headers, data=data,
                                        timeout=30)
        return response.status_code, response.json() if response.content else None

    def close(self) -> None:
        self.session.close()


def quiesce() -> int:
    """Leave no live job and no work message behind from an earlier part; the jobs removed.

    The parts share one stack: Queued jobs left by the create benchmark would otherwise be picked up by the
    next part's worker, and swept by the reaper benchmark's reaper.
    """
    from chalicelib import deps
    from chalicelib.tables import Job

    deps.client("sqs").purge_queue(QueueUrl=deps.work_queue_url())
    removed = 0
    with Job.batch_write() as batch:
        for status in in_order(ACTIVE):
            for job in Job.by_active.query(status.value):
                batch.delete(job)
                removed += 1
    return removed


@contextlib.contextmanager
def in_process_worker(settings: Settings | None = None) -> Iterator[list[Any]]:
    """The app's work-queue poller (local.poller, as `make run` starts it) on a thread of this process.

    With `settings`, the poller's handler is worker.handle_batch(settings=settings): the app's `process_work`
    calls it without settings (get_settings(), where no model is configured), and a poller takes any
    Lambda-shaped handler. Long polls are 1 s, so stopping is quick.
    """
    from app import app
    from chalicelib import worker
    from local.poller import build_pollers

    prefix = (settings or get_settings()).prefix
    stop = threading.Event()
    pollers = build_pollers(app, stop_event=stop, queues=[f"{prefix}-work"], concurrency=1, wait_time_seconds=1)
    if not pollers:
        raise RuntimeError(f"app.py has no @app.on_sqs_message handler for {prefix}-work")
    for poller in pollers:
        if settings is not None:
            poller.handler = functools.partial(worker.handle_batch, settings=settings)
        poller.start()
    try:
        yield pollers
    finally:
        stop.set()
        for poller in pollers:
            poller.stop(timeout=30.0)


def wait_idle(pollers: list[Any], timeout: float = 30.0) -> None:
    """Until no poller is running the handler: a job is Completed before its invocation ends (the
    invocation still writes the vendor cache), so what the cache holds is only known after that."""
    deadline = time.monotonic() + timeout
    while any(p.busy for p in pollers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker was still busy after {timeout:.0f} s")
        time.sleep(0.02)
