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

LINE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# [0-9], not \d: \d also matches other scripts' digits ("١٢", "１２"), which Decimal() would quietly accept.
AMOUNT = re.compile(r"^-?[0-9]{1,12}(\.[0-9]{1,4})?$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
PERIOD = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
CSV_COLUMNS = ["lineId", "date", "vendor", "amount", "currency", "description"]
_FIELDS = set(CSV_COLUMNS)


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
        raise fail("lineId", "must be 1-128 characters of letters, digits and . _ : - (starting alphanumeric).")
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
