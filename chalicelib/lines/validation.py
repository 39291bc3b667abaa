"""Expense-line validation: the whole request is checked before anything is stored."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from chalicelib.errors import ValidationFailed

# DynamoDB's key limits, in UTF-8 bytes: a partition (hash) key holds at most 2048, a sort (range) key at most
# 1024, and neither may be empty. A value past them is refused with a ValidationException (moto accepts it).
MAX_HASH_KEY_BYTES = 2048
MAX_RANGE_KEY_BYTES = 1024
# A lineId is the sort key of expense lines and of a job's line results: 128 ASCII characters fit that key.
MAX_LINE_ID_CHARS = 128
assert MAX_LINE_ID_CHARS <= MAX_RANGE_KEY_BYTES
LINE_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_LINE_ID_CHARS - 1}}}$")
# [0-9], not \d: \d also matches other scripts' digits ("١٢", "１２"), which Decimal() would quietly accept.
AMOUNT = re.compile(r"^-?[0-9]{1,12}(\.[0-9]{1,4})?$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
PERIOD = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
CSV_COLUMNS = ["lineId", "date", "vendor", "amount", "currency", "description"]
_FIELDS = set(CSV_COLUMNS)


def key_fits(value: Any, max_bytes: int = MAX_RANGE_KEY_BYTES) -> bool:
    """True if `value` is a string DynamoDB takes as a key: 1 to `max_bytes` bytes of UTF-8."""
    if not isinstance(value, str) or not value:
        return False
    try:
        return len(value.encode("utf-8")) <= max_bytes
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 at all
        return False


def check_line_id_key(value: Any, field: str = "lineId") -> str:
    """A lineId about to be used as a DynamoDB sort key (from a path or a page token), or 400 naming `field`.

    Only its size is checked: a lineId the import would refuse is simply not found, but one DynamoDB cannot
    hold as a key never reaches it.
    """
    if not key_fits(value, MAX_RANGE_KEY_BYTES):
        raise ValidationFailed(f"{field}: a lineId must be 1 to {MAX_RANGE_KEY_BYTES} bytes of UTF-8.", field=field)
    return value


def _text(value: Any, limit: int, required: bool) -> str | None:
    if value is None or value == "":
        return None if not required else ""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        return None
    return value.strip()


def validate_line(raw: Any, where: str) -> dict[str, str]:
    """Return the canonical line or raise ValidationFailed naming `where` and the field."""

    def fail(field: str, message: str) -> ValidationFailed:
        return ValidationFailed(f"{where}: {field} {message}", line=where, field=field)

    if not isinstance(raw, dict):
        raise ValidationFailed(f"{where}: must be an object.", line=where)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise fail(unknown[0], "is not a known field.")
    line_id = raw.get("lineId")
    if line_id in (None, ""):
        line_id = str(uuid.uuid4())
    elif not isinstance(line_id, str) or not LINE_ID.fullmatch(line_id):
        raise fail("lineId", f"must be 1-{MAX_LINE_ID_CHARS} characters of letters, digits and . _ : - "
                             "(starting alphanumeric).")
    day = raw.get("date")
    try:
        if not isinstance(day, str) or not DATE.fullmatch(day):
            raise ValueError
        date.fromisoformat(day)
    except ValueError:
        raise fail("date", "must be a calendar date YYYY-MM-DD.") from None
    vendor = _text(raw.get("vendor"), 200, True)
    if not vendor:
        raise fail("vendor", "is required: printable text of up to 200 characters.")
    amount = raw.get("amount")
    if not isinstance(amount, str) or not AMOUNT.fullmatch(amount.strip()):
        raise fail("amount", 'must be a decimal string such as "23.50" (up to 12 digits before the point, 4 after).')
    try:
        amount = str(Decimal(amount.strip()))
    except InvalidOperation:
        raise fail("amount", "must be a decimal string.") from None
    currency = raw.get("currency")
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        raise fail("currency", "must be a three-letter ISO 4217 code in capitals, such as USD.")
    description = _text(raw.get("description"), 500, False)
    if raw.get("description") not in (None, "") and description is None:
        raise fail("description", "must be printable text of up to 500 characters.")
    return {"lineId": line_id, "date": day, "vendor": vendor, "amount": amount,
            "currency": currency, "description": description or ""}


def validate_lines(raws: Any, max_lines: int, label: str = "lines") -> list[dict[str, str]]:
    if not isinstance(raws, list) or not raws:
        raise ValidationFailed(f"{label}: must be a non-empty list of lines.", field="lines")
    if len(raws) > max_lines:
        raise ValidationFailed(f"{label}: at most {max_lines} lines per request (got {len(raws)}).", field="lines")
    lines, seen = [], set()
    for i, raw in enumerate(raws):
        where = f"lines[{i}]" if label == "lines" else f"row {i + 2}"
        line = validate_line(raw, where)
        if line["lineId"] in seen:
            raise ValidationFailed(f"{where}: lineId '{line['lineId']}' appears twice in this request.",
                                   line=where, field="lineId")
        seen.add(line["lineId"])
        lines.append(line)
    return lines


def parse_csv(text: str, max_lines: int) -> list[dict[str, str]]:
    # Excel's "CSV UTF-8" starts with a byte-order mark.
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        missing = [c for c in CSV_COLUMNS if c not in header and c not in ("lineId", "description")]
        extra = [c for c in header if c not in CSV_COLUMNS]
        if missing or extra:
            raise ValidationFailed(
                f"CSV header must be {','.join(CSV_COLUMNS)} (lineId and description optional);"
                f" missing {missing or 'nothing'}, unknown {extra or 'nothing'}.", field="header")
        rows = []
        for row in reader:
            if None in row or len(rows) > max_lines:
                if None in row:
                    raise ValidationFailed(f"row {reader.line_num}: has more cells than the header.",
                                           line=f"row {reader.line_num}")
                break
            rows.append(row)
    except csv.Error as err:
        raise ValidationFailed(f"row {reader.line_num}: not valid CSV ({err}).") from None
    return validate_lines(rows, max_lines, label="csv")


def check_period(value: Any) -> str:
    if not isinstance(value, str) or not PERIOD.fullmatch(value):
        raise ValidationFailed("period: must be a month YYYY-MM.", field="period")
    return value
