"""Part `import` (issue 14, points 3 and 4): a 200,000-row CSV through POST /imports, then a report on its lines.

The file is PUT to its presigned URL over HTTP, the bucket's notification queues the job and this process works
it with the real SQS handler (as the worker Lambda would), so the import's own time is measured: rows per second
from the upload to the commit, and this process's resident memory before and after. Floors from the same run:
the rate at which this process writes the same rows straight to the lines table (BatchWriteItem, nothing else),
and a 20,000-row import's memory growth: an import that streams its file grows memory no more at 200,000 rows
than at 20,000 (target: under 2x, and under 64 MB). Then an `import_and_report` job's report on the 200,000 lines
(offline rules, fanned out into chunks worked here one after another) is timed as it goes through its steps.
"""

from __future__ import annotations

import csv
import gc
import time
import uuid
from pathlib import Path

import requests

from bench.api import InProcessApi, new_user
from bench.common import heading, note, table, target
from bench.env import Run

ROWS, FLOOR_ROWS = 200_000, 20_000
MEMORY_LIMIT_MB = 64


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _write(path: Path, n: int, period: str) -> Path:
    """A CSV of `n` rows without lineIds (named by content and occurrence), written row by row."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["date", "vendor", "amount", "currency", "description"])
        for i in range(n):
            writer.writerow([f"{period}-{i % 28 + 1:02d}", f"VENDOR {i % 400}", f"{i % 9973 + 1}.{i % 100:02d}",
                             "USD", f"bench row {i}"])
    return path


def _import(api: InProcessApi, headers: dict[str, str], path: Path, period: str,
            report: str | None = None) -> tuple[dict, float, float]:
    """Begin, upload and work an import to its end: (final job, seconds from upload to the end, RSS growth MB
    while it imported: measured once its lines are committed, before an import_and_report job's report)."""
    from local.testkit import deliver, receive

    body = {"format": "csv", "mode": "replace", "period": period, **({"reportId": report} if report else {})}
    job = api.expect(202, "post", "/api/v1/imports", headers, body)
    gc.collect()
    before = _rss_mb()
    started = time.perf_counter()
    with path.open("rb") as file:
        put = requests.put(job["uploadUrl"], data=file, headers={"Content-Type": "text/csv"}, timeout=300)
    assert put.status_code == 200, put.text
    growth = None
    for _ in range(10_000):
        messages = receive({job["jobId"]}, wait=1)
        if not messages:
            break
        deliver(messages)
        if growth is None and api.expect(200, "get", f"/api/v1/jobs/{job['jobId']}", headers)["import"]["stage"] \
                == "done":
            growth = _rss_mb() - before
    spent = time.perf_counter() - started
    final = api.expect(200, "get", f"/api/v1/jobs/{job['jobId']}", headers)
    assert final["status"] == "Completed", final
    return final, spent, growth if growth is not None else float("nan")


def _raw_write_rate(owner: str, n: int) -> float:
    """Rows per second this process writes straight to the lines table (the floor an import cannot beat)."""
    from chalicelib.tables import ExpenseLine

    started = time.perf_counter()
    with ExpenseLine.batch_write() as batch:
        for i in range(n):
            batch.save(ExpenseLine(f"{owner}#floor", f"{i:08d}", date="2030-01-01", vendor="V", amount="1.00",
                                   currency="USD", description="", imported_at="", import_seq=""))
    return n / (time.perf_counter() - started)


def _step_seconds(job: dict, names: tuple[str, ...]) -> float:
    from chalicelib import clock

    chosen = [s for s in job["steps"] if s["name"] in names and s["startedAt"] and s["completedAt"]]
    begun = min(clock.parse(s["startedAt"]) for s in chosen)  # type: ignore[type-var]
    ended = max(clock.parse(s["completedAt"]) for s in chosen)  # type: ignore[type-var]
    return (ended - begun).total_seconds()  # type: ignore[operator]


def run(run_: Run) -> None:
    heading(f"Import: {ROWS:,} CSV rows through POST /imports, then a report (targets: memory flat, all rows)")
    api = InProcessApi()
    owner, headers = new_user("import")
    small = _write(run_.workdir / "floor.csv", FLOOR_ROWS, "2030-02")
    big = _write(run_.workdir / "big.csv", ROWS, "2030-03")
    raw = _raw_write_rate(owner, FLOOR_ROWS)
    floor, floor_seconds, floor_growth = _import(api, headers, small, "2030-02")
    report_id = f"bench-import-{uuid.uuid4().hex[:8]}"
    api.expect(201, "post", "/api/v1/reports", headers, {"reportId": report_id, "name": "Import bench",
                                                         "deliveryTargets": [{"type": "api", "mode": "async"}]})
    job, seconds, growth = _import(api, headers, big, "2030-03", report=report_id)
    imported = _step_seconds(job, ("upload", "validate", "stage", "commit"))
    reported = _step_seconds(job, ("collect", "categorize", "assemble"))
    rate, floor_rate = ROWS / imported, FLOOR_ROWS / floor_seconds
    print(table(["measure", f"{FLOOR_ROWS:,} rows", f"{ROWS:,} rows"], [
        ["rows/s imported (upload to commit)", f"{floor_rate:,.0f}", f"{rate:,.0f}"],
        ["import seconds", f"{floor_seconds:.1f}", f"{imported:.1f}"],
        ["RSS growth MB (this process, as the worker)", f"{floor_growth:+.1f}", f"{growth:+.1f}"],
        ["lines stored", f"{floor['import']['storedLines']:,}", f"{job['import']['storedLines']:,}"],
    ]))
    print(f"  floor: raw BatchWriteItem of the same rows from this process: {raw:,.0f} rows/s; the import runs at "
          f"{rate / raw:.2f}x of it (two passes over the file, validation, a commit)")
    print(f"  report on the {ROWS:,} imported lines (steps collect..assemble, offline rules, chunks worked here one "
          f"after another): {reported:.1f} s, {ROWS / reported:,.0f} lines/s; whole job {seconds:.1f} s")
    note(f"peak RSS of this process {_rss_mb():.0f} MB now")
    target("every row stored", job["import"]["storedLines"] == ROWS and floor["import"]["storedLines"] == FLOOR_ROWS,
           f"{job['import']['storedLines']:,} of {ROWS:,}")
    flat = growth < MEMORY_LIMIT_MB and growth < max(2 * floor_growth, 8.0)
    target("memory flat", flat, f"{growth:+.1f} MB at {ROWS:,} rows vs {floor_growth:+.1f} MB at {FLOOR_ROWS:,} "
                                f"(under 2x the floor or 8 MB, and under {MEMORY_LIMIT_MB} MB)")
