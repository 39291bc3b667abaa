"""The work a message asks for: a job (`run_job`: claim it, recheck flagged lines after a retry, fan out or
work it whole, release it), one chunk of a fanned-out job (`run_chunk`), and a vendor-cache warm run
(`warm_cache`)."""

from __future__ import annotations

import logging
from typing import Any

from chalicelib import messages
from chalicelib.jobs import chunks, runner, steps
from chalicelib.jobs.runner import Lease
from chalicelib.jobs.states import TERMINAL, WORKED, JobStatus
from chalicelib.jobs.types import JobType, Step
from chalicelib.lines.store import count_lines, whole_period
from chalicelib.lines.versions import job_partition
from chalicelib.messages import WarmCache
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Job
from chalicelib.worker import fairness, seams
from chalicelib.worker.completion import complete_if_due
from chalicelib.worker.fanout import fan_out
from chalicelib.worker.invocation import backend, retry_loop, start
from chalicelib.worker.loop import work
from chalicelib.worker.recheck import recheck_flagged
from chalicelib.worker.scopes import ChunkScope, JobScope

log = logging.getLogger(__name__)


class LineCount:
    """Counts a starting job's lines for runner.claim. A job that fits one read-ahead (`fits` lines) is counted by
    reading it, and `lines` keeps what was read: they are its first batch, with no second read."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.lines: list = []  # the lines of the latest count, when it read them all

    def __call__(self, job: Job) -> int:
        # A claim that raced counts again: only the latest read may stand.
        part = job_partition(job)  # runner.claim pinned the version this job reads
        lines = whole_period(part, self.fits)
        self.lines = lines or []
        return count_lines(part) if lines is None else len(lines)


def run_job(job_id: str, reason: str, context: Any, settings: Settings | None = None) -> None:
    from chalicelib.lines import importer

    loaded = runner.load(job_id)
    if loaded is not None and importer.is_import(loaded):
        # An import (or the import part of import_and_report): its own steps (lines/importer.py). Past its commit
        # an import_and_report job is a report job and goes on below.
        return importer.run(job_id, reason, context, settings)
    known = settings or get_settings()
    count = LineCount(known.line_batch_size * known.line_read_ahead)
    run = start(context, settings, lambda lease: runner.claim(job_id, lease, reason, count))
    if run is None:
        return
    job = run.job
    if job.type == JobType.CACHE_WARM.value:
        # The warm run works its jobs itself (categorize/warm_jobs.py); a job message for one comes only from the
        # reaper, for a run that died: it is failed, and the next run takes the tenant over.
        from chalicelib.categorize.warm_jobs import STOPPED
        from chalicelib.jobs.store import moves

        moves.fail(job, STOPPED, lease=run.lease)
        return
    _mark_steps(job, reason)
    if job.lane == "batch" and job.batch_state != "collected":
        from chalicelib.worker import batchlane

        # Submitted: the poller owns the job until its batch is collected (this message is a duplicate or the
        # reaper's; the job is listed for the poller again, in case its submitter died between the two writes).
        # Else the batch is sent now, unless the job has nothing to ask (offline, all cached).
        if job.batch_state == "submitted":
            batchlane.list_pending(job.job_id)
        if job.batch_state == "submitted" or batchlane.submit(run):
            run.background.wait()
            runner.release(job, run.lease)
            return
    if count.lines and len(count.lines) == int(job.total_lines) and not job.cursor and not int(job.processed_lines):
        # Every line the job had when it started: the job is those lines (its total was counted from them).
        run.ahead.hold_whole(count.lines)
    # A retry that rechecks flagged lines first may take several invocations: the recheck's flag stands for
    # the retry until then, so the chunks the retry must re-send are still re-sent (see fanout.fan_out).
    retried = reason == "retried" or bool(job.recheck_flagged)
    try:
        if run.job.recheck_flagged and not recheck_flagged(run):
            return
        if int(run.job.chunk_count) or (int(run.job.total_lines) > run.settings.fanout_threshold_lines
                                        and not run.job.cursor):
            fan_out(run, "retried" if retried else reason)
        else:
            if not run.job.cursor and not int(run.job.processed_lines) and _keeps_rows(run.settings):
                run.written = {}  # from the first line: this invocation may do the whole job
            work(run, JobScope(run))
    finally:
        run.background.wait()  # first: it never raises, and the next holder of the lease may want its answers
        if JobStatus(run.job.status) not in TERMINAL:
            runner.release(run.job, run.lease)
            if int(run.job.chunk_count):
                complete_if_due(run)  # the last chunk may have finished while we held the lease


def _mark_steps(job: Job, reason: str) -> None:
    """Where the job is within its steps, as it is taken up: collect is done once the claim counted the lines (an
    empty period passes over categorize); a later step is begun where the job resumes (a retry: the first step not
    finished), again when the invocation that worked it died (a reaped job: attempts + 1). A continuation finds its
    step Running and writes nothing."""
    at = steps.resume_at(job)
    if at is Step.COLLECT:
        steps.advance(job, Step.COLLECT, Step.CATEGORIZE if int(job.total_lines) else Step.ASSEMBLE)
    elif at in (Step.CATEGORIZE, Step.ASSEMBLE):  # the report's steps: an import's are its own worker's
        steps.begin(job, at, again=reason == "reaped")


def _keeps_rows(settings: Settings) -> bool:
    """The rows a whole job's invocation writes are kept for the seams that use them (completion.py)."""
    return seams.on(settings, seams.MEMORY_ASSEMBLY) or seams.on(settings, seams.COMPLETE_WITH_LAST_BATCH)


def run_chunk(job_id: str, number: int, context: Any, settings: Settings | None = None) -> None:
    """One chunk of a fanned-out job, while the job is live."""
    def claim(lease: Lease) -> Job | None:
        job = runner.load(job_id)
        if job is None or JobStatus(job.status) not in WORKED:
            return None
        return job

    run = start(context, settings, claim)
    chunk = chunks.claim(job_id, number, run.lease) if run else None
    if run is None or chunk is None:
        return
    fairness.top_up(run)  # this chunk's message left the queue: the next one of the job takes its place
    try:
        work(run, ChunkScope(run, chunk))
    finally:
        run.background.wait()
        chunks.release(chunk, run.lease)


def warm_cache(context: Any, settings: Settings | None = None, after: str = "") -> dict[str, Any]:
    """One warm run within this invocation's time; what is left goes on in a continuation message."""
    from chalicelib.categorize import warmer

    settings = settings or get_settings()
    remaining = context.get_remaining_time_in_millis() / 1000.0
    loop = retry_loop(settings, remaining)
    outcome = warmer.warm(backend(settings, loop), max(1.0, remaining - settings.lambda_time_reserve_seconds),
                          after)
    if outcome.get("after"):
        messages.send(WarmCache(after=outcome["after"]))
    log.info("cache warm run", extra={k: v for k, v in outcome.items() if k != "after"})
    return outcome
