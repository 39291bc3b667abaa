"""`reports import` of a large CSV through /imports, and `reports submit` without --period, against a small fake API
on loopback (a real http.server: POST /imports, the presigned PUT, the job polled in rows)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reports_cli.__main__ import main
from reports_cli.upload import SINGLE_REQUEST_LINES

HEADER = "lineId,date,vendor,amount,currency,description\n"


class FakeApi:
    """POST /api/v1/imports answers 202 with a job and an upload URL on this server; the PUT stores the body;
    each GET of the job moves it on by `step` rows until it ends as `ends` (Completed, or Failed with `error`)."""

    def __init__(self, step: int = 2000, ends: str = "Completed", error: str | None = None,
                 put_status: int = 200) -> None:
        self.step, self.ends, self.error, self.put_status = step, ends, error, put_status
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.import_body: dict[str, Any] | None = None
        self.uploaded = b""
        self.rows = 0
        self.polls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                fake.requests.append(("POST", self.path, dict(self.headers)))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/api/v1/imports":
                    fake.import_body = json.loads(body)
                    job = fake.job("Queued", 0)
                    self._answer(202, {**job, "uploadUrl": f"{fake.url}/bucket/upload-1?X-Amz-Signature=abc"},
                                 {"Location": job["statusUrl"]})
                elif self.path == "/api/v1/expenses":
                    lines = body.decode().strip().count("\n")
                    self._answer(201, {"imported": lines, "periods": ["2026-01"]})
                else:
                    self._answer(404, {"title": "Not Found", "status": 404})

            def do_PUT(self) -> None:
                fake.requests.append(("PUT", self.path, dict(self.headers)))
                left, chunks = int(self.headers["Content-Length"]), []
                while left:
                    chunk = self.rfile.read(min(left, 65536))
                    left -= len(chunk)
                    chunks.append(chunk)
                fake.uploaded = b"".join(chunks)
                fake.rows = fake.uploaded.count(b"\n") - 1
                self._answer(fake.put_status, None)

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, dict(self.headers)))
                fake.polls += 1
                done = min(fake.rows, fake.polls * fake.step)
                if done < fake.rows:
                    self._answer(200, fake.job("Processing", done), {"Retry-After": "0"})
                else:
                    self._answer(200, fake.job(fake.ends, done if fake.ends == "Completed" else 0))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def job(self, status: str, done: int) -> dict[str, Any]:
        return {"jobId": "imp-1", "type": "lines_import", "status": status, "totalLines": self.rows,
                "processedLines": done, "progressPercent": done * 100 // self.rows if self.rows else 0,
                "failedLines": 0, "errorMessage": self.error if status == "Failed" else None,
                "statusUrl": f"{self.url}/api/v1/jobs/imp-1",
                "allowedActions": ["cancel"] if status in ("Queued", "Processing") else []}

    def methods(self) -> list[tuple[str, str]]:
        return [(method, path.split("?")[0]) for method, path, _ in self.requests]


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    api = FakeApi()
    yield api
    api.server.shutdown()


def csv_file(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "lines.csv"
    with path.open("w") as out:
        out.write(HEADER)
        for n in range(rows):
            out.write(f"tx-{n},2026-01-{1 + n % 28:02d},Vendor {n % 97},{n % 90 + 1}.00,USD,lunch\n")
    return path


def run(api: FakeApi, *argv: str) -> int:
    return main([*argv, "--api-url", api.url, "--token", "t0ken"])


def test_a_csv_above_the_request_limit_is_uploaded_through_imports_and_followed_in_rows(
        fake: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = csv_file(tmp_path, SINGLE_REQUEST_LINES + 1)
    # Streamed: the file is never read whole into memory.
    for name in ("read_text", "read_bytes"):
        monkeypatch.setattr(Path, name, lambda *a, **k: pytest.fail("the file was read whole"))
    assert run(fake, "import", str(path)) == 0
    out, errors = capsys.readouterr()
    assert fake.methods()[:2] == [("POST", "/api/v1/imports"), ("PUT", "/bucket/upload-1")]
    assert ("POST", "/api/v1/expenses") not in fake.methods()
    assert fake.import_body == {"format": "csv", "mode": "merge"}
    put = next(headers for method, _, headers in fake.requests if method == "PUT")
    assert put["Content-Type"] == "text/csv" and "Authorization" not in put
    assert put["Content-Length"] == str(path.stat().st_size) and "Transfer-Encoding" not in put
    assert fake.uploaded == _bytes(path)
    assert "Processing: 2000/5001 rows (39%)" in errors and "4000/5001 rows" in errors
    assert out.strip() == f"Imported 5001 lines from {path} (job imp-1)"


def _bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_replace_period_and_report_go_in_the_import_request_even_for_a_small_file(
        fake: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = csv_file(tmp_path, 3)
    assert run(fake, "import", str(path), "--replace", "--period", "2026-01", "--report", "report-1") == 0
    assert fake.import_body == {"format": "csv", "mode": "replace", "period": "2026-01", "reportId": "report-1"}
    assert "Result: reports result imp-1" in capsys.readouterr().out


def test_a_failed_import_prints_the_jobs_error_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApi(ends="Failed", error="row 5001: amount: not a decimal number ('12,00')")
    try:
        assert run(api, "import", str(csv_file(tmp_path, SINGLE_REQUEST_LINES + 1)), "-q") == 1
    finally:
        api.server.shutdown()
    out, errors = capsys.readouterr()
    assert out == ""
    assert "import of" in errors and "failed: row 5001: amount" in errors


def test_a_refused_upload_is_an_api_error_exit_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApi(put_status=403)
    try:
        assert run(api, "import", str(csv_file(tmp_path, SINGLE_REQUEST_LINES + 1))) == 4
    finally:
        api.server.shutdown()
    assert "uploading the file failed: HTTP 403" in capsys.readouterr().err


def test_a_small_csv_and_a_json_file_keep_one_post_to_expenses(fake: FakeApi, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "import", str(csv_file(tmp_path, SINGLE_REQUEST_LINES))) == 0
    body = tmp_path / "lines.json"
    body.write_text(json.dumps({"lines": []}))
    assert run(fake, "import", str(body)) == 0
    assert fake.methods() == [("POST", "/api/v1/expenses")] * 2
    with pytest.raises(SystemExit) as exited:
        run(fake, "import", str(body), "--replace")  # /imports takes CSV only
    assert exited.value.code == 2 and "this file is JSON" in capsys.readouterr().err


def test_submit_without_a_period_is_a_usage_error_and_sends_nothing(fake: FakeApi,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(fake, "submit", "report-1")
    assert exited.value.code == 2
    assert "the following arguments are required: --period" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        run(fake, "submit", "report-1", "--period", "2026-13")
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        run(fake, "submit", "report-1", "--period", "2026-01", "--lane", "cheap")
    assert exited.value.code == 2
    assert fake.requests == []
