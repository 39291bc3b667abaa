"""Large imports as jobs (POST /imports), idempotent re-import, replace mode and DELETE /expenses?period.

Against the moto server: the file is PUT to its presigned URL over HTTP, the bucket's ObjectCreated notification
puts the work message on the queue (local/deploy.py set it), and the real SQS handler works the job.
"""

from __future__ import annotations

import csv
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from chalicelib import deps
from chalicelib.jobs import runner
from chalicelib.jobs.store import Lease
from chalicelib.lines import importer, uploads, versions
from chalicelib.settings import get_settings
from chalicelib.tables import Job
from tests.driver import Driver
from tests.support import Ctx, deliver, drain, receive

HEADER = ["lineId", "date", "vendor", "amount", "currency", "description"]


def rows(n: int, period: str, ids: bool = False, bad_at: int | None = None) -> Iterator[list[str]]:
    """`n` expense rows of `period` (row numbers in the file: 2..n+1); `bad_at`: that file row's amount is bad."""
    for i in range(n):
        amount = "1x.00" if bad_at == i + 2 else f"{(i % 997) + 1}.{i % 100:02d}"
        yield [f"tx-{i}" if ids else "", f"{period}-{(i % 28) + 1:02d}", f"VENDOR {i % 50}", amount, "USD",
               f"row {i}"]


