"""Deterministic line ids: a line imported without a `lineId` is named by its content and its occurrence.

A random id made re-importing a file double its month. The id of a line without one is the first 24 hex digits of
the SHA-256 of its normalized content (date, vendor, amount as a number, currency, description), then its
occurrence number among the identical lines of the same file or request (`-1`, `-2`): two identical coffees on one
day stay two lines, and the same file imported twice names every line the same way, so it stores nothing new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from decimal import Decimal

DIGEST_HEX = 24


def content_digest(line: dict[str, str]) -> str:
    """24 hex digits naming what the line says. The amount is compared as a number ("23.50" is "23.5")."""
    amount = format(Decimal(line["amount"]).normalize(), "f")
    text = "\x1f".join((line["date"], line["vendor"], amount, line["currency"], line.get("description") or ""))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_HEX]


class Occurrences:
    """Counts the lines of one file by content, to number identical ones.

    Memory is what a large file needs at least: one small int per distinct line (the digest's first 60 bits);
    only contents met more than once keep a count.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._repeats: dict[int, int] = {}

    def next(self, digest: str) -> int:
        """The occurrence number (1, 2, ...) of this content within the file so far."""
        key = int(digest[:15], 16)
        if key not in self._seen:
            self._seen.add(key)
            return 1
        count = self._repeats.get(key, 1) + 1
        self._repeats[key] = count
        return count


def line_id(line: dict[str, str], occurrences: Occurrences) -> str:
    digest = content_digest(line)
    return f"{digest}-{occurrences.next(digest)}"


def assign(lines: Iterable[dict[str, str]], occurrences: Occurrences | None = None) -> Iterator[dict[str, str]]:
    """Each line, with a deterministic lineId where it had none (lineId "" after validation)."""
    counted = occurrences or Occurrences()
    for line in lines:
        if not line.get("lineId"):
            line = {**line, "lineId": line_id(line, counted)}
        yield line
