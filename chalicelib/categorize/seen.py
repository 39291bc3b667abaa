"""Vendors met by jobs, remembered for 30 days so the nightly warmer knows what to refresh."""

from __future__ import annotations

from chalicelib import clock
from chalicelib.categorize import cache
from chalicelib.tables import VendorSeen

LOOKBACK_DAYS = 30


def record_seen(categories: list[str], vendors: dict[str, tuple[str, str]]) -> None:
    """Note the vendors a job met today: normalized vendor -> (raw vendor, description).

    A vendor already noted today is not written again: every chunk and every invocation of a job meets its
    vendors afresh, and a read costs a fraction of a write (the note was a second write per line).
    """
    day, expires = clock.now().strftime("%Y-%m-%d"), clock.expiry(days=LOOKBACK_DAYS)
    keys = {f"seen#{cache.key(categories, normalized)}": normalized for normalized in vendors}
    noted = {record.cache_key for record in VendorSeen.batch_get(list(keys), attributes_to_get=["cacheKey", "seenDay"])
             if record.seen_day == day}
    with VendorSeen.batch_write() as batch:
        for seen_key, normalized in keys.items():
            if seen_key in noted:
                continue
            raw, description = vendors[normalized]
            batch.save(VendorSeen(seen_key, seen_day=day, vendor=raw, description=description[:200],
                                  categories=categories, expires_at=expires))
