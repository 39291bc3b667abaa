"""Report assembly: line results streamed into JSON and CSV objects in S3, never all in memory."""

from __future__ import annotations

import csv
import json
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import IO, Any

from chalicelib import clock, deps
from chalicelib.settings import get_settings
from chalicelib.tables import Job, LineResult

CSV_COLUMNS = ["lineId", "date", "vendor", "amount", "currency", "description", "category", "confidence",
               "source", "needsReview"]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def line_dict(r: LineResult) -> dict[str, Any]:
    return {"lineId": r.line_id, "date": r.date, "vendor": r.vendor, "amount": r.amount, "currency": r.currency,
            "category": r.category, "confidence": float(r.confidence), "source": r.source,
            "needsReview": bool(r.needs_review)}


def safe_cell(value: Any) -> str:
    """Neutralize spreadsheet formulas (`=cmd|…`) in text cells: prefix them with a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_row(d: dict[str, Any], description: str) -> list[str]:
    text = {k: safe_cell(d[k]) for k in ("lineId", "vendor", "category")}
    return [text["lineId"], d["date"], text["vendor"], d["amount"], d["currency"], safe_cell(description),
            text["category"], f"{d['confidence']:.3f}", d["source"], "true" if d["needsReview"] else "false"]


def assemble(job: Job, version: int, tick: Callable[[], None] | None = None,
             written: Iterable[LineResult] | None = None) -> tuple[str, int]:
    """Write the report for `job` to S3; returns (json key, lines needing review)."""
    key, needs_review, _ = assemble_counted(job, version, tick, written)
    return key, needs_review


def assemble_counted(job: Job, version: int, tick: Callable[[], None] | None = None,
                     written: Iterable[LineResult] | None = None) -> tuple[str, int, int]:
    """Write the report for `job` to S3; returns (json key, lines needing review, lines in the report).

    `tick` is called every 2,000 lines, so a long assembly can show it is alive. `written` is every line
    result of the job in lineId order when the caller holds them (the worker, for a job it did whole in one
    invocation); otherwise they are read back from the table, page by page.
    """
    totals: dict[tuple[str, str], list] = defaultdict(lambda: [Decimal(0), 0])
    needs_review = 0
    with tempfile.TemporaryFile("w+", encoding="utf-8") as lines_part, \
            tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as csv_file:
        writer = csv.writer(csv_file)
        writer.writerow(CSV_COLUMNS)
        first = True
        source = written if written is not None else LineResult.query(job.job_id, consistent_read=True,
                                                                      page_size=500)
        count = 0
        for count, r in enumerate(source, 1):
            if tick is not None and count % 2000 == 0:
                tick()
            d = line_dict(r)
            lines_part.write(("" if first else ",") + json.dumps(d, separators=(",", ":")))
            first = False
            writer.writerow(_csv_row(d, r.description or ""))
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
        base = f"results/{job.job_id}/v{version}"
        s3 = deps.client("s3")  # made here, not first in two threads at once (boto3's session is not thread-safe)
        with tempfile.TemporaryFile("w+b") as doc, ThreadPoolExecutor(max_workers=1) as beside:
            # The CSV goes up while the JSON is put together and sent: the job waits for the slower of the two.
            csv_sent = beside.submit(_upload_text, s3, csv_file, f"{base}.csv", "text/csv")
            doc.write(json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"lines":[')
            lines_part.seek(0)
            for chunk in iter(lambda: lines_part.read(1 << 16), ""):
                doc.write(chunk.encode())
            doc.write(b"]}")
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


def _upload_text(s3: Any, text_file: IO[str], key: str, content_type: str) -> None:
    text_file.seek(0)
    with tempfile.TemporaryFile("w+b") as raw:
        for chunk in iter(lambda: text_file.read(1 << 16), ""):
            raw.write(chunk.encode())
        _upload(s3, raw, key, content_type)


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
