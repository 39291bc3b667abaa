"""An import job's own writes (lines/importer.py): its progress in rows, the hand-over to its report's steps, and
its completion. Each is conditioned on the importing invocation still holding a Processing job."""

from __future__ import annotations

from typing import Any

from pynamodb.exceptions import UpdateError
from pynamodb.expressions.condition import Condition

from chalicelib import clock
from chalicelib.jobs.states import JobStatus
from chalicelib.jobs.store.lease import Change, Lease
from chalicelib.jobs.store.moves import _move
from chalicelib.tables import Job


def import_still_ours(lease: Lease) -> Condition:
    """Progress and the commit are written only while this invocation holds a Processing job: a cancel, a reap
    that gave the job to another invocation, or a failure landing in between refuses them."""
    return (Job.status == JobStatus.PROCESSING.value) & (Job.lease_owner == lease.owner)


def save(job: Job, lease: Lease, state: dict[str, Any], message: str, processed: int | None = None,
         total: int | None = None, period: str | None = None, extra: tuple = ()) -> bool:
    """The import's state and counts, with a heartbeat (and `period`: the month its file turned out to hold);
    False when import_still_ours refused."""
    stamp = clock.iso(clock.now())
    actions = [Job.lines_import.set(state), Job.heartbeat_at.set(stamp), Job.updated_at.set(stamp),
               Job.status_message.set(message), *extra]
    if processed is not None:
        actions.append(Job.processed_lines.set(processed))
    if total is not None:
        actions.append(Job.total_lines.set(total))
    if period is not None:
        actions.append(Job.period.set(period))
    try:
        job.update(actions=actions, condition=import_still_ours(lease))
    except UpdateError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def begin_report(job: Job, lease: Lease, state: dict[str, Any], version: str, total: int) -> bool:
    """An import_and_report job goes on to its report's steps on the version it committed: pinned, counted, from
    the first line."""
    return save(job, lease, state, f"Categorizing {total} lines", processed=0, total=total,
                extra=(Job.lines_version.set(version), Job.cursor.set("")))


def complete(job: Job, lease: Lease, state: dict[str, Any], message: str, stored: int) -> Job:
    """Processing -> Completed by the invocation that committed the import (lease_is_ours); the move settles the
    steps."""
    return _move(job, JobStatus.COMPLETED, "completed", {"storedLines": stored, "newLines": state.get("new")},
                 Change(set={"completed_at": clock.iso(clock.now()), "lines_import": state, "status_message": message,
                             "processed_lines": stored, "total_lines": stored},
                        remove=("estimated_completion_at",), lease=lease))
