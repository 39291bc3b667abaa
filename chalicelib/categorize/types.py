"""Values passed through the categorization pipeline."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    """One distinct vendor to categorize (lines are de-duplicated by normalized vendor)."""

    id: str
    vendor: str
    description: str


@dataclass(frozen=True)
class Answer:
    id: str
    category: str | None
    confidence: float
    source: str  # cache | model | rules | manual
    needs_review: bool
