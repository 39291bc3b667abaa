"""Vendors met by jobs, remembered for 30 days so the nightly warmer knows what to refresh."""

from __future__ import annotations

from chalicelib import clock
from chalicelib.categorize import cache
from chalicelib.tables import VendorSeen

LOOKBACK_DAYS = 30


def record_seen(categories: list[str], vendors: dict[str, tuple[str, str]]) -> None:
    """Note the vendors a job met today: normalized vendor -> (raw vendor, description)."""
    day, expires = clock.now().strftime("%Y-%m-%d"), clock.expiry(days=LOOKBACK_DAYS)
    with VendorSeen.batch_write() as batch:
        for normalized, (raw, description) in vendors.items():
            batch.save(VendorSeen(f"seen#{cache.key(categories, normalized)}", seen_day=day, vendor=raw,
                                  description=description[:200], categories=categories, expires_at=expires))
