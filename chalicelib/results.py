"""Report assembly: line results streamed into JSON and CSV objects in S3, never all in memory."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from array import array
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from itertools import islice
from typing import IO, Any

from pynamodb.expressions.condition import Condition

from chalicelib import clock, deps
from chalicelib.settings import get_settings
from chalicelib.tables import Job, LineResult

CSV_COLUMNS = ["lineId", "date", "vendor", "amount", "currency", "description", "category", "confidence",
               "source", "needsReview"]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def line_dict(r: LineResult) -> dict[str, Any]:
    """A line of the JSON report (and of a PATCH answer): the imported line, then its categorization."""
    return {"lineId": r.line_id, "date": r.date, "vendor": r.vendor, "amount": r.amount, "currency": r.currency,
            "description": r.description or "", "category": r.category, "confidence": float(r.confidence),
            "source": r.source, "needsReview": bool(r.needs_review)}


def safe_cell(value: Any) -> str:
    """Neutralize spreadsheet formulas (`=cmd|…`) in text cells: prefix them with a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_row(d: dict[str, Any]) -> list[str]:
    text = {k: safe_cell(d[k]) for k in ("lineId", "vendor", "description", "category")}
    return [text["lineId"], d["date"], text["vendor"], d["amount"], d["currency"], text["description"],
            text["category"], f"{d['confidence']:.3f}", d["source"], "true" if d["needsReview"] else "false"]


def assemble(job: Job, version: int, tick: Callable[[], None] | None = None,
             written: Iterable[LineResult] | None = None) -> tuple[str, int]:
    """Write the report for `job` to S3; returns (json key, lines needing review)."""
    key, needs_review, _ = assemble_counted(job, version, tick, written)
    return key, needs_review


# Ranges of a fanned-out job's rows read side by side, ahead of the one being written into the report: a read
# waits mostly on the table, so the next ranges' reads overlap this one's formatting. At most this many ranges'
# rows are read ahead of the one being written (a range is a chunk: CHUNK_LINES rows), so memory stays flat with
# the job's size.
RANGES_AHEAD = 3


def stored_rows(job: Job) -> Iterator[LineResult]:
    """Every line result of `job`, in lineId order, read back from the table.

    A fanned-out job's rows are read by its chunks' ranges (its recorded plan), a few side by side: on the
    bench's moto a 6,000-line report's read went from about 1.0 s in one query to 0.6-0.75 s. A job without
    a plan is one query, page by page."""
    from chalicelib.jobs.chunks import ranges  # the chunks' own (after, upto] ranges

    bounds = list(job.chunk_bounds or [])
    if len(bounds) < 2:
        yield from LineResult.query(job.job_id, consistent_read=True, page_size=500)
        return
    waiting = iter(ranges(bounds))
    with ThreadPoolExecutor(max_workers=RANGES_AHEAD, thread_name_prefix="report-read") as pool:
        reads = deque(pool.submit(_rows_in, job.job_id, *span) for span in islice(waiting, RANGES_AHEAD))
        while reads:
            found = reads.popleft().result()
            span = next(waiting, None)
            if span is not None:
                reads.append(pool.submit(_rows_in, job.job_id, *span))
            yield from found


def _rows_in(job_id: str, after: str, upto: str) -> list[LineResult]:
    """The rows of one plan range (after, upto]; "" after: from the first, "" upto: to the last."""
    condition: Condition | None
    if after and upto:
        condition = LineResult.line_id.between(after, upto)  # inclusive: `after` is the range before's
    elif upto:
        condition = LineResult.line_id <= upto
    else:
        condition = LineResult.line_id > after if after else None
    found = LineResult.query(job_id, condition, consistent_read=True)
    return [r for r in found if r.line_id != after]


def order_key(r: LineResult) -> str:
    """Where a line goes in the report: import order (its importSeq). A line stored before lines had one sorts
    first ("" before any sequence): it was imported before any line that has one. Ties go by lineId."""
    return r.import_seq or ""