def write(path: Path, body: Iterator[list[str]]) -> Path:
    """A CSV file written row by row (never held whole in memory)."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(HEADER)
        writer.writerows(body)
    return path


class Imports(Driver):
    def begin(self, period: str | None = "2026-02", mode: str = "merge", report: str | None = None) -> dict:
        body: dict[str, Any] = {"format": "csv", "mode": mode}
        if period:
            body["period"] = period
        if report:
            body["reportId"] = report
        status, job, headers = self.answer("post", "/imports", body)
        assert status == 202, job
        assert headers["Location"] == job["statusUrl"] and job["status"] == "Queued"
        return job

    def upload(self, job: dict, path: Path) -> None:
        with path.open("rb") as body:
            put = requests.put(job["uploadUrl"], data=body, headers={"Content-Type": "text/csv"}, timeout=60)
        assert put.status_code == 200, put.text

    def run(self, path: Path, **options: Any) -> dict:
        """Begin an import, upload `path`, work the job to its end: the final job."""
        job = self.begin(**options)
        self.upload(job, path)
        drain({job["jobId"]})
        return self.job(job["jobId"])

    def stored(self, period: str) -> list[dict]:
        out, token = [], None
        while True:
            query = f"/expenses?period={period}&pageSize=1000" + (f"&nextToken={token}" if token else "")
            status, page = self.call("get", query)
            assert status == 200, page
            out += page["items"]
            token = page["nextToken"]
            if not token:
                return out

    def report(self) -> str:
        report_id = f"r-{uuid.uuid4().hex[:12]}"
        assert self.call("post", "/reports", {"reportId": report_id, "name": "Imports",
                                              "deliveryTargets": [{"type": "api", "mode": "async"}]})[0] == 201
        return report_id


@pytest.fixture
def imports(client: Any, token_for: Any) -> Imports:
    return Imports(client, token_for())


def test_a_20000_line_import_is_one_job_with_progress_in_rows(imports: Imports, tmp_path: Path) -> None:
    job = imports.begin()
    assert job["type"] == "lines_import" and job["reportId"] == "lines-import"
    assert job["uploadUrl"].startswith(get_settings().aws_endpoint_url or "https://")
    assert job["uploadExpiresAt"] > job["createdAt"] and job["import"]["stage"] == "upload"
    imports.upload(job, write(tmp_path / "big.csv", rows(20_000, "2026-02")))
    drain({job["jobId"]})
    done = imports.job(job["jobId"])
    assert done["status"] == "Completed", done
    assert (done["totalLines"], done["processedLines"], done["progressPercent"]) == (20_000, 20_000, 100)
    assert done["import"] | {"errors": None} == {
        "mode": "merge", "stage": "done", "rows": 20_000, "storedLines": 20_000, "newLines": 20_000,
        "errors": None, "errorCount": 0, "uploadExpiresAt": job["uploadExpiresAt"]}
    assert done["typeLabel"] == "Import expense lines"
    assert [(s["name"], s["status"], s["attempts"]) for s in done["steps"]] == [
        ("upload", "Completed", 1), ("validate", "Completed", 1), ("stage", "Completed", 1),
        ("commit", "Completed", 1)]
    stored = imports.stored("2026-02")
    assert len(stored) == 20_000 and len({line["lineId"] for line in stored}) == 20_000
    assert {line["description"] for line in stored} == {f"row {i}" for i in range(20_000)}


def test_an_import_failing_at_row_150000_leaves_the_previous_lines_untouched(imports: Imports,
                                                                             tmp_path: Path) -> None:
    before = imports.run(write(tmp_path / "first.csv", rows(300, "2026-03", ids=True)), period="2026-03")
    assert before["status"] == "Completed"
    previous = imports.stored("2026-03")
    started = time.monotonic()
    failed = imports.run(write(tmp_path / "bad.csv", rows(149_999, "2026-03", bad_at=150_000)), period="2026-03",
                         mode="replace")
    assert failed["status"] == "Failed"
    assert [(s["name"], s["status"]) for s in failed["steps"]] == [
        ("upload", "Completed"), ("validate", "Failed"), ("stage", "Pending"), ("commit", "Pending")]
    assert failed["errorMessage"].startswith("The file has 1 invalid row; nothing was stored. Row 150000 of the "
                                             "CSV (the header is row 1): amount must be")
    assert failed["import"]["errors"] == [{"row": 150_000, "field": "amount",
                                           "message": failed["import"]["errors"][0]["message"]}]
    assert imports.stored("2026-03") == previous  # exactly as they were
    assert time.monotonic() - started < 120


def test_errors_name_the_files_rows_the_first_100_and_a_count_of_the_rest(imports: Imports, tmp_path: Path) -> None:
    body = [[f"{i}", "2026-04-01" if i % 2 else "2026-04-31", "V", "1.00", "USD", ""] for i in range(250)]
    job = imports.run(write(tmp_path / "dates.csv", iter(body)), period="2026-04")
    assert job["status"] == "Failed" and job["import"]["errorCount"] == 125
    assert [e["row"] for e in job["import"]["errors"]] == list(range(2, 202, 2))
    assert "(and 124 more: see the job's import errors)" in job["errorMessage"]
    assert imports.stored("2026-04") == []


def test_importing_the_same_file_twice_stores_nothing_new(imports: Imports, tmp_path: Path) -> None:
    # No lineIds, and two identical rows: they stay two lines, and the second import names them the same way.
    body = [*rows(500, "2026-05"), ["", "2026-05-01", "COFFEE", "3.50", "USD", ""],
            ["", "2026-05-01", "COFFEE", "3.50", "USD", ""]]
    path = write(tmp_path / "same.csv", iter(body))
    first = imports.run(path, period=None)
    assert first["status"] == "Completed" and first["period"] == "2026-05" and first["import"]["newLines"] == 502
    stored = imports.stored("2026-05")
    again = imports.run(path, period=None)
    assert again["status"] == "Completed" and again["import"]["newLines"] == 0
    assert again["import"]["storedLines"] == 502
    assert sorted(line["lineId"] for line in imports.stored("2026-05")) == sorted(line["lineId"] for line in stored)


def test_merge_keeps_other_lines_and_replace_makes_the_period_the_files(imports: Imports, tmp_path: Path) -> None:
    assert imports.call("post", "/expenses", {"lines": [
        {"lineId": "kept", "date": "2026-06-02", "vendor": "HOTEL", "amount": "120.00", "currency": "EUR"}]})[0] == 201
    merged = imports.run(write(tmp_path / "a.csv", rows(40, "2026-06", ids=True)), period="2026-06")
    assert merged["import"]["storedLines"] == 41 and merged["import"]["newLines"] == 40
    replaced = imports.run(write(tmp_path / "b.csv", rows(10, "2026-06")), period="2026-06", mode="replace")
    assert replaced["status"] == "Completed" and replaced["import"]["newLines"] is None
    stored = imports.stored("2026-06")
    assert len(stored) == 10 and "kept" not in {line["lineId"] for line in stored}


def test_delete_is_409_while_a_job_reads_the_period_then_204_and_nothing_is_left(imports: Imports) -> None:
    assert imports.call("post", "/expenses", {"lines": [
        {"date": "2026-07-03", "vendor": "TAXI", "amount": "20.00", "currency": "USD"}]})[0] == 201
    report_id = imports.report()
    status, job = imports.call("post", f"/reports/{report_id}/generate", {"period": "2026-07"})
    assert status == 202
    status, problem = imports.call("delete", "/expenses?period=2026-07")
    assert status == 409 and problem["existingJobId"] == job["jobId"], problem
    assert len(imports.stored("2026-07")) == 1
    drain({job["jobId"]})
    assert imports.job(job["jobId"])["status"] == "Completed"
    response = imports.send("DELETE", "/api/v1/expenses?period=2026-07")
    assert response.status_code == 204 and not response.body
    assert imports.stored("2026-07") == []
    # The finished job's report keeps its lines (it read its pinned version).
    assert len(imports.result(job["jobId"])["lines"]) == 1
    assert imports.call("delete", "/expenses?period=2026-13")[0] == 400


def test_bad_input_fails_clearly_and_stores_nothing(imports: Imports, tmp_path: Path) -> None:
    # The request itself: 400, and no job made.
    status, problem = imports.call("post", "/imports", {"format": "csv", "mode": "nonsense"})
    assert status == 400 and problem["field"] == "mode", problem
    assert imports.call("post", "/imports", {"format": "xlsx"})[0] == 400
    assert imports.call("post", "/imports", {"format": "csv", "period": "2026-1"})[1]["field"] == "period"
    assert imports.call("get", "/jobs")[1]["items"] == []

    header = tmp_path / "header.csv"
    header.write_text("when,vendor,amount,currency\n2026-08-01,V,1.00,USD\n")
    job = imports.run(header, period="2026-08")
    assert job["status"] == "Failed" and "header (row 1)" in job["errorMessage"] and "date" in job["errorMessage"]

    wrong = imports.run(write(tmp_path / "wrong.csv", rows(3, "2026-09")), period="2026-08")
    assert wrong["status"] == "Failed"
    assert "Row 2 of the CSV" in wrong["errorMessage"] and "outside the import's period 2026-08" in \
        wrong["errorMessage"]

    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"date,vendor,amount,currency\n2026-08-01,\xff\xfe,1.00,USD\n")
    assert "not UTF-8" in imports.run(binary, period="2026-08")["errorMessage"]
    assert imports.stored("2026-08") == []


def test_an_upload_that_never_arrives_fails_the_job_saying_so(imports: Imports) -> None:
    job = imports.begin(period="2026-10")
    stored = Job.get(job["jobId"], consistent_read=True)
    assert importer.reap_waiting(stored) == "skipped"  # still within its 15 minutes
    expired = time.time() + uploads.UPLOAD_SECONDS + uploads.UPLOAD_GRACE_SECONDS + 1
    assert importer.reap_waiting(stored, now=expired) == "failed"
    failed = imports.job(job["jobId"])
    assert failed["status"] == "Failed" and "was not uploaded" in failed["errorMessage"]
    assert "start a new import" in failed["errorMessage"] and imports.stored("2026-10") == []
    # Its lock is gone with it: the next import of the period is accepted.
    assert imports.begin(period="2026-10")["status"] == "Queued"


def test_an_upload_whose_notification_was_lost_is_started_by_the_reaper(imports: Imports, tmp_path: Path) -> None:
    job = imports.begin(period="2026-11")
    imports.upload(job, write(tmp_path / "late.csv", rows(5, "2026-11")))
    for message in receive({job["jobId"]}, wait=1):  # the notification, lost
        deps.client("sqs").delete_message(QueueUrl=deps.work_queue_url(), ReceiptHandle=message["ReceiptHandle"])
    assert importer.reap_waiting(Job.get(job["jobId"], consistent_read=True)) == "requeued"
    drain({job["jobId"]})
    assert imports.job(job["jobId"])["status"] == "Completed" and len(imports.stored("2026-11")) == 5


def test_two_imports_of_one_period_at_once_are_409(imports: Imports) -> None:
    first = imports.begin(period="2026-12")
    status, problem = imports.call("post", "/imports", {"format": "csv", "period": "2026-12"})
    assert status == 409 and problem["existingJobId"] == first["jobId"]


def test_import_and_report_imports_then_generates(imports: Imports, tmp_path: Path) -> None:
    report_id = imports.report()
    done = imports.run(write(tmp_path / "r.csv", rows(120, "2027-01")), period="2027-01", report=report_id)
    assert done["type"] == "import_and_report" and done["status"] == "Completed", done
    assert done["reportId"] == report_id and done["import"]["storedLines"] == 120
    assert [(s["name"], s["status"]) for s in done["steps"]] == [
        (name, "Completed") for name in ("upload", "validate", "stage", "commit", "collect", "categorize", "assemble")]
    result = imports.result(done["jobId"])
    assert len(result["lines"]) == 120 and sum(t["lines"] for t in result["totals"]) == 120


def test_a_report_reads_the_lines_it_started_on_while_an_import_replaces_them(imports: Imports,
                                                                              tmp_path: Path) -> None:
    assert imports.call("post", "/expenses", {"lines": [
        {"lineId": f"old-{i}", "date": "2027-02-01", "vendor": "OLD", "amount": "1.00", "currency": "USD"}
        for i in range(30)]})[0] == 201
    report_id = imports.report()
    job = imports.call("post", f"/reports/{report_id}/generate", {"period": "2027-02"})[1]
    start = receive({job["jobId"]})
    # The job starts (and pins the version it reads), then an import replaces the period before it works on.
    lease = Lease("test-starter", time.time() + 60)
    runner.claim(job["jobId"], lease, "start")
    runner.release(Job.get(job["jobId"], consistent_read=True), lease)
    replaced = imports.run(write(tmp_path / "new.csv", rows(5, "2027-02")), period="2027-02", mode="replace")
    assert replaced["status"] == "Completed" and len(imports.stored("2027-02")) == 5
    deliver(start)
    drain({job["jobId"]})
    result = imports.result(job["jobId"])
    assert {line["vendor"] for line in result["lines"]} == {"OLD"} and len(result["lines"]) == 30


def test_the_sweep_deletes_replaced_versions_but_never_the_current_one(imports: Imports, tmp_path: Path) -> None:
    owner = Job.get(imports.begin(period="2027-04")["jobId"]).owner_id
    path = write(tmp_path / "s.csv", rows(20, "2027-03"))
    imports.run(path, period="2027-03")
    first = versions.pointer(owner, "2027-03").version
    imports.run(path, period="2027-03", mode="replace")
    second = versions.pointer(owner, "2027-03").version
    assert first != second
    versions.sweep(now=time.time())  # within the grace: a job starting just now may still pin the old one
    assert versions.count(versions.partition(owner, "2027-03", first)) == 20
    versions.sweep(now=time.time() + versions.GC_GRACE_SECONDS + 1)
    assert versions.count(versions.partition(owner, "2027-03", first)) == 0
    assert versions.count(versions.partition(owner, "2027-03", second)) == 20
    assert len(imports.stored("2027-03")) == 20


def test_a_small_import_landing_while_a_merge_commits_is_kept(imports: Imports, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    line = {"date": "2027-05-02", "vendor": "LATE", "amount": "9.00", "currency": "USD"}
    assert imports.call("post", "/expenses", {"lines": [{**line, "lineId": "early"}]})[0] == 201
    real_move, landed = versions.move, []

    def small_import_first(*args: Any, **kwargs: Any) -> None:
        if not landed:  # between the merge's copy and its commit: base_unchanged refuses, the merge copies again
            landed.append(imports.call("post", "/expenses", {"lines": [{**line, "lineId": "late"}]})[0])
        real_move(*args, **kwargs)

    monkeypatch.setattr(versions, "move", small_import_first)
    done = imports.run(write(tmp_path / "m.csv", rows(10, "2027-05", ids=True)), period="2027-05")
    assert landed == [201] and done["status"] == "Completed", done
    assert {line["lineId"] for line in imports.stored("2027-05")} == {"early", "late", *(f"tx-{i}" for i in range(10))}


def test_a_merge_whose_month_was_deleted_meanwhile_fails_and_stores_nothing(imports: Imports, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert imports.call("post", "/expenses", {"lines": [
        {"date": "2027-06-02", "vendor": "GONE", "amount": "9.00", "currency": "USD"}]})[0] == 201
    real_move, deleted = versions.move, []

    def delete_first(owner: str, period: str, *args: Any, **kwargs: Any) -> None:
        if not deleted:
            deleted.append(period)  # first: delete_period moves the pointer through this same function
            versions.delete_period(owner, period)  # (the API would refuse it while the import runs: a race)
        real_move(owner, period, *args, **kwargs)

    monkeypatch.setattr(versions, "move", delete_first)
    failed = imports.run(write(tmp_path / "d.csv", rows(10, "2027-06", ids=True)), period="2027-06")
    assert failed["status"] == "Failed" and "were replaced or deleted while this import ran" in failed["errorMessage"]
    assert imports.stored("2027-06") == []  # the delete stands; nothing of the import was stored


def test_an_import_out_of_time_hands_over_and_the_next_invocation_goes_on_from_its_rows(imports: Imports,
                                                                                        tmp_path: Path) -> None:
    # Each invocation's time is up after one batch of rows (its deadline is before it starts): it checkpoints the
    # rows staged, hands the job over and sends the message that continues it; no row is written twice.
    job = imports.begin(period="2027-07")
    imports.upload(job, write(tmp_path / "long.csv", rows(12_000, "2027-07")))
    short = get_settings().lambda_time_reserve_seconds * 1000
    deliveries = drain({job["jobId"]}, ctx_factory=lambda: Ctx(remaining_ms=int(short)))
    done = imports.job(job["jobId"])
    assert done["status"] == "Completed" and deliveries >= 3, (deliveries, done["statusMessage"])
    assert done["import"]["storedLines"] == 12_000 and len(imports.stored("2027-07")) == 12_000
    stage = next(s for s in done["steps"] if s["name"] == "stage")
    assert stage["status"] == "Completed"
