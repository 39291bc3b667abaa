"""Figures and their presentation: percentiles, ratios, tables, target lines, AWS call counts (no chalicelib)."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import botocore.client

MET, MISSED = "target met", "TARGET MISSED"


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.inf


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def secs(seconds: float) -> str:
    return f"{seconds:.2f}"


def times(value: float) -> str:
    return f"{value:.2f}x"


def heading(title: str) -> None:
    print()
    print(title)
    print("=" * len(title))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                         strict=True))]
        return " | ".join(out).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def target(name: str, ok: bool, detail: str) -> bool:
    """Print one target line; returns `ok`."""
    print(f"  target: {name}: {detail} -> {MET if ok else MISSED}")
    return ok


def note(text: str) -> None:
    print(f"  note: {text}")


class AwsCalls:
    """AWS operations made by this process while counting: how many of each, and the seconds they took."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, operation: str, elapsed: float) -> None:
        with self._lock:
            self.counts[operation] += 1
            self.seconds[operation] += elapsed

    def summary(self, skip: tuple[str, ...] = ()) -> str:
        names = [n for n in sorted(self.counts, key=lambda n: -self.seconds[n]) if n not in skip]
        listed = ", ".join(f"{n} x{self.counts[n]} ({self.seconds[n]:.2f} s)" for n in names)
        total, spent = sum(self.counts[n] for n in names), sum(self.seconds[n] for n in names)
        return f"{listed}; {total} calls, {spent:.2f} s in all"


@contextlib.contextmanager
def aws_calls() -> Iterator[AwsCalls]:
    """Count the AWS operations this process makes (boto3 and PynamoDB both go through botocore's client)."""
    calls = AwsCalls()
    original = botocore.client.BaseClient._make_api_call

    def counting(self: Any, operation_name: str, params: dict[str, Any]) -> Any:
        started = time.perf_counter()
        try:
            return original(self, operation_name, params)
        finally:
            calls.add(operation_name, time.perf_counter() - started)

    botocore.client.BaseClient._make_api_call = counting  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        botocore.client.BaseClient._make_api_call = original  # type: ignore[method-assign]
