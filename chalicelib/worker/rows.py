"""Line results: one row per worked line, put 25 to a BatchWriteItem with the requests side by side, and the rows
an invocation keeps to build the report from (see completion.py and the memory-assembly seam)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chalicelib.categorize.types import Answer
from chalicelib.tables import Job, LineResult

WRITTEN_KEPT_MAX = 5000  # line results an invocation keeps to assemble the report from (jobs up to this size)


def row(job: Job, line: Any, a: Answer) -> LineResult:
    # `line` is an ExpenseLine, or a LineResult asked again (recheck.py): either carries its import order.
    return LineResult(job.job_id, line.line_id, date=line.date, vendor=line.vendor, amount=line.amount,
                      currency=line.currency, description=line.description or "", category=a.category,
                      confidence=a.confidence, source=a.source, needs_review=a.needs_review,
                      import_seq=getattr(line, "import_seq", None), expires_at=job.expires_at)


def write(job: Job, lines: list, answers: dict[str, Answer]) -> list[LineResult]:
    results = [row(job, line, answers[line.line_id]) for line in lines]
    save(results)
    return results


def save(results: list[LineResult]) -> None:
    # Puts keyed by (job, line): a redone batch overwrites, never adds.
    groups = [results[i:i + 25] for i in range(0, len(results), 25)]  # one BatchWriteItem each
    # Side by side: a 400-line batch is 16 requests, and the checkpoint waits for all of them.
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(groups))), thread_name_prefix="results") as pool:
        list(pool.map(_save_all, groups))


def _save_all(results: list[LineResult]) -> None:
    with LineResult.batch_write() as batch:
        for result in results:
            batch.save(result)


def keep(written: dict[str, LineResult] | None, results: list[LineResult]) -> dict[str, LineResult] | None:
    """`written` with `results` added; None (nothing kept) once it would exceed WRITTEN_KEPT_MAX."""
    if written is None:
        return None
    written.update((r.line_id, r) for r in results)
    return written if len(written) <= WRITTEN_KEPT_MAX else None
