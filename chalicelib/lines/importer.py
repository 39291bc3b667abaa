"""An import job's work (`lines_import`, and the import part of `import_and_report`): upload, validate, stage,
commit, each a step of the job.

- upload: the file's object is there (the bucket's notification sent the message); its ETag pins it.
- validate: one pass over the file, streamed (lines/rows.py): every row checked, the first 100 errors kept with a
  count of the rest; any error fails the job and nothing is stored.
- stage: a second pass writes the rows under a new version of the period's lines (lines/versions.py); a merge
  then copies the current version's other lines into it. Checkpointed in rows: an invocation short of time hands
  the job over and the next one skips the rows already written (writes are idempotent puts).
- commit: the pointer moves to the staged version in one conditional write; until then every reader sees the
  previous lines exactly as they were, and a failed import leaves them so.

An `import_and_report` job then goes on to its report's steps on the version it committed (worker/runs.py).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from itertools import islice
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import clock
from chalicelib.jobs import runner, steps
from chalicelib.jobs.create import enqueue
from chalicelib.jobs.states import TERMINAL, JobStatus
from chalicelib.jobs.store import imports as store
from chalicelib.jobs.store import moves
from chalicelib.jobs.types import JobType, Step
from chalicelib.lines import uploads, versions
from chalicelib.lines.rows import Rows
from chalicelib.lines.store import import_seq, line_expiry, line_item
from chalicelib.settings import Settings
from chalicelib.tables import ExpenseLine, Job
from chalicelib.worker.invocation import Invocation, start

log = logging.getLogger(__name__)
S = JobStatus
PROGRESS_ROWS = 5000  # rows between progress writes (and deadline checks)
COMMIT_ATTEMPTS = 3


class _Stop(Exception):
    """The job is no longer this invocation's (cancelled, failed or taken over): stop without another write."""


def is_import(job: Job) -> bool:
    """The job still has import work to do (an import_and_report job past its commit is a report job)."""
    return job.type in (JobType.LINES_IMPORT.value, JobType.IMPORT_AND_REPORT.value) and \
        (job.lines_import or {}).get("stage") != "done"


def run(job_id: str, reason: str, context: Any, settings: Settings | None = None) -> None:
    invocation = start(context, settings, lambda lease: _claim(job_id, lease))
    if invocation is None:
        return
    try:
        _work(invocation)
    except _Stop:
        _stopped(invocation)
    finally:
        if S(invocation.job.status) not in TERMINAL:
            runner.release(invocation.job, invocation.lease)


def _claim(job_id: str, lease: runner.Lease) -> Job | None:
    job = runner.load(job_id)
    if job is None or not is_import(job):
        return None
    status = S(job.status)
    if status is S.QUEUED:
        if uploads.head(uploads.object_key(job.job_id)) is None:
            return None  # a message before the file (the reaper's): the file's own notification starts it
        return moves.start(job, lease, 0, message="Checking the file's rows")
    if status is S.CANCELLATION_REQUESTED:
        _drop_staged(job)
        runner.cancel(job)
        return None
    if status is not S.PROCESSING or not runner.take_lease(job, lease):
        return None
    return job


def _work(run_: Invocation) -> None:
    job, state = run_.job, dict(run_.job.lines_import or {})
    if state.get("stage") in (None, "upload"):
        steps.begin(run_.job, Step.UPLOAD)
        head = uploads.head(uploads.object_key(job.job_id))
        if head is None:
            raise _Stop()
        state.update(stage="validate", etag=head["ETag"], bytes=int(head["ContentLength"]))
        _save(run_, state, f"Checking the file's rows ({state['bytes']} bytes)")
        steps.advance(run_.job, Step.UPLOAD, Step.VALIDATE)
    if state["stage"] == "validate":
        steps.begin(run_.job, Step.VALIDATE)  # writes nothing when advance did (a mark is safe to repeat)
        rows = _validate(run_, state)
        if rows is None:
            return
        state.update(stage="stage", rows=rows.rows, period=rows.period, version=versions.new_version(),
                     moment=clock.iso(clock.now()), stagedRows=0)
        if not job.period:
            job.period = str(rows.period)  # the file's month: the job reads and locks by it from now on
        # Before any row is staged: an import that never commits leaves no lines behind for good.
        garbage = versions.garbage(job.owner_id, job.period, state["version"],
                                   time.time() + versions.STAGED_GC_SECONDS)
        garbage.save()
        state["gcKey"] = garbage.line_id
        _save(run_, state, f"{rows.rows} rows checked; storing them", processed=0, total=rows.rows,
              period=job.period)
        steps.advance(run_.job, Step.VALIDATE, Step.STAGE)
    if state["stage"] == "stage":
        if not _stage(run_, state):
            return
        state["stage"] = "commit"
        _save(run_, state, f"Stored {state['rows']} rows; making them the lines of {job.period}",
              processed=state["rows"])
        steps.advance(run_.job, Step.STAGE, Step.COMMIT)
    if state["stage"] == "commit":
        steps.begin(run_.job, Step.COMMIT)
        _commit(run_, state)


