"""The DynamoDB client's reads: json.loads where botocore's model walk would give the same answer."""

from __future__ import annotations

import json

import botocore.session
import pytest
from botocore.parsers import JSONParser

from chalicelib.tables import _PlainJSONParser, _PlainReads

MODEL = botocore.session.get_session().get_service_model("dynamodb")


def parse(parser_cls: type, operation: str, body: dict) -> dict:
    response = {"body": json.dumps(body).encode(), "headers": {"x-amzn-requestid": "r-1"}, "status_code": 200}
    return parser_cls().parse(response, MODEL.operation_model(operation).output_shape)


QUERY = {"Count": 2, "ScannedCount": 2, "ConsumedCapacity": {"TableName": "t", "CapacityUnits": 0.5},
         "Items": [{"pk": {"S": "a"}, "n": {"N": "12.50"}, "ok": {"BOOL": True}, "tags": {"SS": ["x", "y"]},
                    "m": {"M": {"inner": {"L": [{"N": "1"}, {"NULL": True}]}}}}],
         "LastEvaluatedKey": {"pk": {"S": "a"}}}


@pytest.mark.parametrize("operation, body", [
    ("Query", QUERY),
    ("GetItem", {"Item": QUERY["Items"][0]}),
    ("BatchGetItem", {"Responses": {"t": QUERY["Items"]}, "UnprocessedKeys": {}}),
    ("BatchWriteItem", {"UnprocessedItems": {}}),
    ("UpdateItem", {"Attributes": {"n": {"N": "3"}}}),
])
def test_plain_reads_equal_botocore_s_own(operation, body):
    assert parse(_PlainJSONParser, operation, body) == parse(JSONParser, operation, body)


def test_binary_values_still_take_botocore_s_walk_and_come_back_as_bytes():
    body = {"Item": {"pk": {"S": "a"}, "blob": {"B": "aGk="}, "blobs": {"BS": ["aGk="]}}}
    item = parse(_PlainJSONParser, "GetItem", body)["Item"]
    assert item["blob"] == {"B": b"hi"} and item["blobs"] == {"BS": [b"hi"]}


def test_other_protocols_and_outputs_keep_botocore_s_parsers():
    factory = _PlainReads()
    assert type(factory.create_parser("json")) is _PlainJSONParser
    assert type(factory.create_parser("query")) is not _PlainJSONParser
    # DescribeTable has timestamps: the walk turns them into datetimes.
    described = parse(_PlainJSONParser, "DescribeTable", {"Table": {"TableName": "t", "CreationDateTime": 1.7e9}})
    assert described["Table"]["CreationDateTime"].year == 2023
