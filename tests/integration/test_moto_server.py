"""local/moto_server.py's TransactWriteItems: all or nothing, though it backs up only the items it touches.

The suite's own moto server runs that code, so these talk to it over the wire like every other test.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError


@pytest.fixture(scope="module")
def ddb() -> object:
    return boto3.client("dynamodb", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


@pytest.fixture(scope="module")
def tables(ddb) -> Iterator[tuple[str, str]]:
    """A hash-and-range table and a hash-only one, made for this module."""
    suffix = uuid.uuid4().hex[:8]
    ranged, plain = f"tx-ranged-{suffix}", f"tx-plain-{suffix}"
    ddb.create_table(TableName=ranged, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                           {"AttributeName": "sk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                {"AttributeName": "sk", "KeyType": "RANGE"}])
    ddb.create_table(TableName=plain, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    yield ranged, plain
    ddb.delete_table(TableName=ranged)
    ddb.delete_table(TableName=plain)


def _items(ddb, table: str) -> dict[tuple[str, str], str]:
    rows = ddb.scan(TableName=table, ConsistentRead=True)["Items"]
    return {(r["pk"]["S"], r.get("sk", {}).get("S", "")): r["v"]["S"] for r in rows}


def _writes(ranged: str, plain: str, pk: str) -> list[dict]:
    """Change an existing item in each table, add a new one in each, and delete one."""
    return [
        {"Update": {"TableName": ranged, "Key": {"pk": {"S": pk}, "sk": {"S": "a"}},
                    "UpdateExpression": "SET v = :v", "ExpressionAttributeValues": {":v": {"S": "changed"}}}},
        {"Put": {"TableName": ranged, "Item": {"pk": {"S": pk}, "sk": {"S": "new"}, "v": {"S": "new"}}}},
        {"Delete": {"TableName": ranged, "Key": {"pk": {"S": pk}, "sk": {"S": "gone"}}}},
        {"Put": {"TableName": plain, "Item": {"pk": {"S": pk}, "v": {"S": "changed"}}}},
        {"Put": {"TableName": plain, "Item": {"pk": {"S": pk + "-new"}, "v": {"S": "new"}}}},
    ]


def _seed(ddb, ranged: str, plain: str, pk: str) -> None:
    for sk in ("a", "gone"):
        ddb.put_item(TableName=ranged, Item={"pk": {"S": pk}, "sk": {"S": sk}, "v": {"S": "before"}})
    ddb.put_item(TableName=plain, Item={"pk": {"S": pk}, "v": {"S": "before"}})


@pytest.mark.parametrize("last, code", [
    ({"ConditionCheck": {"TableName": "plain", "Key": {"pk": {"S": "absent"}},
                         "ConditionExpression": "attribute_exists(pk)"}}, "TransactionCanceledException"),
    ({"Put": {"TableName": "plain", "Item": {"pk": {"S": "same"}, "v": {"S": "twice"}}}}, "ValidationException"),
], ids=["failed-condition", "one-item-twice"])
def test_a_refused_transaction_undoes_every_earlier_write(ddb, tables, last, code):
    ranged, plain = tables
    pk = uuid.uuid4().hex
    _seed(ddb, ranged, plain, pk)
    before = (_items(ddb, ranged), _items(ddb, plain))
    (op, body), = last.items()
    key = "Key" if "Key" in body else "Item"
    body = {**body, "TableName": plain, key: {**body[key], "pk": {"S": pk if body[key]["pk"]["S"] == "same"
                                                                   else pk + "-absent"}}}
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(TransactItems=[*_writes(ranged, plain, pk), {op: body}])
    assert caught.value.response["Error"]["Code"] == code
    assert (_items(ddb, ranged), _items(ddb, plain)) == before


def test_a_transaction_that_passes_applies_every_write(ddb, tables):
    ranged, plain = tables
    pk = uuid.uuid4().hex
    _seed(ddb, ranged, plain, pk)
    ddb.transact_write_items(TransactItems=_writes(ranged, plain, pk))
    assert {k: v for k, v in _items(ddb, ranged).items() if k[0] == pk} == {(pk, "a"): "changed", (pk, "new"): "new"}
    assert {k: v for k, v in _items(ddb, plain).items() if k[0].startswith(pk)} == {
        (pk, ""): "changed", (pk + "-new", ""): "new"}


# --- Query reads one partition ---------------------------------------------------------------------------------


PARTITION_SEED = 20240917  # the order the partition's items are written in; fixed, so a failure replays


@pytest.fixture(scope="module")
def partition(ddb, tables) -> tuple[str, str, list[str]]:
    """One partition of 120 items (written in a shuffled order), beside two neighbours of 30.

    The neighbours' keys differ from the partition's whatever uuid4 gives (a neighbour named `pk[:-1] + "0"`
    was the partition itself whenever pk ended in 0, one run in 16, and overwrote a quarter of its items).
    """
    ranged, _ = tables
    pk = "p" + uuid.uuid4().hex
    keys = [f"k{i:04d}" for i in range(120)]
    order = keys[:]
    random.Random(PARTITION_SEED).shuffle(order)
    for n, sk in enumerate(order):
        ddb.put_item(TableName=ranged, Item={"pk": {"S": pk}, "sk": {"S": sk}, "v": {"S": str(n % 3)}})
    for neighbour in ("o" + pk[1:], pk + "z"):
        assert neighbour != pk
        for i in range(30):
            ddb.put_item(TableName=ranged, Item={"pk": {"S": neighbour}, "sk": {"S": f"k{i:04d}"}, "v": {"S": "x"}})
    return ranged, pk, keys


def _pages(ddb, **query) -> tuple[list[str], int]:
    """Every sort key a paged query returns, and how many pages it took."""
    out, pages, start = [], 0, None
    while True:
        answer = ddb.query(**query, **({"ExclusiveStartKey": start} if start else {}))
        out += [item["sk"]["S"] for item in answer["Items"]]
        pages += 1
        start = answer.get("LastEvaluatedKey")
        if not start:
            return out, pages


@pytest.mark.parametrize("forward", [True, False])
def test_a_paged_query_returns_its_partition_in_order_once(ddb, partition, forward):
    ranged, pk, keys = partition
    got, pages = _pages(ddb, TableName=ranged, KeyConditionExpression="pk = :pk", Limit=7, ScanIndexForward=forward,
                        ExpressionAttributeValues={":pk": {"S": pk}})
    assert got == (keys if forward else keys[::-1])
    assert pages == 18  # 17 full pages of 7, then the last item (and moto's empty page after a full one: none)


@pytest.mark.parametrize("condition, values, expected", [
    ("sk > :a", {":a": {"S": "k0100"}}, lambda k: k > "k0100"),
    ("sk <= :a", {":a": {"S": "k0009"}}, lambda k: k <= "k0009"),
    ("sk BETWEEN :a AND :b", {":a": {"S": "k0042"}, ":b": {"S": "k0056"}}, lambda k: "k0042" <= k <= "k0056"),
    ("begins_with(sk, :a)", {":a": {"S": "k005"}}, lambda k: k.startswith("k005")),
])
@pytest.mark.parametrize("forward", [True, False])
def test_a_paged_query_applies_its_sort_key_condition(ddb, partition, condition, values, expected, forward):
    ranged, pk, keys = partition
    got, pages = _pages(ddb, TableName=ranged, KeyConditionExpression=f"pk = :pk AND {condition}", Limit=5,
                        ScanIndexForward=forward, ExpressionAttributeValues={":pk": {"S": pk}, **values})
    matching = [k for k in keys if expected(k)]
    assert got == (matching if forward else matching[::-1])
    # Each full page says there may be more when the partition goes on past it, matching or not (as moto
    # and DynamoDB do): one more, empty page when the matches end on a page boundary and items follow.
    ends_at_edge = (matching[-1] != keys[-1]) if forward else (matching[0] != keys[0])
    assert pages == len(matching) // 5 + (1 if len(matching) % 5 or ends_at_edge else 0)


def test_limit_applies_before_the_filter_as_in_dynamodb(ddb, partition):
    ranged, pk, keys = partition
    first = ddb.query(TableName=ranged, KeyConditionExpression="pk = :pk", FilterExpression="v = :v", Limit=10,
                      ExpressionAttributeValues={":pk": {"S": pk}, ":v": {"S": "0"}})
    assert first["ScannedCount"] == 10 and first["LastEvaluatedKey"]["sk"]["S"] == keys[9]
    everything, _ = _pages(ddb, TableName=ranged, KeyConditionExpression="pk = :pk", FilterExpression="v = :v",
                           Limit=10, ExpressionAttributeValues={":pk": {"S": pk}, ":v": {"S": "0"}})
    assert everything == sorted(keys[n] for n in range(120) if _written_value(keys[n]) == "0")


def _written_value(sk: str) -> str:
    """The `v` the partition fixture gave `sk` (its position in the seeded write order, mod 3)."""
    order = [f"k{i:04d}" for i in range(120)]
    random.Random(PARTITION_SEED).shuffle(order)
    return str(order.index(sk) % 3)


KEY_CONDITIONS = [
    ("", lambda k, a, b: True),
    (" AND sk > :a", lambda k, a, b: k > a),
    (" AND sk <= :a", lambda k, a, b: k <= a),
    (" AND sk BETWEEN :a AND :b", lambda k, a, b: a <= k <= b),
    (" AND begins_with(sk, :a)", lambda k, a, b: k.startswith(a)),
]


def _check_paging(ddb, table: str, seed: int) -> None:
    """One random partition, key condition, filter, Limit and direction; every page as DynamoDB answers it.

    DynamoDB reads up to Limit items that match the key condition, in the query's order, then filters them:
    ScannedCount is the items read, Items those of them that pass the filter, LastEvaluatedKey the last one read.
    Across the pages, every matching item comes back exactly once, in order.
    """
    rng = random.Random(seed)
    pk = f"seed-{seed}-{uuid.uuid4().hex}"
    keys = sorted({f"k{rng.randrange(200):04d}" for _ in range(rng.randrange(1, 90))})
    values = {k: rng.choice("0012") for k in keys}
    written = keys[:]
    rng.shuffle(written)
    for start in range(0, len(written), 25):
        ddb.batch_write_item(RequestItems={table: [
            {"PutRequest": {"Item": {"pk": {"S": pk}, "sk": {"S": k}, "v": {"S": values[k]}}}}
            for k in written[start:start + 25]]})
    condition, matches = rng.choice(KEY_CONDITIONS)
    a, b = sorted([f"k{rng.randrange(200):04d}", f"k{rng.randrange(200):04d}"])
    if "begins_with" in condition:
        a = a[:rng.randrange(2, 5)]
    forward, limit, wanted = rng.random() < 0.5, rng.randrange(1, 13), rng.choice("012")
    names = {":pk": {"S": pk}, ":v": {"S": wanted}}
    if ":a" in condition:
        names[":a"] = {"S": a}
    if ":b" in condition:
        names[":b"] = {"S": b}
    read = [k for k in (keys if forward else keys[::-1]) if matches(k, a, b)]
    what = f"seed {seed}: {len(keys)} items, key condition {condition!r} a={a} b={b}, v = {wanted}, " \
           f"Limit {limit}, forward {forward}"
    start, position, pages = None, 0, 0
    while True:
        answer = ddb.query(TableName=table, KeyConditionExpression="pk = :pk" + condition, FilterExpression="v = :v",
                           Limit=limit, ScanIndexForward=forward, ExpressionAttributeValues=names,
                           **({"ExclusiveStartKey": start} if start else {}))
        window = read[position:position + limit]
        assert answer["ScannedCount"] == len(window), f"{what}: page {pages} read {answer['ScannedCount']}, " \
                                                      f"expected {len(window)}"
        assert [i["sk"]["S"] for i in answer["Items"]] == [k for k in window if values[k] == wanted], \
            f"{what}: page {pages}"
        position += len(window)
        pages += 1
        start = answer.get("LastEvaluatedKey")
        if start is None:
            assert position == len(read), f"{what}: paging stopped after {position} of {len(read)} items"
            return
        assert len(window) == limit and start == {"pk": {"S": pk}, "sk": {"S": window[-1]}}, \
            f"{what}: page {pages} LastEvaluatedKey {start}"
        assert pages <= len(read) + 1, f"{what}: paging does not end"


def test_paging_with_limit_and_a_filter_returns_every_match_once_over_50_seeds(ddb, tables):
    ranged, _ = tables
    for seed in range(50):
        _check_paging(ddb, ranged, seed)


# --- reads answered as plain JSON ------------------------------------------------------------------------------

EVERY_TYPE = {"s": {"S": "text é"}, "n": {"N": "12.5"}, "yes": {"BOOL": True}, "nothing": {"NULL": True},
              "m": {"M": {"inner": {"L": [{"S": "a"}, {"N": "1"}, {"M": {}}]}}}, "ss": {"SS": ["x", "y"]},
              "ns": {"NS": ["1", "2"]}}


@pytest.mark.parametrize("binary", [False, True], ids=["json-types", "with-binary"])
def test_every_read_returns_what_was_written(ddb, tables, binary):
    ranged, _ = tables
    pk = uuid.uuid4().hex
    item = {"pk": {"S": pk}, "sk": {"S": "a"}, **EVERY_TYPE, **({"b": {"B": b"\x00\xffbytes"}} if binary else {})}
    ddb.put_item(TableName=ranged, Item=item)
    key = {"pk": {"S": pk}, "sk": {"S": "a"}}
    reads = [
        ddb.get_item(TableName=ranged, Key=key, ConsistentRead=True)["Item"],
        ddb.batch_get_item(RequestItems={ranged: {"Keys": [key]}})["Responses"][ranged][0],
        *ddb.query(TableName=ranged, KeyConditionExpression="pk = :pk",
                   ExpressionAttributeValues={":pk": {"S": pk}})["Items"],
        *ddb.scan(TableName=ranged, FilterExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": pk}})["Items"],
    ]
    expected = {**item, "ss": {"SS": ["x", "y"]}, "ns": {"NS": ["1", "2"]}}
    for read in reads:
        assert {**read, "ss": {"SS": sorted(read["ss"]["SS"])}, "ns": {"NS": sorted(read["ns"]["NS"])}} == expected


def test_a_page_read_after_writes_sees_them(ddb, tables):
    ranged, _ = tables
    pk = uuid.uuid4().hex
    for i in range(0, 40, 2):
        ddb.put_item(TableName=ranged, Item={"pk": {"S": pk}, "sk": {"S": f"k{i:04d}"}, "v": {"S": "x"}})
    query = {"TableName": ranged, "KeyConditionExpression": "pk = :pk", "Limit": 5,
             "ExpressionAttributeValues": {":pk": {"S": pk}}}
    first = ddb.query(**query)
    assert [i["sk"]["S"] for i in first["Items"]] == ["k0000", "k0002", "k0004", "k0006", "k0008"]
    ddb.delete_item(TableName=ranged, Key={"pk": {"S": pk}, "sk": {"S": "k0010"}})
    ddb.query(**query)  # the partition's order is read again after the delete
    ddb.put_item(TableName=ranged, Item={"pk": {"S": pk}, "sk": {"S": "k0009"}, "v": {"S": "new"}})
    ddb.put_item(TableName=ranged, Item={"pk": {"S": pk}, "sk": {"S": "k0012"}, "v": {"S": "changed"}})
    second = ddb.query(**query, ExclusiveStartKey=first["LastEvaluatedKey"])
    assert [(i["sk"]["S"], i["v"]["S"]) for i in second["Items"]] == [
        ("k0009", "new"), ("k0012", "changed"), ("k0014", "x"), ("k0016", "x"), ("k0018", "x")]


def test_an_item_over_400_kb_is_refused_and_one_under_is_kept(ddb, tables):
    _, plain = tables
    pk = uuid.uuid4().hex
    with pytest.raises(ClientError) as caught:
        ddb.put_item(TableName=plain, Item={"pk": {"S": pk}, "a": {"S": "x" * 250_000}, "b": {"S": "y" * 160_000}})
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "Item" not in ddb.get_item(TableName=plain, Key={"pk": {"S": pk}}, ConsistentRead=True)
    ddb.put_item(TableName=plain, Item={"pk": {"S": pk}, "a": {"S": "x" * 250_000}, "b": {"S": "y" * 140_000}})
    assert len(ddb.get_item(TableName=plain, Key={"pk": {"S": pk}})["Item"]["b"]["S"]) == 140_000
