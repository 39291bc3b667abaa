"""A user's job counts, kept per creation day and status, so a list's `totalCount` never walks their jobs.

Each count item (`jobcount#<owner>#<YYYY-MM-DD>` in the control table) is written in the same transaction as
the job change it counts: +1 Queued at create (and -1 if the create is undone), +1/-1 at every transition. A
job expires `retention_days` after it was created, so every job created in the last `retention_days` days
is live and counted by its day's item; only the day the window starts on is partly expired, and that one
day is counted exactly with one query. A list then costs one BatchGetItem of 30 small items and one query
over at most a day of jobs (the create rate limit bounds it), not a walk of 10,000 jobs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pynamodb.transactions import TransactWrite

from chalicelib import clock
from chalicelib.jobs.states import JobStatus
from chalicelib.settings import get_settings
from chalicelib.tables import Control, Job

S = JobStatus
# The count item's attribute of each status (Control.n_queued, ...).
_NAME = {status: "n_" + "".join(f"_{c.lower()}" if c.isupper() else c for c in status.value).lstrip("_")
         for status in JobStatus}


def _attribute(status: JobStatus):  # a PynamoDB attribute, for an update action
    return getattr(Control, _NAME[status])


def key(owner_id: str, day: str) -> str:
    """The count item of `owner_id`'s jobs created on `day` (YYYY-MM-DD)."""
    return f"jobcount#{owner_id}#{day}"


def attribute_name(status: JobStatus) -> str:
    return _NAME[status]


def _day_of(job: Job) -> str:
    return job.created_at[:10]


def created(tx: TransactWrite, job: Job) -> None:
    """In the create transaction: one more Queued job of that day."""
    keep = clock.expiry(get_settings().retention_days + 2)
    tx.update(Control(key(job.owner_id, _day_of(job))),
              actions=[Control.n_queued.add(1), Control.expires_at.set(keep)])


def undone(tx: TransactWrite, job: Job) -> None:
    """In the transaction that removes a job whose message could not be sent."""
    tx.update(Control(key(job.owner_id, _day_of(job))), actions=[Control.n_queued.add(-1)])


def moved(tx: TransactWrite, job: Job, before: JobStatus, after: JobStatus) -> None:
    """In a transition's transaction: the job leaves one status's count for another's."""
    keep = clock.expiry(get_settings().retention_days + 2)
    # if_not_exists: an item TTL already removed (a job retried past its day's window) gets an expiry again.
    tx.update(Control(key(job.owner_id, _day_of(job))),
              actions=[_attribute(after).add(1), _attribute(before).add(-1),
                       Control.expires_at.set(Control.expires_at | keep)])


def _of(item: Control, status: JobStatus | None) -> int:
    # Never below 0: a job created before the counters existed still moves between them (a stage upgraded
    # mid-window undercounts its older jobs until they expire; it never reports a negative count).
    wanted = [status] if status else list(JobStatus)
    return sum(max(0, int(getattr(item, _NAME[s]) or 0)) for s in wanted)


def total(owner_id: str, status: JobStatus | None, now: datetime | None = None) -> int:
    """How many live jobs `owner_id` has (in `status`), from the day counts and one exact count of the oldest day."""
    now = now or clock.now()
    retention = int(get_settings().retention_days)
    days = [(now - timedelta(days=back)).strftime("%Y-%m-%d") for back in range(retention + 1)]
    oldest = days[-1]
    by_day = {item.pk: _of(item, status) for item in Control.batch_get([key(owner_id, day) for day in days])}
    counted = sum(n for pk, n in by_day.items() if pk != key(owner_id, oldest))
    if by_day.get(key(owner_id, oldest)):
        # The day the window starts on: its jobs expire during today, some already have. Counted exactly.
        live = Job.expires_at > now
        condition = live & (Job.status == status.value) if status else live
        counted += Job.by_owner.count(owner_id, range_key_condition=Job.created_at.startswith(oldest),
                                      filter_condition=condition)
    return counted
