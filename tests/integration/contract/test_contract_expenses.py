"""Expense lines (/expenses): JSON and CSV imports, listing, validation.
The contract (docs/api.md) status by status; bad input is checked twice: the answer names what is wrong, and
nothing was stored."""

from __future__ import annotations

import json
import re

import pytest

from chalicelib.settings import Settings, get_settings
from tests.integration.contract.common import LINE, MiB, jobs_of, lines_of, new_report, problem, send, user

# --- expense lines ----------------------------------------------------------------------------------------


def test_json_import_is_201_with_count_and_periods(api):
    owner = user()
    lines = [LINE, {**LINE, "lineId": "tx-2", "date": "2026-02-03", "amount": "-5.0001"}]
    response = send(api, "POST", "/api/v1/expenses", owner, {"lines": lines})
    assert response.status_code == 201
    assert response.json_body == {"imported": 2, "periods": ["2026-01", "2026-02"]}
    assert lines_of(api, owner, "2026-01") == [LINE]
    assert lines_of(api, owner, "2026-02")[0]["amount"] == "-5.0001"


def test_json_import_names_line_and_field(api):
    owner = user()
    lines = [LINE, {**LINE, "lineId": "tx-2", "currency": "usd"}]
    body = problem(send(api, "POST", "/api/v1/expenses", owner, {"lines": lines}), 400)
    assert (body["line"], body["field"]) == ("lines[1]", "currency")
    assert body["detail"].startswith("Line 2 of lines (counting from 1): currency must be"), body["detail"]
    assert lines_of(api, owner, "2026-01") == []


@pytest.mark.parametrize("change,field", [
    ({"amount": 23.12345}, "amount"),  # a JSON number, but with more digits than the service keeps
    ({"amount": True}, "amount"),
    ({"amount": "23,50"}, "amount"),
    ({"amount": "1e3"}, "amount"),
    ({"date": "2026-02-30"}, "date"),
    ({"date": "15/01/2026"}, "date"),
    ({"vendor": ""}, "vendor"),
    ({"currency": "US"}, "currency"),
    ({"lineId": "has space"}, "lineId"),
    ({"category": "Airfare"}, "category"),
])
def test_invalid_line_is_400_naming_the_field_and_stores_nothing(api, change, field):
    owner = user()
    lines = [LINE, {**LINE, "lineId": "tx-2", **change}]
    body = problem(send(api, "POST", "/api/v1/expenses", owner, {"lines": lines}), 400)
    assert (body["line"], body["field"]) == ("lines[1]", field)
    assert lines_of(api, owner, "2026-01") == []


def test_csv_with_one_bad_line_stores_nothing(api):
    owner = user()
    csv = ("lineId,date,vendor,amount,currency,description\n"
           "tx-1,2026-01-15,UBER,23.50,USD,ride\n"
           "tx-2,2026-01-16,LYFT,twelve,USD,ride\n"
           "tx-3,2026-01-17,DELTA,400.00,USD,flight\n")
    body = problem(send(api, "POST", "/api/v1/expenses", owner, csv, "text/csv"), 400)
    assert (body["line"], body["field"]) == ("row 3", "amount")
    assert lines_of(api, owner, "2026-01") == []


@pytest.mark.parametrize("csv", [
    "",
    "lineId,date,vendor,amount,currency\n",
    "date,vendor,amount\n2026-01-15,UBER,1.00\n",
    "date,vendor,amount,currency,tip\n2026-01-15,UBER,1.00,USD,2\n",
    "date,vendor,amount,currency\n2026-01-15,UBER,1.00,USD,extra\n",
])
def test_csv_with_bad_shape_is_400_and_stores_nothing(api, csv):
    owner = user()
    problem(send(api, "POST", "/api/v1/expenses", owner, csv, "text/csv"), 400)
    assert lines_of(api, owner, "2026-01") == []


def test_csv_without_line_ids_names_lines_by_content_and_a_reimport_stores_nothing_new(api):
    owner = user()
    # Two identical rides on one day are two lines (occurrence 1 and 2); "9.00" and "9.0" are one amount.
    csv = ("date,vendor,amount,currency\n2026-01-15,UBER,23.50,USD\n2026-01-16,LYFT,9.00,USD\n"
           "2026-01-16,LYFT,9.00,USD\n")
    response = send(api, "POST", "/api/v1/expenses", owner, csv, "text/csv; charset=utf-8")
    assert response.status_code == 201 and response.json_body == {"imported": 3, "periods": ["2026-01"]}
    stored = lines_of(api, owner, "2026-01")
    assert len(stored) == 3 and all(re.fullmatch(r"[0-9a-f]{24}-[12]", line["lineId"]) for line in stored)
    lyft = sorted(line["lineId"] for line in stored if line["vendor"] == "LYFT")
    assert lyft[0][:24] == lyft[1][:24] and {lyft[0][-2:], lyft[1][-2:]} == {"-1", "-2"}

    again = send(api, "POST", "/api/v1/expenses", owner, csv.replace("9.00", "9.0"), "text/csv; charset=utf-8")
    assert again.status_code == 201
    assert sorted(line["lineId"] for line in lines_of(api, owner, "2026-01")) == sorted(
        line["lineId"] for line in stored)


