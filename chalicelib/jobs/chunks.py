"""Fan-out: a large job's lines split into chunks, each with its own message, lease and checkpoint.

A chunk's checkpoint advances its cursor and adds its counts to the job in one
transaction; finishing a chunk adds one to the job's `chunksDone` the same way. The
invocation that finds every chunk done takes the job's lease and assembles the report,
so assembly happens exactly once.
"""

from __future__ import annotations

import time
from datetime import timedelta

from pynamodb.exceptions import PutError, TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib import clock, messages
from chalicelib.jobs.runner import Lease, Progress
from chalicelib.jobs.states import WORKED, ChunkStatus, JobStatus, status_values
from chalicelib.lines.store import owner_period, read_lines
from chalicelib.messages import RunChunk
from chalicelib.tables import ExpenseLine, Job, JobChunk, connection

# The chunk statuses by their old names (the members of ChunkStatus, which holds the transitions).
PENDING, RUNNING, DONE = ChunkStatus.PENDING, ChunkStatus.RUNNING, ChunkStatus.DONE


def plan(owner_id: str, period: str, chunk_lines: int) -> list[str]:
    """Upper bounds of chunks of `chunk_lines` lines, from the keys alone; the last is "" (open-ended)."""
    bounds = []
    count = 0
    for line in ExpenseLine.query(owner_period(owner_id, period), attributes_to_get=["lineId"], page_size=1000,
                                  consistent_read=True):
        count += 1
        if count % chunk_lines == 0:
            bounds.append(line.line_id)
    if not bounds or count % chunk_lines:
        bounds.append("")
    else:
        bounds[-1] = ""  # the last chunk takes whatever sorts after its start
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
    not_planned_yet = Job.chunk_bounds.does_not_exist() & (Job.chunk_count.does_not_exist() | (Job.chunk_count == 0))
    try:
        job.update(actions=[Job.chunk_bounds.set(bounds), Job.chunk_count.set(len(bounds)), Job.chunks_done.set(0),
                            Job.heartbeat_at.set(clock.iso(clock.now())),
                            Job.status_message.set(f"Categorizing {int(job.total_lines)} lines in "
                                                   f"{len(bounds)} parallel chunks")],
                   condition=not_planned_yet & (Job.status == JobStatus.PROCESSING.value))
    except UpdateError as err:
        if err.cause_response_code != "ConditionalCheckFailedException":
            raise
        job.refresh(consistent_read=True)
    return list(job.chunk_bounds or [])


def create(job: Job, bounds: list[str]) -> list[int]:
    """The recorded plan's chunks that did not exist yet, created now (their numbers)."""
    stamp = clock.iso(clock.now())
    made = []
    for number, (after, upto) in enumerate(ranges(bounds)):
        try:
            # chunk_is_new: a second planner (a redelivered or reaped start) must never reset a
            # chunk that already started, or its lines would be counted again.
            JobChunk(job.job_id, number, after=after, upto=upto, cursor=after, status=ChunkStatus.PENDING.value,
                     heartbeat_at=stamp, expires_at=job.expires_at).save(condition=JobChunk.job_id.does_not_exist())
            made.append(number)
        except PutError as err:
            if err.cause_response_code != "ConditionalCheckFailedException":
                raise
    return made


def of(job_id: str) -> list[JobChunk]:
    return list(JobChunk.query(job_id, consistent_read=True))


def reset_unfinished(job: Job) -> list[int]:
    """After a retry: chunks not done start again from their own checkpoints."""
    todo = []
    for chunk in of(job.job_id):
        if chunk.status == ChunkStatus.DONE:
            continue
        chunk.update(actions=[JobChunk.status.set(ChunkStatus.PENDING.value), JobChunk.lease_owner.remove(),
                              JobChunk.lease_until.remove(), JobChunk.reap_count.set(0),
                              JobChunk.heartbeat_at.set(clock.iso(clock.now()))])
        todo.append(int(chunk.chunk))
    for _ in range(5):
        job.refresh(consistent_read=True)
        seen = int(job.chunks_done)
        done = sum(c.status == ChunkStatus.DONE for c in of(job.job_id))
        try:
            # done_count_unchanged: a chunk of the run before the retry finishing between our count and this
            # write would have its increment overwritten, and the job would never be assembled.
            job.update(actions=[Job.chunks_done.set(done)], condition=Job.chunks_done == seen)
            break
        except UpdateError as err:
            if err.cause_response_code != "ConditionalCheckFailedException":
                raise
    return todo


def never_started(job_id: str) -> list[int]:
    """Chunks that are Pending, held by no one, not waiting out a delay, and at their first line."""
    now = clock.iso(clock.now())
    return [int(c.chunk) for c in of(job_id) if c.status == ChunkStatus.PENDING and not c.lease_owner
            and c.cursor == c.after and c.heartbeat_at <= now]


def send(job_id: str, numbers: list[int], reason: str, delay_seconds: int = 0) -> None:
    """One message per chunk (chalicelib.messages.RunChunk), visible after `delay_seconds`."""
    try:
        messages.send_batch([RunChunk(job_id, n, reason) for n in numbers], delay_seconds,
                            ids=[str(n) for n in numbers])
    except messages.SendFailed as err:
        raise RuntimeError(f"could not enqueue chunks {err.ids} of job {job_id}") from err


