"""moto's server, with DynamoDB requests made atomic the way the real service makes them.

moto evaluates a write's ConditionExpression and applies the write without a lock, and
its server answers on threads, so two concurrent conditional writes (or transactions)
can both pass a check that only one should pass: 25 concurrent creates could admit 21
jobs against a limit of 20. Real DynamoDB never does that. This server serializes
DynamoDB calls (reads included, they are cheap) and leaves every other service (SQS long
polls above all) concurrent. `python -m local.moto_server -H 127.0.0.1 -p PORT`.

Two of moto's costs grow with the table, and a 20,000-line job made them dominate: this server makes
TransactWriteItems back up only the items it touches (`backup_touched_items_only`), and a Query read only
its own partition (`query_one_partition`). It also writes read results as plain JSON (`plain_json_reads`)
and reads data-plane requests with json.loads (`plain_json_reads`), and sizes a new item once, not once per
attribute (`size_items_once`). These patches reach into moto's internals as of moto 5.2.5 (pinned in
requirements-dev.txt); on an upgrade, run tests/integration/test_moto_server.py first.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import moto.dynamodb.models as dynamodb_models
import moto.dynamodb.models.table as table_models
from moto.core.model_instances import model_data
from moto.dynamodb.comparisons import get_comparison_func
from moto.dynamodb.exceptions import ItemSizeTooLarge
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
from moto.dynamodb.models.table import Table
from moto.dynamodb.models.utilities import bytesize
from moto.dynamodb.responses import DynamoHandler, DynamoResult
from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class SerializedDynamoDB:
    """WSGI middleware: one DynamoDB request at a time, answered in full inside the lock."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with self.lock:
                try:
                    return list(self.app(environ, start_response))
                finally:
                    forget_dynamodb_instances()
        return self.app(environ, start_response)


def forget_dynamodb_instances() -> None:
    """Drop moto's registry of every DynamoDB model object it ever made (kept only for its dashboard).

    Every Item a request builds registers itself; nothing ever unregisters it, so a long run grew the server
    to the machine's memory (when TransactWriteItems still deep-copied whole tables, each one leaked a table).
    """
    for model in model_data["dynamodb"].values():
        model.instances_tracked.clear()  # type: ignore[attr-defined]


Saved = tuple[Table, DynamoType, "DynamoType | None", "Item | None"]


