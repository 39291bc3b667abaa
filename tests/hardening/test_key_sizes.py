"""Values that would become DynamoDB keys are checked at the edge; what DynamoDB still refuses is a 400, never a 500.

Real DynamoDB refuses an empty key, a sort key over 1024 bytes and a partition key over 2048 bytes with a
ValidationException; moto takes them all. `dynamodb_key_limits` puts the real service's key checks in front of
PynamoDB's calls (the error is the one botocore raises for DynamoDB's answer), so these tests see what the
deployed API would answer, and which key values would have reached DynamoDB at all.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pynamodb.connection.base import Connection

from chalicelib import paging
from chalicelib.lines.validation import LINE_ID, MAX_HASH_KEY_BYTES, MAX_LINE_ID_CHARS, MAX_RANGE_KEY_BYTES
from tests.driver import Driver
from tests.hardening.common import assert_problem
from tests.support import drain

LINE = {"lineId": "tx-1", "date": "2026-01-15", "vendor": "UBER *TRIP", "amount": "23.50", "currency": "USD",
        "description": "ride"}


def _key_schema() -> dict[str, tuple[str, str | None]]:
    """Table name -> (hash key attribute, range key attribute) of every PynamoDB model."""
    from chalicelib import tables

    out = {}
    for model in vars(tables).values():
        meta = getattr(model, "Meta", None)
        if isinstance(model, type) and hasattr(model, "_hash_keyname") and getattr(meta, "table_name", None):
            out[meta.table_name] = (model._hash_key_attribute().attr_name,
                                    getattr(model._range_key_attribute(), "attr_name", None))
    return out


def _refusal(operation: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": "ValidationException", "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)


class KeyLimits:
    """Records every key value refused the way real DynamoDB refuses it, and raises its ValidationException."""

    def __init__(self) -> None:
        self.schema = _key_schema()
        self.refused: list[tuple[str, str, int]] = []

    def check(self, operation: str, kwargs: dict[str, Any]) -> None:
        table = kwargs.get("TableName", "")
        if table not in self.schema:
            return
        hash_attr, range_attr = self.schema[table]
        for part in ("Key", "ExclusiveStartKey", "Item"):
            values = kwargs.get(part) or {}
            for attr, limit in ((hash_attr, MAX_HASH_KEY_BYTES), (range_attr, MAX_RANGE_KEY_BYTES)):
                value = (values.get(attr) or {}).get("S") if attr else None
                if value is not None and not 0 < len(value.encode("utf-8", "surrogatepass")) <= limit:
                    self.refused.append((operation, attr, len(value)))
                    raise _refusal(operation, f"One or more parameter values were invalid: Size of {attr} "
                                              f"is outside the limit of {limit} bytes")


@pytest.fixture
def dynamodb_key_limits(monkeypatch) -> KeyLimits:
    limits = KeyLimits()
    original = Connection._make_api_call

    def call(self: Connection, operation_name: str, operation_kwargs: dict) -> dict:
        limits.check(operation_name, operation_kwargs)
        return original(self, operation_name, operation_kwargs)

    monkeypatch.setattr(Connection, "_make_api_call", call)
    return limits


class Caller(Driver):
    def lines(self) -> list[dict]:
        response = self.send("GET", "/api/v1/expenses?period=2026-01&pageSize=100")
        assert response.status_code == 200, response.body[:300]
        return response.json_body["items"]

    def completed_job(self) -> dict:
        lines = [{**LINE, "lineId": f"tx-{i}"} for i in range(3)]
        assert self.send("POST", "/api/v1/expenses", {"lines": lines}).status_code == 201
        report_id = f"r-{uuid.uuid4().hex[:12]}"
        assert self.send("POST", "/api/v1/reports", {"reportId": report_id, "name": "Keys",
                                                      "deliveryTargets": [{"type": "api", "mode": "async"}]}
                         ).status_code == 201
        job_id = self.send("POST", f"/api/v1/reports/{report_id}/generate", {"period": "2026-01"}).json_body["jobId"]
        drain({job_id})
        job = self.send("GET", f"/api/v1/jobs/{job_id}").json_body
        assert job["status"] == "Completed", job
        return job

    def result(self, job_id: str) -> dict:
        response = self.send("GET", f"/api/v1/jobs/{job_id}/result")
        assert response.status_code == 200, response.body[:300]
        return response.json_body


@pytest.fixture
def me(client, token_for) -> Caller:
    return Caller(client, token_for())


def test_every_line_id_the_import_accepts_fits_a_dynamodb_sort_key():
    longest = "a" * MAX_LINE_ID_CHARS
    assert LINE_ID.fullmatch(longest) and not LINE_ID.fullmatch(longest + "a")
    assert not LINE_ID.fullmatch("a\u00e9")  # ASCII only: one byte a character
    assert len(longest.encode("utf-8")) <= MAX_RANGE_KEY_BYTES


@pytest.mark.parametrize("line_id", ["x" * 1100, "x" * (MAX_RANGE_KEY_BYTES + 1), "\u00e9" * 513,
                                     "\U0001f600" * 257], ids=["1100-chars", "1025-bytes", "513-e-acute", "257-emoji"])
def test_a_settle_with_a_line_id_past_the_sort_key_limit_is_400_and_changes_nothing(me, dynamodb_key_limits, line_id):
    job = me.completed_job()
    before = me.result(job["jobId"])
    response = me.send("PATCH", f"/api/v1/jobs/{job['jobId']}/lines/{line_id}", {"category": "Other"})
    problem = assert_problem(response.status_code, response.headers, response.body, 400)
    assert problem["field"] == "lineId"
    assert dynamodb_key_limits.refused == []  # the check is at the edge: the key never went to DynamoDB
    assert me.result(job["jobId"]) == before


def test_a_settle_with_a_line_id_at_the_sort_key_limit_reaches_the_store_and_is_404(me, dynamodb_key_limits):
    job = me.completed_job()
    response = me.send("PATCH", f"/api/v1/jobs/{job['jobId']}/lines/{'x' * MAX_RANGE_KEY_BYTES}",
                       {"category": "Other"})
    assert_problem(response.status_code, response.headers, response.body, 404)
    assert dynamodb_key_limits.refused == []


@pytest.mark.parametrize("token_line_id", ["", "x" * (MAX_RANGE_KEY_BYTES + 1), "\u00e9" * 513, 7, None, ["tx-1"]],
                         ids=["empty", "1025-bytes", "513-e-acute", "number", "null", "list"])
def test_a_forged_expenses_next_token_with_a_line_id_dynamodb_refuses_is_400(me, dynamodb_key_limits,
                                                                             token_line_id):
    assert me.send("POST", "/api/v1/expenses", {"lines": [LINE]}).status_code == 201
    before = me.lines()
    token = paging.encode({"lineId": token_line_id})
    response = me.send("GET", f"/api/v1/expenses?period=2026-01&nextToken={token}")
    problem = assert_problem(response.status_code, response.headers, response.body, 400)
    assert problem["field"] == "nextToken"
    assert dynamodb_key_limits.refused == []
    assert me.lines() == before


def test_an_expenses_next_token_at_the_sort_key_limit_is_a_page(me, dynamodb_key_limits):
    assert me.send("POST", "/api/v1/expenses", {"lines": [LINE]}).status_code == 201
    token = paging.encode({"lineId": "z" * MAX_RANGE_KEY_BYTES})  # after tx-1
    response = me.send("GET", f"/api/v1/expenses?period=2026-01&nextToken={token}")
    assert response.status_code == 200 and response.json_body == {"items": [], "nextToken": None}
    assert dynamodb_key_limits.refused == []


# --- what the edge does not catch: DynamoDB's ValidationException is a 400 problem ----------------------------


@pytest.fixture
def refuse(monkeypatch):
    """`refuse("Query")`: DynamoDB answers that operation with ValidationException, as for an oversized key."""
    original = Connection._make_api_call
    refused: list[str] = []

    def install(*operations: str) -> list[str]:
        def call(self: Connection, operation_name: str, operation_kwargs: dict) -> dict:
            if operation_name in operations:
                refused.append(operation_name)
                raise _refusal(operation_name, "One or more parameter values were invalid: Aggregated size of all "
                                               "range keys has exceeded the size limit of 1024 bytes")
            return original(self, operation_name, operation_kwargs)

        monkeypatch.setattr(Connection, "_make_api_call", call)
        return refused

    return install


def test_a_validation_exception_on_a_write_is_a_400_problem_and_stores_nothing(me, refuse):
    refused = refuse("BatchWriteItem")
    response = me.send("POST", "/api/v1/expenses", {"lines": [LINE]})
    problem = assert_problem(response.status_code, response.headers, response.body, 400)
    assert "ValidationException" not in problem["detail"] and "1024" not in problem["detail"]  # nothing echoed
    assert refused == ["BatchWriteItem"]
    refuse()  # DynamoDB answers again
    assert me.lines() == []


def test_a_validation_exception_on_a_read_is_a_400_problem(me, refuse):
    assert me.send("POST", "/api/v1/expenses", {"lines": [LINE]}).status_code == 201
    refused = refuse("Query")
    response = me.send("GET", "/api/v1/expenses?period=2026-01")
    assert_problem(response.status_code, response.headers, response.body, 400)
    assert refused == ["Query"]


def test_a_validation_exception_on_a_settle_is_a_400_problem_and_changes_nothing(me, refuse):
    job = me.completed_job()
    before = me.result(job["jobId"])
    line_id = before["lines"][0]["lineId"]
    refused = refuse("PutItem", "UpdateItem", "TransactWriteItems")
    response = me.send("PATCH", f"/api/v1/jobs/{job['jobId']}/lines/{line_id}", {"category": "Other"})
    assert_problem(response.status_code, response.headers, response.body, 400)
    assert refused
    refuse()
    assert me.result(job["jobId"]) == before
