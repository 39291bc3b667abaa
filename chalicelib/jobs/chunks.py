"""Fan-out: a large job's lines split into chunks, each with its own message, lease and checkpoint.

A chunk's checkpoint advances its cursor and adds its counts to the job in one
transaction; finishing a chunk adds one to the job's `chunksDone` the same way. The
invocation that finds every chunk done takes the job's lease and assembles the report,
so assembly happens exactly once.
"""

from __future__ import annotations

import json
import time

from pynamodb.exceptions import PutError, TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib import clock, deps
from chalicelib.jobs.runner import Lease, Progress
from chalicelib.jobs.states import JobStatus
from chalicelib.lines.store import owner_period, read_lines
from chalicelib.tables import ExpenseLine, Job, JobChunk, connection

PENDING, RUNNING, DONE = "Pending", "Running", "Done"
_LIVE = (JobStatus.PROCESSING.value, JobStatus.CANCELLATION_REQUESTED.value)


def plan(owner_id: str, period: str, chunk_lines: int) -> list[tuple[str, str]]:
    """(after, upto] lineId ranges of `chunk_lines` lines, from the keys alone; the last is open-ended."""
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
    return [("" if i == 0 else bounds[i - 1], upto) for i, upto in enumerate(bounds)]


def create(job: Job, ranges: list[tuple[str, str]]) -> None:
    stamp = clock.iso(clock.now())
    for number, (after, upto) in enumerate(ranges):
        try:
            # chunk_is_new: a second planner (a redelivered or reaped start) must never reset a
            # chunk that already started, or its lines would be counted again.
            JobChunk(job.job_id, number, after=after, upto=upto, cursor=after, status=PENDING, heartbeat_at=stamp,
                     expires_at=job.expires_at).save(condition=JobChunk.job_id.does_not_exist())
        except PutError as err:
            if err.cause_response_code != "ConditionalCheckFailedException":
                raise


def of(job_id: str) -> list[JobChunk]:
    return list(JobChunk.query(job_id, consistent_read=True))


def reset_unfinished(job: Job) -> list[int]:
    """After a retry: chunks not done start again from their own checkpoints."""
    todo, done = [], 0
    for chunk in of(job.job_id):
        if chunk.status == DONE:
            done += 1
            continue
        chunk.update(actions=[JobChunk.status.set(PENDING), JobChunk.lease_owner.remove(),
                              JobChunk.lease_until.remove(), JobChunk.reap_count.set(0),
                              JobChunk.heartbeat_at.set(clock.iso(clock.now()))])
        todo.append(int(chunk.chunk))
    job.update(actions=[Job.chunks_done.set(done)])
    return todo


def send(job_id: str, numbers: list[int], reason: str, delay_seconds: int = 0) -> None:
    sqs, url = deps.client("sqs"), deps.work_queue_url()
    for start in range(0, len(numbers), 10):
        entries = [{"Id": str(n), "DelaySeconds": max(0, min(900, delay_seconds)),
                    "MessageBody": json.dumps({"jobId": job_id, "chunk": n, "reason": reason})}
                   for n in numbers[start:start + 10]]
        failed = sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
        if failed:
            raise RuntimeError(f"could not enqueue chunks {[f['Id'] for f in failed]} of job {job_id}")


def claim(job_id: str, number: int, lease: Lease) -> JobChunk | None:
    chunk = JobChunk(job_id, number)
    # chunk_free: one invocation per chunk; a duplicate message finds the lease held and is dropped.
    chunk_free = (JobChunk.status != DONE) & (JobChunk.lease_owner.does_not_exist()
                                              | (JobChunk.lease_until < time.time())
                                              | (JobChunk.lease_owner == lease.owner))
    try:
        chunk.update(actions=[JobChunk.status.set(RUNNING), JobChunk.lease_owner.set(lease.owner),
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
    return chunk.status == RUNNING and chunk.lease_owner == lease.owner


def next_lines(job: Job, chunk: JobChunk, n: int, after: str | None = None) -> list:
    """Up to `n` of the chunk's lines after its checkpoint (or after `after`), in one read."""
    lines = read_lines(job.owner_id, job.period, chunk.cursor if after is None else after, n)
    return [line for line in lines if not chunk.upto or line.line_id <= chunk.upto]


def _mine(lease: Lease):
    return (JobChunk.lease_owner == lease.owner) & (JobChunk.status == RUNNING)


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
                Job.cached_lines.add(done.cached), Job.retry_count.add(done.retries),
                Job.rate_limited_seconds.add(round(done.rate_limited_seconds, 3)), Job.heartbeat_at.set(stamp),
                Job.updated_at.set(stamp), Job.reap_count.set(0),
                Job.estimated_completion_at.set(eta) if eta else Job.estimated_completion_at.remove(),
            ], condition=Job.status.is_in(*_LIVE))
    except TransactWriteError:
        return False
    chunk.cursor = new_cursor
    return True


def hold(chunk: JobChunk, lease: Lease, due_in: int) -> None:
    """Before a delayed re-enqueue: the chunk is due back later, not dead."""
    from datetime import timedelta

    chunk.update(actions=[JobChunk.heartbeat_at.set(clock.iso(clock.now() + timedelta(seconds=due_in)))],
                 condition=_mine(lease))


def finish(job: Job, chunk: JobChunk, lease: Lease) -> bool:
    """Mark the chunk done and count it on the job; True when every chunk is now done."""
    try:
        with TransactWrite(connection=connection()) as tx:
            tx.update(chunk, actions=[JobChunk.status.set(DONE), JobChunk.lease_owner.remove(),
                                      JobChunk.lease_until.remove()], condition=_mine(lease))
            tx.update(job, actions=[Job.chunks_done.add(1), Job.heartbeat_at.set(clock.iso(clock.now()))],
                      condition=Job.status.is_in(*_LIVE))
    except TransactWriteError:
        return False
    job.refresh(consistent_read=True)
    return int(job.chunks_done) >= int(job.chunk_count)


def release(chunk: JobChunk, lease: Lease) -> None:
    """Hand the chunk back (Pending): its continuation or a later message picks it up."""
    try:
        chunk.update(actions=[JobChunk.status.set(PENDING), JobChunk.lease_owner.remove(),
                              JobChunk.lease_until.remove()], condition=_mine(lease))
    except UpdateError:
        pass
