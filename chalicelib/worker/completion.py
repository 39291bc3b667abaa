"""The one way a job becomes Completed: `complete(run)` builds its report, checks the counts against it, and makes
the Completed transition under the invocation's lease.

Every caller goes through it: a whole job whose lines are all checkpointed (scopes.JobScope.complete), a
fanned-out job once its last chunk is done (`complete_if_due`, from whichever invocation then takes the job's
lease), and a job worked whole by one invocation whose last batch is not checkpointed yet (`complete(run, last)`,
the complete-with-last-batch seam: `takes_last_batch` says when it applies). Two seams (seams.py) are here:
memory assembly (the report from the rows the invocation held, not read back from the table) and completing
with the last batch (its checkpoint is the Completed write, its rows written beside the report).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pynamodb.exceptions import PynamoDBException

from chalicelib import faults, observability, results
from chalicelib.categorize.types import Answer
from chalicelib.jobs import runner, steps, store
from chalicelib.jobs.states import TERMINAL, JobStatus, TransitionRaced
from chalicelib.jobs.store import moves
from chalicelib.jobs.types import Step
from chalicelib.tables import LineResult
from chalicelib.worker import rows, seams
from chalicelib.worker.cancel import CancelWatch, stop
from chalicelib.worker.invocation import Counted, Invocation, progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LastBatch:
    """A job's last batch, answered but neither written nor checkpointed."""

    lines: list
    answers: dict[str, Answer]


@dataclass(frozen=True)
class _Report:
    key: str
    needs_review: int
    lines: int  # the lines the report holds


def takes_last_batch(run: Invocation, lines: list) -> bool:
    """`lines` end a job this invocation has held whole since its first line (see runs.run_job), and the seam
    is on: complete(run, LastBatch(...)) may then be the batch's checkpoint."""
    job = run.job
    return (seams.on(run.settings, seams.COMPLETE_WITH_LAST_BATCH)
            and run.ahead.drained_whole and run.written is not None
            and len(run.written) == int(job.processed_lines)
            and len(run.written) + len(lines) == int(job.total_lines))


def complete(run: Invocation, last: LastBatch | None = None) -> bool:
    """Complete the job the invocation holds the lease of.

    Without `last`, every line is checkpointed: the report is built (a cancel meanwhile is final at once), its
    line count checked against the job's, and the job Completed; if the transition races, a cancel requested
    meanwhile is completed instead. With `last`, the batch's rows are written beside the report and the
    Completed write is also the batch's checkpoint, conditioned on the cursor as a checkpoint is, so a redone
    batch still never counts twice. If that write races (a cancel came in, the lease was lost), False sends the
    caller on with the batch the usual way: its rows are put again (idempotently), and the report put in S3 is
    written again or never pointed to. True otherwise.
    """
    job = run.job
    steps.advance(job, Step.CATEGORIZE, Step.ASSEMBLE)  # the Completed move below completes assemble
    version = int(job.result_version) + 1
    batch: moves.LastBatch | None = None
    if last is None:
        report = _report(run, version)
        processed = int(job.processed_lines)
    else:
        report = _report_with(run, last, version)
        before = run.counted
        done = progress(run, last.answers)
        processed = int(job.processed_lines) + done.lines
        batch = moves.LastBatch(job.cursor, last.lines[-1].line_id, processed, done.cached, done.retries, done.usage)
    if report.lines != processed:
        # The report is the truth a user reads: counts that disagree with it would hide a lost or doubled line.
        log.error("report and counts disagree", extra={"jobId": job.job_id, "reported": report.lines,
                                                       "processed": processed})
        # Under our lease only: a stale invocation that got this far must not fail a job another one runs.
        moves.fail(job, f"The job counted {processed} lines but its report holds {report.lines}, so it was "
                        "stopped rather than report wrong totals. Contact support with the job id.",
                   {"reportedLines": report.lines, "processedLines": processed}, lease=run.lease)
        return True
    try:
        _completed(run, version, report, batch)
    except TransitionRaced:
        job.refresh(consistent_read=True)
        if last is not None:
            # The usual checkpoint counts this batch's retries (its rate-limited wait is noted already).
            run.counted = Counted(before.retries, run.counted.rate_limited, run.counted.rate_limited_seconds,
                                  before.usage)
            return False
        if job.status == JobStatus.CANCELLATION_REQUESTED.value:
            stop(job)
        return True
    if last is not None:
        observability.lines_done(done.lines, done.failed)
        run.done += done.lines
        faults.point("after_checkpoint")
    return True


