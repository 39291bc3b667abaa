"""What a job's model requests used: requests, input (cached among them) and output tokens, an estimated cost,
and flex requests that fell back to standard.

One `Meter` per invocation adds up what its requests report (`usage` of each answer, thread-safe: requests run
on several threads); the worker writes the difference since its last write with its checkpoints, in the same
conditional write as the line counts (jobs/store), so usage is counted once per line batch, never per request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import Any

from chalicelib.categorize import prices

# Usage field -> the Job attribute it adds to (chalicelib/tables.py).
ATTRIBUTES = {"requests": "usage_requests", "input_tokens": "usage_input_tokens",
              "cached_tokens": "usage_cached_tokens", "output_tokens": "usage_output_tokens",
              "cost_nanos": "usage_cost_nanos", "unpriced": "usage_unpriced", "flex_fallbacks": "flex_fallbacks"}


@dataclass(frozen=True)
class Usage:
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: int = 0
    unpriced: int = 0  # answers of a model the price table does not know: the estimate leaves them out
    flex_fallbacks: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def adds(self) -> dict[str, int]:
        """The Job attributes to ADD this usage to (the non-zero ones)."""
        return {ATTRIBUTES[f.name]: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


def of_answer(body: Any, model: str, lane: str) -> Usage:
    """One answered request's usage, from the completion's `usage` (a dict, the JSON of the answer).

    `lane` is the lane that served it (`flex` or `standard`; `batch` for a batch's answers): its price. A body
    without `usage` (a gateway that strips it) still counts its request.
    """
    raw = body.get("usage") if isinstance(body, dict) else None
    raw = raw if isinstance(raw, dict) else {}
    details = raw.get("prompt_tokens_details")
    prompt, output = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
    cached = min(prompt, _count(details.get("cached_tokens")) if isinstance(details, dict) else 0)
    cost = prices.cost_nanos(model, lane, prompt, cached, output)
    return Usage(1, prompt, cached, output, cost or 0, 1 if cost is None else 0)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Meter:
    """What an invocation's requests used, added up across threads."""

    def __init__(self) -> None:
        self._total = Usage()
        self._lock = threading.Lock()

    def add(self, usage: Usage) -> None:
        with self._lock:
            self._total = self._total + usage

    def total(self) -> Usage:
        with self._lock:
            return self._total


def to_dict(job: Any) -> dict[str, Any]:
    """The job representation's `usage`."""
    def n(name: str) -> int:
        return int(getattr(job, name, None) or 0)

    requests = n("usage_requests")
    # No estimate when some answers came from a model the table does not price (a partial sum would mislead).
    priced = not n("usage_unpriced")
    return {"modelRequests": requests, "inputTokens": n("usage_input_tokens"),
            "cachedTokens": n("usage_cached_tokens"), "outputTokens": n("usage_output_tokens"),
            "estimatedCostUsd": prices.usd(n("usage_cost_nanos")) if priced else None,
            "flexFallbacks": n("flex_fallbacks")}