def backup_touched_items_only() -> None:
    """Make moto's TransactWriteItems back up the items it touches, not whole tables.

    moto deep-copies every table a transaction names before it starts, as its rollback copy: the cost of one
    transaction grows with the table, and at 10,000 lines a checkpoint took seconds and the workers' calls timed
    out. Here the table "copy" is the table itself (so moto's own rollback is a no-op) and this wrapper restores
    the touched items instead. That is only sound because SerializedDynamoDB runs one DynamoDB request at a time:
    nothing else can change those items between the backup and the restore.
    """
    original = DynamoDBBackend.transact_write_items
    if getattr(original, "touched_items_only", False):
        return

    def deepcopy_but_tables(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    # moto's module uses `copy.deepcopy` in two places: the table backup above, and an item copy (kept as is).
    dynamodb_models.copy = SimpleNamespace(deepcopy=deepcopy_but_tables, copy=copy.copy)  # type: ignore[attr-defined]

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        saved: list[Saved] = []
        for entry in transact_items:
            _, op = next(iter(entry.items()))
            table = self.tables.get(op.get("TableName", ""))
            attrs = op.get("Key") or op.get("Item") or {}
            if table is None or table.hash_key_attr not in attrs:
                continue  # moto rejects it before writing anything
            hash_key = DynamoType(attrs[table.hash_key_attr])
            range_key = None
            if table.range_key_attr is not None:
                if table.range_key_attr not in attrs:
                    continue
                range_key = DynamoType(attrs[table.range_key_attr])
            saved.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
        try:
            original(self, transact_items)
        except Exception:
            for table, hash_key, range_key, item in reversed(saved):  # reversed: the first backup of a key wins
                _restore(table, hash_key, range_key, item)
            raise

    transact_write_items.touched_items_only = True  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _restore(table: Table, hash_key: DynamoType, range_key: DynamoType | None, item: Item | None) -> None:
    _forget_sorted_keys(table, hash_key)
    if item is not None:
        if range_key is not None:
            table.items[hash_key][range_key] = item
        else:
            table.items[hash_key] = item  # type: ignore[assignment]
    elif range_key is not None:
        table.items.get(hash_key, {}).pop(range_key, None)
    else:
        table.items.pop(hash_key, None)


def query_one_partition() -> None:
    """Make a table Query look at its own partition, not the whole table.

    moto's Query starts from `Table.all_items()`, every item of the table sorted, and then walks the partition
    from its first item, sizing each, to find the page after ExclusiveStartKey: paging through a 20,000-line
    job cost O(table) per page and most of the server's time. For a query on the table itself (no index) with a
    string sort key, the items handed to moto's Query here are only the page's candidates: the partition's
    items that pass the key condition and come after ExclusiveStartKey, in order, at most Limit + 1 of them,
    found by bisecting the partition's sorted keys (kept per partition until a put or delete there).
    moto still applies the key condition, Limit, the size limit, filters and projections to them, so results
    and LastEvaluatedKey are what they were. Index queries get the items unsorted (they sort their own).
    Sound because SerializedDynamoDB runs one DynamoDB request at a time.
    """
    original_query, original_all_items = Table.query, Table.all_items
    if getattr(original_query, "one_partition", False):
        return

    def all_items(self: Table) -> list[Item]:
        candidates = self.__dict__.get("_query_candidates")
        return original_all_items(self) if candidates is None else candidates

    def query(self: Table, hash_key: DynamoType | None, range_comparison: str | None, range_objs: list[DynamoType],
              limit: int | None, exclusive_start_key: dict[str, Any] | None, scan_index_forward: bool,
              projection_expressions: Any, index_name: str | None = None, *args: Any, **kwargs: Any) -> Any:
        filter_kwargs = set(kwargs) - {"consistent_read", "filter_expression", "hash_key_conditions",
                                       "range_key_conditions"}
        if index_name:
            self.__dict__["_query_candidates"] = _unsorted_items(self)
        elif hash_key is not None and self.range_key_type == "S" and not filter_kwargs and len(args) <= 2:
            self.__dict__["_query_candidates"] = _page_candidates(
                self, hash_key, range_comparison, range_objs, limit, exclusive_start_key, scan_index_forward)
            _SHALLOW_RESULTS[0] = True
        try:
            return original_query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                                  scan_index_forward, projection_expressions, index_name, *args, **kwargs)
        finally:
            self.__dict__.pop("_query_candidates", None)
            _SHALLOW_RESULTS[0] = False

    def deepcopy_unless_shallow(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return list(value) if _SHALLOW_RESULTS[0] and isinstance(value, list) else copy.deepcopy(value, memo)

    # moto's Query deep-copies its page of results (a 1 MB page is thousands of items) before it filters,
    # projects (Item.project builds new items) and serializes them, none of which changes an item; an index
    # query keeps the copy (its projection works on the copy).
    table_models.copy = SimpleNamespace(deepcopy=deepcopy_unless_shallow, copy=copy.copy)  # type: ignore[attr-defined]
    original_put, original_delete = Table.put_item, Table.delete_item

    def put_item(self: Table, item_attrs: dict[str, Any], *args: Any, **kwargs: Any) -> Item:
        hash_key = DynamoType(item_attrs[self.hash_key_attr]) if self.hash_key_attr in item_attrs else None
        try:
            return original_put(self, item_attrs, *args, **kwargs)
        finally:
            if hash_key is not None:
                _forget_sorted_keys(self, hash_key)

    def delete_item(self: Table, hash_key: DynamoType, range_key: DynamoType | None) -> Item | None:
        _forget_sorted_keys(self, hash_key)
        return original_delete(self, hash_key, range_key)

    query.one_partition = True  # type: ignore[attr-defined]
    Table.query = query  # type: ignore[method-assign]
    Table.all_items = all_items  # type: ignore[method-assign]
    Table.put_item = put_item  # type: ignore[method-assign]
    Table.delete_item = delete_item  # type: ignore[method-assign]


_SHALLOW_RESULTS = [False]  # set while a table query runs (one at a time: SerializedDynamoDB)


def _unsorted_items(table: Table) -> list[Item]:
    if table.range_key_attr:
        return [item for part in table.items.values() for item in part.values()]  # type: ignore[attr-defined]
    return list(table.items.values())  # type: ignore[arg-type]


def _sorted_keys(table: Table, hash_key: DynamoType, part: dict) -> tuple[list[str], list[DynamoType]]:
    """The partition's sort keys in order (values, keys), kept until a put or delete changes its key set."""
    known = table.__dict__.setdefault("_sorted_keys", {})
    entry = known.get(hash_key)
    if entry is None:
        keys = sorted(part, key=lambda k: k.value)
        entry = known[hash_key] = ([k.value for k in keys], keys)
    return entry


def _forget_sorted_keys(table: Table, hash_key: DynamoType) -> None:
    table.__dict__.get("_sorted_keys", {}).pop(hash_key, None)


def _bounds(values: list[str], comparison: str | None, against: list[Any]) -> tuple[int, int]:
    """The slice of `values` a sort key condition can match (the condition is still applied to it)."""
    lo, hi = 0, len(values)
    if comparison in (">", "GT"):
        lo = bisect.bisect_right(values, against[0])
    elif comparison in (">=", "GE"):
        lo = bisect.bisect_left(values, against[0])
    elif comparison in ("<", "LT"):
        hi = bisect.bisect_left(values, against[0])
    elif comparison in ("<=", "LE"):
        hi = bisect.bisect_right(values, against[0])
    elif comparison in ("=", "EQ"):
        lo, hi = bisect.bisect_left(values, against[0]), bisect.bisect_right(values, against[0])
    elif comparison == "BETWEEN":
        lo, hi = bisect.bisect_left(values, against[0]), bisect.bisect_right(values, against[1])
    elif comparison == "BEGINS_WITH":
        lo = bisect.bisect_left(values, against[0])
    return lo, max(lo, hi)


def _page_candidates(table: Table, hash_key: DynamoType, comparison: str | None, objs: list[DynamoType],
                     limit: int | None, start: dict[str, Any] | None, forward: bool) -> list[Item]:
    part = table.items.get(hash_key) or {}
    values, keys = _sorted_keys(table, hash_key, part)
    against = [o.cast_value for o in objs]
    lo, hi = _bounds(values, comparison, against) if comparison else (0, len(values))
    if start and table.range_key_attr in start:
        after = next(iter(start[table.range_key_attr].values()))
        if forward is not False:
            lo = max(lo, bisect.bisect_right(values, after))
        else:
            hi = min(hi, bisect.bisect_left(values, after))
    test = get_comparison_func(comparison) if comparison else None
    picked: list[Item] = []
    # Walk the slice in the query's order, keeping what passes, until Limit are found. Then, as moto does, the
    # next item of the partition (in the slice or past its bound, matching or not) is handed over too, so moto
    # reports a LastEvaluatedKey whenever the partition goes on after a full page.
    order = range(lo, hi) if forward is not False else range(hi - 1, lo - 1, -1)
    beyond = hi if forward is not False else lo - 1  # the first position past the slice, in that order
    for i in order:
        if limit and len(picked) == limit:
            beyond = i
            break
        if test is not None and not test(values[i], *against):
            if comparison == "BEGINS_WITH" and forward is not False:
                beyond = i
                break  # sorted: past the prefix, nothing more can match
            continue
        item = part.get(keys[i])
        if item is not None:
            picked.append(item)
    if limit and len(picked) == limit and 0 <= beyond < len(keys) and part.get(keys[beyond]) is not None:
        picked.append(part[keys[beyond]])
    return picked if forward is not False else picked[::-1]


def size_items_once() -> None:
    """Build an item's attributes, then check its 400 KB limit once.

    moto's attribute dict re-sums the size of every attribute each time one is set, so building an item of
    n attributes sized it n times over: a large share of each put. The check is the same sum, made once.
    """
    if getattr(Item.__init__, "sized_once", False):
        return

    def init(self: Item, hash_key: DynamoType, range_key: DynamoType | None, attrs: dict[str, Any]) -> None:
        self.hash_key, self.range_key = hash_key, range_key
        values = {key: DynamoType(value) for key, value in attrs.items()}
        if sum(bytesize(key) + value.size() for key, value in values.items()) > 405000:  # moto's own limit
            raise ItemSizeTooLarge
        self.attrs = LimitedSizeDict(values)  # its __init__ fills it without the per-key check

    init.sized_once = True  # type: ignore[attr-defined]
    Item.__init__ = init  # type: ignore[method-assign]


_PLAIN_READS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan"})


def plain_json_reads() -> None:
    """Answer reads with `json.dumps` of moto's result instead of its shape-walking serializer.

    With the partition fix in, serializing read results was half of the server's DynamoDB time. A read's result
    is already DynamoDB JSON; only binary values (bytes, base64 on the wire) and timestamps need the serializer,
    and json.dumps refuses both, so such a result falls back to it.
    """
    original = DynamoResult.execute_result
    if getattr(original, "plain_reads", False):
        return

    def refuse(value: Any) -> Any:
        raise TypeError(type(value).__name__)

    def execute_result(self: DynamoResult, context: Any) -> Any:
        if context.operation_model.name in _PLAIN_READS:
            try:
                body = json.dumps(self.result, separators=(",", ":"), default=refuse)
            except (TypeError, ValueError):
                pass
            else:
                version = context.service_model.metadata.get("jsonVersion", "1.0")
                return 200, {"Content-Type": f"application/x-amz-json-{version}"}, body
        return original(self, context)

    execute_result.plain_reads = True  # type: ignore[attr-defined]
    DynamoResult.execute_result = execute_result  # type: ignore[method-assign]

    # Requests too: moto parses each body by walking botocore's shapes, a fifth of a BatchWriteItem's time.
    # A data-plane body is already the parameters as DynamoDB JSON; one with a binary value ("B", "BS": base64
    # the parser decodes) takes moto's parser.
    original_parse = DynamoHandler.parse_parameters

    def parse_parameters(self: DynamoHandler, request: Any) -> None:
        body = request.data
        if self._get_action() in _DATA_PLANE and b'"B"' not in body and b'"BS"' not in body:
            try:
                self.params = json.loads(body)
                return
            except ValueError:
                pass
        original_parse(self, request)

    DynamoHandler.parse_parameters = parse_parameters  # type: ignore[method-assign]


_DATA_PLANE = frozenset({"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem",
                         "BatchWriteItem", "TransactWriteItems", "TransactGetItems"})


def freeze_what_survives() -> None:
    """Stop full garbage collections from walking every stored item.

    The server keeps every item it stores as Python objects, so each full collection walked the whole data set:
    a pause of 0.2 s with a benchmark's tables loaded, taken inside the DynamoDB lock, so every request in
    flight waited for it. What survives a full collection is moved to the permanent generation (gc.freeze), so
    the next one walks only what is newer. Cycles among frozen objects are never reclaimed; the stored items
    have none, and a request's garbage dies young.
    """
    gc.freeze()

    def refreeze(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()

    gc.callbacks.append(refreeze)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    backup_touched_items_only()
    query_one_partition()
    plain_json_reads()
    size_items_once()
    freeze_what_survives()
    # werkzeug's line per request cost a fifth of the server's CPU under load; errors are still logged.
    if not os.environ.get("MOTO_ACCESS_LOG"):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, SerializedDynamoDB(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
