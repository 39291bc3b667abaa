"""Results read like the import (issue 15, item 4): every line carries its description, lines come in import
order (not lineId or UUID order) in the JSON and the CSV alike, and the job's counters say what they count.

Jobs run offline (the rules categorizer) through the real handler: tests.support.drain.
"""

from __future__ import annotations

import csv
import io
import json
import random
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from chalicelib import results
from chalicelib.tables import Job, LineResult
from tests.driver import Driver
from tests.support import drain

DOC = json.loads((Path(__file__).resolve().parents[2] / "chalicelib" / "api" / "openapi.json").read_text())


class Me(Driver):
    def send(self, method: str, path: str, body: object = None, content_type: str = "application/json"):
        """Driver.send under /api/v1 (these tests name the paths without it)."""
        return super().send(method, f"/api/v1{path}", body, content_type)

    def imported(self, body: object, content_type: str = "application/json") -> None:
        response = self.send("POST", "/expenses", body, content_type)
        assert response.status_code == 201, response.body

    def run(self, period: str = "2026-01") -> str:
        report_id = f"r-{uuid.uuid4().hex[:12]}"
        assert self.send("POST", "/reports", {"reportId": report_id, "name": "Order",
                                              "deliveryTargets": [{"type": "api", "mode": "async"}]}).status_code == 201
        job_id = self.send("POST", f"/reports/{report_id}/generate", {"period": period}).json_body["jobId"]
        drain({job_id})
        assert self.send("GET", f"/jobs/{job_id}").json_body["status"] == "Completed"
        return job_id

    def result(self, job_id: str) -> tuple[dict, list[dict]]:
        as_json = self.send("GET", f"/jobs/{job_id}/result")
        as_csv = self.send("GET", f"/jobs/{job_id}/result?format=csv")
        assert as_json.status_code == as_csv.status_code == 200
        return json.loads(as_json.body), list(csv.DictReader(io.StringIO(as_csv.body.decode("utf-8"))))


@pytest.fixture
def me(client, token_for) -> Me:
    return Me(client, token_for())


def _line(n: int, line_id: str | None = None, **fields: str) -> dict:
    line = {"date": f"2026-01-{1 + n % 28:02d}", "vendor": f"Vendor {n:02d}", "amount": f"{n}.50",
            "currency": "USD", "description": f"expense {n:02d}", **fields}
    return {"lineId": line_id, **line} if line_id else line


# --- 4a: description ---------------------------------------------------------------------------------------


def test_result_lines_carry_the_description_in_json_csv_and_the_settle_answer(me):
    me.imported({"lines": [_line(1, "tx-1"), _line(2, "tx-2", description=""), _line(3, "tx-3")]})
    job_id = me.run()
    report, rows = me.result(job_id)
    assert {line["lineId"]: line["description"] for line in report["lines"]} == {
        "tx-1": "expense 01", "tx-2": "", "tx-3": "expense 03"}
    assert {line["lineId"]: line["description"] for line in report["lines"]} == {
        row["lineId"]: row["description"] for row in rows}
    settled = me.send("PATCH", f"/jobs/{job_id}/lines/tx-3", {"category": "Other"})
    assert settled.status_code == 200
    assert settled.json_body["description"] == "expense 03" and settled.json_body["category"] == "Other"


# --- 4b: import order ----------------------------------------------------------------------------------------


def test_a_report_lists_lines_in_import_order_not_line_id_order(me):
    # One JSON import: lines without a lineId (random UUIDs) and lineIds that sort against their order.
    first = [_line(0), _line(1, "z-9"), _line(2), _line(3, "a-1"), _line(4), _line(5, "m-5"), _line(6)]
    me.imported({"lines": first})
    # Then a CSV: its rows after the JSON's lines, in file order, "0-first" sorting before every other lineId.
    me.imported("lineId,date,vendor,amount,currency,description\n"
                "0-first,2026-01-08,Vendor 07,7.50,USD,expense 07\n"
                ",2026-01-09,Vendor 08,8.50,USD,expense 08\n"
                "b-2,2026-01-10,Vendor 09,9.50,USD,expense 09\n", "text/csv")
    # Re-importing a lineId replaces its line, which moves to the place of this latest import.
    me.imported({"lines": [_line(10, "a-1")]})
    expected = ["expense 00", "expense 01", "expense 02", "expense 04", "expense 05", "expense 06",
                "expense 07", "expense 08", "expense 09", "expense 10"]
    job_id = me.run()
    report, rows = me.result(job_id)  # built from the lines the worker held
    assert [line["description"] for line in report["lines"]] == expected
    assert [row["description"] for row in rows] == expected
    assert [line["lineId"] for line in report["lines"]] == [row["lineId"] for row in rows]
    # Settling a line rebuilds the report from the table (lineId order there): the order stays the import's.
    assert me.send("PATCH", f"/jobs/{job_id}/lines/z-9", {"category": "Other"}).status_code == 200
    report, rows = me.result(job_id)
    assert [line["description"] for line in report["lines"]] == expected
    assert [row["description"] for row in rows] == expected


