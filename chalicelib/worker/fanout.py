"""Fan-out: a job over FANOUT_THRESHOLD_LINES is split into chunks by its one recorded plan, and a message goes
out for each chunk that needs one; the chunks then run at once (runs.run_chunk), and the last one done completes
the job (completion.complete_if_due)."""

from __future__ import annotations

from chalicelib import faults
from chalicelib.jobs import chunks, runner
from chalicelib.jobs.states import JobStatus
from chalicelib.lines.versions import job_partition
from chalicelib.worker.cancel import stop
from chalicelib.worker.completion import complete_if_due
from chalicelib.worker.invocation import Invocation


def fan_out(run: Invocation, reason: str) -> None:
    """Split the job into chunks by its one recorded plan, and send a message for each chunk that needs one.

    The plan is recorded on the job before any chunk exists (chunks.record_plan), and chunks are only ever made
    from it, so a second planner (a reaped or duplicate start, a retry) can never make overlapping chunks. The
    job's lease is given up before the chunk messages go out: the last chunk's worker must be able to take it
    to assemble the report.
    """
    job = run.job
    bounds = list(job.chunk_bounds or [])
    planned_before = bool(int(job.chunk_count))
    if not planned_before:
        bounds = chunks.record_plan(job, chunks.plan(job_partition(job), run.settings.chunk_lines))
        faults.point("after_plan")
    todo = chunks.create(job, bounds) if bounds else []  # only what a planner that died before it left undone
    if reason == "retried":
        todo = sorted(set(todo) | set(chunks.reset_unfinished(job)))
    elif planned_before:
        # A planner whose send failed after it made the chunks: its message comes back, and the chunks that
        # never started are sent again (a second message for a chunk is dropped by its lease).
        todo = sorted(set(todo) | set(chunks.never_started(job.job_id)))
    runner.release(job, run.lease)
    if run.settings.fair_shares and reason != "retried":
        from chalicelib.fair import window

        todo = window.hold(job.job_id, todo)  # a few in the queue at a time; chunks that start send the rest
    chunks.send(job.job_id, todo, reason="fan-out", tenant=job.tenant or job.owner_id)
    job.refresh(consistent_read=True)
    if job.status == JobStatus.CANCELLATION_REQUESTED.value:
        return stop(job)  # cancelled while being split: no chunk may be left to notice it
    if not todo:
        complete_if_due(run)  # every chunk was done already: the assembler before us died, or we retry it
