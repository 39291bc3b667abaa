"""Expense-line storage: one partition per (owner, month), sorted by lineId."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from chalicelib import clock, paging
from chalicelib.auth import Principal
from chalicelib.errors import ServiceUnavailable, ValidationFailed
from chalicelib.lines import ids, versions
from chalicelib.lines.validation import MAX_RANGE_KEY_BYTES, key_fits
from chalicelib.lines.versions import owner_period as owner_period  # re-exported: the key of unversioned lines
from chalicelib.tables import ExpenseLine

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


def line_item(part: str, line: dict[str, str], stamp: str, seq: str, expires: datetime) -> ExpenseLine:
    return ExpenseLine(part, line["lineId"], date=line["date"], vendor=line["vendor"], amount=line["amount"],
                       currency=line["currency"], description=line["description"], imported_at=stamp,
                       import_seq=seq, expires_at=expires)


def import_lines(principal: Principal, lines: list[dict[str, str]]) -> dict[str, Any]:
    """Store validated lines, in the order given, each with its import sequence, in each period's current version.

    A line without a lineId is named by its content and occurrence (lines/ids.py): the same request again stores
    nothing new. A re-imported lineId replaces the stored line of its month, sequence included: it moves to the
    place of its latest import (a report lists it there), as any replaced line would.
    """
    moment = clock.now()
    stamp = clock.iso(moment)
    by_period: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for index, line in enumerate(ids.assign(lines)):
        by_period.setdefault(line["date"][:7], []).append((index, line))
    owner = principal.user_id
    for period, numbered in by_period.items():
        for _ in range(5):
            seen = versions.pointer(owner, period)
            part = versions.partition(owner, period, seen.version)
            with ExpenseLine.batch_write() as batch:
                for index, line in numbered:
                    batch.save(line_item(part, line, stamp, import_seq(moment, index), line_expiry(period, moment)))
            try:
                versions.note_write(owner, period, seen)
                break
            except versions.PeriodChanged:
                continue  # an import committed or a DELETE landed meanwhile: write into what is current now
        else:
            raise ServiceUnavailable("The period's lines kept changing while this request ran; nothing may be "
                                     "lost, so try again.")
    return {"imported": len(lines), "periods": sorted(by_period)}


def to_dict(line: ExpenseLine) -> dict[str, str]:
    return {"lineId": line.line_id, "date": line.date, "vendor": line.vendor, "amount": line.amount,
            "currency": line.currency, "description": line.description or ""}


def list_lines(principal: Principal, period: str, size: int, token: str | None) -> dict[str, Any]:
    start = paging.decode(token)
    if start is not None and (set(start) != {"lineId"} or not key_fits(start["lineId"], MAX_RANGE_KEY_BYTES)):
        # A token names the last line of its page; a lineId DynamoDB cannot take as a key is a forged token.
        raise ValidationFailed("nextToken: is not a token this API issued.", field="nextToken")
    key = versions.current_partition(principal.user_id, period)
    last = {"ownerPeriod": {"S": key}, "lineId": {"S": start["lineId"]}} if start else None
    result = ExpenseLine.query(key, limit=size, last_evaluated_key=last, consistent_read=True)
    items = [to_dict(line) for line in result]
    more = result.last_evaluated_key is not None and len(items) == size
    return {"items": items, "nextToken": paging.encode({"lineId": items[-1]["lineId"]}) if more else None}


def iter_lines(part: str, *, after: str = "", page: int = 100) -> Iterator[ExpenseLine]:
    """Lines of a partition (lines/versions.job_partition) in lineId order, strictly after the checkpoint `after`,
    read page by page."""
    condition = ExpenseLine.line_id > after if after else None
    yield from ExpenseLine.query(part, range_key_condition=condition, consistent_read=True, page_size=page)


def read_lines(part: str, after: str, n: int) -> list[ExpenseLine]:
    """Up to `n` lines strictly after `after`, in one read."""
    return list(islice(iter_lines(part, after=after, page=n), n))


def whole_period(part: str, n: int) -> list[ExpenseLine] | None:
    """Every line of the partition when there are at most `n` (one read), else None."""
    page = ExpenseLine.query(part, consistent_read=True, limit=n)
    lines = list(page)
    return lines if page.last_evaluated_key is None else None


def has_lines(owner_id: str, period: str) -> bool:
    """Whether the month has any line (one read of one key, in its current version)."""
    return bool(read_lines(versions.current_partition(owner_id, period), "", 1))


def count_lines(part: str) -> int:
    return ExpenseLine.count(part, consistent_read=True)
