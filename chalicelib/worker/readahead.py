"""The read-ahead buffer: lines read past the checkpoint and not worked yet, and where they continue from.

One read brings up to LINE_READ_AHEAD batches' worth of lines, so a batch that grows (loop.next_batch) needs no
second read, and a small job is read once. The buffer stays valid only while the checkpoint moves where it
expects (the end of the batch last taken from it); anything else (a refused checkpoint, another worker's)
empties it and the next fill reads from the scope's cursor again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ReadAhead:
    def __init__(self) -> None:
        self._lines: list[Any] = []
        self._after: str | None = None  # the cursor the buffered lines continue from
        self._whole = False  # the buffer holds every line left: nothing to read past it

    @property
    def lines(self) -> list[Any]:
        """The buffered lines, in order (read only: take() removes them)."""
        return self._lines

    @property
    def drained_whole(self) -> bool:
        """The buffer held every line of the job and all were taken: no line is left to read."""
        return self._whole and not self._lines

    def hold_whole(self, lines: list[Any]) -> None:
        """`lines` are every line of a job that has not started (its count was taken by reading them)."""
        self._lines, self._after, self._whole = list(lines), "", True

    def sync(self, cursor: str) -> None:
        """The scope's checkpoint is at `cursor`: drop the buffer if that is not where it continues from."""
        if self._after != cursor:
            self._lines, self._whole = [], False
        if not self._lines:
            self._after = cursor

    def fill(self, read: Callable[[int, str | None], list[Any]], low: int, capacity: int) -> None:
        """With fewer than `low` lines buffered (and more to read), read up to `capacity` in all.

        `read(n, after)` returns up to `n` lines after the line id `after` (None: after the scope's cursor).
        """
        if len(self._lines) >= low or self._whole:
            return
        after = self._lines[-1].line_id if self._lines else None
        self._lines += read(capacity - len(self._lines), after)

    def take(self, n: int) -> list[Any]:
        """The first `n` buffered lines; a successful checkpoint of them puts the cursor at the last one."""
        batch, self._lines = self._lines[:n], self._lines[n:]
        if batch:
            self._after = batch[-1].line_id
        return batch
