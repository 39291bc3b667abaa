"""Nightly cache warming: vendors seen in the last 30 days that the cache lacks or is about to lose.

Each tenant's vendors are warmed into that tenant's cache only, and one model request never carries two
tenants' vendors or descriptions (a description is one tenant's data, and steers the answer its request gets).
Each tenant with vendors due is one `cache_warm` job (warm_jobs.py), which its administrators see.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from pynamodb.exceptions import PutError

from chalicelib import clock
from chalicelib.categorize import pipeline, warm_jobs
from chalicelib.categorize.errors import JobFatal, LongWait
from chalicelib.categorize.seen import LOOKBACK_DAYS
from chalicelib.categorize.types import Item
from chalicelib.tables import Control, VendorCacheEntry, VendorSeen

log = logging.getLogger(__name__)

REFRESH_WITHIN_DAYS = 7
LOCK_KEY = "lock#cache-warmer"


def candidates(model: str) -> list[VendorSeen]:
    """Seen vendors with no usable cache entry, or one that expires within 7 days (never manual ones)."""
    return select(model)[0]


def select(model: str) -> tuple[list[VendorSeen], dict[str, int]]:
    """The seen vendors due a refresh, by cache key (so one tenant's are side by side: its scope leads the key),
    and per tenant how many it has seen that are not due (a fresh cache entry, or a person's answer).

    A note without a tenant (written before tenants existed) is skipped: there is no tenant to warm it for.
    """
    today = clock.now()
    seen: dict[str, VendorSeen] = {}
    for back in range(LOOKBACK_DAYS):
        for record in VendorSeen.by_seen_day.query((today - timedelta(days=back)).strftime("%Y-%m-%d")):
            if record.tenant:
                seen.setdefault(record.cache_key.removeprefix("seen#"), record)
    soon = time.time() + REFRESH_WITHIN_DAYS * 86400
    entries = {e.cache_key: e for e in VendorCacheEntry.batch_get(list(seen))} if seen else {}
    due = []
    fresh: dict[str, int] = {}
    for key, record in sorted(seen.items()):
        entry = entries.get(key)
        if entry is not None and (entry.source == "manual" or (
                entry.model == model and (entry.expires_at is None or entry.expires_at.timestamp() > soon))):
            fresh[record.tenant] = fresh.get(record.tenant, 0) + 1
            continue
        due.append(record)
    return due, fresh


def _take_lock(seconds: float) -> bool:
    lock = Control(LOCK_KEY, job_id="warmer", expires_at=clock.expiry(seconds=seconds))
    # one_warm_run: a second scheduler tick or a continuation racing a run waits its turn.
    free = Control.pk.does_not_exist() | (Control.expires_at < clock.now())
    try:
        lock.save(condition=free)
        return True
    except PutError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise


def warm(backend: pipeline.ModelBackend | None, budget_seconds: float, after: str = "") -> dict:
    """Categorize due vendors (cache keys after `after`) until the budget runs out, one `cache_warm` job per
    tenant (warm_jobs.py).

    Returns counts, the jobs it worked, and `after` to continue from when the budget ran out first.
    """
    if backend is None or not _take_lock(budget_seconds + 60):
        return {"warmed": 0, "asked": 0, "skipped": True, "after": None, "jobs": []}
    run = _Run(backend, time.monotonic() + budget_seconds, after)
    try:
        due, fresh = select(backend.model)
        due = [r for r in due if r.cache_key > after]
        for tenant, records in _tenants(due):
            if not run.tenant(tenant, records, fresh.get(tenant, 0)):
                break
        return run.outcome()
    finally:
        Control(LOCK_KEY).delete()


def _tenants(due: list[VendorSeen]) -> list[tuple[str, list[VendorSeen]]]:
    """`due` by tenant, in key order (a tenant's keys share its scope prefix, so each tenant is one stretch)."""
    out: list[tuple[str, list[VendorSeen]]] = []
    for record in due:
        if out and out[-1][0] == record.tenant:
            out[-1][1].append(record)
        else:
            out.append((record.tenant, [record]))
    return out


def _scope(seen_key: str) -> str:
    """The tenant scope that leads a seen-vendor note's key (`seen#<scope>#<taxonomy>#<vendor>`)."""
    return seen_key.removeprefix("seen#").split("#", 1)[0]


class _Run:
    """One invocation's warm run: its counts, its deadline and where a continuation takes over."""

    def __init__(self, backend: pipeline.ModelBackend, deadline: float, after: str) -> None:
        self.backend, self.deadline, self.start_after = backend, deadline, after
        self.warmed = self.asked = 0
        self.last = after  # the key of the last vendor asked (or the start)
        self.resume: str | None = None
        self.jobs: list[str] = []

    def outcome(self) -> dict:
        return {"warmed": self.warmed, "asked": self.asked, "skipped": False, "after": self.resume,
                "jobs": self.jobs}

    def tenant(self, tenant: str, records: list[VendorSeen], fresh: int) -> bool:
        """Warm one tenant's due vendors under its job; False when the run must stop (time, a long wait, a fatal
        error)."""
        # A continuation resumes inside the tenant it stopped in: that tenant's job goes on.
        continuing = bool(self.start_after) and _scope(self.start_after) == _scope(records[0].cache_key)
        job = warm_jobs.open_job(tenant, len(records), fresh, continuing)
        if job is None:
            return True  # cancelled by an admin (or another run's): the next tenant
        self.jobs.append(job.job_id)
        step = self.backend.batch_size * max(1, self.backend.concurrency)
        for start in range(0, len(records), step):
            if self.asked and time.monotonic() > self.deadline:
                self.resume = self.last  # this job stays Processing: the continuation goes on with it
                return False
            group = records[start:start + step]
            try:
                refreshed = self._ask(tenant, group)
            except (LongWait, JobFatal) as err:
                log.warning("cache warming stopped early", extra={"reason": str(err)})
                if isinstance(err, LongWait) and self.last:
                    self.resume = self.last
                else:
                    warm_jobs.fail(job, f"The model provider could not be used: {err}")
                return False
            self.last = group[-1].cache_key
            if not warm_jobs.record(job, refreshed, len(group) - refreshed):
                return True  # cancelled: the rest of this tenant waits for the next run
        warm_jobs.finish(job)
        return True

    def _ask(self, tenant: str, group: list[VendorSeen]) -> int:
        """Ask about one group of a tenant's vendors (one request per taxonomy); how many were cached."""
        by_taxonomy: dict[tuple[str, ...], list[VendorSeen]] = {}
        for record in group:
            by_taxonomy.setdefault(tuple(record.categories), []).append(record)
        refreshed = 0
        for categories, records in by_taxonomy.items():
            items = [Item(f"w{n}", r.vendor, r.description) for n, r in enumerate(records)]
            answers = pipeline.ask_model(self.backend, items, list(categories), tenant=tenant)
            self.asked += len(items)
            refreshed += sum(1 for a in answers if a.category and not a.needs_review and a.confidence >= 0.8)
        self.warmed += refreshed
        return refreshed
