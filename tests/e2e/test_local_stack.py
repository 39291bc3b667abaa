"""`python -m local.stack` run the way a user runs it, driven over HTTP, then stopped with SIGTERM."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from chalicelib.jobs.states import TERMINAL
from local.stack import ChaliceLocal, LocalStack, MotoServer, free_port, port_is_open

ROOT = Path(__file__).resolve().parents[2]
READY = "Local stack ready"
START_DEADLINE = 45.0
STOP_DEADLINE = 15.0
# What `make run` must never print: PynamoDB's notice that it has no settings file, and a traceback for a client
# that hung up early.
NOISE = ("Override settings", "Using Default settings value", "Traceback", "ConnectionResetError", "BrokenPipeError",
         "Exception occurred during processing of request")


@dataclass
class StackProcess:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)

    def pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # EOF

    def wait_ready(self, deadline: float = START_DEADLINE) -> dict[str, str]:
        """Read the output until the banner is complete; its API URL, AWS endpoint and token."""
        end = time.monotonic() + deadline
        while "token" not in self.info:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no ready banner within {deadline}s:\n{self.text()}")
            if line == "":
                pytest.fail(f"local.stack exited ({self.proc.poll()}) before it was ready:\n{self.text()}")
            self.output.append(line)
            for key, pattern in (("api", r"API base URL:\s+(\S.*?)\s*$"), ("aws", r"AWS endpoint:\s+(\S+)"),
                                 ("token", r"Bearer token:\s+(\S+)")):
                match = re.search(pattern, line)
                if match and READY in "".join(self.output):
                    self.info[key] = match.group(1)
        return self.info

    def text(self) -> str:
        return self.full_text()[-6000:]

    def full_text(self) -> str:
        while not self.lines.empty():
            self.output.append(self.lines.get_nowait())
        return "".join(self.output)

    def terminate_and_wait(self, deadline: float = STOP_DEADLINE) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"local.stack did not exit within {deadline}s of SIGTERM:\n{self.text()}")


def stack_env(**overrides: str) -> dict[str, str]:
    """The environment of a user's shell: none of the test process's stack settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"AWS_ENDPOINT_URL", "APP_PREFIX", "WORK_QUEUE_URL", "RESULTS_BUCKET", "DLQ_URL",
                        "COMPONENTS", "PORT", "CHALICE_STAGE"}}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@contextmanager
