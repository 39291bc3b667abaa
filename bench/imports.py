"""Part `import` (issue 14, points 3 and 4): a 200,000-row CSV through POST /imports, then a report on its lines.

The file is PUT to its presigned URL over HTTP, the bucket's notification queues the job and this process works
it with the real SQS handler (as the worker Lambda would), so the import's own time is measured: rows per second
from the upload to the commit, and this process's resident memory before and after. Floors from the same run:
the rate at which this process writes the same rows straight to the lines table (BatchWriteItem, nothing else),
and a 20,000-row import's memory growth: an import that streams its file grows memory no more at 200,000 rows
than at 20,000 (target: under 2x, and under 64 MB). The 200,000-row import is an `import_and_report` job: its
report then runs on the version the import committed (offline rules, chunks worked here one after another) for
IMPORT_BENCH_REPORT_SECONDS (600 by default: the whole report, about 4 minutes here against moto, whose key reads
are the floor; a smaller budget cancels it and projects the rest from the categorizing rate).
"""

from __future__ import annotations

import csv
import gc
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.api import InProcessApi, new_user
from bench.common import heading, table, target
from bench.env import Run

ROWS, FLOOR_ROWS = 200_000, 20_000
MEMORY_LIMIT_MB = 64
# The report on 200,000 lines is the worker's throughput (part `worker`); past this budget it is cancelled.
# 120 s: past the fan-out (30-70 s at 200,000 lines against moto), long enough for a rate to project the rest.
REPORT_BUDGET_SECONDS = float(os.environ.get("IMPORT_BENCH_REPORT_SECONDS", "600"))


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


@dataclass
class Outcome:
    job: dict
    import_seconds: float  # from the PUT to the commit
    growth_mb: float  # RSS growth of this process while it imported
    report_lines: int = 0  # lines the report (an import_and_report job's) categorized within its budget
    report_seconds: float = 0.0
    report_done: bool = False
    report_status: str = ""  # the job's status message when its budget ran out
    fanout_seconds: float = 0.0  # from the commit to the first categorized line seen (the fan-out: plan, chunks)


def _import(api: InProcessApi, headers: dict[str, str], path: Path, period: str,
            report: str | None = None, report_budget: float = 0.0) -> Outcome:
    """Begin, upload and work an import: the import's time and memory (measured once its lines are committed),
    then, for an import_and_report job, its report for at most `report_budget` seconds (cancelled past it)."""
    from local.testkit import deliver, receive

    body = {"format": "csv", "mode": "replace", "period": period, **({"reportId": report} if report else {})}
    job = api.expect(202, "post", "/api/v1/imports", headers, body)
    path_of = f"/api/v1/jobs/{job['jobId']}"
    gc.collect()
    before = _rss_mb()
    started = time.perf_counter()
    with path.open("rb") as file:
        put = requests.put(job["uploadUrl"], data=file, headers={"Content-Type": "text/csv"}, timeout=300)
    assert put.status_code == 200, put.text
    outcome: Outcome | None = None
    report_started = 0.0
    while True:
        messages = receive({job["jobId"]}, wait=1)
        if not messages:
            break
        deliver(messages)
        now = api.expect(200, "get", path_of, headers)
        if outcome is None and now["import"]["stage"] == "done":
            outcome = Outcome(now, time.perf_counter() - started, _rss_mb() - before)
            report_started = time.perf_counter()
        if outcome is not None and report and not outcome.fanout_seconds and int(now["processedLines"]):
            outcome.fanout_seconds = time.perf_counter() - report_started
        if outcome is not None and report and now["status"] == "Processing" \
                and time.perf_counter() - report_started > report_budget:
            outcome.report_lines = int(now["processedLines"])
            outcome.report_seconds = time.perf_counter() - report_started
            outcome.report_status = f"{now['statusMessage']}; steps " + ", ".join(
                f"{s['name']} {s['status']}" for s in now["steps"][4:])
            api.expect(200, "delete", path_of, headers)  # out of the part's time: the rest is the worker part's
    final = api.expect(200, "get", path_of, headers)
    assert outcome is not None and final["import"]["stage"] == "done", final
    if report and final["status"] == "Completed":
        outcome.report_lines, outcome.report_done = int(final["processedLines"]), True
        outcome.report_seconds = time.perf_counter() - report_started
    outcome.job = final
    return outcome


