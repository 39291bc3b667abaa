"""The `reports` command-line client as a subprocess against `chalice local` and the in-process worker."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.worker_gate import WorkerGate
from tests.support import Receiver, wait_for

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 60


def cli_env(base: str | None, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPORTS_")}
    env.update({"PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "160"})
    if base is not None:
        env["REPORTS_API_URL"] = base
    if token is not None:
        env["REPORTS_TOKEN"] = str(token)
    return env


def reports(*args: str, base: str | None, token: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reports_cli", *args], cwd=ROOT, env=cli_env(base, token),
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)


def popen(*args: str, base: str, token: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "reports_cli", *args], cwd=ROOT, env=cli_env(base, token),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


class Lines:
    """A child's output stream read on a thread; `wait_for(text)` with a deadline, never a fixed sleep."""

    def __init__(self, stream: Any) -> None:
        self.text = ""
        self.changed = threading.Condition()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            with self.changed:
                self.text += line
                self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        with self.changed:
            if not self.changed.wait_for(lambda: text in self.text, timeout):
                pytest.fail(f"{text!r} not printed within {timeout:g} s; got:\n{self.text}")
            return self.text


def write_lines(path: Path, count: int, period: str) -> Path:
    vendors = ["UBER *TRIP 8841", "DELTA AIR 0062345", "Marriott Downtown", "SQ *BLUE BOTTLE COFFEE"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["lineId", "date", "vendor", "amount", "currency", "description"])
        for i in range(count):
            writer.writerow([f"tx-{i:04d}", f"{period}-{1 + i % 28:02d}", vendors[i % 4], f"{5 + i % 50}.10", "USD",
                             "cli"])
    return path


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def test_import_create_submit_wait_result_status_and_list(api_stack: str, worker: Any, token_for: Any,
                                                          tmp_path: Path) -> None:
    token, report_id = token_for(), f"cli-{uuid.uuid4().hex[:10]}"
    run = lambda *args: reports(*args, base=api_stack, token=token)  # noqa: E731

    out = ok(run("import", str(write_lines(tmp_path / "lines.csv", 12, "2026-01"))))
    assert out.stdout.strip() == f"Imported 12 lines from {tmp_path / 'lines.csv'} (periods: 2026-01)"
    ok(run("create-report", report_id, "--name", "CLI expenses"))

    out = ok(run("submit", report_id, "--period", "2026-01", "--wait"))
    job_id = out.stdout.strip()
    uuid.UUID(job_id)  # stdout is just the job id, for JOB=$(reports submit ...)
    assert "Completed: 12 lines." in out.stderr and f"reports result {job_id}" in out.stderr

    out = ok(run("result", job_id, "--csv"))
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 12 and rows[1]["category"] == "Airfare"
    ok(run("result", job_id, "--csv", "-o", str(tmp_path / "result.csv")))
    assert (tmp_path / "result.csv").read_text() == out.stdout
    result = json.loads(ok(run("result", job_id)).stdout)
    assert result["jobId"] == job_id and result["needsReview"] == 0 and len(result["lines"]) == 12

    out = ok(run("status", job_id))
    assert f"Job        {job_id}" in out.stdout and "Completed" in out.stdout and "12/12 lines (100%)" in out.stdout
    assert json.loads(ok(run("status", job_id, "--json")).stdout)["status"] == "Completed"

    out = ok(run("list"))
    header, row = out.stdout.splitlines()[:2]
    assert header.split() == ["JOB", "REPORT", "PERIOD", "STATUS", "LINES", "FLAGGED", "CREATED"]
    assert row.split()[:6] == [job_id, report_id, "2026-01", "Completed", "12/12", "0"]
    listed = json.loads(ok(run("list", "--status", "Completed", "--json")).stdout)
    assert [j["jobId"] for j in listed["items"]] == [job_id]
    assert ok(run("list", "--status", "Failed")).stdout.strip() == "No Failed jobs."


def test_a_cancelled_job_exits_3_and_retry_resumes_it_to_completed(api_stack: str, gate: WorkerGate,
                                                                   token_for: Any, tmp_path: Path) -> None:
    token, report_id = token_for(), gate.watch(f"cli-{uuid.uuid4().hex[:10]}")
    run = lambda *args: reports(*args, base=api_stack, token=token)  # noqa: E731
    ok(run("import", str(write_lines(tmp_path / "lines.csv", 250, "2026-02"))))
    ok(run("create-report", report_id))

    waiting = popen("submit", report_id, "--period", "2026-02", "--wait", base=api_stack, token=token)
    progress = Lines(waiting.stderr)
    try:
        gate.wait_reached()  # 100 of 250 lines done; the worker holds
        job_id = waiting.stdout.readline().strip()
        uuid.UUID(job_id)
        progress.wait_for("Processing: 100/250 lines (40%)")  # the live progress of the waiting client
        out = ok(run("cancel", job_id))
        assert out.stdout.strip() == f"{job_id}: Cancelling"
        gate.open()
        waiting.wait(timeout=CLI_TIMEOUT)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    stderr = progress.wait_for("Cancelled: Cancelled after 100 of 250 lines")
    assert waiting.returncode == 3, stderr

    ok(run("status", job_id), 3)
    out = ok(run("cancel", job_id), 4)
    assert out.stderr.startswith("reports: error: 409 Conflict:") and len(out.stderr.splitlines()) == 1

    out = ok(run("retry", job_id, "--wait", "--timeout", "45"))
    assert out.stdout.strip() == job_id and "Completed: 250 lines." in out.stderr
    status = json.loads(ok(run("status", job_id, "--json")).stdout)
    assert (status["status"], status["totalLines"], status["processedLines"]) == ("Completed", 250, 250)
    # retryCount counts retried categorization requests, not job retries: with no model configured the worker
    # asks none (offline rules), so none was retried.
    assert status["retryCount"] == 0


