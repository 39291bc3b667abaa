"""The job store port: the lease protocol's writes to jobs and chunks, each an operation, each race named once.

Workers, the reaper and the API move a job and its chunks only through these operations (chalicelib/jobs/runner.py
and chunks.py are thin, job-shaped wrappers over them). An operation returns whether it happened — False when the
condition that closes its race refused it — and raises only for a store failure. The conditions are the module's
named functions below, each with the race it closes; `DynamoJobStore` turns them into condition expressions and
`MemoryJobStore` checks the same rules directly, so the unit tier runs the protocol without DynamoDB. One contract
test class (tests/unit/test_job_store.py) runs against both.

A job or chunk is passed and returned as the PynamoDB model instance the caller holds; a successful write updates
it in place with what the store now holds (as PynamoDB's `update` does).

A status move is `move(job, to, event, detail, Change)`: on DynamoDB one transaction with its event, day counts,
lock and deliveries (moves.transition); in memory the same rules on the records. The named moves (moves.py) build
their Change and call the store in use. The delivery writes (deliveries.py) are on DynamoDB only.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from pynamodb.exceptions import PutError, TransactWriteError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.transactions import TransactWrite

from chalicelib import clock
from chalicelib.categorize.usage import Usage
from chalicelib.jobs.states import TERMINAL, WORKED, ChunkStatus, JobStatus, status_values
from chalicelib.jobs.stepplan import Moved
from chalicelib.jobs.store import steps as step_writes
from chalicelib.tables import Job, JobChunk, JobStep, connection

S, C = JobStatus, ChunkStatus


@dataclass(frozen=True)
class Lease:
    owner: str
    until: float  # epoch seconds: the end of the invocation holding it


@dataclass(frozen=True)
class Progress:
    lines: int = 0
    failed: int = 0
    cached: int = 0
    retries: int = 0
    rate_limited_seconds: float = 0.0
    usage: Usage = Usage()  # what the batch's model requests used (categorize/usage.py), added with the counts


def _usage_actions(usage: Usage | None) -> list:
    """ADD actions for `usage` on the job (in the write that counts the batch it belongs to)."""
    return [getattr(Job, name).add(n) for name, n in (usage or Usage()).adds().items()]


def _add_usage(job: Job, usage: Usage | None) -> None:
    """The same on an in-memory record."""
    for name, n in (usage or Usage()).adds().items():
        setattr(job, name, int(getattr(job, name) or 0) + n)


@dataclass(frozen=True)
class Change:
    """What a status move writes besides the status (attribute names as on the model) and the conditions it
    needs, each one of the named conditions: `lease` lease_is_ours, `unleased_at` no_live_lease, `processed`
    counts_as_read, `seen` as_seen (heartbeat, reap count), `cursor` cursor_unchanged, `steps_version`
    steps_unchanged (store/steps.py: the move settles the steps it read); `report_check` is a condition on the
    job's report in the same transaction (DynamoDB: (model, hash key, range key, condition)); `events` are more
    audit events (kind, detail) of the same transaction (the steps' transitions)."""

    set: dict[str, Any] = field(default_factory=dict)
    add: dict[str, int] = field(default_factory=dict)
    remove: tuple[str, ...] = ()
    lease: Lease | None = None
    unleased_at: float | None = None
    processed: int | None = None
    seen: tuple[str | None, int] | None = None
    cursor: str | None = None
    report_check: tuple[Any, Any, Any, Condition] | None = None
    steps_version: int | None = None
    events: tuple[tuple[str, dict[str, Any]], ...] = ()


# --- the named conditions (DynamoDB form) ------------------------------------------------------------------------


def lease_free(lease: Lease, now: float) -> Condition:
    """Only one invocation works a job at a time: a duplicate message finds the lease held and is dropped (a
    dead holder's lease runs out, and the reaper re-enqueues)."""
    return Job.lease_owner.does_not_exist() | (Job.lease_until < now) | (Job.lease_owner == lease.owner)


def lease_is_ours(lease: Lease) -> Condition:
    """A stale invocation (its lease taken over after it expired) writes nothing more."""
    return Job.lease_owner == lease.owner


def cursor_unchanged(cursor: str) -> Condition:
    """With lease_is_ours: a duplicate or stale worker can never count a batch twice."""
    return Job.cursor == cursor


def still_worked() -> Condition:
    """Counts are added to a live job only (a cancel or a failure in between wins)."""
    return Job.status.is_in(*status_values(WORKED))


def not_planned_yet() -> Condition:
    """Two planners would split the month differently: chunks of two plans overlap and lines count twice."""
    return Job.chunk_bounds.does_not_exist() & (Job.chunk_count.does_not_exist() | (Job.chunk_count == 0))


def no_progress_since(heartbeat: str | None, status: JobStatus) -> Condition:
    """A worker's checkpoint or a second reaper changes the heartbeat first: one reaper wins, and a live job that
    just moved is left alone."""
    return (Job.heartbeat_at == heartbeat) & (Job.status == status.value)


def recheck_unchanged(after: str) -> Condition:
    """With lease_is_ours: a stale or duplicate worker never takes the same fixes off the counts twice."""
    return (Job.recheck_after == after) if after else Job.recheck_after.does_not_exist()


def newest_result(version: int) -> Condition:
    """Two settlements racing: the later version's report (and its count of lines needing review) stays current."""
    return Job.result_version == version


def batch_not_submitted() -> Condition:
    """Two invocations of one job (a redelivered start) each submitting a batch: the second one's write is refused
    (its batch is cancelled, unless it is the one the job records or intends: worker/batchlane.submit), so the job
    waits on one batch and its answers are counted once. A batch cancelled
    with its job (a retry) may be replaced."""
    return Job.batch_state.does_not_exist() | (Job.batch_state == "cancelled")


def intent_unchanged(plan_key: str) -> Condition:
    """A job's leftover batch intent is cleared (or its batch counted) once: an intent written since (a new submit)
    stays, and a second poller finds it gone."""
    return Job.batch_intent == plan_key


def job_is_final() -> Condition:
    """A stopped job's orphan batch is counted by the poller only while the job is stopped: a job retried since
    takes the batch back itself (its next invocation finds the intent), and counts it when it collects it."""
    return Job.status.is_in(*status_values(TERMINAL))


def batch_submitted(batch_id: str) -> Condition:
    """Two pollers (or a poll racing a cancel) finishing one batch: only the first collects it, so its answers'
    usage is added once; a batch replaced since (a retry) is not collected into the job."""
    return (Job.batch_state == "submitted") & (Job.batch_id == batch_id)


def chunk_free(lease: Lease, now: float) -> Condition:
    """One invocation per chunk; a duplicate message finds the lease held and is dropped."""
    return (JobChunk.status != C.DONE.value) & (JobChunk.lease_owner.does_not_exist()
                                                | (JobChunk.lease_until < now)
                                                | (JobChunk.lease_owner == lease.owner))


def chunk_is_ours(lease: Lease) -> Condition:
    return (JobChunk.lease_owner == lease.owner) & (JobChunk.status == C.RUNNING.value)


def _wait_share(seen: float | None, seconds: float, ends_at: float) -> float:
    """The part of a wait of `seconds` ending at `ends_at` past the job's `limitedUntil` (`seen`): the only part a
    wait adds to the job's rate-limited time (waits that overlap count once)."""
    starts_at = ends_at - max(0.0, seconds)
    return max(0.0, ends_at - max(starts_at, seen or starts_at))


def _failed_condition(err: Exception) -> bool:
    return getattr(err, "cause_response_code", None) == "ConditionalCheckFailedException"


def _now_iso() -> str:
    return clock.iso(clock.now()) or ""


# --- the port ----------------------------------------------------------------------------------------------------


class JobStore(Protocol):
    def load(self, job_id: str) -> Job | None: ...
    def reload(self, job: Job) -> None: ...
    def move(self, job: Job, to: JobStatus, event: str, detail: dict[str, Any] | None, change: Change) -> Job: ...
    def take_lease(self, job: Job, lease: Lease) -> bool: ...
    def checkpoint(self, job: Job, lease: Lease, old_cursor: str, new_cursor: str, done: Progress,
                   eta: str | None) -> bool: ...
    def hand_back(self, job: Job, lease: Lease, retries: int, resume_in: int, usage: Usage | None = None) -> bool: ...
    def release(self, job: Job, lease: Lease) -> bool: ...
    def heartbeat(self, job: Job, lease: Lease) -> bool: ...
    def count_retries(self, job_id: str, retries: int, usage: Usage | None = None) -> None: ...
    def note_wait(self, job_id: str, seconds: float, ends_at: float) -> float: ...
    def mark_reaped(self, job: Job, status: JobStatus) -> bool: ...
    def record_plan(self, job: Job, bounds: list[str], message: str) -> list[str]: ...
    def create_chunk(self, job: Job, number: int, after: str, upto: str) -> bool: ...
    def chunks_of(self, job_id: str) -> list[JobChunk]: ...
    def claim_chunk(self, job_id: str, number: int, lease: Lease) -> JobChunk | None: ...
    def checkpoint_chunk(self, job: Job, chunk: JobChunk, lease: Lease, new_cursor: str, done: Progress,
                         eta: str | None) -> bool: ...
    def hand_back_chunk(self, chunk: JobChunk, lease: Lease, due_in: int) -> bool: ...
    def finish_chunk(self, job: Job, chunk: JobChunk, lease: Lease) -> bool: ...
    def release_chunk(self, chunk: JobChunk, lease: Lease) -> bool: ...
    def reset_chunk(self, chunk: JobChunk) -> None: ...
    def set_chunks_done(self, job: Job, seen: int, done: int) -> bool: ...
    def mark_chunk_reaped(self, chunk: JobChunk) -> bool: ...
    def end_recheck(self, job: Job, lease: Lease, after: str) -> bool: ...
    def recheck_batch(self, job: Job, lease: Lease, after: str, last: str, fixed: int, retries: int,
                      usage: Usage | None = None) -> bool: ...
    def next_result_version(self, job: Job, fixed: int) -> int: ...
    def set_result(self, job: Job, version: int, key: str, message: str) -> bool: ...
    def intend_batch(self, job: Job, lease: Lease, plan_key: str) -> bool: ...
    def clear_batch_intent(self, job: Job, plan_key: str) -> bool: ...
    def wait_on_batch(self, job: Job, lease: Lease, batch_id: str, plan_key: str, message: str) -> bool: ...
    def batch_progress(self, job: Job, message: str) -> bool: ...
    def end_batch(self, job: Job, state: str, answers_key: str | None, usage: Usage, message: str) -> bool: ...
    def settle_intent(self, job: Job, plan_key: str, usage: Usage) -> bool: ...
    # The steps (store/steps.py): the whole list under steps_unchanged (and job_is_live when `live`), with an event
    # per transition; one step's progress under progress_forward.
    def write_steps(self, job: Job, seen: int, steps: list[JobStep], moved: Sequence[Moved], live: bool) -> bool: ...
    def write_progress(self, job: Job, i: int, percent: int) -> bool: ...


# --- DynamoDB ----------------------------------------------------------------------------------------------------


class DynamoJobStore:
    """The store on DynamoDB: every write one conditional update (or one transaction for a chunk with its job)."""

    def load(self, job_id: str) -> Job | None:
        try:
            return Job.get(job_id, consistent_read=True)
        except Job.DoesNotExist:
            return None

    def reload(self, job: Job) -> None:
        job.refresh(consistent_read=True)

    def move(self, job: Job, to: JobStatus, event: str, detail: dict[str, Any] | None, change: Change) -> Job:
        """The status move as one DynamoDB transaction (moves.transition), its change turned into expressions."""
        from chalicelib.jobs.store import moves

        actions = ([getattr(Job, name).set(value) for name, value in change.set.items()]
                   + [getattr(Job, name).add(n) for name, n in change.add.items()]
                   + [getattr(Job, name).remove() for name in change.remove])
        guards = [lease_is_ours(change.lease) if change.lease else None,
                  moves.no_live_lease(change.unleased_at) if change.unleased_at is not None else None,
                  moves.counts_as_read(change.processed) if change.processed is not None else None,
                  moves.as_seen_values(*change.seen) if change.seen is not None else None,
                  cursor_unchanged(change.cursor) if change.cursor is not None else None,
                  step_writes.steps_unchanged(change.steps_version) if change.steps_version is not None else None]
        condition: Condition | None = None
        for guard in guards:
            if guard is not None:
                condition = guard if condition is None else condition & guard
        return moves.transition(job, to, event, detail, actions=actions, condition=condition,
                                checks=[change.report_check] if change.report_check else [], events=change.events)

    def write_steps(self, job: Job, seen: int, steps: list[JobStep], moved: Sequence[Moved], live: bool) -> bool:
        return step_writes.write(job, seen, steps, moved, live)

    def write_progress(self, job: Job, i: int, percent: int) -> bool:
        return step_writes.write_progress(job, i, percent)

    @staticmethod
    def _update(item: Any, actions: list, condition: Condition) -> bool:
        try:
            item.update(actions=actions, condition=condition)
            return True
        except UpdateError as err:
            if _failed_condition(err):
                return False
            raise

    def take_lease(self, job: Job, lease: Lease) -> bool:
        return self._update(job, [Job.lease_owner.set(lease.owner), Job.lease_until.set(lease.until),
                                  Job.heartbeat_at.set(_now_iso())],
                            lease_free(lease, time.time()) & (Job.status == S.PROCESSING.value))

    def checkpoint(self, job: Job, lease: Lease, old_cursor: str, new_cursor: str, done: Progress,
                   eta: str | None) -> bool:
        processed = int(job.processed_lines) + done.lines
        total = max(int(job.total_lines), processed)
        stamp = _now_iso()
        ok = self._update(job, [
            Job.cursor.set(new_cursor), Job.processed_lines.add(done.lines), Job.failed_lines.add(done.failed),
            Job.cached_lines.add(done.cached), Job.retry_count.add(done.retries), Job.total_lines.set(total),
            Job.heartbeat_at.set(stamp), Job.reap_count.set(0), Job.updated_at.set(stamp),
            Job.estimated_completion_at.set(eta) if eta else Job.estimated_completion_at.remove(),
            Job.status_message.set(f"Categorized {processed} of {total} lines"), *_usage_actions(done.usage),
        ], cursor_unchanged(old_cursor) & lease_is_ours(lease) & still_worked())
        if not ok:
            job.refresh(consistent_read=True)
        return ok

    def hand_back(self, job: Job, lease: Lease, retries: int, resume_in: int, usage: Usage | None = None) -> bool:
        due = clock.iso(clock.now() + timedelta(seconds=resume_in))
        return self._update(job, [Job.retry_count.add(retries), Job.heartbeat_at.set(due),
                                  Job.lease_owner.remove(), Job.lease_until.remove(), *_usage_actions(usage)],
                            lease_is_ours(lease))

    def release(self, job: Job, lease: Lease) -> bool:
        return self._update(job, [Job.lease_owner.remove(), Job.lease_until.remove()], lease_is_ours(lease))

    def heartbeat(self, job: Job, lease: Lease) -> bool:
        return self._update(job, [Job.heartbeat_at.set(_now_iso())], lease_is_ours(lease))

    def count_retries(self, job_id: str, retries: int, usage: Usage | None = None) -> None:
        self._update(Job(job_id), [Job.retry_count.add(retries), *_usage_actions(usage)], Job.job_id.exists())

    def note_wait(self, job_id: str, seconds: float, ends_at: float) -> float:
        ends_at = round(ends_at, 3)  # as stored
        for _ in range(8):
            job = self.load(job_id)
            if job is None:
                return 0.0
            seen = float(job.limited_until) if job.limited_until is not None else None
            added = _wait_share(seen, seconds, ends_at)
            if added <= 0:
                return 0.0
            # limited_until_unchanged: two chunks noting overlapping waits at once; the second recomputes its share.
            unchanged = Job.limited_until.does_not_exist() if seen is None else (Job.limited_until == seen)
            if self._update(job, [Job.rate_limited_seconds.add(round(added, 3)),
                                  Job.limited_until.set(ends_at)], unchanged):
                return added
        return 0.0

    def mark_reaped(self, job: Job, status: JobStatus) -> bool:
        # Only a Processing job a worker held counts towards giving up; a Queued one, or one re-sent and not yet
        # taken up, may just be waiting behind a backlog.
        stalled = 1 if status is S.PROCESSING and job.lease_owner else 0
        return self._update(job, [Job.reap_count.add(stalled), Job.heartbeat_at.set(_now_iso()),
                                  Job.lease_owner.remove(), Job.lease_until.remove()],
                            no_progress_since(job.heartbeat_at, status))

    def record_plan(self, job: Job, bounds: list[str], message: str) -> list[str]:
        if not self._update(job, [Job.chunk_bounds.set(bounds), Job.chunk_count.set(len(bounds)),
                                  Job.chunks_done.set(0), Job.heartbeat_at.set(_now_iso()),
                                  Job.status_message.set(message)],
                            not_planned_yet() & (Job.status == S.PROCESSING.value)):
            job.refresh(consistent_read=True)
        return list(job.chunk_bounds or [])

    def create_chunk(self, job: Job, number: int, after: str, upto: str) -> bool:
        try:
            # chunk_is_new: a second planner (a redelivered or reaped start) must never reset a chunk that
            # already started, or its lines would be counted again.
            JobChunk(job.job_id, number, after=after, upto=upto, cursor=after, status=C.PENDING.value,
                     heartbeat_at=_now_iso(), expires_at=job.expires_at).save(
                condition=JobChunk.job_id.does_not_exist())
            return True
        except PutError as err:
            if _failed_condition(err):
                return False
            raise

    def chunks_of(self, job_id: str) -> list[JobChunk]:
        return list(JobChunk.query(job_id, consistent_read=True))

    def claim_chunk(self, job_id: str, number: int, lease: Lease) -> JobChunk | None:
        chunk = JobChunk(job_id, number)
        if not self._update(chunk, [JobChunk.status.set(C.RUNNING.value), JobChunk.lease_owner.set(lease.owner),
                                    JobChunk.lease_until.set(lease.until), JobChunk.heartbeat_at.set(_now_iso())],
                            chunk_free(lease, time.time()) & JobChunk.job_id.exists()):
            return None
        return chunk

    def _with_job(self, chunk: JobChunk, chunk_actions: list, chunk_condition: Condition, job: Job,
                  job_actions: list) -> bool:
        """The chunk's write and the job's, together. False when a condition refused them; a transaction that
        only met another one on the same item (a sibling chunk's checkpoint on the job) is made again; any
        other failure raises."""
        for attempt in range(5):
            try:
                with TransactWrite(connection=connection()) as tx:
                    tx.update(chunk, actions=chunk_actions, condition=chunk_condition)
                    tx.update(job, actions=job_actions, condition=still_worked())
                return True
            except TransactWriteError as err:
                codes = {r.code for r in (err.cancellation_reasons or []) if r and r.code and r.code != "None"}
                if "ConditionalCheckFailed" in codes:
                    return False
                if codes != {"TransactionConflict"} or attempt == 4:
                    raise
                time.sleep(random.uniform(0.005, 0.03) * (attempt + 1))
        return False

    def checkpoint_chunk(self, job: Job, chunk: JobChunk, lease: Lease, new_cursor: str, done: Progress,
                         eta: str | None) -> bool:
        stamp = _now_iso()
        ok = self._with_job(
            chunk, [JobChunk.cursor.set(new_cursor), JobChunk.processed.add(done.lines),
                    JobChunk.heartbeat_at.set(stamp), JobChunk.reap_count.set(0)],
            (JobChunk.cursor == chunk.cursor) & chunk_is_ours(lease),  # cursor_unchanged + chunk_is_ours
            job, [Job.processed_lines.add(done.lines), Job.failed_lines.add(done.failed),
                  Job.cached_lines.add(done.cached), Job.retry_count.add(done.retries), Job.heartbeat_at.set(stamp),
                  Job.updated_at.set(stamp), Job.reap_count.set(0), *_usage_actions(done.usage),
                  Job.estimated_completion_at.set(eta) if eta else Job.estimated_completion_at.remove()])
        if ok:
            chunk.cursor = new_cursor
        return ok

    def hand_back_chunk(self, chunk: JobChunk, lease: Lease, due_in: int) -> bool:
        due = clock.iso(clock.now() + timedelta(seconds=due_in))
        return self._update(chunk, [JobChunk.status.set(C.PENDING.value), JobChunk.lease_owner.remove(),
                                    JobChunk.lease_until.remove(), JobChunk.heartbeat_at.set(due)],
                            chunk_is_ours(lease))

    def finish_chunk(self, job: Job, chunk: JobChunk, lease: Lease) -> bool:
        if not self._with_job(chunk, [JobChunk.status.set(C.DONE.value), JobChunk.lease_owner.remove(),
                                      JobChunk.lease_until.remove()], chunk_is_ours(lease),
                              job, [Job.chunks_done.add(1), Job.heartbeat_at.set(_now_iso())]):
            return False
        job.refresh(consistent_read=True)
        return int(job.chunks_done) >= int(job.chunk_count)

    def release_chunk(self, chunk: JobChunk, lease: Lease) -> bool:
        return self._update(chunk, [JobChunk.status.set(C.PENDING.value), JobChunk.lease_owner.remove(),
                                    JobChunk.lease_until.remove()], chunk_is_ours(lease))

    def reset_chunk(self, chunk: JobChunk) -> None:
        chunk.update(actions=[JobChunk.status.set(C.PENDING.value), JobChunk.lease_owner.remove(),
                              JobChunk.lease_until.remove(), JobChunk.reap_count.set(0),
                              JobChunk.heartbeat_at.set(_now_iso())])

    def set_chunks_done(self, job: Job, seen: int, done: int) -> bool:
        # done_count_unchanged: a chunk of the run before a retry finishing between the count and this write would
        # have its increment overwritten, and the job would never be assembled.
        return self._update(job, [Job.chunks_done.set(done)], Job.chunks_done == seen)

    def mark_chunk_reaped(self, chunk: JobChunk) -> bool:
        stalled = 1 if chunk.status == C.RUNNING else 0
        # no_progress_since (of the chunk): a checkpoint or another reaper changes the heartbeat first.
        return self._update(chunk, [JobChunk.reap_count.add(stalled), JobChunk.heartbeat_at.set(_now_iso()),
                                    JobChunk.status.set(C.PENDING.value), JobChunk.lease_owner.remove(),
                                    JobChunk.lease_until.remove()],
                            (JobChunk.heartbeat_at == chunk.heartbeat_at) & (JobChunk.status != C.DONE.value))

    def end_recheck(self, job: Job, lease: Lease, after: str) -> bool:
        return self._update(job, [Job.recheck_flagged.set(False), Job.recheck_after.remove()],
                            lease_is_ours(lease) & recheck_unchanged(after))

    def recheck_batch(self, job: Job, lease: Lease, after: str, last: str, fixed: int, retries: int,
                      usage: Usage | None = None) -> bool:
        return self._update(job, [Job.failed_lines.add(-fixed), Job.recheck_after.set(last),
                                  Job.retry_count.add(retries), Job.heartbeat_at.set(_now_iso()),
                                  Job.reap_count.set(0), *_usage_actions(usage)],
                            lease_is_ours(lease) & recheck_unchanged(after) & (Job.status == S.PROCESSING.value))

    def next_result_version(self, job: Job, fixed: int) -> int:
        # One atomic add: the counts as they are now, after every other settlement that landed first.
        job.update(actions=[Job.result_version.add(1), Job.failed_lines.add(-fixed), Job.needs_review.add(-fixed)])
        return int(job.result_version)

    def set_result(self, job: Job, version: int, key: str, message: str) -> bool:
        return self._update(job, [Job.result_key.set(key), Job.status_message.set(message)], newest_result(version))

    # the batch lane (worker/batchlane.py)

    def intend_batch(self, job: Job, lease: Lease, plan_key: str) -> bool:
        return self._update(job, [Job.batch_intent.set(plan_key)],
                            lease_is_ours(lease) & batch_not_submitted() & (Job.status == S.PROCESSING.value))

    def clear_batch_intent(self, job: Job, plan_key: str) -> bool:
        return self._update(job, [Job.batch_intent.remove()], intent_unchanged(plan_key))

    def settle_intent(self, job: Job, plan_key: str, usage: Usage) -> bool:
        return self._update(job, [Job.batch_intent.remove(), Job.updated_at.set(_now_iso()), *_usage_actions(usage)],
                            intent_unchanged(plan_key) & job_is_final())

    def wait_on_batch(self, job: Job, lease: Lease, batch_id: str, plan_key: str, message: str) -> bool:
        stamp = _now_iso()
        return self._update(job, [Job.batch_id.set(batch_id), Job.batch_state.set("submitted"),
                                  Job.batch_plan_key.set(plan_key), Job.batch_answers_key.remove(),
                                  Job.batch_intent.remove(),
                                  Job.status_message.set(message), Job.heartbeat_at.set(stamp),
                                  Job.updated_at.set(stamp)],
                            lease_is_ours(lease) & batch_not_submitted() & (Job.status == S.PROCESSING.value))

    def batch_progress(self, job: Job, message: str) -> bool:
        # The heartbeat too: a job waiting on its batch is not a stalled one (the reaper looks at heartbeats).
        stamp = _now_iso()
        return self._update(job, [Job.status_message.set(message), Job.heartbeat_at.set(stamp),
                                  Job.updated_at.set(stamp)],
                            batch_submitted(job.batch_id or "") & (Job.status == S.PROCESSING.value))

    def end_batch(self, job: Job, state: str, answers_key: str | None, usage: Usage, message: str) -> bool:
        stamp = _now_iso()
        actions = [Job.batch_state.set(state), Job.heartbeat_at.set(stamp), Job.updated_at.set(stamp),
                   *_usage_actions(usage)]
        if answers_key:
            actions += [Job.batch_answers_key.set(answers_key), Job.status_message.set(message)]
        return self._update(job, actions, batch_submitted(job.batch_id or ""))


# --- in memory -----------------------------------------------------------------------------------------------------


class MemoryJobStore(step_writes.MemorySteps):
    """The same operations and rules on plain records in memory (the unit tier, and the store's contract tests).

    Each rule is checked as written in the named conditions above; one lock makes each operation atomic, as one
    conditional write (or transaction) is on DynamoDB.
    """

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.chunks: dict[tuple[str, int], JobChunk] = {}
        self.locks: dict[str, str] = {}  # lock key -> the live job holding it (one per user, report and period)
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = threading.RLock()

    # seeding and reading, for tests
    def put(self, job: Job) -> None:
        """A job as its creation leaves it: a live one holds its lock."""
        with self._lock:
            self.jobs[job.job_id] = copy.deepcopy(job)
            if JobStatus(job.status) not in TERMINAL:
                self.locks[job.lock_key] = job.job_id

    def reload(self, job: Job) -> None:
        with self._lock:
            self._copy_into(job, self.jobs[job.job_id])

    def move(self, job: Job, to: JobStatus, event: str, detail: dict[str, Any] | None, change: Change) -> Job:
        """The same rules as moves.transition's transaction: allowed by the machine, status_unchanged, each of the
        change's named conditions, the lock taken back on leaving a final status (ActiveJobExists when another
        job holds it) and let go on reaching one, and the event. (Deliveries need the report: not planned here.)"""
        from chalicelib.errors import ActiveJobExists, InvalidTransition
        from chalicelib.jobs.states import TRANSITIONS, TransitionRaced

        current = JobStatus(job.status)
        if to not in TRANSITIONS[current]:
            raise InvalidTransition(f"A {current.value} job cannot become {to.value}.")
        with self._lock:
            stored = self.jobs[job.job_id]
            now = time.time()
            held = bool(stored.lease_owner) and (stored.lease_until is None or float(stored.lease_until) >= now)
            refused = (stored.status != current.value
                       or (change.lease is not None and stored.lease_owner != change.lease.owner)
                       or (change.unleased_at is not None and held)
                       or (change.processed is not None and int(stored.processed_lines) != change.processed)
                       or (change.seen is not None and (stored.heartbeat_at, int(stored.reap_count)) != change.seen)
                       or (change.cursor is not None and stored.cursor != change.cursor)
                       or (change.steps_version is not None
                           and step_writes.version(stored) != change.steps_version))
            if refused:
                raise TransitionRaced(f"The job is no longer {current.value}; it changed while this request ran.")
            if current in TERMINAL and to not in TERMINAL:
                holder = self.locks.get(job.lock_key)
                if holder and holder != job.job_id:
                    raise ActiveJobExists("Another job for this report and period is active.", existingJobId=holder)
                self.locks[job.lock_key] = job.job_id
                stored.deliveries = None
            stored.status, stored.updated_at = to.value, _now_iso()
            for name, value in change.set.items():
                setattr(stored, name, copy.deepcopy(value))
            for name, n in change.add.items():
                setattr(stored, name, (getattr(stored, name) or 0) + n)
            for name in change.remove:
                setattr(stored, name, None)
            if to in TERMINAL:
                stored.lease_owner = stored.lease_until = stored.active_status = None
                if self.locks.get(job.lock_key) == job.job_id:
                    del self.locks[job.lock_key]
            else:
                stored.active_status = to.value
            self.events.append((job.job_id, event, dict(detail or {})))
            self.events += [(job.job_id, kind, dict(more)) for kind, more in change.events]
            self._copy_into(job, stored)
            return job

    def load(self, job_id: str) -> Job | None:
        with self._lock:
            job = self.jobs.get(job_id)
            return copy.deepcopy(job) if job is not None else None

    @staticmethod
    def _copy_into(target: Any, source: Any) -> None:
        for name in type(source).get_attributes():
            setattr(target, name, copy.deepcopy(getattr(source, name)))

    def _apply(self, job: Job, rule: Callable[[Job], bool], change: Callable[[Job], None],
               refresh: bool = False) -> bool:
        """One conditional write. A refused one leaves the caller's record as it was, as on DynamoDB, unless
        `refresh` (the operations whose DynamoDB form reads the job again after a refusal)."""
        with self._lock:
            stored = self.jobs.get(job.job_id)
            if stored is None or not rule(stored):
                if stored is not None and refresh:
                    self._copy_into(job, stored)
                return False
            change(stored)
            self._copy_into(job, stored)
            return True

    def _apply_chunk(self, chunk: JobChunk, rule: Callable[[JobChunk], bool],
                     change: Callable[[JobChunk], None]) -> bool:
        with self._lock:
            stored = self.chunks.get((chunk.job_id, int(chunk.chunk)))
            if stored is None or not rule(stored):
                return False
            change(stored)
            self._copy_into(chunk, stored)
            return True

    @staticmethod
    def _lease_free(job: Job, lease: Lease, now: float) -> bool:
        # As `lease_free` reads on DynamoDB: an owner without an end (never written so) holds the lease.
        return (not job.lease_owner or (job.lease_until is not None and float(job.lease_until) < now)
                or job.lease_owner == lease.owner)

    @staticmethod
    def _worked(job: Job) -> bool:
        return S(job.status) in WORKED

    def take_lease(self, job: Job, lease: Lease) -> bool:
        now = time.time()

        def change(j: Job) -> None:
            j.lease_owner, j.lease_until, j.heartbeat_at = lease.owner, lease.until, _now_iso()

        return self._apply(job, lambda j: self._lease_free(j, lease, now) and j.status == S.PROCESSING.value,
                           change)

    def checkpoint(self, job: Job, lease: Lease, old_cursor: str, new_cursor: str, done: Progress,
                   eta: str | None) -> bool:
        def change(j: Job) -> None:
            processed = int(j.processed_lines) + done.lines
            total = max(int(j.total_lines), processed)
            j.cursor, j.processed_lines, j.total_lines = new_cursor, processed, total
            j.failed_lines = int(j.failed_lines) + done.failed
            j.cached_lines = int(j.cached_lines) + done.cached
            j.retry_count = int(j.retry_count) + done.retries
            j.heartbeat_at = j.updated_at = _now_iso()
            j.reap_count, j.estimated_completion_at = 0, eta
            j.status_message = f"Categorized {processed} of {total} lines"
            _add_usage(j, done.usage)

        return self._apply(job, lambda j: j.cursor == old_cursor and j.lease_owner == lease.owner
                           and self._worked(j), change, refresh=True)

    def hand_back(self, job: Job, lease: Lease, retries: int, resume_in: int, usage: Usage | None = None) -> bool:
        def change(j: Job) -> None:
            j.retry_count = int(j.retry_count) + retries
            _add_usage(j, usage)
            j.heartbeat_at = clock.iso(clock.now() + timedelta(seconds=resume_in))
            j.lease_owner = j.lease_until = None

        return self._apply(job, lambda j: j.lease_owner == lease.owner, change)

    def release(self, job: Job, lease: Lease) -> bool:
        def change(j: Job) -> None:
            j.lease_owner = j.lease_until = None

        return self._apply(job, lambda j: j.lease_owner == lease.owner, change)

    def heartbeat(self, job: Job, lease: Lease) -> bool:
        def change(j: Job) -> None:
            j.heartbeat_at = _now_iso()

        return self._apply(job, lambda j: j.lease_owner == lease.owner, change)

    def count_retries(self, job_id: str, retries: int, usage: Usage | None = None) -> None:
        def change(j: Job) -> None:
            j.retry_count = int(j.retry_count) + retries
            _add_usage(j, usage)

        self._apply(Job(job_id), lambda j: True, change)

    def note_wait(self, job_id: str, seconds: float, ends_at: float) -> float:
        ends_at = round(ends_at, 3)
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return 0.0
            added = _wait_share(float(job.limited_until) if job.limited_until is not None else None, seconds, ends_at)
            if added <= 0:
                return 0.0
            job.rate_limited_seconds = float(job.rate_limited_seconds) + round(added, 3)
            job.limited_until = ends_at
            return added

    def mark_reaped(self, job: Job, status: JobStatus) -> bool:
        seen = job.heartbeat_at
        stalled = 1 if status is S.PROCESSING and job.lease_owner else 0

        def change(j: Job) -> None:
            j.reap_count = int(j.reap_count) + stalled
            j.heartbeat_at, j.lease_owner, j.lease_until = _now_iso(), None, None

        # A heartbeat of None never matches on DynamoDB (`= NULL` is not a missing attribute): nor here.
        return self._apply(job, lambda j: seen is not None and j.heartbeat_at == seen and j.status == status.value,
                           change)

    def record_plan(self, job: Job, bounds: list[str], message: str) -> list[str]:
        def change(j: Job) -> None:
            j.chunk_bounds, j.chunk_count, j.chunks_done = list(bounds), len(bounds), 0
            j.heartbeat_at, j.status_message = _now_iso(), message

        self._apply(job, lambda j: j.chunk_bounds is None and not int(j.chunk_count or 0)
                    and j.status == S.PROCESSING.value, change, refresh=True)
        return list(job.chunk_bounds or [])

    def create_chunk(self, job: Job, number: int, after: str, upto: str) -> bool:
        with self._lock:
            if (job.job_id, number) in self.chunks:
                return False
            self.chunks[(job.job_id, number)] = JobChunk(job.job_id, number, after=after, upto=upto, cursor=after,
                                                         status=C.PENDING.value, heartbeat_at=_now_iso(),
                                                         expires_at=job.expires_at)
            return True

    def chunks_of(self, job_id: str) -> list[JobChunk]:
        with self._lock:
            return [copy.deepcopy(c) for (j, _), c in sorted(self.chunks.items()) if j == job_id]

    def claim_chunk(self, job_id: str, number: int, lease: Lease) -> JobChunk | None:
        now = time.time()
        chunk = JobChunk(job_id, number)

        def free(c: JobChunk) -> bool:
            return c.status != C.DONE.value and (not c.lease_owner or (c.lease_until is not None
                                                                         and float(c.lease_until) < now)
                                                 or c.lease_owner == lease.owner)

        def change(c: JobChunk) -> None:
            c.status, c.lease_owner, c.lease_until, c.heartbeat_at = C.RUNNING.value, lease.owner, lease.until, \
                _now_iso()

        return chunk if self._apply_chunk(chunk, free, change) else None

    @staticmethod
    def _ours(c: JobChunk, lease: Lease) -> bool:
        return c.lease_owner == lease.owner and c.status == C.RUNNING.value

    def checkpoint_chunk(self, job: Job, chunk: JobChunk, lease: Lease, new_cursor: str, done: Progress,
                         eta: str | None) -> bool:
        with self._lock:
            stored_chunk = self.chunks.get((chunk.job_id, int(chunk.chunk)))
            stored_job = self.jobs.get(job.job_id)
            if stored_chunk is None or stored_job is None or stored_chunk.cursor != chunk.cursor \
                    or not self._ours(stored_chunk, lease) or not self._worked(stored_job):
                return False
            stamp = _now_iso()
            stored_chunk.cursor, stored_chunk.heartbeat_at, stored_chunk.reap_count = new_cursor, stamp, 0
            stored_chunk.processed = int(stored_chunk.processed) + done.lines
            stored_job.processed_lines = int(stored_job.processed_lines) + done.lines
            stored_job.failed_lines = int(stored_job.failed_lines) + done.failed
            stored_job.cached_lines = int(stored_job.cached_lines) + done.cached
            stored_job.retry_count = int(stored_job.retry_count) + done.retries
            stored_job.heartbeat_at = stored_job.updated_at = stamp
            stored_job.reap_count, stored_job.estimated_completion_at = 0, eta
            _add_usage(stored_job, done.usage)
            chunk.cursor = new_cursor
            return True

    def hand_back_chunk(self, chunk: JobChunk, lease: Lease, due_in: int) -> bool:
        def change(c: JobChunk) -> None:
            c.status, c.lease_owner, c.lease_until = C.PENDING.value, None, None
            c.heartbeat_at = clock.iso(clock.now() + timedelta(seconds=due_in))

        return self._apply_chunk(chunk, lambda c: self._ours(c, lease), change)

    def finish_chunk(self, job: Job, chunk: JobChunk, lease: Lease) -> bool:
        with self._lock:
            stored_chunk = self.chunks.get((chunk.job_id, int(chunk.chunk)))
            stored_job = self.jobs.get(job.job_id)
            if stored_chunk is None or stored_job is None or not self._ours(stored_chunk, lease) \
                    or not self._worked(stored_job):
                return False
            stored_chunk.status, stored_chunk.lease_owner, stored_chunk.lease_until = C.DONE.value, None, None
            stored_job.chunks_done = int(stored_job.chunks_done) + 1
            stored_job.heartbeat_at = _now_iso()
            self._copy_into(job, stored_job)
            return int(job.chunks_done) >= int(job.chunk_count)

    def release_chunk(self, chunk: JobChunk, lease: Lease) -> bool:
        def change(c: JobChunk) -> None:
            c.status, c.lease_owner, c.lease_until = C.PENDING.value, None, None

        return self._apply_chunk(chunk, lambda c: self._ours(c, lease), change)

    def reset_chunk(self, chunk: JobChunk) -> None:
        def change(c: JobChunk) -> None:
            c.status, c.lease_owner, c.lease_until, c.reap_count = C.PENDING.value, None, None, 0
            c.heartbeat_at = _now_iso()

        self._apply_chunk(chunk, lambda c: True, change)

    def set_chunks_done(self, job: Job, seen: int, done: int) -> bool:
        def change(j: Job) -> None:
            j.chunks_done = done

        return self._apply(job, lambda j: int(j.chunks_done) == seen, change)

    def mark_chunk_reaped(self, chunk: JobChunk) -> bool:
        seen, stalled = chunk.heartbeat_at, 1 if chunk.status == C.RUNNING else 0

        def change(c: JobChunk) -> None:
            c.reap_count = int(c.reap_count) + stalled
            c.heartbeat_at, c.status, c.lease_owner, c.lease_until = _now_iso(), C.PENDING.value, None, None

        return self._apply_chunk(chunk, lambda c: c.heartbeat_at == seen and c.status != C.DONE.value, change)

    @staticmethod
    def _recheck_at(job: Job, after: str) -> bool:
        return job.recheck_after == after if after else job.recheck_after is None  # as recheck_unchanged reads

    def end_recheck(self, job: Job, lease: Lease, after: str) -> bool:
        def change(j: Job) -> None:
            j.recheck_flagged, j.recheck_after = False, None

        return self._apply(job, lambda j: j.lease_owner == lease.owner and self._recheck_at(j, after), change)

    def recheck_batch(self, job: Job, lease: Lease, after: str, last: str, fixed: int, retries: int,
                      usage: Usage | None = None) -> bool:
        def change(j: Job) -> None:
            j.failed_lines, j.recheck_after = int(j.failed_lines) - fixed, last
            j.retry_count, j.heartbeat_at, j.reap_count = int(j.retry_count) + retries, _now_iso(), 0
            _add_usage(j, usage)

        return self._apply(job, lambda j: j.lease_owner == lease.owner and self._recheck_at(j, after)
                           and j.status == S.PROCESSING.value, change)

    def next_result_version(self, job: Job, fixed: int) -> int:
        def change(j: Job) -> None:
            j.result_version = int(j.result_version) + 1
            j.failed_lines, j.needs_review = int(j.failed_lines) - fixed, int(j.needs_review) - fixed

        self._apply(job, lambda j: True, change)
        return int(job.result_version)

    def set_result(self, job: Job, version: int, key: str, message: str) -> bool:
        def change(j: Job) -> None:
            j.result_key, j.status_message = key, message

        return self._apply(job, lambda j: int(j.result_version) == version, change)

    def intend_batch(self, job: Job, lease: Lease, plan_key: str) -> bool:
        def change(j: Job) -> None:
            j.batch_intent = plan_key

        return self._apply(job, lambda j: j.lease_owner == lease.owner and j.batch_state in (None, "cancelled")
                           and j.status == S.PROCESSING.value, change)

    def clear_batch_intent(self, job: Job, plan_key: str) -> bool:
        def change(j: Job) -> None:
            j.batch_intent = None

        return self._apply(job, lambda j: j.batch_intent == plan_key, change)

    def settle_intent(self, job: Job, plan_key: str, usage: Usage) -> bool:
        def change(j: Job) -> None:
            j.batch_intent, j.updated_at = None, _now_iso()
            _add_usage(j, usage)

        return self._apply(job, lambda j: j.batch_intent == plan_key and S(j.status) in TERMINAL, change)

    def wait_on_batch(self, job: Job, lease: Lease, batch_id: str, plan_key: str, message: str) -> bool:
        def change(j: Job) -> None:
            j.batch_id, j.batch_state, j.batch_plan_key, j.batch_answers_key = batch_id, "submitted", plan_key, None
            j.batch_intent = None
            j.status_message, j.heartbeat_at = message, _now_iso()
            j.updated_at = j.heartbeat_at

        return self._apply(job, lambda j: j.lease_owner == lease.owner and j.batch_state in (None, "cancelled")
                           and j.status == S.PROCESSING.value, change)

    def batch_progress(self, job: Job, message: str) -> bool:
        def change(j: Job) -> None:
            j.status_message, j.heartbeat_at = message, _now_iso()
            j.updated_at = j.heartbeat_at

        return self._apply(job, lambda j: j.batch_state == "submitted" and j.batch_id == job.batch_id
                           and j.status == S.PROCESSING.value, change)

    def end_batch(self, job: Job, state: str, answers_key: str | None, usage: Usage, message: str) -> bool:
        def change(j: Job) -> None:
            j.batch_state, j.heartbeat_at = state, _now_iso()
            j.updated_at = j.heartbeat_at
            _add_usage(j, usage)
            if answers_key:
                j.batch_answers_key, j.status_message = answers_key, message

        return self._apply(job, lambda j: j.batch_state == "submitted" and j.batch_id == job.batch_id, change)


_current: JobStore = DynamoJobStore()


def current() -> JobStore:
    """The store in use: DynamoDB, unless a test put another in (use_store)."""
    return _current


def use_store(store: JobStore) -> JobStore:
    """Put `store` in use; returns the one it replaces (tests put it back)."""
    global _current
    previous, _current = _current, store
    return previous
