"""The vendor cache: one tenant's answers keyed by taxonomy and normalized vendor, read in batches.

Every entry belongs to one tenant (the tenant key of chalicelib.auth): a person's settled answer or a model
answer steered by one tenant's descriptions is never another tenant's answer, and `source: "cache"` never tells
one tenant that another has met a vendor. `tenant` is a required keyword everywhere here, so a caller that
forgets it fails loudly instead of reading a shared namespace.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pynamodb.exceptions import PutError, TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib import clock
from chalicelib.auth import tenant_scope
from chalicelib.categorize.types import Answer
from chalicelib.tables import VendorCacheEntry, connection

CONFIDENT = 0.8
TTL_DAYS = 90


def taxonomy_id(categories: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(categories)).encode()).hexdigest()[:16]


def key(categories: list[str], vendor: str, *, tenant: str) -> str:
    # The tenant and the taxonomy are in the key; the model is checked on read (a new model misses). Both
    # leading parts are fixed-length hex, so a key reads back one way only, whatever the vendor holds.
    return f"{tenant_scope(tenant)}#{taxonomy_id(categories)}#{vendor}"


def lookup(categories: list[str], vendors: list[str], model: str, job_id: str | None = None, *,
           tenant: str) -> dict[str, Answer]:
    """Cached answers by normalized vendor (manual answers whatever the model).

    With `job_id`, also that job's own answers under the confidence bar (`source` "model": they were not cached
    for anyone else), so a job split into chunks asks about a vendor once, not once per chunk.
    """
    keys = {key(categories, v, tenant=tenant): v for v in vendors}
    found: dict[str, Answer] = {}
    now = time.time()
    for entry in VendorCacheEntry.batch_get(list(keys)):
        fresh = entry.expires_at is None or entry.expires_at.timestamp() > now
        if not (fresh and entry.category in categories and (entry.source == "manual" or entry.model == model)):
            continue
        if entry.job_id is None or entry.job_id == job_id:
            source = "cache" if entry.job_id is None else "model"
            found[keys[entry.cache_key]] = Answer("", entry.category, float(entry.confidence), source, False)
    return found


def _entry(categories: list[str], vendor: str, category: str, confidence: float, model: str,
           tenant: str) -> VendorCacheEntry:
    return VendorCacheEntry(key(categories, vendor, tenant=tenant), vendor=vendor, category=category,
                            confidence=confidence, source="model", model=model, updated_at=clock.iso(clock.now()),
                            expires_at=clock.expiry(days=TTL_DAYS))


# not_manual: a person's answer outranks any model, even one racing this write.
_NOT_MANUAL = VendorCacheEntry.cache_key.does_not_exist() | (VendorCacheEntry.source != "manual")
# no_answer_for_all: a job's hint never replaces an answer every job may use.
_NO_ANSWER_FOR_ALL = VendorCacheEntry.cache_key.does_not_exist() | VendorCacheEntry.job_id.exists()


def _kept(confidence: float, job_id: str | None) -> bool:
    """Confident answers are kept for everyone; the rest only for the job that asked (see `_prepared`)."""
    return confidence >= CONFIDENT or bool(job_id)


def _prepared(categories: list[str], vendor: str, category: str, confidence: float, model: str,
              job_id: str | None, tenant: str) -> tuple[VendorCacheEntry, Any]:
    """The entry to write and the condition it is written under."""
    entry = _entry(categories, vendor, category, confidence, model, tenant)
    if confidence >= CONFIDENT:
        return entry, _NOT_MANUAL
    entry.job_id, entry.expires_at = job_id, clock.expiry(days=1)
    return entry, _NO_ANSWER_FOR_ALL


def remember(categories: list[str], vendor: str, category: str, confidence: float, model: str,
             job_id: str | None = None, *, tenant: str) -> bool:
    """Write a confident model answer through; never overwrite a manual one.

    An answer under the bar is only kept with `job_id`, for that job (a day), where no answer for all is held.
    """
    if not _kept(confidence, job_id):
        return False
    entry, condition = _prepared(categories, vendor, category, confidence, model, job_id, tenant)
    try:
        entry.save(condition=condition)
        return True
    except PutError as err:
        if err.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise


def remember_many(categories: list[str], answers: list[tuple[str, str, float]], model: str,
                  job_id: str | None = None, *, tenant: str) -> None:
    """Write answers (vendor, category, confidence) through: see `remember`.

    Up to 100 conditional puts in one transaction (one request instead of a hundred; a transaction costs
    twice the write capacity, on one write per distinct vendor). If any condition refuses (a person's answer
    arrived meanwhile), the transaction is cancelled whole and that group is written one put at a time, so
    every other answer still lands.
    """
    kept = list({a[0]: a for a in answers if _kept(a[2], job_id)}.values())  # one write per vendor
    for start in range(0, len(kept), 100):
        group = kept[start:start + 100]
        try:
            with TransactWrite(connection=connection()) as tx:
                for vendor, category, confidence in group:
                    entry, condition = _prepared(categories, vendor, category, confidence, model, job_id,
                                                 tenant)
                    tx.save(entry, condition=condition)
        except TransactWriteError as err:
            if err.cause_response_code not in ("TransactionCanceledException", "ValidationException"):
                raise
            for vendor, category, confidence in group:
                remember(categories, vendor, category, confidence, model, job_id, tenant=tenant)


def learn_manual(categories: list[str], vendor: str, category: str, *, tenant: str) -> None:
    """A person's answer, for their own tenant's jobs only: it outranks the model there, and nowhere else."""
    VendorCacheEntry(key(categories, vendor, tenant=tenant), vendor=vendor, category=category, confidence=1.0,
                     source="manual", model=None, updated_at=clock.iso(clock.now()), expires_at=None).save()