def test_assembly_orders_many_lines_by_import_sequence_with_unsequenced_lines_first(settings):
    """The report of a large job, in order, built from temp files: lines of an old import (no importSeq) first
    by lineId, then the rest by sequence, whatever order they come in (the table's: lineId order)."""
    from chalicelib import clock
    from chalicelib.lines.store import import_seq

    job = Job(str(uuid.uuid4()), owner_id="u", report_id="r-order", period="2026-01", status="Processing",
              created_at="x", updated_at="x", lock_key="x")
    moment = clock.now()
    n = 3000
    places = list(range(n))
    random.Random(15).shuffle(places)  # line i was the places[i]-th of its import
    lines = []
    for i in range(n):
        legacy = i % 10 == 0
        lines.append(LineResult(job.job_id, f"line-{i:05d}", date="2026-01-02", vendor=f"V{i}", amount="1.25",
                                currency="USD", description=f"d{i}", category="Other", confidence=0.9,
                                source="rules", needs_review=False,
                                import_seq=None if legacy else import_seq(moment, places[i])))
    ticks = []
    key, needs_review, count = results.assemble_counted(job, 1, tick=lambda: ticks.append(1), written=lines)
    assert (needs_review, count, len(ticks)) == (0, n, 1)
    legacy = [f"line-{i:05d}" for i in range(0, n, 10)]
    sequenced = sorted((i for i in range(n) if i % 10), key=lambda i: places[i])
    expected = legacy + [f"line-{i:05d}" for i in sequenced]
    body, _ = results.fetch(key, csv_format=False)
    report = json.loads(body)
    assert [line["lineId"] for line in report["lines"]] == expected
    assert report["totals"] == [{"category": "Other", "currency": "USD", "amount": "3750.00", "lines": n}]
    assert all(line["description"] == f"d{int(line['lineId'][5:])}" for line in report["lines"])
    text, _ = results.fetch(key, csv_format=True)
    rows = list(csv.DictReader(io.StringIO(text.decode("utf-8"))))
    assert [row["lineId"] for row in rows] == expected


@pytest.mark.parametrize("chunk_lines", [10_000, 400, 150])  # no plan's ranges, fewer than read ahead, more
def test_a_fanned_out_jobs_report_reads_each_stored_row_once_by_its_plans_ranges(settings, chunk_lines):
    """A fanned-out job's rows are read back by its plan's ranges, a few side by side (results.stored_rows): each
    range (after, upto] gives its rows once, the bound line in the range it ends, and the report holds every
    stored row once, in order, and nothing of another job's."""
    from chalicelib.worker import rows

    n = 1_000
    job = Job(str(uuid.uuid4()), owner_id="u", report_id="r-ranges", period="2026-01", status="Processing",
              created_at="x", updated_at="x", lock_key="x")
    ids = sorted(f"line-{uuid.UUID(int=random.Random(i).getrandbits(128)).hex}" for i in range(n))
    # The plan as chunks.plan records it: the last line id of each full chunk, the last bound "" (open-ended).
    job.chunk_bounds = [ids[i - 1] for i in range(chunk_lines, n, chunk_lines)] + [""] if chunk_lines < n else None

    def row(job_id: str, line_id: str, i: int) -> LineResult:
        return LineResult(job_id, line_id, date="2026-01-02", vendor=f"V{i}", amount="1.00", currency="USD",
                          description=f"d{i}", category="Other", confidence=0.9, source="rules",
                          needs_review=False, import_seq=f"{i:06d}", expires_at=timedelta(days=1))

    rows.save([row(job.job_id, line_id, i) for i, line_id in enumerate(ids)])
    rows.save([row(str(uuid.uuid4()), line_id, i) for i, line_id in enumerate(ids[:50])])  # another job's
    assert [r.line_id for r in results.stored_rows(job)] == ids
    key, needs_review, count = results.assemble_counted(job, 1)
    assert (needs_review, count) == (0, n)
    report = json.loads(results.fetch(key, csv_format=False)[0])
    assert [line["lineId"] for line in report["lines"]] == ids
    assert report["totals"] == [{"category": "Other", "currency": "USD", "amount": f"{n}.00", "lines": n}]


# --- 4c, 4d: what the counters count, in the document ---------------------------------------------------------


def test_the_document_says_what_amount_description_cached_lines_and_retry_count_are():
    schemas = DOC["components"]["schemas"]
    amount = schemas["ExpenseLineInput"]["properties"]["amount"]
    resolved = schemas[amount["$ref"].rsplit("/", 1)[1]] if "$ref" in amount else amount
    kinds = {option.get("type") or schemas[option["$ref"].rsplit("/", 1)[1]]["type"]
             for option in resolved.get("oneOf", [resolved])}
    assert kinds == {"string", "number"} and "exact" in resolved["description"]
    assert "description" in schemas["ResultLine"]["required"]
    assert "import order" in schemas["Result"]["properties"]["lines"]["description"]
    job = schemas["Job"]["properties"]
    assert "without a model request" in job["cachedLines"]["description"]
    assert "`cache`" in job["cachedLines"]["description"] and "Offline" in job["cachedLines"]["description"]
    assert job["retryCount"]["description"].startswith("Model request retries")
    assert "Not how many times the job was retried" in job["retryCount"]["description"]
    events = DOC["paths"]["/api/v1/jobs/{jobId}/events"]["get"]
    assert {p.get("name") or p["$ref"].rsplit("/", 1)[1] for p in events["parameters"]} == {"pageSize", "NextToken"}
    assert "400" in events["responses"]


def test_the_cli_says_retries_are_model_request_retries():
    from reports_cli.display import describe

    text = describe({"jobId": "j-1", "reportId": "r-1", "period": "2026-01", "status": "Completed",
                     "totalLines": 3, "processedLines": 3, "progressPercent": 100, "failedLines": 0,
                     "cachedLines": 2, "retryCount": 4})
    assert "4 model request retries" in text and "2 from the vendor cache" in text