def _save(run_: Invocation, state: dict[str, Any], message: str, **counts: Any) -> None:
    if not store.save(run_.job, run_.lease, state, message, **counts):
        raise _Stop()
    run_.job.lines_import = state


def _stopped(run_: Invocation) -> None:
    """The job moved under us: complete a cancel it asked for; anything else is its new holder's."""
    job = runner.load(run_.job.job_id)
    if job is not None:
        run_.job = job
        if job.status == S.CANCELLATION_REQUESTED.value:
            _drop_staged(job)
            run_.job = runner.cancel(job)


def _drop_staged(job: Job) -> None:
    state = job.lines_import or {}
    if state.get("version") and job.period:
        versions.garbage(job.owner_id, job.period, state["version"], time.time()).save()


def _validate(run_: Invocation, state: dict[str, Any]) -> Rows | None:
    """Every row checked; None when the job failed (its errors recorded) or was handed over."""
    job = run_.job
    rows = Rows(job.period or None)
    for _row, _line in rows.read(uploads.open_body(uploads.object_key(job.job_id), state["etag"])):
        if rows.rows % PROGRESS_ROWS == 0:
            if not store.save(job, run_.lease, state, f"Checked {rows.rows} rows", processed=0):
                raise _Stop()
    if rows.error_count:
        first = rows.errors[0]
        more = rows.error_count - 1
        message = (f"The file has {rows.error_count} invalid row{'s' if rows.error_count > 1 else ''}; nothing "
                   f"was stored. {first.message}" + (f" (and {more} more: see the job's import errors)"
                                                     if more else ""))
        state.update(errors=[e.to_dict() for e in rows.errors], errorCount=rows.error_count, rows=rows.rows)
        _save(run_, state, "Invalid rows")
        moves.fail(job, message, {"errorCount": rows.error_count, "firstErrorRow": first.row}, lease=run_.lease)
        run_.job = runner.load(job.job_id) or job
        return None
    return rows


