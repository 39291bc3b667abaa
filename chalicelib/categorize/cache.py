"""The vendor cache: answers keyed by taxonomy and normalized vendor, read in batches."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

from pynamodb.exceptions import PutError

from chalicelib import clock
from chalicelib.categorize.types import Answer
from chalicelib.tables import VendorCacheEntry

CONFIDENT = 0.8
TTL_DAYS = 90


def taxonomy_id(categories: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(categories)).encode()).hexdigest()[:16]


def key(categories: list[str], vendor: str) -> str:
    # The taxonomy is in the key; the model is checked on read (a new model misses).
    return f"{taxonomy_id(categories)}#{vendor}"


def lookup(categories: list[str], vendors: list[str], model: str, job_id: str | None = None) -> dict[str, Answer]:
    """Cached answers by normalized vendor (manual answers whatever the model).

    With `job_id`, also that job's own answers under the confidence bar (`source` "model": they were not cached
    for anyone else), so a job split into chunks asks about a vendor once, not once per chunk.
    """
    keys = {key(categories, v): v for v in vendors}
    found: dict[str, Answer] = {}
    now = time.time()
    for entry in VendorCacheEntry.batch_get(list(keys)):
        fresh = entry.expires_at is None or entry.expires_at.timestamp() > now
        if not (fresh and entry.category in categories and (entry.source == "manual" or entry.model == model)):
            continue
        if entry.job_id is None:
            found[keys[entry.cache_key]] = Answer("", entry.category, float(entry.confidence), "cache", False)
        elif entry.job_id == job_id:
            found[keys[entry.cache_key]] = Answer("", entry.category, float(entry.confidence), "model", False)
    return found


def _entry(categories: list[str], vendor: str, category: str, confidence: float, model: str) -> VendorCacheEntry:
    return VendorCacheEntry(key(categories, vendor), vendor=vendor, category=category, confidence=confidence,
                            source="model", model=model, updated_at=clock.iso(clock.now()),
                            expires_at=clock.expiry(days=TTL_DAYS))


# not_manual: a person's answer outranks any model, even one racing this write.
_NOT_MANUAL = VendorCacheEntry.cache_key.does_not_exist() | (VendorCacheEntry.source != "manual")
# no_answer_for_all: a job's hint never replaces an answer every job may use.
_NO_ANSWER_FOR_ALL = VendorCacheEntry.cache_key.does_not_exist() | VendorCacheEntry.job_id.exists()


def remember(categories: list[str], vendor: str, category: str, confidence: float, model: str,
             job_id: str | None = None) -> bool:
    """Write a confident model answer through; never overwrite a manual one.

    An answer under the bar is only kept with `job_id`, for that job (a day), where no answer for all is held.
    """
    if confidence < CONFIDENT and not job_id:
        return False
    entry = _entry(categories, vendor, category, confidence, model)
    condition = _NOT_MANUAL
    if confidence < CONFIDENT:
        entry.job_id, entry.expires_at, condition = job_id, clock.expiry(days=1), _NO_ANSWER_FOR_ALL
    try:
        entry.save(condition=condition)
        return True
    except PutError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise


def remember_many(categories: list[str], answers: list[tuple[str, str, float]], model: str,
                  job_id: str | None = None) -> None:
    """Write answers (vendor, category, confidence) through, side by side: see `remember`.

    One conditional put each (a manual answer must win). Not a transaction: moto copies
    every table a transaction touches, and the cache table grows large.
    """
    kept = [a for a in answers if a[2] >= CONFIDENT or job_id]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda a: remember(categories, a[0], a[1], a[2], model, job_id), kept))


def learn_manual(categories: list[str], vendor: str, category: str) -> None:
    VendorCacheEntry(key(categories, vendor), vendor=vendor, category=category, confidence=1.0, source="manual",
                     model=None, updated_at=clock.iso(clock.now()), expires_at=None).save()