def _raw_write_rate(owner: str, n: int) -> float:
    """Rows per second this process writes straight to the lines table (the floor an import cannot beat)."""
    from chalicelib.tables import ExpenseLine

    started = time.perf_counter()
    with ExpenseLine.batch_write() as batch:
        for i in range(n):
            batch.save(ExpenseLine(f"{owner}#floor", f"{i:08d}", date="2030-01-01", vendor="V", amount="1.00",
                                   currency="USD", description="", imported_at="", import_seq=""))
    return n / (time.perf_counter() - started)


def run(run_: Run) -> None:
    heading(f"Import: {ROWS:,} CSV rows through POST /imports, then a report (targets: memory flat, all rows)")
    api = InProcessApi()
    owner, headers = new_user("import")
    small = _write(run_.workdir / "floor.csv", FLOOR_ROWS, "2030-02")
    big = _write(run_.workdir / "big.csv", ROWS, "2030-03")
    raw = _raw_write_rate(owner, FLOOR_ROWS)
    floor = _import(api, headers, small, "2030-02")
    report_id = f"bench-import-{uuid.uuid4().hex[:8]}"
    api.expect(201, "post", "/api/v1/reports", headers, {"reportId": report_id, "name": "Import bench",
                                                         "deliveryTargets": [{"type": "api", "mode": "async"}]})
    big_run = _import(api, headers, big, "2030-03", report=report_id, report_budget=REPORT_BUDGET_SECONDS)
    rate, floor_rate = ROWS / big_run.import_seconds, FLOOR_ROWS / floor.import_seconds
    stored = int(big_run.job["import"]["storedLines"])
    print(table(["measure", f"{FLOOR_ROWS:,} rows", f"{ROWS:,} rows"], [
        ["rows/s imported (PUT to commit)", f"{floor_rate:,.0f}", f"{rate:,.0f}"],
        ["import seconds", f"{floor.import_seconds:.1f}", f"{big_run.import_seconds:.1f}"],
        ["RSS growth MB (this process, as the worker)", f"{floor.growth_mb:+.1f}", f"{big_run.growth_mb:+.1f}"],
        ["lines stored", f"{int(floor.job['import']['storedLines']):,}", f"{stored:,}"],
    ]))
    print(f"  floor: raw BatchWriteItem of the same rows from this process: {raw:,.0f} rows/s; the import runs at "
          f"{rate / raw:.2f}x of it (two passes over the file, validation, a commit)")
    lines, seconds = big_run.report_lines, big_run.report_seconds
    working = max(seconds - big_run.fanout_seconds, 1e-9)
    cat_rate = lines / working if big_run.fanout_seconds else 0.0
    report = (f"completed: {lines:,} lines in {seconds:.1f} s ({lines / seconds:,.0f} lines/s overall)"
              if big_run.report_done
              else f"{lines:,} of {stored:,} lines categorized in its first {seconds:.0f} s ({big_run.report_status}), "
                   "then cancelled to keep this part short")
    print(f"  report on the {stored:,} imported lines (import_and_report: collect, categorize, assemble on the "
          f"version the import committed; offline rules, no model requests, so no simulator rate limit applies; "
          f"chunks worked in this process one after another): {report}")
    if big_run.fanout_seconds:
        rest = (stored - lines) / cat_rate if cat_rate and not big_run.report_done else 0.0
        print(f"  fan-out (commit to the first poll that saw a categorized line: plan over every key, "
              f"{stored // 1000} chunks made and "
              f"sent): {big_run.fanout_seconds:.1f} s; then {cat_rate:,.0f} lines/s categorized"
              + (f"; the rest would take ~{rest:.0f} s more (IMPORT_BENCH_REPORT_SECONDS=3600 runs it through)"
                 if rest else ""))
    if big_run.report_done:
        target("every line categorized once", lines == stored == ROWS, f"{lines:,} processed of {ROWS:,} imported")
    target("every row stored", stored == ROWS and int(floor.job["import"]["storedLines"]) == FLOOR_ROWS,
           f"{stored:,} of {ROWS:,}")
    growth = big_run.growth_mb
    flat = growth < MEMORY_LIMIT_MB and growth < max(2 * floor.growth_mb, 8.0)
    target("memory flat", flat, f"{growth:+.1f} MB at {ROWS:,} rows vs {floor.growth_mb:+.1f} MB at {FLOOR_ROWS:,} "
                                f"(under 2x the floor or 8 MB, and under {MEMORY_LIMIT_MB} MB)")
