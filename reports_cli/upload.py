"""Large imports: `POST /imports`, the file PUT to its presigned URL (streamed), then the import job followed in rows.

A CSV file within the single-request limit of `POST /expenses` (5,000 lines, a body under 6 MB) keeps going
there in one request; anything larger, or any import with `--replace`, `--period` or `--report`, goes through
`/imports`, which stores all of the file's rows or none.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import IO, Any

SINGLE_REQUEST_LINES = 5000  # POST /expenses: up to 5,000 lines a request
SINGLE_REQUEST_BYTES = 6 * 1024 * 1024 - 64 * 1024  # and the API's 6 MB body, with room for the headers


def fits_one_request(source: IO[bytes], size: int) -> bool:
    """The CSV has at most SINGLE_REQUEST_LINES rows and fits one request body; read as a stream, never whole
    (and rewound)."""
    if size > SINGLE_REQUEST_BYTES:
        return False
    rows = 0
    text = io.TextIOWrapper(source, encoding="utf-8-sig", errors="replace", newline="")
    try:
        for row in csv.reader(text):
            rows += bool(row)
            if rows > SINGLE_REQUEST_LINES + 1:  # the header is a row too
                return False
        return True
    finally:
        text.detach()
        source.seek(0)


def request_body(mode: str, period: str | None, report: str | None) -> dict[str, Any]:
    """What `POST /imports` takes."""
    body: dict[str, Any] = {"format": "csv", "mode": mode}
    if period:
        body["period"] = period
    if report:
        body["reportId"] = report
    return body


def size_of(path: Path) -> int:
    return path.stat().st_size


def imported_count(job: dict[str, Any]) -> int:
    """The rows an import stored: the job's own count where it names one, else its processed rows."""
    for name in ("importedLines", "storedLines", "imported"):
        if isinstance(job.get(name), int):
            return int(job[name])
    return int(job.get("processedLines") or 0)
