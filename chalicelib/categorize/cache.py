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


def lookup(categories: list[str], vendors: list[str], model: str) -> dict[str, Answer]:
    """Cached answers by normalized vendor (manual answers whatever the model)."""
    keys = {key(categories, v): v for v in vendors}
    found: dict[str, Answer] = {}
    now = time.time()
    for entry in VendorCacheEntry.batch_get(list(keys)):
        fresh = entry.expires_at is None or entry.expires_at.timestamp() > now
        if fresh and entry.category in categories and (entry.source == "manual" or entry.model == model):
            found[keys[entry.cache_key]] = Answer("", entry.category, float(entry.confidence), "cache", False)
    return found


def _entry(categories: list[str], vendor: str, category: str, confidence: float, model: str) -> VendorCacheEntry:
    return VendorCacheEntry(key(categories, vendor), vendor=vendor, category=category, confidence=confidence,
                            source="model", model=model, updated_at=clock.iso(clock.now()),
                            expires_at=clock.expiry(days=TTL_DAYS))


# not_manual: a person's answer outranks any model, even one racing this write.
_NOT_MANUAL = VendorCacheEntry.cache_key.does_not_exist() | (VendorCacheEntry.source != "manual")


def remember(categories: list[str], vendor: str, category: str, confidence: float, model: str) -> bool:
    """Write a confident model answer through; never overwrite a manual one."""
    if confidence < CONFIDENT:
        return False
    try:
        _entry(categories, vendor, category, confidence, model).save(condition=_NOT_MANUAL)
        return True
    except PutError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise


def remember_many(categories: list[str], answers: list[tuple[str, str, float]], model: str) -> None:
    """Write confident answers (vendor, category, confidence) through, side by side.

    One conditional put each (a manual answer must win). Not a transaction: moto copies
    every table a transaction touches, and the cache table grows large.
    """
    confident = [a for a in answers if a[2] >= CONFIDENT]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda a: remember(categories, a[0], a[1], a[2], model), confident))


def learn_manual(categories: list[str], vendor: str, category: str) -> None:
    VendorCacheEntry(key(categories, vendor), vendor=vendor, category=category, confidence=1.0, source="manual",
                     model=None, updated_at=clock.iso(clock.now()), expires_at=None).save()
