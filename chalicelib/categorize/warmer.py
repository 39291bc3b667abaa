"""Nightly cache warming: vendors seen in the last 30 days that the cache lacks or is about to lose.

Each tenant's vendors are warmed into that tenant's cache only, and one model request never carries two
tenants' vendors or descriptions (a description is one tenant's data, and steers the answer its request gets).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from pynamodb.exceptions import PutError

from chalicelib import clock
from chalicelib.categorize import pipeline
from chalicelib.categorize.errors import JobFatal, LongWait
from chalicelib.categorize.seen import LOOKBACK_DAYS
from chalicelib.categorize.types import Item
from chalicelib.tables import Control, VendorCacheEntry, VendorSeen

log = logging.getLogger(__name__)

REFRESH_WITHIN_DAYS = 7
LOCK_KEY = "lock#cache-warmer"


def candidates(model: str) -> list[VendorSeen]:
    """Seen vendors with no usable cache entry, or one that expires within 7 days (never manual ones).

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
    for key, record in sorted(seen.items()):
        entry = entries.get(key)
        if entry is not None and (entry.source == "manual" or (
                entry.model == model and (entry.expires_at is None or entry.expires_at.timestamp() > soon))):
            continue
        due.append(record)
    return due


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
    """Categorize due vendors (cache keys after `after`) until the budget runs out.

    Returns counts, and `after` to continue from when the budget ran out first.
    """
    if backend is None or not _take_lock(budget_seconds + 60):
        return {"warmed": 0, "asked": 0, "skipped": True, "after": None}
    try:
        due = [r for r in candidates(backend.model) if r.cache_key > after]
        deadline = time.monotonic() + budget_seconds
        warmed = asked = 0
        step = backend.batch_size * max(1, backend.concurrency)
        for start in range(0, len(due), step):
            if time.monotonic() > deadline:
                return {"warmed": warmed, "asked": asked, "skipped": False, "after": due[start - 1].cache_key}
            group = due[start:start + step]
            # One request per tenant and taxonomy: never two tenants' vendors or descriptions side by side.
            by_tenant: dict[tuple[str, tuple[str, ...]], list[VendorSeen]] = {}
            for record in group:
                by_tenant.setdefault((record.tenant, tuple(record.categories)), []).append(record)
            for (tenant, categories), records in by_tenant.items():
                items = [Item(f"w{n}", r.vendor, r.description) for n, r in enumerate(records)]
                try:
                    answers = pipeline.ask_model(backend, items, list(categories), tenant=tenant)
                except (LongWait, JobFatal) as err:
                    log.warning("cache warming stopped early", extra={"reason": str(err)})
                    resume = due[start - 1].cache_key if start and isinstance(err, LongWait) else None
                    return {"warmed": warmed, "asked": asked, "skipped": False, "after": resume}
                asked += len(items)
                warmed += sum(1 for a in answers if a.category and not a.needs_review and a.confidence >= 0.8)
        return {"warmed": warmed, "asked": asked, "skipped": False, "after": None}
    finally:
        Control(LOCK_KEY).delete()