def test_reimporting_a_line_id_replaces_the_line(api):
    owner = user()
    assert send(api, "POST", "/api/v1/expenses", owner, {"lines": [LINE]}).status_code == 201
    assert send(api, "POST", "/api/v1/expenses", owner, {"lines": [{**LINE, "amount": "99.00"}]}).status_code == 201
    assert lines_of(api, owner, "2026-01") == [{**LINE, "amount": "99.00"}]


def test_import_over_5000_lines_is_400_and_stores_nothing(api):
    owner = user()
    lines = [{**LINE, "lineId": f"tx-{i}"} for i in range(get_settings().max_import_lines + 1)]
    assert problem(send(api, "POST", "/api/v1/expenses", owner, {"lines": lines}), 400)["field"] == "lines"
    assert lines_of(api, owner, "2026-01") == []
    assert Settings().max_import_lines == 5000


@pytest.mark.parametrize("body", [{"lines": []}, {"lines": [LINE], "extra": 1}, {"rows": [LINE]}, [LINE],
                                  {"lines": [LINE, LINE]}])
def test_import_body_of_wrong_shape_is_400(api, body):
    owner = user()
    problem(send(api, "POST", "/api/v1/expenses", owner, body), 400)
    assert lines_of(api, owner, "2026-01") == []


def test_import_with_unsupported_content_type_is_415(api):
    owner = user()
    problem(send(api, "POST", "/api/v1/expenses", owner, json.dumps({"lines": [LINE]}), "text/plain"), 415)
    problem(send(api, "POST", "/api/v1/expenses", owner, "<lines/>", "application/xml"), 415)
    assert lines_of(api, owner, "2026-01") == []


def test_oversized_body_is_413_and_stores_nothing(api):
    owner = user()
    report_id = new_report(api, owner)
    big_csv = "date,vendor,amount,currency\n" + "2026-01-15,UBER,1.00,USD\n" * (6 * MiB // 25 + 1)
    problem(send(api, "POST", "/api/v1/expenses", owner, big_csv, "text/csv"), 413)
    assert lines_of(api, owner, "2026-01") == []
    padded = json.dumps({"period": "2026-01"}) + " " * (6 * MiB)
    problem(send(api, "POST", f"/api/v1/reports/{report_id}/generate", owner, padded), 413)
    assert jobs_of(api, owner)["totalCount"] == 0


@pytest.mark.parametrize("query,field", [("", "period"), ("?period=2026-13", "period"), ("?period=2026-1", "period"),
                                         ("?period=2026-01&pageSize=0", "pageSize"),
                                         ("?period=2026-01&pageSize=1001", "pageSize"),
                                         ("?period=2026-01&pageSize=ten", "pageSize"),
                                         ("?period=2026-01&nextToken=garbage", "nextToken")])
def test_list_expenses_with_bad_query_is_400(api, query, field):
    assert problem(api.get(f"/api/v1/expenses{query}", headers=user()), 400)["field"] == field


def test_list_expenses_pages_with_next_token_and_shows_only_the_callers_lines(api):
    owner = user()
    lines = [{**LINE, "lineId": f"tx-{i}"} for i in range(3)]
    assert send(api, "POST", "/api/v1/expenses", owner, {"lines": lines}).status_code == 201
    first = api.get("/api/v1/expenses?period=2026-01&pageSize=2", headers=owner).json_body
    assert [line["lineId"] for line in first["items"]] == ["tx-0", "tx-1"] and first["nextToken"]
    rest = api.get(f"/api/v1/expenses?period=2026-01&pageSize=2&nextToken={first['nextToken']}",
                   headers=owner).json_body
    assert [line["lineId"] for line in rest["items"]] == ["tx-2"] and rest["nextToken"] is None
    assert lines_of(api, user(), "2026-01") == []
    assert len(lines_of(api, owner, "2026-01")) == 3  # default pageSize (100) holds them all


# --- bugs these tests found, now fixed -----------------------------------------------


@pytest.mark.parametrize("change", [{"currency": "USD\n"}, {"lineId": "tx-1\n"}])
def test_line_fields_with_a_trailing_newline_are_400_and_store_nothing(api, change):
    owner = user()
    problem(send(api, "POST", "/api/v1/expenses", owner, {"lines": [{**LINE, **change}]}), 400)
    assert lines_of(api, owner, "2026-01") == []


def test_csv_with_a_utf8_byte_order_mark_is_accepted(api):
    owner = user()
    csv = "\ufefflineId,date,vendor,amount,currency\ntx-1,2026-01-15,UBER,23.50,USD\n"
    assert send(api, "POST", "/api/v1/expenses", owner, csv, "text/csv").status_code == 201
