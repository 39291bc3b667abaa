"""Versions of a period's lines: an import is all or nothing because the lines it stores become current in one write.

A period's lines live in one partition of the lines table per version: `<owner>#<period>` (version "0", the lines
stored before versions existed, and those of a period no import ever replaced) or `<owner>#<period>#<version>`.
The pointer `lines#<owner>#<period>` in the control table names the current one, and every read of a period's
lines (the listing, a starting job) goes through it. An import writes its rows under a new version (staged), then
moves the pointer in one conditional write (`commit`): until then readers see the previous lines exactly as they
were, and an import that fails leaves them so. A job pins the version it started on (Job.linesVersion), so a
report reads the lines it started with whatever commits meanwhile.

Versions no longer current are garbage: a `LinesGarbage` item names each, due after a grace period, and the
reaper's `sweep` deletes its lines unless an active job still reads it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.transactions import TransactWrite

from chalicelib import clock
from chalicelib.tables import Control, ExpenseLine, Job, LinesGarbage, connection

UNVERSIONED = "0"  # the partition `<owner>#<period>`: lines from before versions, or of a never-replaced period
GC_PARTITION = "gc#versions"  # no line's partition: a period is YYYY-MM, never "versions"
# A version replaced stays readable this long before the sweep may delete it: a job that read the pointer just
# before the move pins that version when its start lands, within seconds.
GC_GRACE_SECONDS = 600
# A staged version is garbage if its import never commits (a worker lost for good): longer than any import runs.
STAGED_GC_SECONDS = 2 * 86400


class PeriodChanged(Exception):
    """The pointer moved (or a small import wrote into the base version) since it was read."""


def owner_period(owner_id: str, period: str) -> str:
    return f"{owner_id}#{period}"


def partition(owner_id: str, period: str, version: str) -> str:
    """The lines-table partition holding `version` of the period's lines."""
    base = owner_period(owner_id, period)
    return base if version in ("", UNVERSIONED) else f"{base}#{version}"


def pointer_key(owner_id: str, period: str) -> str:
    return f"lines#{owner_id}#{period}"


def new_version() -> str:
    return f"v{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Pointer:
    """The pointer as read: the current version and the count of writes into it (`writes`, Control.version)."""

    version: str = UNVERSIONED
    writes: int = 0
    exists: bool = False


def pointer(owner_id: str, period: str) -> Pointer:
    try:
        item = Control.get(pointer_key(owner_id, period), consistent_read=True)
    except Control.DoesNotExist:
        return Pointer()
    return Pointer(item.lines_version or UNVERSIONED, int(item.version or 0), True)


def current_partition(owner_id: str, period: str) -> str:
    return partition(owner_id, period, pointer(owner_id, period).version)


def job_partition(job: Job) -> str:
    """The partition a job reads: the version it pinned when it started (or the current one, before it starts)."""
    version = job.lines_version or pointer(job.owner_id, job.period).version
    return partition(job.owner_id, job.period, version)


# --- the named conditions ----------------------------------------------------------------------------------------


def pointer_unmoved(seen: Pointer) -> Condition:
    """The period's lines are still the version we based our write on: an import's commit or a DELETE landing
    between our read and our write refuses it (a small import's lines would go to a version no one reads; an
    import would drop the lines another committed)."""
    if not seen.exists:
        return Control.pk.does_not_exist()
    return Control.lines_version == seen.version


def base_unchanged(seen: Pointer) -> Condition:
    """No small import (POST /expenses) wrote into the base version since a merging import copied it: its lines
    would be lost when the pointer moves past that version."""
    if not seen.exists:
        return Control.pk.does_not_exist()
    return Control.version == seen.writes


def _refused(err: Exception) -> bool:
    if isinstance(err, UpdateError):
        return err.cause_response_code == "ConditionalCheckFailedException"
    if isinstance(err, TransactWriteError):
        codes = {r.code for r in (err.cancellation_reasons or []) if r}
        return bool(codes & {"ConditionalCheckFailed", "TransactionConflict"})
    return False


# --- writes ------------------------------------------------------------------------------------------------------


def note_write(owner_id: str, period: str, seen: Pointer) -> None:
    """After a small import wrote lines into `seen`'s version: count the write on the pointer (base_unchanged
    then refuses a merging import that copied the version before it). Raises PeriodChanged when the pointer
    moved meanwhile: the lines went to a version no one reads, and the caller writes them again."""
    item = Control(pointer_key(owner_id, period))
    try:
        item.update(condition=pointer_unmoved(seen), actions=[
            Control.version.add(1), Control.lines_version.set(seen.version)])
    except UpdateError as err:
        if _refused(err):
            raise PeriodChanged() from err
        raise