def assemble_counted(job: Job, version: int, tick: Callable[[], None] | None = None,
                     written: Iterable[LineResult] | None = None) -> tuple[str, int, int]:
    """Write the report for `job` to S3; returns (json key, lines needing review, lines in the report).

    Lines are listed in import order (order_key), in the JSON and the CSV alike. `tick` is called every 2,000
    lines, so a long assembly can show it is alive. `written` is every line result of the job in lineId order
    when the caller holds them (the worker, for a job it did whole in one invocation); otherwise they are read
    back from the table, page by page (in lineId order, the table's).

    Memory stays flat whatever the job's size: each line's JSON and CSV text go to a temporary file as they
    come, and only (order key, place) pairs and offsets stay in memory; they are sorted, and the lines are then
    copied into the two documents in that order, each read back from where it was written.
    """
    totals: dict[tuple[str, str], list] = defaultdict(lambda: [Decimal(0), 0])
    needs_review = 0
    keys: list[tuple[str, int]] = []  # (order key, place in lineId order)
    offsets, json_sizes, csv_sizes = array("Q"), array("L"), array("L")
    row_text = io.StringIO()
    row_writer = csv.writer(row_text)
    with tempfile.TemporaryFile("w+b") as records, tempfile.TemporaryFile("w+b") as csv_file, \
            tempfile.TemporaryFile("w+b") as doc:
        source = written if written is not None else stored_rows(job)
        count = offset = 0
        for count, r in enumerate(source, 1):
            if tick is not None and count % 2000 == 0:
                tick()
            d = line_dict(r)
            as_json = json.dumps(d, separators=(",", ":")).encode()
            row_text.seek(0)
            row_text.truncate()
            row_writer.writerow(_csv_row(d))
            as_csv = row_text.getvalue().encode()
            records.write(as_json)
            records.write(as_csv)
            keys.append((order_key(r), count - 1))
            offsets.append(offset)
            json_sizes.append(len(as_json))
            csv_sizes.append(len(as_csv))
            offset += len(as_json) + len(as_csv)
            if r.needs_review or not r.category:
                needs_review += 1
            else:
                bucket = totals[(r.category, r.currency)]
                bucket[0] += Decimal(r.amount)
                bucket[1] += 1
        head = {"jobId": job.job_id, "reportId": job.report_id, "period": job.period,
                "generatedAt": clock.iso(clock.now()),
                "totals": [{"category": c, "currency": cur, "amount": str(v[0]), "lines": v[1]}
                           for (c, cur), v in sorted(totals.items())],
                "needsReview": needs_review}
        keys.sort()
        row_text.seek(0)
        row_text.truncate()
        row_writer.writerow(CSV_COLUMNS)
        csv_file.write(row_text.getvalue().encode())
        doc.write(json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"lines":[')
        for n, (_, place) in enumerate(keys):
            records.seek(offsets[place])  # in lineId order already (the usual case), a read straight on
            json_size = json_sizes[place]
            data = records.read(json_size + csv_sizes[place])
            if n:
                doc.write(b",")
            doc.write(data[:json_size])
            csv_file.write(data[json_size:])
        doc.write(b"]}")
        del keys, offsets, json_sizes, csv_sizes
        base = f"results/{job.job_id}/v{version}"
        s3 = deps.client("s3")  # made here, not first in two threads at once (boto3's session is not thread-safe)
        with ThreadPoolExecutor(max_workers=1) as beside:
            # The CSV goes up beside the JSON: the job waits for the slower of the two.
            csv_sent = beside.submit(_upload, s3, csv_file, f"{base}.csv", "text/csv")
            _upload(s3, doc, f"{base}.json", "application/json")
            csv_sent.result()
    return f"{base}.json", needs_review, count


SINGLE_PUT_MAX_BYTES = 8 * 1024 * 1024  # s3transfer's own multipart threshold


def _upload(s3: Any, fileobj: IO[bytes], key: str, content_type: str) -> None:
    size = fileobj.seek(0, 2)
    fileobj.seek(0)
    bucket = get_settings().results_bucket
    if size <= SINGLE_PUT_MAX_BYTES:
        # One PutObject: upload_fileobj would start a transfer manager and its threads for a single part.
        s3.put_object(Bucket=bucket, Key=key, Body=fileobj.read(), ContentType=content_type)
        return
    # upload_fileobj sends a large report in parts (multipart), never whole in memory.
    s3.upload_fileobj(fileobj, bucket, key, ExtraArgs={"ContentType": content_type})


def fetch(key: str, csv_format: bool) -> tuple[bytes | None, str]:
    """The object's bytes if small enough for an API response, else None and a presigned URL."""
    s3 = deps.client("s3")
    bucket = get_settings().results_bucket
    key = key[:-5] + ".csv" if csv_format else key
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if size > get_settings().result_inline_max_bytes:
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
        return None, url
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read(), ""
