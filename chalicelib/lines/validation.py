"""Expense-line validation: the whole request is checked before anything is stored."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from datetime import date
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

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
# What an amount may hold, as a string or a JSON number alike: the digits the service keeps.
AMOUNT_INT_DIGITS, AMOUNT_FRACTION_DIGITS = 12, 4
AMOUNT_RULE = (f"a decimal string such as \"23.50\" or a JSON number such as 23.5, with at most "
               f"{AMOUNT_INT_DIGITS} digits before the point and {AMOUNT_FRACTION_DIGITS} after")
CSV_COLUMNS = ["lineId", "date", "vendor", "amount", "currency", "description"]
REQUIRED_COLUMNS = [c for c in CSV_COLUMNS if c not in ("lineId", "description")]
_FIELDS = set(CSV_COLUMNS)
SHOWN_MAX_CHARS = 80


def shown(value: Any, limit: int = SHOWN_MAX_CHARS) -> str:
    """`value` as a message shows it: unprintable characters as escapes (`\\u202e`), cut to `limit` characters
    with an ellipsis."""
    text = value if isinstance(value, str) else str(value)
    out = []
    for ch in text[:limit + 1]:
        out.append(ch if ch.isprintable() else (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"))
    joined = "".join(out)
    return joined[:limit] + "\u2026" if len(text) > limit or len(joined) > limit else joined


def shown_id(raw: Any) -> str:
    """An id from a URL path, as a 404 shows it: percent-decoded (API Gateway and `chalice local` pass path
    parameters as sent), then `shown`: never the raw percent-encoding, never a 5 KB id."""
    return shown(unquote(raw, errors="replace") if isinstance(raw, str) else raw)


def kind_of(value: Any) -> str:
    """The JSON kind of `value`, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "empty text" if not value.strip() else "text"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a value of another kind"


def in_words(names: list[str], conjunction: str = "and") -> str:
    """`a`, `a and b`, `a, b and c`."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


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


def _but(value: Any) -> str:
    """The end of a "must be ..." sentence: what was sent instead, when it was not text at all."""
    return "." if isinstance(value, str) else f", not {kind_of(value)}."


def json_line(index: int) -> tuple[str, str, str]:
    """(where, line, short) of item `index` (0-based) of a JSON import: words for the detail, `lines[i]` for
    the problem's `line` member, and a short name for another message to point at."""
    return f"Line {index + 1} of lines (counting from 1)", f"lines[{index}]", f"line {index + 1}"


def csv_row(row: int, physical: int | None = None, at: str = "this row ends on") -> tuple[str, str, str]:
    """(where, line, short) of record `row` of a CSV import, counted as a spreadsheet counts rows: the header
    is row 1. `physical`, the file's line, is named too where a quoted cell over several lines sets it apart."""
    also = f"; {at} line {physical} of the file" if physical is not None and physical != row else ""
    return f"Row {row} of the CSV (the header is row 1{also})", f"row {row}", f"row {row}"


def _amount(value: Any, fail: Any) -> str:
    """The canonical decimal string of an amount given as a string or a JSON number, never through float.

    A string must be written plainly (optional minus, digits, optional point and digits). A number (json_body
    parses it with parse_float=Decimal; an integer arrives as int) is taken at its exact decimal value, in any
    JSON form (`23.5`, `2350e-2`). Either is stored as its fixed-point digits, as written: "23.50" stays
    "23.50", 23.5 becomes "23.5", 1E+2 becomes "100".
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise fail("amount", f"is required: {AMOUNT_RULE}.")
    if isinstance(value, str):
        text = value.strip()
        if not AMOUNT.fullmatch(text):
            raise fail("amount", f"must be {AMOUNT_RULE}. Write it plainly: no exponent, thousands separator, "
                                 "currency sign or leading plus.")
        return str(Decimal(text))
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        # A float never gets here from a request (json_body parses numbers as Decimal); one from code would
        # already have lost digits, so it is refused like any other kind.
        raise fail("amount", f"must be {AMOUNT_RULE}, not {kind_of(value)}.")
    number = Decimal(value)
    if not number.is_finite():
        raise fail("amount", f"must be {AMOUNT_RULE}, not {'NaN' if number.is_nan() else 'an infinity'}.")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if number.is_zero():
        # Zero as written, but never more places than the service keeps: `0e-400000000` would otherwise be
        # formatted as 400 million zeros (a 12-byte request costing the API its memory).
        number = number.quantize(Decimal(1)) if exponent > 0 else number.quantize(
            Decimal(1).scaleb(max(exponent, -AMOUNT_FRACTION_DIGITS)))
    elif exponent < -AMOUNT_FRACTION_DIGITS:
        raise fail("amount", f"must be {AMOUNT_RULE}: this number has {-exponent} digits after the point, "
                             "more than the service keeps.")
    elif number.adjusted() >= AMOUNT_INT_DIGITS:
        raise fail("amount", f"must be {AMOUNT_RULE}: this number has {number.adjusted() + 1} digits before "
                             "the point.")
    text = format(number, "f")
    if not AMOUNT.fullmatch(text):  # the checks above make this unreachable; kept as the rule itself
        raise fail("amount", f"must be {AMOUNT_RULE}.")
    return text


def line_failure(where: str, line: str | None = None) -> Any:
    """`fail(field, message)` for one line: a ValidationFailed naming `where` (in words), the field and what was
    expected; `line` is the machine-readable position for the problem's `line` member (`lines[i]`, `row N`)."""
    line = line or where

    def fail(field: str, message: str) -> ValidationFailed:
        return ValidationFailed(f"{where}: {field} {message}", line=line, field=field)

    return fail


