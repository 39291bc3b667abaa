"""Expense-line storage: one partition per (owner, month), sorted by lineId."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from chalicelib import clock, paging
from chalicelib.auth import Principal
from chalicelib.errors import ValidationFailed
from chalicelib.lines.validation import MAX_RANGE_KEY_BYTES, key_fits
from chalicelib.tables import ExpenseLine


def owner_period(owner_id: str, period: str) -> str:
    return f"{owner_id}#{period}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Lines expire this long after the later of their month's end and their import (docs/deploy.md, "Data safety
# and retention"): a month can be reported on again for over a year, and a month imported late is not swept
# away days after its import. Report configurations never expire (kept until deleted).
LINE_RETENTION_DAYS = 400


def line_expiry(period: str, imported: datetime) -> datetime:
    """When a line of `period` (YYYY-MM) imported at `imported` expires (DynamoDB TTL on expiresAt)."""
    year, month = int(period[:4]), int(period[5:7])
    month_end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return max(month_end, imported) + timedelta(days=LINE_RETENTION_DAYS)


def import_seq(moment: datetime, index: int) -> str:
    """The import order of the `index`-th line (0-based) of a request received at `moment`.

    Microseconds since the epoch (16 digits), then the line's place in the request or file (6 digits): it sorts
    as text, later imports after earlier ones and a request's lines in its order. Two imports in the same
    microsecond would interleave by place; a lineId breaks any tie.
    """
    return f"{(moment - _EPOCH) // timedelta(microseconds=1):016d}.{index:06d}"


def import_lines(principal: Principal, lines: list[dict[str, str]]) -> dict[str, Any]:
    """Store validated lines, in the order given, each with its import sequence.

    A re-imported lineId replaces the stored line of its month, sequence included: it moves to the place of
    its latest import (a report lists it there), as any replaced line would.
    """
    moment = clock.now()
    stamp = clock.iso(moment)
    periods = set()
    with ExpenseLine.batch_write() as batch:
        for index, line in enumerate(lines):
            period = line["date"][:7]
            periods.add(period)
            batch.save(ExpenseLine(
                owner_period(principal.user_id, period), line["lineId"], date=line["date"],
                vendor=line["vendor"], amount=line["amount"], currency=line["currency"],
                description=line["description"], imported_at=stamp, import_seq=import_seq(moment, index),
                expires_at=line_expiry(period, moment),
            ))
    return {"imported": len(lines), "periods": sorted(periods)}


def to_dict(line: ExpenseLine) -> dict[str, str]:
    return {"lineId": line.line_id, "date": line.date, "vendor": line.vendor, "amount": line.amount,
            "currency": line.currency, "description": line.description or ""}


def list_lines(principal: Principal, period: str, size: int, token: str | None) -> dict[str, Any]:
    start = paging.decode(token)
    if start is not None and (set(start) != {"lineId"} or not key_fits(start["lineId"], MAX_RANGE_KEY_BYTES)):
        # A token names the last line of its page; a lineId DynamoDB cannot take as a key is a forged token.
        raise ValidationFailed("nextToken: is not a token this API issued.", field="nextToken")
    key = owner_period(principal.user_id, period)
    last = {"ownerPeriod": {"S": key}, "lineId": {"S": start["lineId"]}} if start else None
    result = ExpenseLine.query(key, limit=size, last_evaluated_key=last, consistent_read=True)
    items = [to_dict(line) for line in result]
    more = result.last_evaluated_key is not None and len(items) == size
    return {"items": items, "nextToken": paging.encode({"lineId": items[-1]["lineId"]}) if more else None}


def iter_lines(owner_id: str, period: str, after: str = "", page: int = 100) -> Iterator[ExpenseLine]:
    """Lines of a month in lineId order, strictly after the checkpoint `after`, read page by page."""
    key = owner_period(owner_id, period)
    condition = ExpenseLine.line_id > after if after else None
    yield from ExpenseLine.query(key, range_key_condition=condition, consistent_read=True, page_size=page)


def read_lines(owner_id: str, period: str, after: str, n: int) -> list[ExpenseLine]:
    """Up to `n` lines strictly after `after`, in one read."""
    return list(islice(iter_lines(owner_id, period, after=after, page=n), n))


def whole_period(owner_id: str, period: str, n: int) -> list[ExpenseLine] | None:
    """Every line of the month when there are at most `n` (one read), else None."""
    page = ExpenseLine.query(owner_period(owner_id, period), consistent_read=True, limit=n)
    lines = list(page)
    return lines if page.last_evaluated_key is None else None


def has_lines(owner_id: str, period: str) -> bool:
    """Whether the month has any line (one read of one key)."""
    return bool(read_lines(owner_id, period, "", 1))


def count_lines(owner_id: str, period: str) -> int:
    return ExpenseLine.count(owner_period(owner_id, period), consistent_read=True)