def garbage(owner_id: str, period: str, version: str, due: float) -> LinesGarbage:
    part = partition(owner_id, period, version)
    return LinesGarbage(GC_PARTITION, f"{int(due):010d}#{part}", partition=part, owner_id=owner_id, period=period,
                        version=version, expires_at=clock.expiry(days=30))


def move(owner_id: str, period: str, to: str, seen: Pointer, merged: bool, staged_gc: LinesGarbage | None = None,
         job_check: tuple[Job, Condition] | None = None) -> None:
    """The pointer names `to` instead of `seen.version`, in one transaction with the old version's garbage item
    (and the end of `to`'s own, when it was staged). `merged`: `to` holds a copy of the base version, so no write
    into the base may have landed since the copy (base_unchanged). `job_check`: a condition the importing job must
    meet in the same write (it still holds the job). Raises PeriodChanged when a condition refused."""
    condition = pointer_unmoved(seen) & base_unchanged(seen) if merged else pointer_unmoved(seen)
    try:
        with TransactWrite(connection=connection()) as tx:
            tx.save(Control(pointer_key(owner_id, period), lines_version=to, version=seen.writes + 1),
                    condition=condition)
            if seen.version != to:
                tx.save(garbage(owner_id, period, seen.version, time.time() + GC_GRACE_SECONDS))
            if staged_gc is not None:
                tx.delete(staged_gc)
            if job_check is not None:
                tx.condition_check(Job, job_check[0].job_id, condition=job_check[1])
    except TransactWriteError as err:
        if _refused(err):
            raise PeriodChanged() from err
        raise


def delete_period(owner_id: str, period: str, attempts: int = 5) -> None:
    """The period has no lines: the pointer names a new, empty version; the old one is garbage."""
    for _ in range(attempts):
        try:
            return move(owner_id, period, new_version(), pointer(owner_id, period), merged=False)
        except PeriodChanged:
            continue  # another write moved it first: delete what is current now
    raise PeriodChanged()


# --- reads -------------------------------------------------------------------------------------------------------


def keys(part: str, after: str = "", page: int = 1000) -> Iterator[str]:
    """The lineIds of a partition in order, after `after`."""
    condition = ExpenseLine.line_id > after if after else None
    for line in ExpenseLine.query(part, range_key_condition=condition, attributes_to_get=["lineId"],
                                  page_size=page, consistent_read=True):
        yield line.line_id


def count(part: str) -> int:
    return ExpenseLine.count(part, consistent_read=True)


def lines(part: str, page: int = 500) -> Iterator[ExpenseLine]:
    yield from ExpenseLine.query(part, consistent_read=True, page_size=page)


# --- garbage collection (the reaper's sweep) ---------------------------------------------------------------------


def pinned(item: LinesGarbage) -> bool:
    """An active job still reads this version (of this period: "0" names every period's unversioned lines)."""
    found = Job.by_owner.query(item.owner_id, filter_condition=Job.active_status.exists()
                               & (Job.period == item.period) & (Job.lines_version == item.version))
    return any(True for _ in found)


def sweep(budget_seconds: float = 60.0, now: float | None = None) -> dict[str, Any]:
    """Delete the lines of garbage versions that are due, within `budget_seconds`; what is left waits for the next
    sweep (a garbage item goes only once its lines are all gone)."""
    now = time.time() if now is None else now
    stop = time.monotonic() + budget_seconds
    swept, deleted = 0, 0
    for item in LinesGarbage.query(GC_PARTITION, range_key_condition=LinesGarbage.line_id < f"{int(now):010d}~"):
        if time.monotonic() > stop:
            break
        if pointer(item.owner_id, item.period).version == item.version:
            item.delete()  # current after all (a commit whose garbage note outlived it): never deleted
            continue
        if pinned(item):
            with TransactWrite(connection=connection()) as tx:  # again after the grace: the job may end by then
                tx.delete(item)
                tx.save(garbage(item.owner_id, item.period, item.version, now + GC_GRACE_SECONDS))
            continue
        finished = True
        with ExpenseLine.batch_write() as batch:
            for line_id in keys(item.partition):
                batch.delete(ExpenseLine(item.partition, line_id))
                deleted += 1
                if deleted % 1000 == 0 and time.monotonic() > stop:
                    finished = False
                    break
        if finished:
            item.delete()
            swept += 1
    return {"versionsSwept": swept, "linesDeleted": deleted}