# The rules of an expense line, one per member: each returns the member's canonical value or raises `fail(...)`.
# chalicelib/api/models.ExpenseLineInput runs them, in this order, after check_line_members.


def check_line_members(raw: Any, where: str, line: str | None = None) -> None:
    line = line or where
    if not isinstance(raw, dict):
        raise ValidationFailed(f"{where} must be an object with the fields date, vendor, amount and currency "
                               f"(lineId and description are optional), not {kind_of(raw)}.", line=line)
    unknown = sorted(str(k) for k in set(raw) - _FIELDS)
    if unknown:
        raise ValidationFailed(f"{where}: {shown(unknown[0])} is not a known field; a line has the fields "
                               f"{in_words(CSV_COLUMNS)}.", line=line, field=shown(unknown[0]))


def line_id_rule(line_id: Any, fail: Any) -> str:
    if line_id in (None, ""):
        return ""  # named by its content and occurrence once the whole request is read (lines/ids.py)
    if not isinstance(line_id, str) or not LINE_ID.fullmatch(line_id):
        raise fail("lineId", f"must be 1 to {MAX_LINE_ID_CHARS} characters of letters, digits and . _ : - "
                             f"(starting with a letter or digit), or left out{_but(line_id)}")
    return line_id


def date_rule(day: Any, fail: Any) -> str:
    try:
        if not isinstance(day, str) or not DATE.fullmatch(day):
            raise ValueError
        date.fromisoformat(day)
    except ValueError:
        if day is None or day == "":
            raise fail("date", "is required: a calendar date written YYYY-MM-DD, such as 2026-01-15.") from None
        raise fail("date", f"must be a calendar date written YYYY-MM-DD, such as 2026-01-15{_but(day)}") from None
    return day


def vendor_rule(raw_vendor: Any, fail: Any) -> str:
    if raw_vendor is not None and not isinstance(raw_vendor, str):
        raise fail("vendor", f"must be text (printable, up to 200 characters), not {kind_of(raw_vendor)}.")
    if raw_vendor is None or not raw_vendor.strip():
        raise fail("vendor", "is required: printable text of up to 200 characters.")
    vendor = _text(raw_vendor, 200, True)
    if not vendor:
        raise fail("vendor", "must be printable text of up to 200 characters (no control characters or line "
                             "breaks).")
    return vendor


amount_rule = _amount


def currency_rule(currency: Any, fail: Any) -> str:
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        rule = "a three-letter ISO 4217 code in capitals, such as USD"
        if currency is None or currency == "":
            raise fail("currency", f"is required: {rule}.")
        raise fail("currency", f"must be {rule}{_but(currency)}")
    return currency


def description_rule(raw_description: Any, fail: Any) -> str:
    description = _text(raw_description, 500, False)
    if raw_description not in (None, "") and description is None:
        raise fail("description", "must be printable text of up to 500 characters (no control characters or "
                                  f"line breaks){_but(raw_description)}")
    return description or ""


def check_line(raw: Any, where: str, line: str | None = None) -> Any:
    """The line read through its model (chalicelib/api/models.ExpenseLineInput), or ValidationFailed."""
    from chalicelib.api import models  # not at the top: models imports this module

    return models.parse(models.ExpenseLineInput, raw, where=where, line=line or where,
                        fail=line_failure(where, line))


def validate_line(raw: Any, where: str, line: str | None = None) -> dict[str, str]:
    """Return the canonical line or raise ValidationFailed naming `where` (in words), the field and what was
    expected; `line` is the machine-readable position for the problem's `line` member (`lines[i]`, `row N`)."""
    return check_line(raw, where, line).stored()


def _check_all(items: list[tuple[Any, str, str, str]]) -> list[Any]:
    """Each (raw line, where, line, short) read; a lineId given twice is refused naming both places."""
    lines: list[Any] = []
    seen: dict[str, str] = {}
    for raw, where, line, short in items:
        valid = check_line(raw, where, line)
        if not valid.line_id:
            lines.append(valid)  # no lineId: lines/ids.py names it, by content and occurrence, uniquely
            continue
        first = seen.get(valid.line_id)
        if first is not None:
            raise ValidationFailed(f"{where}: lineId {valid.line_id} appears twice in this request (also at "
                                   f"{first}); a lineId identifies one line.", line=line, field="lineId")
        seen[valid.line_id] = short
        lines.append(valid)
    return lines


def _validate_all(items: list[tuple[Any, str, str, str]]) -> list[dict[str, str]]:
    return [valid.stored() for valid in _check_all(items)]


