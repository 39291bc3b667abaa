"""The stale-job reaper: a sweep of the live-jobs index, every write conditioned on what it saw."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from chalicelib import clock, messages
from chalicelib.jobs import chunks, runner, store
from chalicelib.jobs.create import enqueue
from chalicelib.jobs.states import (
    ACTIVE,
    TERMINAL,
    ChunkStatus,
    JobStatus,
    TransitionRaced,
    event_item,
    in_order,
)
from chalicelib.jobs.store import moves
from chalicelib.messages import NotAWorkMessage, WarmCache
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Job, JobChunk

log = logging.getLogger(__name__)
MAX_REAPS = 3


def stale_jobs(status: JobStatus, cutoff: str) -> list[Job]:
    """Live jobs in `status` whose heartbeat is older than `cutoff` (an index query, not a scan).

    The index carries only the keys and chunkCount, so each job it names is read by key; one that no longer
    matches (it moved on since the index saw it: the index lags the table) is left out.
    """
    found = []
    for entry in Job.by_active.query(status.value, range_key_condition=Job.heartbeat_at < cutoff):
        job = _read(entry.job_id)
        if job and job.active_status == status.value and job.heartbeat_at is not None and job.heartbeat_at < cutoff:
            found.append(job)
    return found


def _read(job_id: str) -> Job | None:
    try:
        return Job.get(job_id, consistent_read=True)
    except Job.DoesNotExist:
        return None


def reap(settings: Settings | None = None) -> dict[str, int]:
    settings = settings or get_settings()
    cutoff = clock.iso(clock.now() - timedelta(seconds=settings.stale_after_seconds))
    counts = {"requeued": 0, "failed": 0, "cancelled": 0, "skipped": 0}
    for status in in_order(ACTIVE):
        for job in stale_jobs(status, cutoff):
            if status is JobStatus.PROCESSING and int(job.chunk_count):
                continue  # fanned out: judged chunk by chunk below
            counts[_reap_one(job, status)] += 1
    # A fanned-out job moves while any chunk moves, so each of its chunks is judged on its own.
    for entry in Job.by_active.query(JobStatus.PROCESSING.value, filter_condition=Job.chunk_count > 0):
        fanned = _read(entry.job_id)  # the index holds keys and chunkCount only
        if fanned is None or fanned.status != JobStatus.PROCESSING.value:
            continue  # finished or moved since the index saw it
        for outcome in _reap_chunks(fanned, cutoff):
            counts[outcome] += 1
    from chalicelib.delivery import service as delivery
    from chalicelib.lines import versions

    # Versions of lines no longer read (replaced, deleted, never committed): their lines are deleted.
    counts["linesDeleted"] = versions.sweep()["linesDeleted"]
    # Final jobs with a delivery still Pending (the outbox mark): overdue ones are sent again.
    counts["deliveries"] = delivery.sweep(settings)
    if any(counts[k] for k in ("requeued", "failed", "cancelled", "deliveries")):
        log.info("reaper swept", extra=counts)
    return counts


def _reap_one(job: Job, status: JobStatus) -> str:
    if status is JobStatus.QUEUED and (job.lines_import or {}).get("stage") == "upload":
        from chalicelib.lines import importer

        return importer.reap_waiting(job)  # waiting for its file: started, left waiting, or failed
    try:
        if status is JobStatus.CANCELLATION_REQUESTED:
            runner.cancel(job)
            return "cancelled"
        # Only a job a worker took since its last reap (it holds a lease) and then left can be said
        # to have stopped making progress; one whose message waits behind a backlog is sent again.
        if status is JobStatus.PROCESSING and job.lease_owner and int(job.reap_count) >= MAX_REAPS:
            message = (f"The job stopped making progress {MAX_REAPS} times in a row and was stopped. "
                       "Retry it; if it stops again, contact support with the job id.")
            # store/moves.as_seen: fail only the job this sweep judged, never what it became since (say, retried).
            moves.fail(job, message, {"reaps": int(job.reap_count)}, judged=True)
            return "failed"
        if not _mark_reaped(job, status):
            return "skipped"
        enqueue(job.job_id, reason="reaped", tenant=job.tenant or job.owner_id)
        return "requeued"
    except TransitionRaced:
        return "skipped"


def _mark_reaped(job: Job, status: JobStatus) -> bool:
    """Claim this reap; False if the job moved (progress, another reaper) since the sweep read it."""
    seen_heartbeat = job.heartbeat_at
    if not store.current().mark_reaped(job, status):  # store.no_progress_since: one reaper wins
        return False
    event_item(job.job_id, "reaped", {"status": status.value, "lastHeartbeat": seen_heartbeat,
                                      "reaps": int(job.reap_count)}).save()
    return True


def _reap_chunks(job: Job, cutoff: str) -> list[str]:
    parts = chunks.of(job.job_id)
    outcomes = []
    for chunk in parts:
        if chunk.status == ChunkStatus.DONE or chunk.heartbeat_at >= cutoff:
            continue
        # A Pending chunk may only be waiting for a free worker: it is sent again, but only a
        # Running chunk that stopped moving counts towards giving up.
        if chunk.status == ChunkStatus.RUNNING and int(chunk.reap_count) >= MAX_REAPS:
            runner.fail(job, f"Part {int(chunk.chunk) + 1} of this job stopped making progress {MAX_REAPS} times "
                             "in a row and the job was stopped. Retry it; if it stops again, contact support.",
                        {"chunk": int(chunk.chunk), "reaps": int(chunk.reap_count)})
            return ["failed"]
        outcomes.append("requeued" if _reap_chunk(job, chunk) else "skipped")
    all_done = bool(parts) and all(c.status == ChunkStatus.DONE for c in parts)
    # Every chunk is done but no report came (the assembler died), or the planner died after recording the plan
    # and before making every chunk of it: hand the job over again; its next invocation goes on from the plan.
    unmade = len(parts) < int(job.chunk_count)
    if (all_done or unmade) and (job.heartbeat_at or "") < cutoff:
        if _mark_reaped(job, JobStatus.PROCESSING):
            enqueue(job.job_id, reason="reaped", tenant=job.tenant or job.owner_id)
            outcomes.append("requeued")
    return outcomes


def _reap_chunk(job: Job, chunk: JobChunk) -> bool:
    seen = chunk.heartbeat_at
    if not store.current().mark_chunk_reaped(chunk):  # a checkpoint or another reaper moved it first
        return False
    event_item(job.job_id, "reaped", {"chunk": int(chunk.chunk), "lastHeartbeat": seen,
                                      "reaps": int(chunk.reap_count)}).save()
    chunks.send(job.job_id, [int(chunk.chunk)], reason="reaped", tenant=job.tenant or job.owner_id)
    return True


def dead_letter(body: str, receive_count: str | None) -> dict[str, Any]:
    """A message that exhausted its receives: its job becomes Failed with the reason."""
    try:
        message = messages.parse(body)
        if isinstance(message, WarmCache):
            raise NotAWorkMessage("a cache warm run names no job")
        if isinstance(message, messages.Deliver):
            from chalicelib.delivery import service as delivery

            return delivery.dead_lettered(message)  # a delivery's failure is the delivery's, never the job's
        job_id = message.job_id
        job = Job.get(job_id, consistent_read=True)
    except (ValueError, TypeError, Job.DoesNotExist):  # NotAWorkMessage is a ValueError
        log.error("dead letter names no known job; dropped")
        return {"outcome": "unknown"}
    if JobStatus(job.status) in TERMINAL:
        return {"outcome": "already-terminal", "jobId": job_id}
    runner.fail(job, "Processing this job failed repeatedly and its work message was moved to the dead-letter "
                     "queue. Retry the job; if it fails again, contact support with the job id.",
                {"deadLetter": True, "receiveCount": receive_count})
    return {"outcome": "failed", "jobId": job_id}