def local_stack(env: dict[str, str]) -> Iterator[StackProcess]:
    proc = subprocess.Popen([sys.executable, "-m", "local.stack"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stack = StackProcess(proc)
    threading.Thread(target=stack.pump, daemon=True).start()
    try:
        yield stack
    finally:
        if proc.poll() is None:  # a failed test: never leave it running
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def port_of(url: str) -> int:
    port = urlparse(url).port
    assert port is not None, url
    return port


def hang_up_early(port: int) -> None:
    """Clients that go away before their answer: a reset mid-headers, a close mid-headers (the server answers into
    a closed socket), a reset before reading a whole answer, a reset mid-body."""
    for payload, reset in ((b"GET /health HTTP/1.1\r\nHost: x\r\n", True),
                           (b"GET /health HTTP/1.1\r\nHost: x\r\n", False),
                           (b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n", True),
                           (b"POST /api/v1/expenses HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nlineId", True)):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(payload)
            if reset:  # close with RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.5)  # the server's threads see the hang-ups and finish


def assert_hints_use_the_virtualenv(banner: str) -> None:
    """Every command the banner's "Try:" hint shows runs as printed from the project directory: the project's
    interpreter and CLI (.venv/bin/...), never a bare `python` that may not have the project's packages."""
    hints = banner.split("    Try:\n", 1)[1].split("    Ctrl-C", 1)[0].splitlines()
    programs = []
    for line in hints:
        words = [w for w in line.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]  # leading VAR=value
        programs.append(words[0])
    assert ".venv/bin/python" in programs and ".venv/bin/reports" in programs, hints
    assert set(programs) <= {"export", "curl", ".venv/bin/python", ".venv/bin/reports"}, hints
    assert re.search(r"^      AWS_ENDPOINT_URL=\S+ \.venv/bin/python -m local\.scheduler list$", banner, re.M), banner


def wait_closed(port: int, deadline: float = 5.0) -> bool:
    end = time.monotonic() + deadline
    while port_is_open(port):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def test_local_stack_serves_the_api_and_stops_cleanly_on_sigterm() -> None:
    api_port = free_port()
    with local_stack(stack_env(PORT=str(api_port))) as stack:
        info = stack.wait_ready()
        base, headers = info["api"], {"Authorization": f"Bearer {info['token']}"}
        assert base == f"http://127.0.0.1:{api_port}"
        session = requests.Session()
        session.headers.update(headers)

        assert session.get(f"{base}/health", timeout=10).status_code == 200
        report_id = f"e2e-{uuid.uuid4().hex[:12]}"
        response = session.post(f"{base}/api/v1/reports", timeout=10, json={
            "reportId": report_id, "name": "E2E expenses", "allowedRoles": ["finance"],
            "deliveryTargets": [{"type": "api", "mode": "async"}]})
        assert response.status_code == 201, response.text
        lines = [{"lineId": f"tx-{i}", "date": f"2026-01-{10 + i}", "vendor": vendor, "amount": amount,
                  "currency": "USD", "description": "e2e"}
                 for i, (vendor, amount) in enumerate([("UBER *TRIP 8841", "23.50"), ("DELTA AIR 0062", "412.00"),
                                                       ("MARRIOTT HOTEL", "189.99")])]
        response = session.post(f"{base}/api/v1/expenses", json={"lines": lines}, timeout=10)
        assert response.status_code == 201, response.text
        assert response.json()["imported"] == 3

        response = session.post(f"{base}/api/v1/reports/{report_id}/generate", json={"period": "2026-01"},
                                timeout=10)
        assert response.status_code == 202, response.text
        assert response.headers.get("Location") and response.headers.get("Retry-After")
        job_id = response.json()["jobId"]
        assert response.headers["Location"].endswith(f"/api/v1/jobs/{job_id}")

        response = session.get(f"{base}/api/v1/jobs/{job_id}", timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers.get("ETag")
        assert response.json()["jobId"] == job_id
        response = session.get(f"{base}/api/v1/jobs", timeout=10)
        assert response.status_code == 200, response.text
        assert job_id in [item["jobId"] for item in response.json()["items"]]

        hang_up_early(api_port)
        assert session.get(f"{base}/health", timeout=10).status_code == 200  # it serves on after the hang-ups

        moto_port = port_of(info["aws"])
        assert port_is_open(moto_port)
        code = stack.terminate_and_wait()
        assert code == 0, stack.text()
        output = stack.full_text()
        assert "Serving on" in output, output[-3000:]  # chalice local's output is part of the stack's
        assert not [noise for noise in NOISE if noise in output], output[-6000:]
        assert_hints_use_the_virtualenv(output)
        assert wait_closed(api_port), "chalice local outlived the stack"
        assert wait_closed(moto_port), "the moto server outlived the stack"


def test_chalice_local_is_quiet_about_pynamodb_settings_and_clients_that_hang_up(tmp_path: Path) -> None:
    """`make run`'s API prints no PynamoDB settings notice, and a client that hangs up early costs no traceback."""
    log_path = tmp_path / "chalice-local.log"
    # Stage `pytest` (tests/conftest.py): not declared in .chalice/config.json, so APP_PREFIX stays the tests'.
    api = ChaliceLocal(free_port(), dict(os.environ), stage="pytest", log_path=log_path)
    try:
        api.start_and_wait(deadline_seconds=30.0)
        hang_up_early(api.port)
        assert requests.get(f"{api.url}/health", timeout=10).status_code == 200
    finally:
        api.stop(timeout=5.0)
    output = log_path.read_text(errors="replace")
    assert "Serving on" in output and '"GET /health HTTP/1.1" 200' in output, output
    assert not [noise for noise in NOISE if noise in output], output


def test_the_banner_hints_use_the_project_virtualenv() -> None:
    stack = LocalStack(components=["api", "worker", "scheduler"], port=8000, stage="dev",
                       endpoint_url="http://127.0.0.1:4566", stop=threading.Event())
    stack.token = "eyJ.token.sig"
    banner = stack.banner()
    assert "      export TOKEN=eyJ.token.sig" in banner
    assert "REPORTS_API_URL=http://127.0.0.1:8000 REPORTS_TOKEN=$TOKEN .venv/bin/reports list" in banner
    assert_hints_use_the_virtualenv(banner)


def test_attach_mode_api_and_worker_in_separate_processes_share_one_endpoint() -> None:
    moto = MotoServer().start_and_wait()
    try:
        env = stack_env(AWS_ENDPOINT_URL=moto.url, WORKER_WAIT_SECONDS="1")  # attached: stops after its poll
        api_port = free_port()
        with local_stack({**env, "COMPONENTS": "api", "PORT": str(api_port)}) as api, \
                local_stack({**env, "COMPONENTS": "worker"}) as worker:
            # Both deploy-or-attach at once: one creates the stack, the other waits for it.
            api_info, worker_info = api.wait_ready(), worker.wait_ready()
            assert api_info["aws"] == worker_info["aws"] == moto.url
            assert api_info["api"] == f"http://127.0.0.1:{api_port}"
            assert "not started" in worker_info["api"]
            assert re.search(r"Workers:\s+process_work", worker.text())
            assert requests.get(f"{api_info['api']}/health", timeout=10).status_code == 200
            assert worker.terminate_and_wait() == 0, worker.text()
            assert api.terminate_and_wait() == 0, api.text()
            assert wait_closed(api_port), "chalice local outlived the stack"
        assert port_is_open(moto.port), "an attached stack must leave the endpoint it did not start running"
    finally:
        moto.stop()


# --- the pieces the stack is made of, against this process's moto server -------------------------------------


def test_poller_calls_the_handler_like_lambda_and_deletes_only_what_succeeded(aws_endpoint: str) -> None:
    import boto3
    from chalice import Chalice

    from local.poller import build_pollers

    sqs = boto3.client("sqs", endpoint_url=aws_endpoint)
    name = f"poller-{uuid.uuid4().hex[:10]}"
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    app = Chalice(app_name="poller-test")
    seen: list[tuple[dict, object]] = []

    @app.on_sqs_message(queue=name, batch_size=10)
    def handle(event):
        seen.append((event.to_dict(), event.context))
        if any(r.body == "raise" for r in event):
            raise RuntimeError("the whole batch fails")
        return {"batchItemFailures": [{"itemIdentifier": r.to_dict()["messageId"]} for r in event if r.body == "bad"]}

    for body in ("ok-1", "bad", "ok-2"):
        sqs.send_message(QueueUrl=url, MessageBody=body,
                         MessageAttributes={"kind": {"DataType": "String", "StringValue": body}})
    [poller] = build_pollers(app, wait_time_seconds=1)
    poller.start()
    try:
        deadline = time.monotonic() + 10
        while poller.stats.deleted + poller.stats.kept < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (poller.stats.deleted, poller.stats.kept, poller.stats.errors) == (2, 1, 0), poller.stats
        sqs.send_message(QueueUrl=url, MessageBody="raise")
        while poller.stats.errors < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert poller.stats.errors == 1 and poller.stats.deleted == 2
    finally:
        assert poller.stop(timeout=5)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "2"  # "bad" and "raise", back after the timeout

    records = [r for event, _ in seen for r in event["Records"]]
    record = next(r for r in records if r["body"] == "ok-1")
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"].endswith(f":{name}")
    assert record["attributes"]["ApproximateReceiveCount"] == "1" and record["md5OfBody"]
    assert record["messageAttributes"]["kind"]["stringValue"] == "ok-1" and record["awsRegion"] == "us-east-1"
    context = seen[0][1]
    assert 0 < context.get_remaining_time_in_millis() <= 300_000
    assert context.function_name == "poller-test-dev-handle" and context.aws_request_id
    assert context.invoked_function_arn.endswith(":function:poller-test-dev-handle") and context.memory_limit_in_mb


def test_scheduler_fires_on_the_env_interval_and_goes_on_after_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    from chalice import Chalice

    from local.scheduler import Schedule, Scheduler

    app = Chalice(app_name="scheduler-test")
    events: list[dict] = []

    @app.schedule("rate(5 minutes)")
    def reap_stale_jobs(event):
        events.append(event.to_dict())
        if len(events) == 1:
            raise RuntimeError("the first run fails")
        return {"ok": True}

    @app.schedule("cron(0 3 * * ? *)")
    def nightly(event):
        raise AssertionError("not due")

    monkeypatch.setenv("REAPER_INTERVAL_SECONDS", "0.1")
    scheduler = Scheduler(app)
    scheduler.start()
    try:
        deadline = time.monotonic() + 5
        while len(events) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        assert scheduler.stop(timeout=5)
    assert len(events) >= 3
    assert events[0]["detail-type"] == "Scheduled Event" and events[0]["source"] == "aws.events"
    assert events[0]["resources"][0].startswith("arn:aws:events:") and events[0]["id"] != events[1]["id"]
    nightly_item = next(h for h in scheduler.handlers if h.name == "nightly")
    assert nightly_item.next_run is not None and (nightly_item.next_run.hour, nightly_item.next_run.minute) == (3, 0)

    from datetime import UTC, datetime

    now = datetime(2026, 1, 15, 10, 7, 30, tzinfo=UTC)  # a Thursday
    assert Schedule.parse("rate(1 hour)").interval == 3600
    assert Schedule.parse("cron(*/15 * * * ? *)").next_after(now) == datetime(2026, 1, 15, 10, 15, tzinfo=UTC)
    assert Schedule.parse("cron(30 2 * * ? *)").next_after(now) == datetime(2026, 1, 16, 2, 30, tzinfo=UTC)
    assert Schedule.parse("cron(0 9 ? * MON *)").next_after(now) == datetime(2026, 1, 19, 9, 0, tzinfo=UTC)
    assert Schedule.parse("cron(0 6 1 * ? *)").next_after(now) == datetime(2026, 2, 1, 6, 0, tzinfo=UTC)


def test_api_stack_and_worker_fixtures_take_a_job_to_completed(api_stack: str, worker, token_for) -> None:
    token = token_for()
    session = requests.Session()
    session.headers.update(token.headers)
    report_id = f"e2e-{uuid.uuid4().hex[:12]}"
    response = session.post(f"{api_stack}/api/v1/reports", timeout=10, json={
        "reportId": report_id, "name": "E2E", "deliveryTargets": [{"type": "api", "mode": "async"}]})
    assert response.status_code == 201, response.text
    lines = [{"lineId": f"tx-{i}", "date": "2026-01-05", "vendor": vendor, "amount": "10.00", "currency": "USD"}
             for i, vendor in enumerate(["UBER *TRIP", "MARRIOTT HOTEL", "DELTA AIR"])]
    assert session.post(f"{api_stack}/api/v1/expenses", json={"lines": lines}, timeout=10).status_code == 201
    response = session.post(f"{api_stack}/api/v1/reports/{report_id}/generate", json={"period": "2026-01"},
                            timeout=10)
    assert response.status_code == 202, response.text
    job_url = f"{api_stack}/api/v1/jobs/{response.json()['jobId']}"
    deadline, job = time.monotonic() + 20, {}
    while time.monotonic() < deadline:
        job = session.get(job_url, timeout=10).json()
        if job["status"] in TERMINAL:
            break
        time.sleep(0.2)
    assert job.get("status") == "Completed", (job, worker.stats)
    assert job["processedLines"] == 3 and worker.stats.invocations >= 1