def check_lines(raws: Any, max_lines: int) -> list[Any]:
    """The lines of a JSON import (`{"lines": [...]}`), each read through its model."""
    if not isinstance(raws, list) or not raws:
        got = "an empty array" if isinstance(raws, list) else kind_of(raws)
        raise ValidationFailed(f"lines must be a non-empty array of expense lines, not {got}.", field="lines")
    if len(raws) > max_lines:
        raise ValidationFailed(f"lines holds {len(raws)} lines; at most {max_lines} are taken per request: "
                               "split the import.", field="lines")
    return _check_all([(raw, *json_line(i)) for i, raw in enumerate(raws)])


def validate_lines(raws: Any, max_lines: int) -> list[dict[str, str]]:
    """The lines of a JSON import (`{"lines": [...]}`)."""
    return [valid.stored() for valid in check_lines(raws, max_lines)]


_CSV_ERRORS = [  # csv.Error texts, in words
    ("field larger than field limit", "has a cell longer than the CSV reader takes (131072 characters)"),
    ("line contains nul", "contains a NUL character (a zero byte): the file must be text"),
    ("unexpected end of data", "ends inside a quoted cell: a closing quote is missing"),
    ("expected after", "has text after the closing quote of a cell: a quote inside a quoted cell is written "
                       "twice (\"\")"),
    ("new-line character", "has a line break inside an unquoted cell"),
]


HEADER_RULE = (f"the header, naming the columns {in_words(REQUIRED_COLUMNS)} (lineId and description are "
               "optional)")


def check_header(cells: list[str], blank: bool) -> list[str]:
    """The CSV's header row (row 1), its cells trimmed, or ValidationFailed saying what is wrong with it. `blank`:
    the whole file is empty (rather than starting with a blank row)."""
    header = [cell.strip() for cell in cells]
    if not any(header):
        raise ValidationFailed(f"The CSV {'is empty' if blank else 'starts with a blank row'}: its first row "
                               f"must be {HEADER_RULE}.", field="header")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    extra = [shown(c, 40) if c else "(a column without a name)" for c in header if c not in CSV_COLUMNS]
    if len(extra) > 5:
        extra = [*extra[:5], f"{len(extra) - 5} more"]
    counts = Counter(header)
    twice = [c for c in CSV_COLUMNS if counts[c] > 1]
    if missing or extra or twice:
        faults = ([f"it lacks {in_words(missing)}"] if missing else []) + \
                 ([f"it has the unknown column{'s' if len(extra) > 1 else ''} {in_words(extra)}"]
                  if extra else []) + \
                 ([f"it names {in_words(twice)} more than once"] if twice else [])
        raise ValidationFailed(f"The CSV header (row 1) must name the columns {in_words(REQUIRED_COLUMNS)}, and "
                               f"may add lineId and description; {'; '.join(faults)}.", field="header")
    return header


def check_cells(cells: list[str], header: list[str], where: str, line: str) -> dict[str, str]:
    """A data row as {column: cell}, or ValidationFailed when it has not one cell per column."""
    if len(cells) != len(header):
        raise ValidationFailed(
            f"{where} has {len(cells)} cell{'s' if len(cells) != 1 else ''}, but the header has "
            f"{len(header)} columns: every row needs one cell per column (an empty one where there is "
            "no value).", line=line)
    return dict(zip(header, cells, strict=True))


def csv_error(err: csv.Error, row: int, physical: int) -> ValidationFailed:
    """A csv.Error met reading record `row` (the file's line `physical`), in words."""
    reason = next((words for key, words in _CSV_ERRORS if key in str(err).lower()), "is not valid CSV")
    where, line, _ = csv_row(row, physical, at="the error is on")
    return ValidationFailed(f"{where} {reason}.", line=line)


def parse_csv(text: str, max_lines: int) -> list[dict[str, str]]:
    """The lines of a CSV import. Rows are numbered as a spreadsheet numbers them: the header is row 1, a blank
    line is a row too (and skipped), and a quoted cell over several lines is still one row."""
    # Excel's "CSV UTF-8" starts with a byte-order mark.
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    row = 0
    try:
        header = check_header(next(reader, []), blank=not text.strip())
        row = 1
        items: list[tuple[Any, str, str, str]] = []
        for cells in reader:
            row += 1
            if not cells:
                continue  # a blank line: a row of the file, but no expense line
            if len(items) >= max_lines:
                raise ValidationFailed(f"The CSV holds more than {max_lines} rows after the header; at most "
                                       f"{max_lines} are taken per request: split the file.", field="lines")
            where, line, short = csv_row(row, reader.line_num)
            items.append((check_cells(cells, header, where, line), where, line, short))
    except csv.Error as err:
        raise csv_error(err, row + 1, reader.line_num) from None
    if not items:
        raise ValidationFailed("The CSV has a header row but no expense rows: put one line per row below the "
                               "header.", field="lines")
    return _validate_all(items)


def check_period(value: Any) -> str:
    if not isinstance(value, str) or not PERIOD.fullmatch(value):
        raise ValidationFailed("period: must be a month YYYY-MM.", field="period")
    return value
