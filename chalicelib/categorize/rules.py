"""Offline categorizer: keywords over vendor and description (used when no OPENAI_API_KEY is set).

Each category has a keyword list; the first category whose keyword appears as a word in
the normalized vendor, then in the description, wins. Nothing matches: "Other" (or the
taxonomy's last category) with low confidence, flagged for review only if "Other" is absent.
"""

from __future__ import annotations

import re

from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.types import Answer, Item

KEYWORDS: dict[str, tuple[str, ...]] = {
    "Airfare": ("airline", "airlines", "airways", "air", "delta", "united", "lufthansa", "ryanair", "easyjet",
                "jetblue", "southwest", "flight", "klm", "emirates", "alaska"),
    "Lodging": ("hotel", "hotels", "marriott", "hilton", "hyatt", "inn", "airbnb", "motel", "resort", "lodge",
                "booking", "sheraton", "westin", "suites"),
    "Ground Transportation": ("uber", "lyft", "taxi", "cab", "parking", "train", "rail", "amtrak", "metro",
                              "transit", "bolt", "hertz", "avis", "shuttle", "toll", "fuel", "gas", "shell"),
    "Meals & Entertainment": ("restaurant", "cafe", "coffee", "starbucks", "bar", "grill", "pizza", "bistro",
                              "diner", "kitchen", "burger", "sushi", "doordash", "grubhub", "bakery", "lunch",
                              "dinner", "breakfast", "mcdonald", "chipotle", "pub", "tavern"),
    "Office Supplies": ("staples", "office", "depot", "paper", "supplies", "ikea", "stationery", "printer"),
    "Software & Subscriptions": ("aws", "amazon web services", "github", "slack", "zoom", "software", "adobe",
                                 "microsoft", "google", "atlassian", "dropbox", "notion", "figma", "openai",
                                 "subscription", "saas", "jetbrains"),
    "Telecommunications": ("verizon", "at&t", "att", "comcast", "phone", "mobile", "wireless", "t-mobile",
                           "vodafone", "internet", "telecom", "sprint"),
    "Training & Education": ("udemy", "coursera", "course", "training", "conference", "workshop", "seminar",
                             "oreilly", "pluralsight", "tuition", "webinar"),
    "Shipping & Postage": ("fedex", "ups", "usps", "dhl", "shipping", "postage", "post", "courier"),
}


def _words(text: str) -> str:
    return f" {re.sub(r'[^a-z0-9&]+', ' ', text.casefold())} "


def categorize(items: list[Item], categories: list[str]) -> list[Answer]:
    fallback = "Other" if "Other" in categories else None
    answers = []
    for item in items:
        vendor, description = _words(normalize_vendor(item.vendor)), _words(item.description)
        found = None
        for text, confidence in ((vendor, 0.9), (description, 0.75)):
            found = next(((cat, confidence) for cat, words in KEYWORDS.items() if cat in categories
                          and any(f" {w} " in text for w in words)), None)
            if found:
                break
        if found:
            answers.append(Answer(item.id, found[0], found[1], "rules", False))
        elif fallback:
            answers.append(Answer(item.id, fallback, 0.3, "rules", False))
        else:
            answers.append(Answer(item.id, None, 0.0, "rules", True))
    return answers
