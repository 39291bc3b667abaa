"""Timezone-aware UTC time, formatted as the contract writes it (ISO 8601 with Z)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import overload


def now() -> datetime:
    return datetime.now(UTC)


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def parse(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def expiry(days: float = 0, seconds: float = 0) -> datetime:
    """A moment `days` (and `seconds`) from now, for DynamoDB TTL attributes."""
    return now() + timedelta(days=days, seconds=seconds)


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
