"""The price table the job's `usage.estimatedCostUsd` is computed from: USD per million tokens, per model and lane.

Prices are what the provider lists (OpenAI's pricing page, for the models here); the README shows the same table.
Flex processing is billed at Batch API rates (OpenAI: "Tokens are priced at Batch API rates"), so the `flex` lane
reads the batch column. A model not in the table has no estimate (`estimatedCostUsd` null), never a guess.
A dated snapshot (`gpt-4o-mini-2024-07-18`) is priced as its model.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

LANES = ("standard", "flex", "batch")
DEFAULT_LANE = "standard"
SCHEDULED_LANE = "batch"  # a scheduled report's jobs, unless its configuration names another lane


@dataclass(frozen=True)
class Rate:
    """USD per million tokens: uncached input, cached input, output."""

    input: Decimal
    cached: Decimal
    output: Decimal


def _rate(input_: str, cached: str, output: str) -> Rate:
    return Rate(Decimal(input_), Decimal(cached), Decimal(output))


# model -> (standard, batch). Keep README.md's price table in step with this one.
PRICES: dict[str, tuple[Rate, Rate]] = {
    "gpt-4o-mini": (_rate("0.15", "0.075", "0.60"), _rate("0.075", "0.0375", "0.30")),
    "gpt-4.1-mini": (_rate("0.40", "0.10", "1.60"), _rate("0.20", "0.05", "0.80")),
    "gpt-4.1-nano": (_rate("0.10", "0.025", "0.40"), _rate("0.05", "0.0125", "0.20")),
    "gpt-5-mini": (_rate("0.25", "0.025", "2.00"), _rate("0.125", "0.0125", "1.00")),
    "gpt-5-nano": (_rate("0.05", "0.005", "0.40"), _rate("0.025", "0.0025", "0.20")),
    "o4-mini": (_rate("1.10", "0.275", "4.40"), _rate("0.55", "0.1375", "2.20")),
}
NANO = Decimal(1_000_000_000)


def rate(model: str, lane: str) -> Rate | None:
    """The rate of `model` on `lane`, or None for a model the table does not price."""
    rates = PRICES.get(model) or next((r for name, r in PRICES.items() if model.startswith(name + "-20")), None)
    if rates is None:
        return None
    return rates[0] if lane == "standard" else rates[1]


def cost_nanos(model: str, lane: str, input_tokens: int, cached_tokens: int, output_tokens: int) -> int | None:
    """The cost of one answer in billionths of a USD (an integer the job's counters can ADD), or None unpriced.

    `input_tokens` counts every prompt token, cached ones included (as the provider's `prompt_tokens` does).
    """
    r = rate(model, lane)
    if r is None:
        return None
    cached = min(cached_tokens, input_tokens)
    usd = ((input_tokens - cached) * r.input + cached * r.cached + output_tokens * r.output) / Decimal(1_000_000)
    return int((usd * NANO).to_integral_value())


def usd(nanos: int) -> str:
    """Billionths of a USD as the decimal string the job shows (6 places: a small job costs fractions of a cent)."""
    return str((Decimal(nanos) / NANO).quantize(Decimal("0.000001")))
