"""Fan-out: a large job's lines split into chunks, each with its own message, lease and checkpoint.

A chunk's checkpoint advances its cursor and adds its counts to the job in one
transaction; finishing a chunk adds one to the job's `chunksDone` the same way. The
invocation that finds every chunk done takes the job's lease and assembles the report,
so assembly happens exactly once.
"""

from __future__ import annotations

import logging

from pynamodb.exceptions import PynamoDBException

from chalicelib import clock, messages
from chalicelib.jobs import store
from chalicelib.jobs.states import ChunkStatus
from chalicelib.jobs.store import Lease, Progress
from chalicelib.lines.store import read_lines
from chalicelib.lines.versions import job_partition
from chalicelib.messages import RunChunk
from chalicelib.tables import ExpenseLine, Job, JobChunk

log = logging.getLogger(__name__)
# The chunk statuses by their old names (the members of ChunkStatus, which holds the transitions).
PENDING, RUNNING, DONE = ChunkStatus.PENDING, ChunkStatus.RUNNING, ChunkStatus.DONE


def plan(part: str, chunk_lines: int) -> list[str]:
    """Upper bounds of chunks of `chunk_lines` lines of the partition (the job's pinned version of its period's
    lines, lines/versions.job_partition); the last is "" (open-ended).

    Counted, not read: a Query with Select=COUNT and Limit up to the next bound returns no item, only how many
    it passed and the key it stopped at (LastEvaluatedKey), which is the bound. A page may stop short of its
    Limit (1 MB of lines read); the next one goes on to the same bound. Reading the keys instead cost their
    transfer and parsing: 0.40-0.46 s for 6,000 lines on the bench's moto against 0.10-0.15 s counted, and
    the plan is most of a large fan-out."""
    bounds: list[str] = []
    query = ExpenseLine._get_connection().query
    counted, start = 0, None  # lines since the last bound; where the next page starts
    while True:
        page = query(part, consistent_read=True, select="COUNT", limit=chunk_lines - counted,
                     exclusive_start_key=start)
        counted += int(page.get("Count", 0))
        start = page.get("LastEvaluatedKey")
        if start is None:
            break
        if counted >= chunk_lines:
            bounds.append(start[ExpenseLine.line_id.attr_name]["S"])
            counted = 0
    if bounds and not counted:
        bounds[-1] = ""  # the last chunk takes whatever sorts after its start (it has no line past its bound)
    else:
        bounds.append("")
    return bounds


def ranges(bounds: list[str]) -> list[tuple[str, str]]:
    """(after, upto] of each chunk of a recorded plan."""
    return [("" if i == 0 else bounds[i - 1], upto) for i, upto in enumerate(bounds)]


def record_plan(job: Job, bounds: list[str]) -> list[str]:
    """Record the job's one plan before any chunk exists; returns the plan that stands (ours or an earlier one).

    not_planned_yet: two planners (a slow one and the one the reaper sent, or a retry after a cancel during
    fan-out with lines imported meanwhile) would otherwise split the month differently, and chunks of two
    plans overlap: lines counted twice. Every chunk is derived from the recorded bounds, never re-planned.
    """
    return store.current().record_plan(job, bounds, f"Categorizing {int(job.total_lines)} lines in {len(bounds)} "
                                                    "parallel chunks")


def create(job: Job, bounds: list[str]) -> list[int]:
    """The recorded plan's chunks that did not exist yet, created now (their numbers)."""
    jobs = store.current()
    return [number for number, (after, upto) in enumerate(ranges(bounds))
            if jobs.create_chunk(job, number, after, upto)]  # store: chunk_is_new


def of(job_id: str) -> list[JobChunk]:
    return store.current().chunks_of(job_id)


def reset_unfinished(job: Job) -> list[int]:
    """After a retry: chunks not done start again from their own checkpoints."""
    todo = []
    for chunk in of(job.job_id):
        if chunk.status == ChunkStatus.DONE:
            continue
        store.current().reset_chunk(chunk)
        todo.append(int(chunk.chunk))
    for _ in range(5):
        job.refresh(consistent_read=True)
        seen = int(job.chunks_done)
        done = sum(c.status == ChunkStatus.DONE for c in of(job.job_id))
        if store.current().set_chunks_done(job, seen, done):  # store: done_count_unchanged
            break
    return todo


def never_started(job_id: str) -> list[int]:
    """Chunks that are Pending, held by no one, not waiting out a delay, and at their first line."""
    now = clock.iso(clock.now())
    return [int(c.chunk) for c in of(job_id) if c.status == ChunkStatus.PENDING and not c.lease_owner
            and c.cursor == c.after and c.heartbeat_at <= now]


def send(job_id: str, numbers: list[int], reason: str, delay_seconds: int = 0, tenant: str = "") -> None:
    """One message per chunk (chalicelib.messages.RunChunk) for the job's `tenant`, visible after `delay_seconds`."""
    try:
        messages.send_batch([RunChunk(job_id, n, reason, tenant) for n in numbers], delay_seconds,
                            ids=[str(n) for n in numbers])
    except messages.SendFailed as err:
        raise RuntimeError(f"could not enqueue chunks {err.ids} of job {job_id}") from err


def claim(job_id: str, number: int, lease: Lease) -> JobChunk | None:
    return store.current().claim_chunk(job_id, number, lease)  # store: chunk_free


def holds(chunk: JobChunk, lease: Lease) -> bool:
    chunk.refresh(consistent_read=True)
    return chunk.status == ChunkStatus.RUNNING and chunk.lease_owner == lease.owner


def next_lines(job: Job, chunk: JobChunk, n: int, after: str | None = None) -> list:
    """Up to `n` of the chunk's lines after its checkpoint (or after `after`), in one read."""
    lines = read_lines(job_partition(job), chunk.cursor if after is None else after, n)
    return [line for line in lines if not chunk.upto or line.line_id <= chunk.upto]


def checkpoint(job: Job, chunk: JobChunk, lease: Lease, new_cursor: str, done: Progress, eta: str | None) -> bool:
    """Advance the chunk's cursor and add its counts to the job, together; False if the chunk was lost."""
    return store.current().checkpoint_chunk(job, chunk, lease, new_cursor, done, eta)


def hand_back(chunk: JobChunk, lease: Lease, due_in: int) -> bool:
    """Before the message that continues the chunk is sent: Pending, due back in `due_in` s (the reaper must not
    mistake a planned wait for a dead worker), lease given up. False if it was no longer ours: send nothing.

    Hand-over before send: the receiver of a message sent while we held the chunk would drop it as a duplicate.
    """
    return store.current().hand_back_chunk(chunk, lease, due_in)


def live_lease(job_id: str, now: float) -> bool:
    """Some invocation holds a chunk of this job now."""
    return any(c.status == ChunkStatus.RUNNING and c.lease_owner and c.lease_until is not None
               and float(c.lease_until) >= now for c in of(job_id))


def finish(job: Job, chunk: JobChunk, lease: Lease) -> bool:
    """Mark the chunk done and count it on the job; True when every chunk is now done."""
    return store.current().finish_chunk(job, chunk, lease)


def release(chunk: JobChunk, lease: Lease) -> None:
    """Hand the chunk back (Pending): its continuation or a later message picks it up. Best effort: a chunk left
    Running only waits for its lease to run out (a store error is logged, never raised over the outcome)."""
    try:
        store.current().release_chunk(chunk, lease)
    except PynamoDBException:
        log.warning("could not release a chunk; its lease runs out by itself",
                    extra={"jobId": chunk.job_id, "chunk": int(chunk.chunk)}, exc_info=True)