def _stage(run_: Invocation, state: dict[str, Any]) -> bool:
    """Write the file's rows under the staged version, from the checkpoint on; False when handed over."""
    job = run_.job
    part = versions.partition(job.owner_id, job.period, state["version"])
    moment = datetime.fromisoformat(state["moment"].replace("Z", "+00:00"))
    stamp, expires = state["moment"], line_expiry(job.period, moment)
    done = int(state.get("stagedRows", 0))
    rows = Rows(job.period)
    stream = rows.read(uploads.open_body(uploads.object_key(job.job_id), state["etag"]))
    for _ in islice(stream, done):
        pass  # written by an earlier invocation: the same rows, the same ids
    while True:
        batch = list(islice(stream, PROGRESS_ROWS))
        if batch:
            with ExpenseLine.batch_write() as writer:
                for index, (_row, line) in enumerate(batch, start=done):
                    writer.save(line_item(part, line, stamp, import_seq(moment, index), expires))
            done += len(batch)
            state["stagedRows"] = done
            _save(run_, state, f"Stored {done} of {state['rows']} rows", processed=done)
            steps.progress(run_.job, Step.STAGE, done * 100 // max(1, int(state["rows"])))
        if len(batch) < PROGRESS_ROWS:
            break
        if time.monotonic() > run_.deadline:
            return _hand_over(run_)
    if rows.error_count:  # the file changed between the passes (the ETag pins it: this is a bug's guard)
        raise RuntimeError(f"import {job.job_id}: the file read differently the second time")
    return True


def _hand_over(run_: Invocation) -> bool:
    """Out of time: give the job up, then send the message that continues it (hand-over before send)."""
    if runner.hand_back(run_.job, run_.lease, 0, resume_in=0):
        enqueue(run_.job.job_id, reason="continuation", tenant=run_.job.tenant or run_.job.owner_id)
    return False


def _merge(job: Job, state: dict[str, Any], base: str) -> None:
    """Copy the base version's lines the file did not replace into the staged version: a merge keeps them.

    Lines from the file carry this import's sequence prefix; any other staged line is a copy from the base and is
    copied again (a small import may have changed it since the last copy, which base_unchanged then refused).
    """
    staged = versions.partition(job.owner_id, job.period, state["version"])
    prefix = import_seq(datetime.fromisoformat(state["moment"].replace("Z", "+00:00")), 0).split(".")[0] + "."
    mine = {line.line_id for line in ExpenseLine.query(staged, consistent_read=True, page_size=1000,
                                                       attributes_to_get=["lineId", "importSeq"])
            if (line.import_seq or "").startswith(prefix)}
    with ExpenseLine.batch_write() as writer:
        for line in versions.lines(base):
            if line.line_id not in mine:
                writer.save(ExpenseLine(staged, line.line_id, date=line.date, vendor=line.vendor,
                                        amount=line.amount, currency=line.currency, description=line.description,
                                        imported_at=line.imported_at, import_seq=line.import_seq,
                                        expires_at=line.expires_at))


def _commit(run_: Invocation, state: dict[str, Any]) -> None:
    job = run_.job
    merged = state.get("mode", "merge") == "merge"
    staged_gc = versions.garbage(job.owner_id, job.period, state["version"], 0)
    staged_gc.line_id = state["gcKey"]  # its note goes with the commit (the sweep never deletes a current one)
    for _attempt in range(COMMIT_ATTEMPTS):
        seen = versions.pointer(job.owner_id, job.period)
        if seen.version == state["version"]:
            break  # committed by an invocation that stopped before it said so
        base = versions.partition(job.owner_id, job.period, seen.version)
        if merged:
            _merge(job, state, base)
        before = versions.count(base)
        try:
            versions.move(job.owner_id, job.period, state["version"], seen, merged, staged_gc=staged_gc,
                          job_check=(job, store.import_still_ours(run_.lease)))
            state["replacedLines"] = before
            break
        except versions.PeriodChanged:
            current = runner.load(job.job_id)
            if current is None or current.status != S.PROCESSING.value or current.lease_owner != run_.lease.owner:
                raise _Stop() from None
            if merged and versions.pointer(job.owner_id, job.period).version != seen.version:
                return _fail(run_, state, f"The lines of {job.period} were replaced or deleted while this import "
                                          "ran; nothing was stored. Import the file again.")
            continue  # a small import wrote meanwhile (merge: copy again), or replace raced: read again
    else:
        return _fail(run_, state, f"The lines of {job.period} kept changing while this import ran; nothing was "
                                  "stored. Import the file again.")
    _finish(run_, state)


def _finish(run_: Invocation, state: dict[str, Any]) -> None:
    job = run_.job
    part = versions.partition(job.owner_id, job.period, state["version"])
    total = versions.count(part)
    state.update(stage="done", storedLines=total, new=max(0, total - int(state.get("replacedLines", 0)))
                 if state.get("mode", "merge") == "merge" else None)
    if job.type == JobType.IMPORT_AND_REPORT.value:
        steps.complete(run_.job, Step.COMMIT)  # (a lines_import job's Completed move completes it)
    summary = (f"Imported {state['rows']} rows into {job.period}: the period has {total} lines"
               + (f", {state['new']} new" if state.get("new") is not None else " (replaced)"))
    if job.type == JobType.IMPORT_AND_REPORT.value:
        state["summary"] = summary
        if not store.begin_report(job, run_.lease, state, state["version"], total):
            raise _Stop()
        job.refresh(consistent_read=True)
        _hand_over(run_)  # the report's steps run as any report job's (worker/runs.run_job)
        return
    run_.job = store.complete(job, run_.lease, state, summary, int(state["rows"]))


def _fail(run_: Invocation, state: dict[str, Any], message: str) -> None:
    _drop_staged(run_.job)
    moves.fail(run_.job, message, {"stage": state.get("stage")}, lease=run_.lease)
    run_.job = runner.load(run_.job.job_id) or run_.job


def reap_waiting(job: Job, now: float | None = None) -> str:
    """The reaper's judgement of a Queued import: its file arrived (the notification was lost: start it), is
    still within its upload time (leave it), or never came (fail it, saying so)."""
    state = job.lines_import or {}
    try:
        arrived = uploads.head(uploads.object_key(job.job_id)) is not None
    except ClientError:
        return "skipped"
    if arrived:
        enqueue(job.job_id, reason="uploaded", tenant=job.tenant or job.owner_id)
        return "requeued"
    deadline = clock.parse(state.get("uploadExpiresAt"))
    now = time.time() if now is None else now
    if deadline is None or now < deadline.timestamp() + uploads.UPLOAD_GRACE_SECONDS:
        return "skipped"
    moves.fail(job, f"The file was not uploaded: its upload URL expired at {state.get('uploadExpiresAt')} "
                    "(15 minutes after POST /imports) and nothing arrived. Nothing was stored; start a new import.",
               {"stage": "upload"})
    return "failed"