def claim(job_id: str, number: int, lease: Lease) -> JobChunk | None:
    chunk = JobChunk(job_id, number)
    # chunk_free: one invocation per chunk; a duplicate message finds the lease held and is dropped.
    chunk_free = (JobChunk.status != ChunkStatus.DONE.value) & (JobChunk.lease_owner.does_not_exist()
                                                                | (JobChunk.lease_until < time.time())
                                                                | (JobChunk.lease_owner == lease.owner))
    try:
        chunk.update(actions=[JobChunk.status.set(ChunkStatus.RUNNING.value),
                              JobChunk.lease_owner.set(lease.owner),
                              JobChunk.lease_until.set(lease.until),
                              JobChunk.heartbeat_at.set(clock.iso(clock.now()))],
                     condition=chunk_free & JobChunk.job_id.exists())
    except UpdateError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return None
        raise
    return chunk


def holds(chunk: JobChunk, lease: Lease) -> bool:
    chunk.refresh(consistent_read=True)
    return chunk.status == ChunkStatus.RUNNING and chunk.lease_owner == lease.owner


def next_lines(job: Job, chunk: JobChunk, n: int, after: str | None = None) -> list:
    """Up to `n` of the chunk's lines after its checkpoint (or after `after`), in one read."""
    lines = read_lines(job.owner_id, job.period, chunk.cursor if after is None else after, n)
    return [line for line in lines if not chunk.upto or line.line_id <= chunk.upto]


def _mine(lease: Lease):
    return (JobChunk.lease_owner == lease.owner) & (JobChunk.status == ChunkStatus.RUNNING.value)


def checkpoint(job: Job, chunk: JobChunk, lease: Lease, new_cursor: str, done: Progress, eta: str | None) -> bool:
    """Advance the chunk's cursor and add its counts to the job, together; False if the chunk was lost."""
    stamp = clock.iso(clock.now())
    try:
        with TransactWrite(connection=connection()) as tx:
            # cursor_unchanged + lease_is_ours: a redone batch never adds its counts twice.
            tx.update(chunk, actions=[JobChunk.cursor.set(new_cursor), JobChunk.processed.add(done.lines),
                                      JobChunk.heartbeat_at.set(stamp), JobChunk.reap_count.set(0)],
                      condition=(JobChunk.cursor == chunk.cursor) & _mine(lease))
            tx.update(job, actions=[
                Job.processed_lines.add(done.lines), Job.failed_lines.add(done.failed),
                Job.cached_lines.add(done.cached), Job.retry_count.add(done.retries), Job.heartbeat_at.set(stamp),
                Job.updated_at.set(stamp), Job.reap_count.set(0),
                Job.estimated_completion_at.set(eta) if eta else Job.estimated_completion_at.remove(),
            ], condition=Job.status.is_in(*status_values(WORKED)))
    except TransactWriteError:
        return False
    chunk.cursor = new_cursor
    return True


def hand_back(chunk: JobChunk, lease: Lease, due_in: int) -> bool:
    """Before the message that continues the chunk is sent: Pending, due back in `due_in` s (the reaper must not
    mistake a planned wait for a dead worker), lease given up. False if it was no longer ours: send nothing.

    Hand-over before send: the receiver of a message sent while we held the chunk would drop it as a duplicate.
    """
    try:
        chunk.update(actions=[JobChunk.status.set(ChunkStatus.PENDING.value), JobChunk.lease_owner.remove(),
                              JobChunk.lease_until.remove(),
                              JobChunk.heartbeat_at.set(clock.iso(clock.now() + timedelta(seconds=due_in)))],
                     condition=_mine(lease))
        return True
    except UpdateError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise


def live_lease(job_id: str, now: float) -> bool:
    """Some invocation holds a chunk of this job now."""
    return any(c.status == ChunkStatus.RUNNING and c.lease_owner and c.lease_until is not None
               and float(c.lease_until) >= now for c in of(job_id))


def finish(job: Job, chunk: JobChunk, lease: Lease) -> bool:
    """Mark the chunk done and count it on the job; True when every chunk is now done."""
    try:
        with TransactWrite(connection=connection()) as tx:
            tx.update(chunk, actions=[JobChunk.status.set(ChunkStatus.DONE.value), JobChunk.lease_owner.remove(),
                                      JobChunk.lease_until.remove()], condition=_mine(lease))
            tx.update(job, actions=[Job.chunks_done.add(1), Job.heartbeat_at.set(clock.iso(clock.now()))],
                      condition=Job.status.is_in(*status_values(WORKED)))
    except TransactWriteError:
        return False
    job.refresh(consistent_read=True)
    return int(job.chunks_done) >= int(job.chunk_count)


def release(chunk: JobChunk, lease: Lease) -> None:
    """Hand the chunk back (Pending): its continuation or a later message picks it up."""
    try:
        chunk.update(actions=[JobChunk.status.set(ChunkStatus.PENDING.value), JobChunk.lease_owner.remove(),
                              JobChunk.lease_until.remove()], condition=_mine(lease))
    except UpdateError:
        pass