def test_errors_are_one_clear_line_with_exit_codes_scripts_can_rely_on(api_stack: str, token_for: Any,
                                                                     tmp_path: Path) -> None:
    bad = reports("list", base=api_stack, token="not-a-jwt")
    assert bad.returncode == 4 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "reports: error: 401 Unauthorized: The bearer token is invalid. (check --token or REPORTS_TOKEN)"]

    missing = reports("list", base=api_stack, token=None)
    assert missing.returncode == 2 and "no bearer token: pass --token or set REPORTS_TOKEN" in missing.stderr

    token = token_for()
    unknown = reports("submit", "no-such-report", "--period", "2026-01", base=api_stack, token=token)
    assert unknown.returncode == 4
    assert unknown.stderr.splitlines() == ["reports: error: 404 Not found: Report 'no-such-report' was not found."]

    # A month that is no month, or none at all, is a usage error found before anything is sent.
    period = reports("submit", "no-such-report", "--period", "2026-13", base=api_stack, token=token)
    assert period.returncode == 2 and "must be a month as YYYY-MM" in period.stderr
    no_period = reports("submit", "no-such-report", base=api_stack, token=token)
    assert no_period.returncode == 2 and "the following arguments are required: --period" in no_period.stderr

    (tmp_path / "bad.csv").write_text("lineId,date,vendor,amount,currency,description\nx-1,2026-01-02,V,abc,USD,\n")
    invalid = reports("import", str(tmp_path / "bad.csv"), base=api_stack, token=token)
    assert invalid.returncode == 4 and len(invalid.stderr.splitlines()) == 1 and "400" in invalid.stderr

    usage = reports("status", base=api_stack, token=token)
    assert usage.returncode == 2 and "JOB_ID" in usage.stderr
    absent = reports("import", str(tmp_path / "absent.csv"), base=api_stack, token=token)
    assert absent.returncode == 2 and "cannot read" in absent.stderr

    # Flags win over the environment; nothing listens on the port: one line, exit 4.
    down = reports("--api-url", "http://127.0.0.1:9", "list", base=api_stack, token=token)
    assert down.returncode == 4
    assert down.stderr.splitlines() == [
        "reports: error: cannot reach the API at http://127.0.0.1:9 (connection refused); is it running?"]
    flagged = reports("list", "--token", str(token), "--json", base=api_stack, token="not-a-jwt")
    assert ok(flagged) and json.loads(flagged.stdout)["items"] == []


def test_the_project_installs_the_reports_command() -> None:
    script = Path(sys.executable).with_name("reports")
    if not script.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{script} is missing: the Makefile's venv step must `pip install -e .`")
        pytest.skip(f"{script} is not installed (make test installs the project into .venv)")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert out.returncode == 0 and "exit codes: 0 completed/ok, 1 job failed" in out.stdout


def test_list_update_and_delete_reports(api_stack: str, worker: Any, token_for: Any, tmp_path: Path) -> None:
    token, report_id = token_for(), f"cli-{uuid.uuid4().hex[:10]}"
    run = lambda *args: reports(*args, base=api_stack, token=token)  # noqa: E731
    ok(run("create-report", report_id, "--name", "Before", "--role", "finance"))
    header, row = ok(run("list-reports")).stdout.splitlines()[:2]
    assert header.split()[:3] == ["REPORT", "NAME", "OWNER"] and row.split()[:4] == [
        report_id, "Before", token.sub, "api:async"]

    out = ok(run("update-report", report_id, "--name", "After", "--category", "Travel", "--category", "Other",
                 "--no-roles", "--schedule-day", "5", "--target", "api:async", "--target", "email:cfo@example.com"))
    assert out.stdout.strip() == (f"Updated report {report_id}: allowedRoles, categories, deliveryTargets, name, "
                                  "schedule")
    listed = json.loads(ok(run("list-reports", "--json", "--page-size", "1", "--all")).stdout)
    assert listed["nextToken"] is None
    (report,) = [r for r in listed["items"] if r["reportId"] == report_id]
    assert (report["name"], report["categories"], report["allowedRoles"], report["schedule"]) == (
        "After", ["Travel", "Other"], [], {"type": "monthly", "day": 5})

    stale = ok(run("update-report", report_id, "--name", "Lost", "--if-match", '"v1-stale"'), 4)
    assert stale.stdout == "" and "412" in stale.stderr and "changed since" in stale.stderr
    bad = ok(run("update-report", report_id, "--category", "x" * 65), 4)
    assert "400" in bad.stderr and "categories" in bad.stderr
    assert ok(run("update-report", report_id), 2).stderr.startswith("reports: error: nothing to change")

    ok(run("import", str(write_lines(tmp_path / "lines.csv", 2, "2026-01"))))  # a month without lines: 422
    job_id = ok(run("submit", report_id, "--period", "2026-01", "--wait")).stdout.strip()
    ok(run("delete-report", report_id))
    assert json.loads(ok(run("status", job_id, "--json")).stdout)["status"] == "Completed"
    gone = ok(run("delete-report", report_id), 4)
    assert "404" in gone.stderr
    assert report_id not in ok(run("list-reports")).stdout


