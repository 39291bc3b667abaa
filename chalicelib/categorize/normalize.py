"""Vendor normalization, so `UBER *TRIP 8841` and `Uber Trip` meet in the cache."""

from __future__ import annotations

import re

# Card processors prefix the merchant: "SQ *BLUE BOTTLE", "TST* PIZZA", "PAYPAL *ADOBE".
_PROCESSOR_PREFIX = re.compile(r"^\s*(sq|tst|pp|paypal|sp|ic|dd)\s*\*\s*", re.IGNORECASE)
_LEGAL_SUFFIXES = frozenset({"inc", "llc", "ltd", "co", "corp", "gmbh", "plc", "sa", "com", "www"})
_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalize_vendor(vendor: str) -> str:
    text = _PROCESSOR_PREFIX.sub("", vendor or "").casefold()
    tokens = [t for t in _NON_WORD.sub(" ", text).replace("_", " ").split()
              if not any(ch.isdigit() for ch in t) and t not in _LEGAL_SUFFIXES]
    normalized = " ".join(tokens)
    return normalized or (vendor or "").strip().casefold()
