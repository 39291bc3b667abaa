"""Exact inputs (issue 15, item 3): JSON number amounts taken exactly, every message in words, 404 details
decoded and cut, and the events list paged like every other list.

Through the in-process Chalice client against this process's moto server; each test is a fresh user.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from chalicelib import paging
from tests.driver import Driver
from tests.hardening.common import assert_problem
from tests.support import seed_body

LINE = {"lineId": "tx-1", "date": "2026-01-15", "vendor": "UBER *TRIP", "amount": "23.50", "currency": "USD",
        "description": "ride"}
CSV_HEAD = "lineId,date,vendor,amount,currency,description\n"


class Caller(Driver):
    def problem(self, response, status: int = 400) -> dict:
        return assert_problem(response.status_code, response.headers, response.body, status)

    def lines(self, period: str = "2026-01") -> list[dict]:
        response = self.client.http.get(f"/api/v1/expenses?period={period}&pageSize=1000",
                                        headers=self.token.headers)
        assert response.status_code == 200
        return response.json_body["items"]

    def job(self) -> str:
        """A Queued job of a fresh report on 2026-01, which holds one seeded line (no lines: 422 `no-lines`)."""
        assert self.send("POST", "/api/v1/expenses", seed_body("2026-01")).status_code == 201
        return self.send("POST", f"/api/v1/reports/{self.report()}/generate", {"period": "2026-01"}).json_body["jobId"]

    def report(self) -> str:
        report_id = f"r-{uuid.uuid4().hex[:12]}"
        body = {"reportId": report_id, "name": "Exact", "deliveryTargets": [{"type": "api", "mode": "async"}]}
        assert self.send("POST", "/api/v1/reports", body).status_code == 201
        return report_id


@pytest.fixture
def me(client, token_for) -> Caller:
    return Caller(client, token_for())


def _import_raw(me: Caller, amounts: list[str]):
    """A JSON import whose amounts are the raw JSON texts given (so no Python float ever touches them)."""
    lines = ",".join(
        f'{{"lineId": "tx-{i}", "date": "2026-01-15", "vendor": "V {i}", "amount": {a}, "currency": "USD"}}'
        for i, a in enumerate(amounts))
    return me.send("POST", "/api/v1/expenses", '{"lines": [' + lines + "]}")


# --- 3a: JSON numbers, exactly ------------------------------------------------------------------------------


def test_json_number_amounts_are_stored_exactly_as_decimal_strings(me):
    given = ["23.5", "23.50", "0.1", "0.2", "0.3000", "100", "-5", "1E+2", "25E-2", "123456789012.9999", "-0.0",
             "1234.5678"]
    response = _import_raw(me, given)
    assert response.status_code == 201, response.body
    stored = {line["lineId"]: line["amount"] for line in me.lines()}
    assert [stored[f"tx-{i}"] for i in range(len(given))] == [
        "23.5", "23.50", "0.1", "0.2", "0.3000", "100", "-5", "100", "0.25", "123456789012.9999", "-0.0",
        "1234.5678"]
    # Exact: the sum of what was stored is the sum of what was sent, with no binary-float residue.
    assert Decimal(stored["tx-2"]) + Decimal(stored["tx-3"]) == Decimal("0.3") == Decimal(stored["tx-4"])


def test_a_zero_with_a_huge_negative_exponent_is_stored_as_the_places_the_service_keeps(me):
    # Formatted as written, 0e-400000 is 400,000 zeros (0e-999999999 would take the API's memory).
    response = _import_raw(me, ["0e-400000", "0.00"])
    assert response.status_code == 201, response.body
    stored = {line["lineId"]: line["amount"] for line in me.lines()}
    assert (stored["tx-0"], stored["tx-1"]) == ("0.0000", "0.00")


@pytest.mark.parametrize("amount, words", [
    ("1e400", "digits before the point"),
    ("0.12345", "digits after the point"),
    ("0.30000000000000004", "digits after the point"),
    ("1e-7", "digits after the point"),
    ("-1234567890123", "digits before the point"),
    ("10000000000000000000000000000000000000000", "digits before the point"),
    ("true", "not true"),
    ("false", "not false"),
    ("null", "is required"),
    ("[1]", "not an array"),
    ('{"value": 1}', "not an object"),
])
def test_json_amounts_the_service_cannot_keep_are_400_in_words_and_store_nothing(me, amount, words):
    body = me.problem(_import_raw(me, ["1.00", amount]))
    assert (body["field"], body["line"]) == ("amount", "lines[1]")
    assert words in body["detail"] and "Line 2" in body["detail"], body["detail"]
    _in_words(body["detail"])
    assert me.lines() == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_400_saying_so_and_store_nothing(me, constant):
    body = me.problem(_import_raw(me, ["1.00", constant]))
    assert constant.lstrip("-") in body["detail"] and "not a JSON number" in body["detail"], body["detail"]
    _in_words(body["detail"])
    assert me.lines() == []


# --- 3b: messages in words ----------------------------------------------------------------------------------


def _in_words(detail: str) -> None:
    """No Python repr in a message: no brackets or braces, no quoted reprs, no None."""
    for mark in ("[", "]", "{", "}", "'", "None"):
        assert mark not in detail, f"{mark!r} in {detail!r}"


JSON_CASES = [  # (line 2 of the request changed like this, the field named, words the detail holds)
    ({"amount": "23,50"}, "amount", "decimal string"),
    ({"amount": 23.12345}, "amount", "digits after the point"),
    ({"amount": True}, "amount", "not true"),
    ({"amount": None}, "amount", "is required"),
    ({"amount": ["1"]}, "amount", "not an array"),
    ({"vendor": 42}, "vendor", "not a number"),
    ({"vendor": ""}, "vendor", "is required"),
    ({"vendor": None}, "vendor", "is required"),
    ({"vendor": "a\x00b"}, "vendor", "printable"),
    ({"date": "2026-02-30"}, "date", "YYYY-MM-DD"),
    ({"date": 20260115}, "date", "not a number"),
    ({"date": None}, "date", "is required"),
    ({"currency": "usd"}, "currency", "ISO 4217"),
    ({"currency": None}, "currency", "is required"),
    ({"currency": ["USD"]}, "currency", "not an array"),
    ({"lineId": "has space"}, "lineId", "letters, digits"),
    ({"lineId": 7}, "lineId", "not a number"),
    ({"lineId": "tx-1"}, "lineId", "appears twice"),
    ({"description": 7}, "description", "not a number"),
    ({"description": {"text": "x"}}, "description", "not an object"),
    ({"category": "Airfare"}, "category", "not a known field"),
]


@pytest.mark.parametrize("change, field, words", JSON_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(JSON_CASES)])
def test_every_json_line_message_names_the_line_and_field_in_words(me, change, field, words):
    line = {**LINE, "lineId": "tx-2", **change}
    if change.get("vendor") is None and "vendor" in change:
        line.pop("vendor")
    body = me.problem(me.send("POST", "/api/v1/expenses", {"lines": [LINE, line]}))
    detail = body["detail"]
    assert (body["field"], body["line"]) == (field, "lines[1]")
    assert detail.startswith("Line 2 of lines (counting from 1)") and field in detail and words in detail, detail
    _in_words(detail)
    assert me.lines() == []


@pytest.mark.parametrize("body, words", [
    ({"lines": []}, "non-empty array"),
    ({"lines": "tx-1"}, "not text"),
    ({"lines": None}, "not null"),
    ({"items": [LINE]}, "one member, lines"),
    ([LINE], "one member, lines"),
    ({"lines": [5]}, "Line 1 of lines"),
    ({"lines": [LINE, [LINE]]}, "Line 2 of lines"),
])
def test_json_import_shape_messages_are_in_words(me, body, words):
    detail = me.problem(me.send("POST", "/api/v1/expenses", body))["detail"]
    assert words in detail, detail
    _in_words(detail)
    assert me.lines() == []


CSV_CASES = [  # (the CSV, its problem's `line` or None, words the detail holds)
    (CSV_HEAD, None, "no expense rows"),
    ("lineId,date,vendor,amount,currency\n\n\n", None, "no expense rows"),
    ("", None, "empty"),
    ("date,vendor,amount\n2026-01-15,UBER,1.00\n", None, "lacks currency"),
    ("date,vendor,currency\n2026-01-15,UBER,USD\n", None, "lacks amount"),
    ("date,vendor,amount,currency,tip\n2026-01-15,UBER,1.00,USD,2\n", None, "unknown column tip"),
    ("date,vendor,amount,currency,amount\n2026-01-15,UBER,1.00,USD,2\n", None, "amount more than once"),
    (CSV_HEAD + "tx-1,2026-01-15,UBER\n", "row 2", "has 3 cells, but the header has 6 columns"),
    (CSV_HEAD + "tx-1,2026-01-15,UBER,1.00,USD,ride,extra\n", "row 2", "has 7 cells"),
    (CSV_HEAD + "tx-1,2026-01-15,UBER,1.00,USD,ride\ntx-2,2026-01-16,LYFT,twelve,USD,ride\n", "row 3", "amount"),
    (CSV_HEAD + "tx-1,2026-01-15,,1.00,USD,ride\n", "row 2", "vendor is required"),
    (CSV_HEAD + "tx-1,2026-01-15,UBER,1.00,,ride\n", "row 2", "currency is required"),
    (CSV_HEAD + "tx-1,2026-01-15,UBER,,USD,ride\n", "row 2", "amount is required"),
    (CSV_HEAD + "tx-1,2026-13-01,UBER,1.00,USD,ride\n", "row 2", "date must be"),
    (CSV_HEAD + "tx-1,2026-01-15,UBER,1.00,USD,ride\ntx-1,2026-01-15,UBER,1.00,USD,ride\n", "row 3",
     "appears twice in this request (also at row 2)"),
    # A quoted cell over two lines is one row (row 2, ending on line 3 of the file); no field takes a line break.
    (CSV_HEAD + 'tx-1,2026-01-15,UBER,1.00,USD,"two\nlines"\ntx-2,2026-01-16,LYFT,x,USD,ride\n', "row 2",
     "this row ends on line 3 of the file): description"),
    (CSV_HEAD + 'tx-1,2026-01-15,UBER,1.00,USD,"two\nlines\n', "row 2", "the error is on line 3 of the file"),
    # A blank line is a row of the file too (a spreadsheet shows it): the bad row is row 4.
    (CSV_HEAD + "tx-1,2026-01-15,UBER,1.00,USD,ride\n\ntx-2,2026-01-16,LYFT,x,USD,ride\n", "row 4", "amount"),
    (CSV_HEAD + 'tx-1,2026-01-15,"UBER,1.00,USD,ride\n', "row 2", "closing quote is missing"),
    (CSV_HEAD + 'tx-1,2026-01-15,"UBER"x,1.00,USD,ride\n', "row 2", "after the closing quote"),
    (CSV_HEAD + "tx-1,2026-01-15,UB\x00ER,1.00,USD,ride\n", "row 2", "vendor must be printable"),
]


@pytest.mark.parametrize("text, line, words", CSV_CASES, ids=[str(i) for i in range(len(CSV_CASES))])
def test_every_csv_message_names_the_row_and_column_in_words(me, text, line, words):
    body = me.problem(me.send("POST", "/api/v1/expenses", text, "text/csv"))
    detail = body["detail"]
    assert words in detail, detail
    if line is not None:
        assert body["line"] == line
        assert detail.startswith(f"Row {line.split()[1]} of the CSV (the header is row 1"), detail
    _in_words(detail)
    assert me.lines() == []


def test_header_only_csv_says_there_are_no_rows(me):
    detail = me.problem(me.send("POST", "/api/v1/expenses", CSV_HEAD, "text/csv"))["detail"]
    assert detail == ("The CSV has a header row but no expense rows: put one line per row below the header.")


@pytest.mark.parametrize("body, field, words", [
    ({"reportId": "R_1", "name": "x"}, "reportId", "lowercase letters"),
    ({"name": ""}, "name", "is required"),
    ({"name": "x", "deliveryTargets": "api"}, "deliveryTargets", "not text"),
    ({"name": "x", "deliveryTargets": [{"type": "api", "mode": "later"}]}, "deliveryTargets[0]", "target 1"),
    ({"name": "x", "deliveryTargets": [5]}, "deliveryTargets[0]", "not a number"),
    ({"name": "x", "deliveryTargets": [{"type": "api", "mode": "async"}], "categories": ["A", "A"]},
     "categories", "A more than once"),
    ({"name": "x", "deliveryTargets": [{"type": "api", "mode": "async"}], "schedule": {"type": "monthly"}},
     "schedule", "1 to 28"),
    ({"name": "x", "colour": "red"}, "colour", "not a known field"),
])
def test_report_configuration_messages_are_in_words(me, body, field, words):
    problem = me.problem(me.send("POST", "/api/v1/reports", body))
    assert problem["field"] == field and words in problem["detail"], problem
    _in_words(problem["detail"])


# --- 3c: 404 details decoded and cut ---------------------------------------------------------------------------


@pytest.mark.parametrize("method, template", [
    ("GET", "/api/v1/jobs/{}"), ("GET", "/api/v1/jobs/{}/events"), ("GET", "/api/v1/jobs/{}/result"),
    ("POST", "/api/v1/jobs/{}/retry"), ("DELETE", "/api/v1/jobs/{}"), ("GET", "/api/v1/reports/{}"),
])
def test_not_found_detail_shows_the_id_decoded_and_cut(me, method, template):
    noun = "Report" if "reports" in template else "Job"
    decoded = me.problem(me.send(method, template.format("NOT%20AN%20ID"), None), 404)["detail"]
    assert decoded == f"{noun} 'NOT AN ID' was not found.", decoded
    long = me.problem(me.send(method, template.format("x" * 5000), None), 404)["detail"]
    assert len(long) < 120 and ("x" * 80 + "\u2026") in long and "x" * 81 not in long, long
    escaped = me.problem(me.send(method, template.format("job%0d%0aX-Injected:1"), None), 404)["detail"]
    assert "%0d" not in escaped and "\n" not in escaped and "\r" not in escaped, escaped


def test_generate_for_a_missing_report_shows_its_id_decoded(me):
    detail = me.problem(me.send("POST", "/api/v1/reports/no%2Dsuch%2Dreport/generate", {"period": "2026-01"}),
                        404)["detail"]
    assert detail == "Report 'no-such-report' was not found."


# --- 3d: events paged like every list --------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["pageSize=0", "pageSize=1001", "pageSize=-1", "pageSize=abc", "pageSize=1e3",
                                   "nextToken=W10", "nextToken=" + "A" * 5000,
                                   "nextToken=" + paging.encode({"eventKey": ""}),
                                   "nextToken=" + paging.encode({"lineId": "x"})])
def test_events_paging_parameters_are_validated_like_every_list(me, query):
    job_id = me.job()
    body = me.problem(me.send("GET", f"/api/v1/jobs/{job_id}/events?{query}"))
    assert body["field"] == query.split("=")[0]


def test_events_page_with_page_size_and_next_token(me):
    job_id = me.job()
    assert me.send("DELETE", f"/api/v1/jobs/{job_id}").status_code == 200
    whole = me.send("GET", f"/api/v1/jobs/{job_id}/events").json_body
    # The cancel and its settling of the three Pending steps (one `step` event each), in the order written.
    assert [e["type"] for e in whole["items"]] == ["created", "cancelled", "step", "step", "step"]
    assert whole["nextToken"] is None
    paged, token = [], None
    while True:
        query = "pageSize=2" + (f"&nextToken={token}" if token else "")
        page = me.send("GET", f"/api/v1/jobs/{job_id}/events?{query}").json_body
        assert len(page["items"]) <= 2
        paged += page["items"]
        token = page["nextToken"]
        if not token:
            break
    assert paged == whole["items"]

