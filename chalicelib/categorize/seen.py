"""Vendors met by jobs, remembered for 30 days so the nightly warmer knows what to refresh.

A note belongs to the tenant whose job met the vendor: the warmer fills that tenant's cache from it, with that
tenant's description, and never asks about it beside another tenant's vendors.
"""

from __future__ import annotations

from chalicelib import clock
from chalicelib.categorize import cache
from chalicelib.tables import VendorSeen

LOOKBACK_DAYS = 30


def seen_key(categories: list[str], vendor: str, *, tenant: str) -> str:
    """A note's key: `seen#` and the cache key its answer goes to (warmer.candidates reads one from the other)."""
    return f"seen#{cache.key(categories, vendor, tenant=tenant)}"


def record_seen(categories: list[str], vendors: dict[str, tuple[str, str]], *, tenant: str) -> None:
    """Note the vendors a job of `tenant` met today: normalized vendor -> (raw vendor, description).

    A vendor already noted today is not written again: every chunk and every invocation of a job meets its
    vendors afresh, and a read costs a fraction of a write (the note was a second write per line).
    """
    day, expires = clock.now().strftime("%Y-%m-%d"), clock.expiry(days=LOOKBACK_DAYS)
    keys = {seen_key(categories, normalized, tenant=tenant): normalized for normalized in vendors}
    noted = {record.cache_key for record in VendorSeen.batch_get(list(keys), attributes_to_get=["cacheKey", "seenDay"])
             if record.seen_day == day}
    with VendorSeen.batch_write() as batch:
        for note_key, normalized in keys.items():
            if note_key in noted:
                continue
            raw, description = vendors[normalized]
            batch.save(VendorSeen(note_key, tenant=tenant, seen_day=day, vendor=raw, description=description[:200],
                                  categories=categories, expires_at=expires))