def test_webhook_targets_secret_once_deliveries_in_status_retry_and_rotate(api_stack: str, worker: Any,
                                                                          token_for: Any, tmp_path: Path) -> None:
    token, report_id = token_for(), f"cli-{uuid.uuid4().hex[:10]}"
    run = lambda *args: reports(*args, base=api_stack, token=token)  # noqa: E731
    ok(run("import", str(write_lines(tmp_path / "lines.csv", 5, "2026-03"))))
    with Receiver() as hooks:
        out = ok(run("create-report", report_id, "--target", "api:async",
                     "--target", f"webhook:job.completed:{hooks.url}"))
        created, secret_line = out.stdout.splitlines()
        assert created.startswith(f"Created report {report_id}") and secret_line.startswith("Webhook secret: whsec_")
        assert "it is not shown again" in out.stderr
        assert "whsec_" not in ok(run("list-reports", "--json")).stdout  # shown once: never in a later answer

        job_id = ok(run("submit", report_id, "--period", "2026-03", "--wait")).stdout.strip()

        def delivered() -> bool:
            return json.loads(ok(run("status", job_id, "--json")).stdout)["deliveries"][0]["status"] == "Delivered"

        wait_for(delivered, timeout=30, interval=0.5, what="the webhook delivery")
        lines = ok(run("status", job_id)).stdout.splitlines()
        assert "Deliveries (retry one: reports retry-delivery JOB_ID N)" in lines
        assert lines[-1].split()[:6] == ["0", "webhook", hooks.url, "job.completed", "Delivered", "1"]
        assert len(hooks.requests) == 1 and hooks.requests[0]["headers"]["webhook-signature"].count("v1,") == 1

        # A rotation: the new secret on stdout alone; the old one signs beside it for a day.
        out = ok(run("rotate-secret", report_id))
        assert out.stdout.strip().startswith("whsec_") and out.stdout.strip() != secret_line.split()[-1]
        assert "not shown again" in out.stderr and "previous secret keeps signing" in out.stderr

        out = ok(run("retry-delivery", job_id, "0"))
        assert out.stdout.startswith(f"{job_id}: delivery 0 (webhook to {hooks.url}) is ")
        wait_for(lambda: len(hooks.requests) == 2 and delivered(), timeout=30, interval=0.5, what="the retry")
        assert hooks.requests[1]["headers"]["webhook-signature"].count("v1,") == 2
        assert "404" in ok(run("retry-delivery", job_id, "1"), 4).stderr


def test_a_large_csv_goes_through_imports_with_progress_in_rows_and_a_bad_row_named(
        api_stack: str, worker: Any, token_for: Any, tmp_path: Path) -> None:
    """Against the real POST /api/v1/imports (issue 14, point 3): for the integrator once that route is merged."""
    import requests

    token = token_for()
    probe = requests.post(f"{api_stack}/api/v1/imports", json={"format": "csv", "mode": "nonsense"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    if probe.status_code == 404:
        pytest.skip("POST /api/v1/imports is not in this build (it arrives with the imports work of issue 14)")
    run = lambda *args: reports(*args, base=api_stack, token=token)  # noqa: E731

    big = write_lines(tmp_path / "big.csv", 6000, "2026-04")
    out = ok(run("import", str(big)))
    assert out.stdout.strip().startswith(f"Imported 6000 lines from {big} (job ")
    assert "rows" in out.stderr  # progress in rows
    lines = requests.get(f"{api_stack}/api/v1/expenses?period=2026-04&pageSize=1",
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert lines.status_code == 200

    # A bad row fails the whole import, naming the file's own row, and exits 1.
    text = big.read_text().splitlines()
    text[5500] = text[5500].replace(".10,USD", ".1x,USD")
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(text) + "\n")
    failed = ok(run("import", str(bad), "--replace"), code=1)
    assert "550" in failed.stderr and "row" in failed.stderr, failed.stderr
