"""The rows of an uploaded CSV file, streamed from S3 (never the whole file in memory) and validated one by one.

Each row is checked by the rules of POST /expenses (lines/validation.py) and numbered as the file numbers it: the
header is row 1, a blank line is a row too, a quoted cell over several lines is one row. An import holds one
month: the period named when it was created, else the month of its first row. Errors are collected, not raised:
the first MAX_ERRORS are kept, the rest counted, so a file's author fixes many rows per attempt.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from chalicelib.errors import ValidationFailed
from chalicelib.lines import ids, validation

MAX_ERRORS = 100
READ_BYTES = 1 << 20  # what one read from S3 takes: memory stays near this whatever the file's size


class _Raw(io.RawIOBase):
    """A botocore StreamingBody as a raw stream, for io.BufferedReader and io.TextIOWrapper."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def text_of(body: Any) -> io.TextIOWrapper:
    """The body as text: UTF-8 (a byte-order mark from Excel's "CSV UTF-8" dropped), lines as csv wants them."""
    return io.TextIOWrapper(io.BufferedReader(_Raw(body), READ_BYTES), encoding="utf-8-sig", newline="")


@dataclass
class RowError:
    row: int
    message: str
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "message": self.message}


@dataclass
class Rows:
    """One pass over the file: iterate for (row number, stored line); `errors`, `error_count`, `rows` after."""

    period: str | None  # the import's month; None: the month of the first valid row
    rows: int = 0  # expense rows read (blank lines not counted)
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0

    def fail(self, row: int, message: str, field_name: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(RowError(row, message, field_name))

    def read(self, body: Any) -> Iterator[tuple[int, dict[str, str]]]:
        """The file's valid rows, each with its deterministic lineId where it had none (lines/ids.py)."""
        text = text_of(body)
        reader = csv.reader(text, strict=True)
        occurrences = ids.Occurrences()
        given: set[int] = set()  # CRC pairs of the lineIds given in the file, to refuse one given twice
        row = 0
        try:
            try:
                header = validation.check_header(next(reader, []), blank=True)
            except ValidationFailed as err:
                self.fail(1, err.detail, "header")
                return
            row = 1
            for cells in reader:
                row += 1
                if not cells:
                    continue
                self.rows += 1
                line = self._line(cells, header, row, reader.line_num)
                if line is None:
                    continue
                if line["lineId"]:
                    key = zlib.crc32(line["lineId"].encode()) << 32 | zlib.adler32(line["lineId"].encode())
                    if key in given:
                        self.fail(row, f"Row {row} of the CSV: lineId {line['lineId']} appears twice in this file; "
                                       "a lineId identifies one line.", "lineId")
                        continue
                    given.add(key)
                else:
                    line["lineId"] = ids.line_id(line, occurrences)
                yield row, line
        except csv.Error as err:
            self.fail(row + 1, validation.csv_error(err, row + 1, reader.line_num).detail)
        except UnicodeDecodeError:
            self.fail(row + 1, f"Row {row + 1} of the CSV is not UTF-8 text: save the file as CSV UTF-8.")
        if self.rows == 0 and not self.errors:
            self.fail(2, "The CSV has a header row but no expense rows: put one line per row below the header.",
                      "lines")

    def _line(self, cells: list[str], header: list[str], row: int, physical: int) -> dict[str, str] | None:
        where, line_name, _ = validation.csv_row(row, physical)
        try:
            raw = validation.check_cells(cells, header, where, line_name)
            line = validation.validate_line(raw, where, line_name)
        except ValidationFailed as err:
            self.fail(row, err.detail, err.extensions.get("field"))
            return None
        month = line["date"][:7]
        if self.period is None:
            self.period = month
        elif month != self.period:
            self.fail(row, f"{where}: date {line['date']} is outside the import's period {self.period}: an import "
                           "holds the lines of one month.", "date")
            return None
        return line