def _report(run: Invocation, version: int) -> _Report:
    """The report of a job whose lines are all checkpointed: from the rows held (memory-assembly seam) when this
    invocation wrote every line of the job and the checkpoints counted each once; read from the table otherwise
    (a resumed, chunked or retried job)."""
    job = run.job
    written = None
    if (seams.on(run.settings, seams.MEMORY_ASSEMBLY) and run.written is not None
            and len(run.written) == int(job.processed_lines) == int(job.total_lines)):
        written = _in_order(run.written)
    with CancelWatch(job.job_id):  # a large report takes a while: a cancel meanwhile is final at once
        key, needs_review, reported = results.assemble_counted(job, version, tick=lambda: _heartbeat(run),
                                                               written=written)
    return _Report(key, needs_review, reported)


def _report_with(run: Invocation, last: LastBatch, version: int) -> _Report:
    """The last batch's rows written and the report built: side by side from the rows held (memory-assembly
    seam), or the rows first and then the report read back from the table."""
    job = run.job
    batch = [rows.row(job, line, last.answers[line.line_id]) for line in last.lines]
    held = {**(run.written or {}), **{r.line_id: r for r in batch}}
    if seams.on(run.settings, seams.MEMORY_ASSEMBLY):
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report") as beside:
            report = beside.submit(results.assemble_counted, job, version, written=_in_order(held))
            rows.save(batch)
            faults.point("after_result_writes")
            key, needs_review, reported = report.result()
    else:
        rows.save(batch)
        faults.point("after_result_writes")
        key, needs_review, reported = results.assemble_counted(job, version)
    run.written = held
    return _Report(key, needs_review, reported)


def _in_order(written: dict[str, LineResult]) -> list[LineResult]:
    return [written[k] for k in sorted(written)]  # lineId order, as the table gives them


def _completed(run: Invocation, version: int, report: _Report, batch: moves.LastBatch | None) -> None:
    """The Completed transition (TransitionRaced if the job moved meanwhile or the lease is gone)."""
    job = run.job
    message = (f"Categorized {report.lines} lines; {report.needs_review} need review" if report.lines
               else f"No expense lines for {job.period}; the report is empty")
    moves.complete(job, run.lease, moves.Report(version, report.key, report.lines, report.needs_review), message,
                   batch)


def _heartbeat(run: Invocation) -> None:
    """Assembling a large report takes a while: show the reaper it is still moving."""
    try:
        store.current().heartbeat(run.job, run.lease)  # lease lost: the completing transition will say so
    except PynamoDBException:  # a heartbeat is a hint to the reaper: never worth losing the report over
        log.warning("could not write the assembler's heartbeat", extra={"jobId": run.job.job_id}, exc_info=True)


def complete_if_due(run: Invocation) -> None:
    """A fanned-out job whose chunks are all done: whoever takes the job's lease completes it, once.

    Called by the chunk that finished last and by every job invocation after it gives the lease up, so the
    report is made whichever of them held the lease when the last chunk finished.
    """
    job = runner.load(run.job.job_id)
    if job is None or not int(job.chunk_count) or int(job.chunks_done) < int(job.chunk_count):
        return
    if job.status == JobStatus.CANCELLATION_REQUESTED.value:
        return stop(job)
    if job.status == JobStatus.PROCESSING.value and runner.take_lease(job, run.lease):
        run.job = job
        try:
            complete(run)
        finally:
            if JobStatus(job.status) not in TERMINAL:
                runner.release(job, run.lease)
